"""The mamba mixer (plugins/attention/mamba.py) against a plain sequential loop of the paper's
equations (Gu and Dao 2023, Algorithm 2), its parallel (chunked) scan against its recurrent step, its
cache and its initialisation. The registry-wide conformance kit runs over it in test_conformance.py."""
import math

import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo.components import Dims
from zoo_plugins.attention.mamba import Mamba, prefix_scan

DIMS = Dims(d_model=16, n_heads=2, n_layers=2, block_size=16, vocab_size=50, bias=False, dropout=0.0)


def reference(m, u, state=None):
    """The selective SSM, one token at a time, written from the paper's equations and the module's
    parameters only. u: (B, T, C) -> (y (B, T, C), (last d_conv - 1 conv inputs, h)), in float64."""
    p = {k: v.detach().double() for k, v in m.state_dict().items()}
    Bsz, T, _ = u.shape
    D, N, K, R = m.d_inner, m.d_state, m.d_conv, m.dt_rank
    W_conv = p["conv1d.weight"][:, 0]  # (D, K)
    A = -torch.exp(p["A_log"])  # (D, N)
    past = [torch.zeros(Bsz, D, dtype=torch.float64) for _ in range(K - 1)]
    h = torch.zeros(Bsz, D, N, dtype=torch.float64)
    if state is not None:
        past = list(state[0].double().unbind(-1))
        h = state[1].double()

    def rms(v, w):  # RMSNorm over the last dim
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + m.c_norm.eps) * w

    ys = []
    for t in range(T):
        xz = u[:, t].double() @ p["in_proj.weight"].T + p.get("in_proj.bias", 0)  # (B, 2D)
        x, z = xz[:, :D], xz[:, D:]
        window = past + [x]  # the K most recent inputs, oldest first
        conv = sum(window[k] * W_conv[:, k] for k in range(K)) + p.get("conv1d.bias", 0)  # (B, D)
        past = window[1:]
        x = conv * torch.sigmoid(conv)  # silu
        dbc = x @ p["x_proj.weight"].T  # (B, R + 2N)
        dt_in, Bt, Ct = dbc[:, :R], dbc[:, R:R + N], dbc[:, R + N:]
        if m.dt_norm is not None:
            dt_in, Bt, Ct = rms(dt_in, p["dt_norm.weight"]), rms(Bt, p["b_norm.weight"]), rms(Ct, p["c_norm.weight"])
        dt = torch.log1p(torch.exp(dt_in @ p["dt_proj.weight"].T + p["dt_proj.bias"]))  # softplus, (B, D)
        for d in range(D):  # h_t = exp(dt A) h_(t-1) + dt B x, per channel, as the paper writes it
            h[:, d] = torch.exp(dt[:, d, None] * A[d]) * h[:, d] + dt[:, d, None] * Bt * x[:, d, None]
        y = (h * Ct[:, None, :]).sum(-1) + p["D"] * x  # (B, D)
        y = y * z * torch.sigmoid(z)  # the gate silu(z)
        ys.append(y @ p["out_proj.weight"].T + p.get("out_proj.bias", 0))
    return torch.stack(ys, 1), (torch.stack(past, -1), h)


def _mamba(seed=0, **params):
    torch.manual_seed(seed)
    m = Mamba(DIMS, d_state=4, **params)
    with torch.no_grad():  # move every parameter off its initial value, so that each one matters
        for name, p in m.named_parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


def _u(T=13, B=2, seed=1):
    return torch.randn(B, T, DIMS.d_model, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("params", [{"chunk": 1}, {"chunk": 4}, {"chunk": 64},
                                    {"chunk": 3, "bcdt_norm": True, "conv_bias": False, "proj_bias": True},
                                    {"chunk": 5, "d_conv": 2, "dt_rank": 3, "expand": 1.5}])
def test_the_scan_equals_a_plain_loop_of_the_papers_equations(params):
    m = _mamba(**params)
    u = _u()
    ref, (conv, h) = reference(m, u)
    y, (conv_state, h_last) = m.forward_state(u, None, torch.arange(u.shape[1]), None)
    assert ref.abs().max() > 0.05
    torch.testing.assert_close(y.double(), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(conv_state.double(), conv, atol=1e-5, rtol=0)
    torch.testing.assert_close(h_last.double(), h, atol=1e-5, rtol=0)
    # from a carried state too: the second half of the sequence after the first
    y2, _ = m.forward_state(u[:, 7:], None, torch.arange(6), m.forward_state(u[:, :7], None, torch.arange(7), None)[1])
    torch.testing.assert_close(y2.double(), ref[:, 7:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk", [1, 4, "auto"])
def test_parallel_equals_recurrent_outputs_state_and_gradients(chunk):
    m = _mamba(chunk=chunk, bcdt_norm=True)
    u = _u(T=11)
    y_par, (c_par, h_par) = m.forward_state(u, None, torch.arange(11), None)
    g_par = torch.autograd.grad(y_par.pow(2).sum(), list(m.parameters()))
    state, ys = None, []
    for t in range(11):
        y, state = m.forward_state(u[:, t:t + 1], None, torch.arange(1), state)
        ys.append(y)
    y_rec = torch.cat(ys, 1)
    g_rec = torch.autograd.grad(y_rec.pow(2).sum(), list(m.parameters()))
    torch.testing.assert_close(y_par, y_rec, atol=1e-5, rtol=0)
    torch.testing.assert_close(h_par, state[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(c_par, state[0], atol=1e-6, rtol=0)
    for (name, _), a, b in zip(m.named_parameters(), g_par, g_rec):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=name)


def test_prefix_scan_is_exact_where_cumulative_log_decays_would_overflow():
    """Decays from 1 down to exp(-60) per step: a form through exp(cumsum(log a)) overflows fp32
    within a few steps; the doubling scan multiplies the same factors as the loop."""
    g = torch.Generator().manual_seed(0)
    a = torch.exp(-60 * torch.rand(2, 37, 3, 5, generator=g))
    a[:, ::5] = 1.0
    b = torch.randn(2, 37, 3, 5, generator=g)
    P, H = prefix_scan(a, b)
    h, p, hs, ps = torch.zeros(2, 3, 5), torch.ones(2, 3, 5), [], []
    for t in range(37):
        h, p = a[:, t] * h + b[:, t], p * a[:, t]
        hs.append(h)
        ps.append(p)
    assert torch.isfinite(H).all()
    torch.testing.assert_close(H, torch.stack(hs, 1), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(P, torch.stack(ps, 1), atol=0, rtol=1e-5)


def test_cache_size_is_what_the_cache_holds_and_decoding_runs_past_the_context():
    m = _mamba(chunk=4).eval()
    per_tok, per_seq = Mamba.cache_size(DIMS, {"d_state": 4})
    cache = m.new_cache(3, DIMS.block_size, dtype=torch.float32)
    assert per_tok == 0 and per_seq == m.d_inner * (m.d_conv - 1) + m.d_inner * m.d_state
    assert cache.nbytes == 3 * per_seq * 4 and cache.rewind == "snapshot"
    u = _u(T=3 * DIMS.block_size, B=3)  # three times the context
    with torch.no_grad():
        full = m(u, None, torch.arange(u.shape[1]))
        parts = [m(u[:, :5], None, torch.arange(5), cache)]
        parts += [m(u[:, t:t + 1], None, torch.arange(t, t + 1), cache) for t in range(5, u.shape[1])]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=0)


def test_mamba_initialisation_survives_the_models():
    """dt's bias holds softplus^-1 of steps in [dt_min, dt_max], A is S4D-real, D ones: the model's
    N(0, 0.02) init of Linear layers leaves them; A_log and D get no weight decay."""
    model = zoo.build("mamba", "tiny")
    mixer = model.blocks[0].attn
    dt = F.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 0.001 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4) and dt.std() > 0.005
    std = mixer.dt_rank ** -0.5
    assert mixer.dt_proj.weight.abs().max() <= std and mixer.dt_proj.weight.std() > std / 3
    assert torch.equal(mixer.A_log[3], torch.log(torch.arange(1.0, 17.0)))
    assert torch.equal(mixer.D, torch.ones_like(mixer.D))
    assert mixer.A_log.zoo_no_decay and mixer.D.zoo_no_decay
    assert math.isclose(mixer.out_proj.weight.std().item(), 0.02 / math.sqrt(4), rel_tol=0.2)  # residual


def test_mamba_refuses_positional_encodings_it_would_not_use():
    with pytest.raises(zoo.ZooError, match="no layer's mixer uses"):
        zoo.resolve("mamba", "tiny", posenc={"name": "rope"})
    with pytest.raises(zoo.ZooError, match="does not accept absolute"):
        zoo.resolve("mamba", "tiny", posenc={"name": "learned"})


# ---- jamba: the layer pattern through the generic shrink_period rule --------------------------------

@pytest.mark.parametrize("n_layers", [2, 3, 4, 6, 7, 8, 12, 16, 20])
def test_jamba_layout_is_transformers_at_every_depth(n_layers):
    """Attention where transformers' JambaConfig puts it, i % period == offset, with the period
    min(8, n) and the offset 4 (n // 2 below 8 layers); experts at odd layers."""
    from zoo.spec.resolve import layer_components
    spec = zoo.resolve("jamba", "tiny", n_layers=n_layers)
    period, offset = (8, 4) if n_layers >= 8 else (n_layers, n_layers // 2)
    got = [(layer_components(spec, i)["attention"]["name"], layer_components(spec, i)["ffn"]["name"])
           for i in range(n_layers)]
    want = [("gqa" if i % period == offset else "mamba", "moe" if i % 2 == 1 else "swiglu") for i in range(n_layers)]
    assert got == want
    assert sum(a == "gqa" for a, _ in got) >= 1


def test_shrink_period_is_a_rule_of_every_override_and_without_it_an_empty_selection_is_refused():
    from zoo.spec.resolve import layer_selection
    o = {"from": 3, "every": 10, "shrink_period": True, "ffn": "none"}
    assert layer_selection(o, 5) == (1, 5, 5) and layer_selection(o, 10) == (3, 10, 10)
    assert layer_selection({**o, "shrink_period": False}, 5) == (3, 5, 10)
    spec = zoo.resolve("llama", "tiny", n_layers=5, layers=[o])  # layer 1 of 5 has no ffn
    assert [zoo.spec.resolve.layer_components(spec, i)["ffn"]["name"] for i in range(5)] == \
        ["swiglu", "none", "swiglu", "swiglu", "swiglu"]
    with pytest.raises(zoo.ZooError, match=r"layers\[0\]: from=4, to=4, every=8 selects no layer"):
        zoo.resolve("jamba", "baby", layers=[{"from": 4, "every": 8, "attention": {"name": "gqa"}}])
