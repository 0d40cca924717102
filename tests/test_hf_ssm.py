"""zoo import hf / zoo export hf for the state space mappings (zoo_plugins.hf.ssm): parity against
transformers' MambaForCausalLM and JambaForCausalLM on small random configs, through their PyTorch
paths on the CPU. As tests/test_hf.py does for the attention models: logits within 1e-4 in float32,
32 greedy tokens decoded with the zoo's cache equal to transformers' generate, and the export loaded
back by transformers gives the same logits."""
import pytest
import torch

from zoo.interop.hf.convert import export_hf, import_hf

VOCAB = 100


def _tokenizer_json(path):
    """A tiny BPE tokenizer.json (< VOCAB tokens), as tests/test_hf.py makes one."""
    tk = pytest.importorskip("tokenizers", reason="the hf tokenizer type needs the tokenizers package (zoo[hf])")
    from tokenizers import decoders, models, pre_tokenizers, trainers
    tok = tk.Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 3,
                            trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<unk>", "</s>"]))
    tok.save(str(path))


def _configs():
    tr = pytest.importorskip("transformers", reason="parity tests need the optional extra: pip install 'zoo[hf]'")
    common = dict(vocab_size=VOCAB, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    return {
        # time_step_rank, d_conv, biases in the projections away from their defaults
        "mamba": lambda: tr.MambaConfig(hidden_size=32, num_hidden_layers=2, state_size=8, conv_kernel=3,
                                        time_step_rank=5, use_bias=True, initializer_range=0.2, **common),
        # 4 layers: attention at layer 2 (period 4, offset 2), experts at layers 1 and 3
        "jamba": lambda: tr.JambaConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                        num_key_value_heads=2, intermediate_size=48, num_experts=4,
                                        num_experts_per_tok=2, attn_layer_period=4, attn_layer_offset=2,
                                        expert_layer_period=2, expert_layer_offset=1, mamba_d_state=8,
                                        mamba_dt_rank=4, max_position_embeddings=256, use_mamba_kernels=False,
                                        initializer_range=0.2, **common),
    }


@pytest.fixture(scope="module", params=["mamba", "jamba"])
def imported(request, tmp_path_factory):
    tr = pytest.importorskip("transformers", reason="parity tests need the optional extra: pip install 'zoo[hf]'")
    from zoo.generate import load
    cfg = _configs()[request.param]()
    tmp = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    hf = tr.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # move A_log, D, dt's bias and the norms off their constant initial values
        for name, p in hf.named_parameters():
            if name.endswith(("A_log", ".D", "dt_proj.bias", "norm.weight", "layernorm.weight")):
                p.add_(0.2 * torch.randn_like(p))
    hf.save_pretrained(tmp / "hf")
    _tokenizer_json(tmp / "hf" / "tokenizer.json")
    import_hf(str(tmp / "hf"), tmp / "run")
    model, _ = load(tmp / "run")
    return hf, model, tmp / "run", tmp


def _ids(n=20, batch=2, seed=1):
    return torch.randint(0, VOCAB, (batch, n), generator=torch.Generator().manual_seed(seed))  # (B, T)


def test_logits_match_transformers(imported):
    hf, model, _, _ = imported
    idx = _ids()
    with torch.no_grad():
        ref = hf(idx).logits  # (B, T, V)
        got, _ = model(idx)
    assert ref.abs().max() > 0.5  # not two near-zero tensors
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


def test_greedy_decoding_with_the_cache_matches_generate(imported):
    hf, model, _, _ = imported
    prompt = _ids(5, 1, seed=2)  # (1, 5)
    ref = hf.generate(prompt, max_new_tokens=32, do_sample=False)  # (1, 37)
    cache = model.new_cache(1, prompt.shape[1] + 32)
    out = prompt
    with torch.no_grad():
        logits, _ = model(prompt, cache=cache)  # prefill
        for _ in range(32):
            nxt = logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
            out = torch.cat([out, nxt], dim=1)
            logits, _ = model(nxt, cache=cache)  # one token with the cache
    assert len(set(out[0, 5:].tolist())) > 1  # not one token repeated
    assert out.tolist() == ref.tolist()


def test_export_round_trip_loads_in_transformers(imported):
    tr = pytest.importorskip("transformers")
    hf, _, run, tmp = imported
    export_hf(run, tmp / "exported", force=True)
    back = tr.AutoModelForCausalLM.from_pretrained(tmp / "exported").eval()
    assert type(back) is type(hf)
    idx = _ids(seed=3)
    with torch.no_grad():
        torch.testing.assert_close(back(idx).logits, hf(idx).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("preset, block_types, experts", [
    ("tiny", ["mamba", "attention"], [1, 16]),
    ("baby", ["mamba", "mamba", "attention", "mamba"], [1, 16, 1, 16]),
    ("124m", ["mamba"] * 4 + ["attention"] + ["mamba"] * 7, [1, 16] * 6)])
def test_the_named_jamba_exports_its_layout_at_every_depth(preset, block_types, experts):
    """The shrunk pattern exports as the period and offset it has at that depth (the logits of the
    export are compared with transformers' for every exportable named model in tests/test_hf.py)."""
    tr = pytest.importorskip("transformers", reason="parity tests need the optional extra: pip install 'zoo[hf]'")
    import zoo
    from zoo.interop.hf.archs import export_arch
    spec = zoo.resolve("jamba", preset)
    cfg = export_arch(spec).to_hf(spec, None)
    hf = tr.JambaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type")})
    assert hf.layers_block_type == block_types and hf.layers_num_experts == experts
