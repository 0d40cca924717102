"""Mixture of experts: every dispatch equals a plain per-expert loop, balancing and capacity do
what they say, statistics are reported, and per-layer composition places MoE layers."""
import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo.components import Dims
from zoo.errors import ManifestError
from zoo_plugins.ffn.moe import MoE, grouped_mm_available

DIMS = Dims(d_model=32, n_heads=4, n_layers=2, bias=True)


def reference(moe, x):
    """The plainest MoE: for each expert, the tokens that chose it, through that expert's weights."""
    B, T, C = x.shape
    xf = x.reshape(-1, C)
    logits = xf.float() @ moe.router.weight.float().T
    scores = logits.softmax(-1) if moe.score == "softmax" else logits.sigmoid()
    ids = (scores + (moe.route_bias if moe.balance == "bias" else 0)).topk(moe.top_k, -1).indices
    w = scores.gather(1, ids)
    if moe.norm_topk and moe.top_k > 1:
        w = w / w.sum(-1, keepdim=True)
    y = torch.zeros_like(xf)
    for e in range(moe.n_experts):
        tok, slot = (ids == e).nonzero(as_tuple=True)
        if moe.capacity_factor is not None:  # earlier copies (token-major, then slot) win
            import math
            cap = math.ceil(moe.capacity_factor * xf.shape[0] * moe.top_k / moe.n_experts)
            order = (tok * moe.top_k + slot).argsort()[:cap]
            tok, slot = tok[order], slot[order]
        h = xf[tok] @ moe.w_in[e] + (moe.b_in[e] if moe.b_in is not None else 0)
        if moe.form == "swiglu":
            g, u = h.chunk(2, -1)
            h = F.silu(g) * u
        else:
            h = F.gelu(h)
        out = h @ moe.w_out[e] + (moe.b_out[e] if moe.b_out is not None else 0)
        y = y.index_add(0, tok, out * w[tok, slot, None])
    if moe.shared is not None:
        y = y + moe.shared(xf[None])[0]
    return y.view(B, T, C)


MODES = ["batched", "loop", pytest.param("grouped", marks=pytest.mark.skipif(
    not grouped_mm_available(torch.device("cpu"), torch.float32),
    reason="this torch has no grouped_mm that runs on the CPU in float32"))]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cfg", [
    dict(),
    dict(n_shared=1, expert={"name": "mlp", "params": {}}),
    dict(score="sigmoid", balance="bias", top_k=3, expert_hidden_mult=0.5),
    dict(capacity_factor=0.5),
    dict(top_k=1, n_experts=3),
])
def test_dispatch_equals_a_plain_per_expert_loop(mode, cfg):
    torch.manual_seed(0)
    moe = MoE(DIMS, **{"n_experts": 4, "top_k": 2, "dispatch": mode, **cfg}).train()
    with torch.no_grad():
        moe.route_bias.copy_(torch.randn(moe.n_experts) * 0.1)
        if moe.b_in is not None:
            moe.b_in.normal_(), moe.b_out.normal_()
    x = torch.randn(3, 7, 32)
    y = moe(x)
    ref = reference(moe, x)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(y)
    grads = torch.autograd.grad((y * g).sum(), [moe.w_in, moe.w_out, moe.router.weight])
    grads_ref = torch.autograd.grad((ref * g).sum(), [moe.w_in, moe.w_out, moe.router.weight])
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_auto_dispatch_avoids_the_python_loop():
    moe = MoE(DIMS, n_experts=4)
    assert moe.dispatch_mode(torch.randn(5, 32)) in ("grouped", "batched")
    odd = MoE(Dims(d_model=30, n_heads=3), n_experts=4)  # rows not 16-byte aligned: no grouped_mm
    assert odd.dispatch_mode(torch.randn(5, 30)) == "batched"


def test_experts_from_another_ffn_plugin():
    torch.manual_seed(0)
    moe = MoE(DIMS, n_experts=3, top_k=1, expert={"name": "kan", "params": {"grid_size": 3}}).eval()
    assert moe.dispatch_mode(torch.randn(2, 32)) == "loop" and type(moe.experts[0]).__name__ == "KAN"
    x = torch.randn(2, 5, 32)
    ids, w, _ = moe.route(x.reshape(-1, 32))
    expect = torch.stack([moe.experts[int(e)](t[None, None])[0, 0] * wt for t, e, wt in
                          zip(x.reshape(-1, 32), ids[:, 0], w[:, 0])]).view(2, 5, 32)
    torch.testing.assert_close(moe(x), expect, atol=1e-5, rtol=1e-5)


def test_aux_loss_in_training_only_and_reaches_the_model_loss():
    torch.manual_seed(0)
    model = zoo.build("mixtral", "tiny")
    idx = torch.randint(0, 96, (2, 16))
    logits, loss = model(idx, idx)
    aux = [b.ffn.aux_loss for b in model.blocks]
    assert all(a is not None and a.item() >= 0.01 * 0.99 for a in aux)  # E * sum f P >= 1 at its minimum
    ce = F.cross_entropy(logits.view(-1, logits.shape[-1]), idx.view(-1))
    torch.testing.assert_close(loss, ce + sum(aux))
    model.eval()
    with torch.no_grad():
        logits, loss = model(idx, idx)
    assert all(b.ffn.aux_loss is None for b in model.blocks)
    torch.testing.assert_close(loss, F.cross_entropy(logits.view(-1, logits.shape[-1]), idx.view(-1)))


def test_bias_balancing_moves_towards_equal_load():
    torch.manual_seed(0)
    moe = MoE(DIMS, n_experts=4, top_k=1, score="sigmoid", balance="bias", bias_update_rate=0.05).train()
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0] += 1.0  # expert 0 scores highest for inputs with a positive sum
    x = torch.randn(4, 8, 32).abs()
    moe(x)
    assert moe.zoo_stats()["load/expert_0"] == 1.0
    assert moe.route_bias[0] < 0 and (moe.route_bias[1:] > 0).all()
    for _ in range(30):
        moe(x)
    assert moe.zoo_stats()["load/expert_0"] < 1.0  # the bias pushed tokens elsewhere
    before = moe.route_bias.clone()
    moe.eval()
    moe(x)
    assert torch.equal(moe.route_bias, before)  # no update outside training


def test_capacity_drops_and_counts():
    torch.manual_seed(0)
    moe = MoE(DIMS, n_experts=4, top_k=1, capacity_factor=0.25).train()
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[2, 0] = 10.0  # every token with x[0] > 0 wants expert 2
    x = torch.randn(1, 64, 32)
    x[..., 0] = x[..., 0].abs() + 1
    y = moe(x)
    cap = 4  # ceil(0.25 * 64 * 1 / 4)
    stats = moe.zoo_stats()
    assert stats["dropped_fraction"] == pytest.approx(1 - cap / 64)
    assert stats["load/expert_2"] == 1.0 and stats["load/max_over_mean"] == pytest.approx(4.0)
    assert (y[0, :cap].abs().sum(-1) > 0).all() and (y[0, cap:] == 0).all()  # dropped tokens: zero output


def test_stats_keys_for_the_trainer():
    moe = MoE(DIMS, n_experts=3).train()
    assert moe.zoo_stats() == {}
    moe(torch.randn(2, 4, 32))
    stats = moe.zoo_stats()
    assert {"load/expert_0", "load/expert_2", "dropped_fraction", "aux_loss"} <= set(stats)
    assert sum(stats[f"load/expert_{i}"] for i in range(3)) == pytest.approx(1.0)
    assert stats["dropped_fraction"] == 0.0


def test_top_k_above_experts_is_a_manifest_error():
    with pytest.raises(ManifestError, match=r"mixtral.*at ffn\.params: top_k=9 is more than n_experts=8"):
        zoo.resolve("mixtral", "tiny", **{"ffn.params.top_k": 9})
    with pytest.raises(ManifestError, match=r"expert\.name 'nope' is not an ffn plugin"):
        zoo.resolve("mixtral", "tiny", **{"ffn.params.expert": {"name": "nope"}})
    with pytest.raises(ManifestError, match=r"at ffn\.params: expert\.params: Additional properties.*'hiden'"):
        zoo.resolve("mixtral", "tiny", **{"ffn.params.expert": {"name": "swiglu", "params": {"hiden": 8}}})


def test_deepseek_first_layer_dense_and_alternating_layers():
    m = zoo.build("deepseek", "baby")
    assert [type(b.ffn).__name__ for b in m.blocks] == ["SwiGLU", "MoE", "MoE", "MoE"]
    alt = zoo.build("llama", "baby", layers=[{"from": 1, "every": 2, "ffn": {"name": "moe", "params": {"n_experts": 4}}}])
    assert [type(b.ffn).__name__ for b in alt.blocks] == ["SwiGLU", "MoE", "SwiGLU", "MoE"]
    assert alt.blocks[1].ffn.n_experts == 4
    spec = zoo.resolve("deepseek", "tiny")
    assert spec["layers"][0]["ffn"]["params"] == {"multiple_of": 64}  # defaults filled like any component


def test_layer_overrides_are_validated_with_their_path():
    with pytest.raises(ManifestError, match=r"model 'deepseek'.*layers\[0\]\.ffn\.params.*'n_expert'"):
        zoo.resolve("deepseek", "tiny", layers=[{"ffn": {"name": "moe", "params": {"n_expert": 4}}}])
    with pytest.raises(ManifestError, match=r"at layers\[0\]: from=7.*selects no layer of the 2"):
        zoo.resolve("deepseek", "tiny", layers=[{"from": 7, "ffn": {"name": "mlp"}}])
    with pytest.raises(ManifestError, match=r"at layers\[1\]\.ffn\.params: top_k=5 is more than n_experts=4"):
        zoo.resolve("llama", "tiny", layers=[{"to": 1, "ffn": {"name": "mlp"}},
                                             {"ffn": {"name": "moe", "params": {"n_experts": 4, "top_k": 5}}}])


def test_checkpoint_plugins_include_layer_components():
    from zoo.io.checkpoint import plugins_of
    assert plugins_of(zoo.resolve("deepseek", "tiny")) == {"zoo": zoo.__version__}


def test_moe_models_train_with_bf16_inputs():
    torch.manual_seed(0)
    model = zoo.build("deepseek", "tiny").to(torch.bfloat16)
    idx = torch.randint(0, 96, (2, 16))
    _, loss = model(idx, idx)
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
def test_moe_and_mla_under_autocast():
    """fp32 weights, bf16 autocast (how the trainer runs on GPUs): a training step runs."""
    torch.manual_seed(0)
    model = zoo.build("deepseek", "tiny").train()
    idx = torch.randint(0, 96, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = model(idx, idx)
    loss.backward()
    assert torch.isfinite(loss) and model.blocks[1].ffn.w_in.grad.abs().sum() > 0
