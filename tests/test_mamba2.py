"""The Mamba-2 mixer (plugins/attention/mamba2.py) against a plain sequential loop of the paper's
equations (Dao and Gu 2024, arXiv:2405.21060, eq. for the selective SSM with scalar A per head),
written here from the equations, not from the module: the chunked SSD at lengths that are and are
not multiples of the chunk, the recurrent step, the state carried across windows, the cache's
constant size, and the bad input a user can give. The conformance kit runs on it through
tests/test_conformance.py."""
import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo.components import Dims, PosEnc
from zoo.errors import ZooError
from zoo_plugins.attention.mamba2 import Mamba2, ssd_chunked

DIMS = Dims(d_model=16, n_heads=2, n_layers=1, block_size=16, vocab_size=50, bias=False)
SMALL = dict(head_dim=4, d_state=6, n_groups=2, chunk_size=4)  # 8 heads in 2 groups of B and C


def loop_ssd(x, dt, A, B, C, h0=None):
    """h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T, y_t = h_t C_t, one token at a time, per head.
    x: (b, T, H, P), dt: (b, T, H), A: (H,), B, C: (b, T, H, N) -> y (b, T, H, P), h (b, H, P, N)."""
    b, T, H, P = x.shape
    N = B.shape[-1]
    h = torch.zeros(b, H, P, N, dtype=torch.float64) if h0 is None else h0.double().clone()
    ys = torch.zeros(b, T, H, P, dtype=torch.float64)
    for t in range(T):
        for k in range(H):
            a = torch.exp(dt[:, t, k].double() * A[k].double())  # (b,)
            h[:, k] = a[:, None, None] * h[:, k] + dt[:, t, k].double()[:, None, None] * \
                x[:, t, k].double()[:, :, None] * B[:, t, k].double()[:, None, :]
            ys[:, t, k] = torch.einsum("bpn,bn->bp", h[:, k], C[:, t, k].double())
    return ys, h


def loop_mixer(m, u):
    """The whole mixer as a loop over tokens, from its weights: in_proj, causal depthwise conv,
    SiLU, the recurrence per head with dt clamped, the D skip, RMSNorm(y * silu(z)) per group, out_proj."""
    b, T, _ = u.shape
    H, P, N, G, K = m.n_heads, m.head_dim, m.d_state, m.n_groups, m.d_conv
    zxbcdt = u.double() @ m.in_proj.weight.double().T  # (b, T, d_in_proj)
    z, xBC, dt_raw = zxbcdt.split([m.d_inner, m.conv_dim, H], dim=-1)
    w = m.conv1d.weight.double()[:, 0]  # (conv_dim, K)
    conv = torch.zeros_like(xBC)
    for t in range(T):  # out_t = sum_k w[:, k] x_{t - (K-1) + k}, zero before the start
        for k in range(K):
            s = t - (K - 1) + k
            if s >= 0:
                conv[:, t] += w[:, k] * xBC[:, s]
        if m.conv1d.bias is not None:
            conv[:, t] += m.conv1d.bias.double()
    xBC = F.silu(conv)
    x, Bg, Cg = xBC.split([m.d_inner, G * N, G * N], dim=-1)
    x = x.reshape(b, T, H, P)
    Bg, Cg = Bg.reshape(b, T, G, N), Cg.reshape(b, T, G, N)
    group = torch.arange(H) // (H // G)  # head k reads group k // (H / G)
    dt = F.softplus(dt_raw + m.dt_bias.double()).clamp(m.dt_min, m.dt_max)  # (b, T, H)
    A = -torch.exp(m.A_log.double())
    y, _ = loop_ssd(x, dt, A, Bg[:, :, group], Cg[:, :, group])
    y = (y + m.D.double()[:, None] * x).reshape(b, T, -1)  # (b, T, d_inner)
    g = (y * F.silu(z)).reshape(b, T, G, -1)
    g = g / torch.sqrt(g.pow(2).mean(-1, keepdim=True) + m.norm.eps)
    return (m.norm.weight.double() * g.reshape(b, T, -1)) @ m.out_proj.weight.double().T


def _inputs(b, T, H, P, N, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, T, H, P, generator=g)
    dt = F.softplus(torch.randn(b, T, H, generator=g))  # (b, T, H) > 0
    A = -torch.rand(H, generator=g) * 2 - 0.1
    B, C = torch.randn(b, T, H, N, generator=g), torch.randn(b, T, H, N, generator=g)
    return x, dt, A, B, C


@pytest.mark.parametrize("T, chunk", [(12, 4), (13, 4), (1, 4), (3, 8), (17, 5), (16, 16)])
def test_chunked_ssd_equals_the_sequential_loop(T, chunk):
    x, dt, A, B, C = _inputs(2, T, 3, 4, 5)
    h0 = torch.randn(2, 3, 4, 5)
    for start in (None, h0):
        y, h = ssd_chunked(x, dt, A, B, C, chunk, start)
        ry, rh = loop_ssd(x, dt, A, B, C, start)
        torch.testing.assert_close(y.double(), ry, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(h.double(), rh, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("T", [7, 8, 13])  # chunk 4: not a multiple, a multiple, several chunks padded
def test_the_mixer_equals_the_loop_of_its_equations(T):
    torch.manual_seed(0)
    m = Mamba2(DIMS, **SMALL, time_step_limit=[0.01, 0.04]).eval()  # a clamp that bites at both ends
    u = torch.randn(2, T, DIMS.d_model)
    dt = F.softplus(m.in_proj(u)[..., -m.n_heads:] + m.dt_bias)
    assert (dt > 0.04).any() and (dt < 0.01).any() and ((dt > 0.01) & (dt < 0.04)).any()
    with torch.no_grad():
        torch.testing.assert_close(m(u, PosEnc(DIMS), torch.arange(T)).double(), loop_mixer(m, u), atol=1e-5, rtol=1e-4)


def _stepwise(m, u, state=None):
    ys = []
    for t in range(u.shape[1]):
        y, state = m.forward_state(u[:, t:t + 1], PosEnc(DIMS), torch.arange(1), state)
        ys.append(y)
    return torch.cat(ys, 1), state


def test_parallel_equals_recurrent_outputs_states_and_gradients():
    torch.manual_seed(1)
    m = Mamba2(DIMS, **SMALL)
    u = torch.randn(2, 11, DIMS.d_model)
    (y1, s1), (y2, s2) = m.forward_state(u, None, torch.arange(11), None), _stepwise(m, u)
    torch.testing.assert_close(y1, y2, atol=1e-5, rtol=1e-4)
    for a, b in zip(s1, s2):
        torch.testing.assert_close(a.float(), b.float(), atol=1e-5, rtol=1e-4)
    g1 = torch.autograd.grad(y1.square().sum(), list(m.parameters()))
    g2 = torch.autograd.grad(y2.square().sum(), list(m.parameters()))
    for (n, _), a, b in zip(m.named_parameters(), g1, g2):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3, msg=n)


def test_a_stream_in_windows_with_the_state_carried_equals_one_pass():
    torch.manual_seed(2)
    m = Mamba2(DIMS, **SMALL)
    u = torch.randn(2, 15, DIMS.d_model)
    whole, _ = m.forward_state(u, None, torch.arange(15), None)
    a, s = m.forward_state(u[:, :6], None, torch.arange(6), None)  # positions restart in each window
    b, s = m.forward_state(u[:, 6:7], None, torch.arange(1), s)
    c, _ = m.forward_state(u[:, 7:], None, torch.arange(8), s)
    torch.testing.assert_close(torch.cat([a, b, c], 1), whole, atol=1e-5, rtol=1e-4)


def test_decoding_past_the_context_keeps_a_cache_of_constant_size():
    """A tiny mamba2 model decodes past twice its block_size with the cache: logits equal the full
    forward, and the cache holds the same bytes after every token, those that cache_size reports."""
    spec = zoo.resolve("mamba2", "tiny", **{"attention.params.chunk_size": 8, "attention.params.d_state": 16,
                                            "attention.params.head_dim": 16})
    torch.manual_seed(0)
    model = zoo.build_from_spec(spec).eval()
    n = 2 * spec["block_size"] + 3
    idx = torch.randint(0, spec["vocab_size"], (1, n))
    cache = model.new_cache(1, spec["block_size"], dtype=torch.float32)
    per_seq = sum(Mamba2.cache_size(zoo.spec.resolve.dims_of(spec, i), spec["attention"]["params"])[1]
                  for i in range(spec["n_layers"]))
    assert Mamba2.cache_size(zoo.spec.resolve.dims_of(spec), spec["attention"]["params"])[0] == 0
    sizes = set()
    with torch.no_grad():
        full = model(idx)[0]
        steps = [model(idx[:, :5], cache=cache)[0]]
        for t in range(5, n):
            steps.append(model(idx[:, t:t + 1], cache=cache)[0])
            sizes.add(cache.nbytes)
    assert sizes == {per_seq * 4}
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("params, fix", [
    ({"head_dim": 48}, "head_dim=48 does not divide d_inner"),
    ({"head_dim": 32, "n_groups": 3}, "n_groups=3 does not divide the 8 SSM heads"),
    ({"time_step_limit": [0.5, 0.1]}, "maximum below its minimum"),
])
def test_sizes_that_do_not_fit_are_refused_with_the_fix(params, fix):
    with pytest.raises(ZooError, match=fix):
        zoo.resolve("mamba2", "baby", **{f"attention.params.{k}": v for k, v in params.items()})


def test_a_positional_encoding_no_layer_uses_is_refused():
    with pytest.raises(ZooError, match="rotary encoding that no layer's"):
        zoo.resolve("mamba2", "tiny", **{"posenc.name": "rope"})


def test_zoo_bench_reports_a_constant_cache_per_slice(tmp_path, capsys):
    """`zoo bench --cache --slices`: the cache's bytes after each slice of the tokens decoded are the same,
    the fixed bytes per sequence that the mixer reports."""
    import json

    from zoo.cli import main
    out = tmp_path / "slices.json"
    assert main(["bench", "mamba2", "--cache", "--preset", "tiny", "--new-tokens", "12", "--only", "cache",
                 "--slices", "3", "--threads", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [r["tokens"] for r in res["slices"]] == [[1, 4], [4, 8], [8, 12]]
    assert {r["cache_bytes"] for r in res["slices"]} == {res["cache_bytes_per_sequence"]} != {None}
    assert "ms/token" in capsys.readouterr().out
