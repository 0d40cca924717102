"""Multi-head latent attention: absorbed decoding equals the materialised path, the cache holds
only the latent and the rope key, and the KV figures follow DeepSeek-V2's formula."""
import pytest
import torch

import zoo
from zoo.components import Dims, PosEnc
from zoo.errors import ManifestError
from zoo_plugins.attention.mla import LatentCache, MultiHeadLatentAttention


def _decode(model, idx, prompt, mode):
    for b in model.blocks:
        b.attn.decode = mode
    cache = model.new_cache(idx.shape[0], idx.shape[1])
    parts = [model(idx[:, :prompt], cache=cache)[0]]
    for t in range(prompt, idx.shape[1]):
        parts.append(model(idx[:, t:t + 1], cache=cache)[0])
    return torch.cat(parts, 1)  # (B, T, V)


@pytest.mark.parametrize("posenc", ["rope", "alibi", "learned", "none"])
@pytest.mark.parametrize("q_lora_rank", [None, 24])
def test_absorbed_decoding_equals_materialized_and_full(posenc, q_lora_rank):
    torch.manual_seed(0)
    model = zoo.build("gpt2-mla", "tiny", posenc={"name": posenc},
                      **{"attention.params.q_lora_rank": q_lora_rank}).eval()
    idx = torch.randint(0, model.spec["vocab_size"], (2, 20))
    with torch.no_grad():
        full, _ = model(idx)
        absorbed = _decode(model, idx, 5, "absorbed")
        materialized = _decode(model, idx, 5, "materialized")
    torch.testing.assert_close(absorbed, materialized, atol=1e-5, rtol=0)
    torch.testing.assert_close(absorbed, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["absorbed", "materialized"])
def test_decoding_with_a_nonzero_lora_adapter_equals_the_full_forward(mode):
    """Regression (issue 13): the absorbed path read ``wkv_b.weight`` itself and missed the LoRA
    update on that layer, 0.7 to 1.0 off in the logits; it now reads ``linear_weight(wkv_b)``."""
    spec = zoo.resolve("gpt2-mla", "tiny")
    spec["transforms"] = [{"name": "lora", "params": {"r": 2, "targets": ["attention", "ffn"]}}]
    torch.manual_seed(0)
    model = zoo.build_from_spec(spec).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("lora_B"):
                p.normal_(0, 0.1)  # as after training
    assert hasattr(model.blocks[0].attn.wkv_b, "lora_B")
    idx = torch.randint(0, spec["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, _ = model(idx)
        cached = _decode(model, idx, 3, mode)
        base = zoo.build_from_spec({k: v for k, v in spec.items() if k != "transforms"}).eval()
        base.load_state_dict({k: v for k, v in model.state_dict().items() if "lora_" not in k})
        assert (base(idx)[0] - full).abs().max() > 0.1  # the adapters matter
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=0)


def test_absorbed_attention_really_runs_over_the_latent():
    """The absorbed path never calls the up-projection as a layer (no per-head keys/values)."""
    torch.manual_seed(0)
    model = zoo.build("gpt2-mla", "tiny").eval()
    calls = []
    for b in model.blocks:
        b.attn.wkv_b.register_forward_hook(lambda *a: calls.append(1))
    idx = torch.randint(0, 50, (1, 6))
    with torch.no_grad():
        _decode(model, idx, 3, "absorbed")
        assert calls == []
        _decode(model, idx, 3, "materialized")
    assert calls


def test_cache_holds_latent_and_rope_key_only():
    dims = Dims(d_model=64, n_heads=4, n_layers=2, block_size=32)
    att = MultiHeadLatentAttention(dims, kv_lora_rank=24, qk_rope_head_dim=6)
    cache = att.new_cache(batch=3, max_len=10, dtype=torch.float32)
    assert isinstance(cache, LatentCache)
    assert cache.nbytes == 3 * 10 * (24 + 6) * 4
    assert MultiHeadLatentAttention.cache_size(dims, {"kv_lora_rank": 24, "qk_rope_head_dim": 6}) == (30, 0)
    x = torch.randn(3, 4, 64)
    att(x, PosEnc(dims), torch.arange(4), cache)
    k, v, pos = cache.read()
    assert v.data_ptr() == k.data_ptr() and v.shape[-1] == 24  # the values are a view of the latent
    assert pos.tolist()[:5] == [0, 1, 2, 3, -1]
    cache.reset()
    assert (cache.read()[2] == -1).all()


def test_kv_bytes_follow_deepseek_v2_formula_at_124m():
    # DeepSeek-V2 (arXiv:2405.04434, Table 1): MHA caches 2 n_h d_h l numbers per token, MLA (d_c + d_h^R) l.
    spec = zoo.resolve("gpt2-mla", "124m")
    l, n_h, d_h = spec["n_layers"], spec["n_heads"], spec["d_model"] // spec["n_heads"]
    d_c, d_r = 4 * d_h, d_h // 2  # the defaults: DeepSeek-V2's ratios
    assert zoo.kv_cache_bytes_per_token(spec, 2) == (d_c + d_r) * l * 2 == 6912
    assert zoo.kv_cache_bytes_per_token(zoo.resolve("gpt2", "124m"), 2) == 2 * n_h * d_h * l * 2 == 36864
    custom = zoo.resolve("gpt2-mla", "124m", **{"attention.params.kv_lora_rank": 512, "attention.params.qk_rope_head_dim": 64})
    assert zoo.kv_cache_bytes_per_token(custom, 2) == (512 + 64) * 12 * 2


def test_zoo_show_reports_mla_and_mha_kv_bytes(capsys):
    from zoo.cli import main
    assert main(["show", "gpt2-mla", "--preset", "124m"]) == 0
    out = capsys.readouterr().out
    assert "6,912 bytes/token in bf16" in out and "multi-head attention: 36,864 bytes/token" in out


def test_odd_rope_dim_is_a_manifest_error():
    with pytest.raises(ManifestError, match=r"gpt2-mla.*attention\.params: qk_rope_head_dim=5 is odd"):
        zoo.resolve("gpt2-mla", "tiny", **{"attention.params.qk_rope_head_dim": 5})


def test_no_rope_part_with_a_non_rotary_encoding():
    torch.manual_seed(0)
    model = zoo.build("gpt2-mla", "tiny", posenc={"name": "alibi"}, **{"attention.params.qk_rope_head_dim": 0}).eval()
    idx = torch.randint(0, 50, (2, 10))
    with torch.no_grad():
        full, _ = model(idx)
        torch.testing.assert_close(_decode(model, idx, 4, "absorbed"), full, atol=1e-5, rtol=0)


def test_query_compression_and_sizes_are_used():
    model = zoo.build("deepseek", "tiny", **{"attention.params.q_lora_rank": 12, "attention.params.v_head_dim": 8})
    att = model.blocks[0].attn
    assert att.wq_a.out_features == 12 and att.proj.in_features == 4 * 8
    idx = torch.randint(0, 50, (2, 8))
    _, loss = model(idx, idx)
    loss.backward()
    assert att.wq_a.weight.grad.abs().sum() > 0
