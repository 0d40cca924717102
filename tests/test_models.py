"""Every named model builds at every preset, and trains a step at the tiny preset."""
import pytest
import torch

import zoo

MODELS = zoo.list_models()
PRESETS = list(zoo.get_registry().presets)

# Parameters of every named model at every preset, as aaa45bd counted them
# (before the layout of issue 11); gpt2 at 124m is GPT-2 small with its vocabulary padded to 50304.
PARAM_COUNTS = {
    "deepseek": {"tiny": 201_152, "baby": 1_793_920, "char": 24_122_496, "124m": 272_656_128},
    "gla": {"tiny": 122_272, "baby": 882_432, "char": 10_728_576, "124m": 162_447_360},
    "gpt2": {"tiny": 108_288, "baby": 809_856, "char": 10_770_816, "124m": 124_475_904},
    "gpt2-alibi": {"tiny": 106_240, "baby": 801_664, "char": 10_672_512, "124m": 123_689_472},
    "gpt2-infini": {"tiny": 106_248, "baby": 801_680, "char": 10_672_548, "124m": 123_689_616},
    "gpt2-kan": {"tiny": 106_808, "baby": 809_060, "char": 10_776_450, "124m": 124_387_836},
    "gpt2-linear": {"tiny": 108_288, "baby": 809_856, "char": 10_770_816, "124m": 124_475_904},
    "gpt2-mla": {"tiny": 119_632, "baby": 908_480, "char": 11_188_416, "124m": 120_438_144},
    "gpt2-mqa-sin": {"tiny": 93_761, "baby": 702_593, "char": 9_194_113, "124m": 110_696_449},
    "gpt2-nope": {"tiny": 106_240, "baby": 801_664, "char": 10_672_512, "124m": 123_689_472},
    "gpt2-rope-gqa": {"tiny": 97_920, "baby": 735_616, "char": 9_489_792, "124m": 111_877_632},
    "jamba": {"tiny": 683_236, "baby": 5_425_912, "char": 65_398_936, "124m": 601_611_376},
    "llama": {"tiny": 110_912, "baby": 804_224, "char": 9_492_096, "124m": 150_424_320},
    "mamba": {"tiny": 71_616, "baby": 474_880, "char": 5_810_688, "124m": 83_894_016},
    "mamba2": {"tiny": 92_620, "baby": 546_608, "char": 5_989_080, "124m": 83_818_080},
    "mixtral": {"tiny": 628_032, "baby": 4_937_088, "char": 59_055_744, "124m": 546_859_776},
    "transformer-xl": {"tiny": 114_688, "baby": 868_224, "char": 11_561_856, "124m": 130_785_792},
    "retnet": {"tiny": 111_424, "baby": 806_272, "char": 10_680_960, "124m": 162_257_664},
}


def test_manifest_has_the_required_models_and_presets():
    assert {"gpt2", "gpt2-rope-gqa", "gpt2-mqa-sin", "gpt2-alibi", "gpt2-nope", "llama"} <= set(MODELS)
    assert {"tiny", "baby", "char", "124m"} <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("name", MODELS)
def test_every_model_resolves_and_builds_at_every_preset(name, preset):
    spec = zoo.resolve(name, preset)
    n = zoo.param_count(spec)  # built on the meta device: no weights allocated
    assert name in PARAM_COUNTS, f"pin the parameter count of the new model {name!r} in PARAM_COUNTS"
    assert n == PARAM_COUNTS[name][preset]
    assert spec["preset"] == preset


@pytest.mark.parametrize("name", MODELS)
def test_counting_on_the_meta_device_equals_real_weights(name):
    assert zoo.build(name, "tiny").num_params() == zoo.param_count(zoo.resolve(name, "tiny")) == PARAM_COUNTS[name]["tiny"]


@pytest.mark.parametrize("name", MODELS)
def test_every_model_trains_one_step_at_tiny(name):
    torch.manual_seed(0)
    model = zoo.build(name, "tiny")
    spec = model.spec
    idx = torch.randint(0, spec["vocab_size"], (2, spec["block_size"]))
    logits, loss = model(idx[:, :-1], idx[:, 1:])
    assert logits.shape == (2, spec["block_size"] - 1, spec["vocab_size"])
    assert torch.isfinite(loss)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss.backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)
    _, loss2 = model(idx[:, :-1], idx[:, 1:])
    assert loss2 < loss  # one step on the same batch at lr 1e-2 lowers its loss


def test_gpt2_124m_has_gpt2_small_parameter_count():
    # GPT-2 small has 124,439,808 parameters with its 50,257-token vocabulary (Hugging Face's
    # GPT2LMHeadModel, tied head); the 124m preset pads the vocabulary to 50,304.
    assert zoo.param_count(zoo.resolve("gpt2", "124m", vocab_size=50257)) == 124_439_808
    assert zoo.param_count(zoo.resolve("gpt2", "124m")) == 124_439_808 + 47 * 768


def test_baby_and_char_presets_match_nanogpt():
    baby = zoo.resolve("gpt2", "baby")
    assert (baby["n_layers"], baby["n_heads"], baby["d_model"], baby["block_size"]) == (4, 4, 128, 64)
    char = zoo.resolve("gpt2", "char")
    assert (char["n_layers"], char["n_heads"], char["d_model"], char["block_size"]) == (6, 6, 384, 256)


def test_core_options_change_the_model():
    llama = zoo.build("llama", "tiny")
    assert isinstance(llama.norm_f, torch.nn.RMSNorm)
    assert llama.lm_head.weight is not llama.wte.weight  # untied
    assert all(m.bias is None for m in llama.modules() if isinstance(m, torch.nn.Linear))
    gpt2 = zoo.build("gpt2", "tiny", dropout=0.1)
    assert isinstance(gpt2.norm_f, torch.nn.LayerNorm)
    assert gpt2.lm_head.weight is gpt2.wte.weight  # tied
    assert gpt2.drop.p == 0.1
    untied = zoo.build("gpt2", "tiny", tie_weights=False, bias=False)
    assert untied.lm_head.weight is not untied.wte.weight
    assert untied.num_params() > gpt2.num_params() - 1000


def test_overrides_reach_components():
    m = zoo.build("gpt2-rope-gqa", "tiny", n_layers=3, **{"attention.params.n_kv_heads": 1})
    assert len(m.blocks) == 3
    assert m.blocks[0].attn.n_kv_heads == 1


def test_mha_mqa_gqa_are_one_implementation():
    from zoo_plugins.attention.gqa import GroupedQueryAttention
    for name, kv in (("gpt2", 4), ("gpt2-mqa-sin", 1), ("gpt2-rope-gqa", 2)):
        att = zoo.build(name, "tiny").blocks[0].attn
        assert isinstance(att, GroupedQueryAttention) and att.n_kv_heads == kv


def test_gqa_with_one_kv_head_equals_mqa():
    torch.manual_seed(0)
    a = zoo.build("gpt2-mqa-sin", "tiny").eval()
    b = zoo.build("gpt2-mqa-sin", "tiny", attention={"name": "gqa", "params": {"n_kv_heads": 1}}).eval()
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, 96, (2, 20))
    torch.testing.assert_close(a(idx)[0], b(idx)[0])


def test_partial_rotary_leaves_the_rest_unrotated():
    from zoo.components import Dims
    from zoo_plugins.posenc.rope import RotaryPosEnc
    pe = RotaryPosEnc(Dims(d_model=32, n_heads=2), rotary_fraction=0.25)
    t = torch.randn(1, 2, 5, 16)
    out = pe.rotate(t, torch.arange(5))
    torch.testing.assert_close(out[..., 4:], t[..., 4:])
    assert not torch.allclose(out[..., :4], t[..., :4])
    # a rotation preserves norms, and position 0 is the identity
    torch.testing.assert_close(out[..., :4].norm(dim=-1), t[..., :4].norm(dim=-1))
    torch.testing.assert_close(out[:, :, 0], t[:, :, 0])


def test_rope_scores_depend_on_relative_position_only():
    from zoo.components import Dims
    from zoo_plugins.posenc.rope import RotaryPosEnc
    pe = RotaryPosEnc(Dims(d_model=16, n_heads=1))
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    def score(i, j):
        return (pe.rotate(q, torch.tensor([i])) * pe.rotate(k, torch.tensor([j]))).sum()
    torch.testing.assert_close(score(7, 3), score(104, 100))


def test_alibi_slopes_follow_the_paper():
    from zoo_plugins.posenc.alibi import alibi_slopes
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    s6 = alibi_slopes(6)  # not a power of two: 4 slopes of n=4, then odd ones of n=8
    torch.testing.assert_close(s6[:4], alibi_slopes(4))
    torch.testing.assert_close(s6[4:], alibi_slopes(8)[0::2][:2])
