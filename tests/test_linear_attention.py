"""The linear-attention family (plugins/attention/linear.py) against plain loops of the papers' equations.

Each reference below is written from the paper, independently of the module's chunked and recurrent
code: only the module's projection weights are shared. Chunks of 4 over 11 tokens, so chunk
boundaries fall inside the sequence and the last chunk is shorter. The conformance kit runs on the
three mixers through tests/test_conformance.py (the registry).
"""
import math

import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo.components import Dims, PosEnc
from zoo_plugins.attention.linear import GatedLinearAttention, LinearAttention, Retention

DIMS = Dims(d_model=32, n_heads=4, n_layers=2, block_size=16, vocab_size=50, bias=True, dropout=0.0)
B, T, CHUNK = 2, 11, 4
NONE = PosEnc(DIMS)


def _x(seed=0, t=T):
    return torch.randn(B, t, DIMS.d_model, generator=torch.Generator().manual_seed(seed))


def _heads(t, h):  # (B, T, h*D) -> (B, h, T, D)
    return t.view(*t.shape[:2], h, -1).transpose(1, 2)


def _close(a, b, atol=1e-5, rel=False):
    """Within atol, or with rel within atol times the largest |b| (gradients of size 50, say)."""
    tol = atol * max(1.0, b.abs().max().item()) if rel else atol
    diff = (a - b).abs().max().item()
    assert diff <= tol, f"max abs difference {diff:.3g} > {tol:g}"


# ---- the papers' equations ------------------------------------------------------------------------

def linear_reference(m, x, parallel):
    """Katharopoulos et al. 2020: phi = elu + 1; eq. 9 as a loop (S += phi(k)^T v, z += phi(k),
    y = phi(q) S / phi(q) z), or the causal parallel form y_i = sum_(j<=i) phi(q_i) phi(k_j) v_j /
    sum_(j<=i) phi(q_i) phi(k_j)."""
    q, k, v = (_heads(t, m.n_heads).double() for t in m.qkv(x).split(DIMS.d_model, -1))
    q, k = F.elu(q) + 1, F.elu(k) + 1
    outs = []
    if parallel:
        for i in range(x.shape[1]):
            w = (q[:, :, i:i + 1] * k[:, :, :i + 1]).sum(-1)  # (B, H, i+1)
            outs.append((w[..., None] * v[:, :, :i + 1]).sum(2) / (w.sum(-1, keepdim=True) + m.eps))
    else:
        S = torch.zeros(B, m.n_heads, m.head_dim, m.head_dim, dtype=torch.float64)
        z = torch.zeros(B, m.n_heads, m.head_dim, dtype=torch.float64)
        for i in range(x.shape[1]):
            S = S + torch.einsum("bhd,bhe->bhde", k[:, :, i], v[:, :, i])
            z = z + k[:, :, i]
            num = torch.einsum("bhd,bhde->bhe", q[:, :, i], S)
            outs.append(num / ((q[:, :, i] * z).sum(-1, keepdim=True) + m.eps))
    o = torch.stack(outs, 2)  # (B, H, T, D)
    return m.proj(o.transpose(1, 2).reshape(x.shape).float())


def _complex(t):  # (..., D) real -> (..., D/2) complex, adjacent pairs (re, im)
    return torch.complex(t[..., 0::2], t[..., 1::2])


def retnet_reference(m, x, start, parallel):
    """Sun et al. 2023, in complex numbers (float64): Q = (X W_Q) Theta, K = (X W_K) conj(Theta),
    Theta_n = e^(i n theta) at absolute positions n = start, start+1, ...; parallel form
    (Q K^T * D) V with D_nm = gamma^(n-m) (n >= m), or the recurrent form S_n = gamma S_(n-1) +
    K_n^T V_n, o_n = Q_n S_n; then GroupNorm over heads, swish gate, output projection."""
    H, D = m.n_heads, m.head_dim
    n = torch.arange(start, start + x.shape[1], dtype=torch.float64)  # (T,)
    theta = 10000.0 ** -(torch.arange(D // 2, dtype=torch.float64) / (D // 2 - 1))  # (D/2,)
    rot = torch.exp(1j * n[:, None] * theta)  # (T, D/2): Theta_n
    q = _complex(_heads(m.q_proj(x), H).double()) * rot  # (B, H, T, D/2)
    k = _complex(_heads(m.k_proj(x), H).double() / math.sqrt(D)) * rot
    v = _heads(m.v_proj(x), H).double()  # (B, H, T, Dv)
    gamma = 1 - 2.0 ** (-5 - torch.arange(H, dtype=torch.float64))  # (H,)
    if parallel:
        lag = n[:, None] - n[None, :]  # (T, T)
        Dm = torch.where(lag >= 0, gamma[:, None, None] ** lag.clamp(min=0), 0.0)  # (H, T, T)
        scores = torch.einsum("bhnd,bhmd->bhnm", q, k.conj()).real  # Re(Q K^dagger)
        o = (scores * Dm) @ v  # (B, H, T, Dv)
    else:
        S = torch.zeros(B, H, D // 2, v.shape[-1], dtype=torch.complex128)
        outs = []
        for i in range(x.shape[1]):
            S = gamma[:, None, None] * S + torch.einsum("bhd,bhe->bhde", k[:, :, i].conj(), v[:, :, i].to(S.dtype))
            outs.append(torch.einsum("bhd,bhde->bhe", q[:, :, i], S).real)
        o = torch.stack(outs, 2)
    o = o.transpose(1, 2).reshape(B * x.shape[1], -1).float()
    o = F.group_norm(o, H, m.group_norm.weight, m.group_norm.bias, m.group_norm.eps).view(B, x.shape[1], -1)
    return m.out_proj(F.silu(m.g_proj(x)) * o)


def gla_reference(m, x):
    """Yang et al. 2024 as a loop (float64): alpha_t = sigmoid(x_t W1 W2 + b)^(1/16),
    S_t = diag(alpha_t) S_(t-1) + k_t^T v_t, o_t = q_t S_t (q scaled by d_k^-1/2); then the
    per-head RMSNorm, the swish output gate and the output projection."""
    H = m.n_heads
    q = _heads(m.q_proj(x), H).double() / math.sqrt(m.k_head_dim)
    k, v = _heads(m.k_proj(x), H).double(), _heads(m.v_proj(x), H).double()
    alpha = torch.sigmoid(_heads(m.gk_up(m.gk_down(x)), H).double()) ** (1 / m.gate_normalizer)  # (B, H, T, K)
    S = torch.zeros(B, H, m.k_head_dim, m.v_head_dim, dtype=torch.float64)
    outs = []
    for t in range(x.shape[1]):
        S = alpha[:, :, t, :, None] * S + torch.einsum("bhd,bhe->bhde", k[:, :, t], v[:, :, t])
        outs.append(torch.einsum("bhd,bhde->bhe", q[:, :, t], S))
    o = F.rms_norm(torch.stack(outs, 2).float(), (m.v_head_dim,), m.o_norm.weight, m.o_norm.eps)
    return m.o_proj(F.silu(m.g_proj(x)) * o.transpose(1, 2).reshape(B, x.shape[1], -1))


def _make(cls, seed=0, **params):
    torch.manual_seed(seed)
    m = cls(DIMS, chunk=CHUNK, **params).eval()
    for p in m.parameters():  # away from the init (GroupNorm/RMSNorm weights at 1, biases at 0)
        p.data.add_(0.1 * torch.randn_like(p))
    return m


# ---- chunked form = the papers' equations ----------------------------------------------------------

@pytest.mark.parametrize("parallel", [False, True], ids=["recurrence", "causal-parallel"])
def test_linear_chunked_equals_the_paper(parallel):
    m, x = _make(LinearAttention), _x()
    with torch.no_grad():
        _close(m(x, NONE, torch.arange(T)), linear_reference(m, x, parallel))


def test_retnet_chunked_equals_the_papers_parallel_and_recurrent_forms_at_any_offset():
    """The rotation lives in the recurrence here, so the output is the paper's parallel form with q
    and k rotated by absolute positions, and shifting every position (start 0, 1000) changes nothing."""
    m, x = _make(Retention), _x()
    with torch.no_grad():
        y = m(x, NONE, torch.arange(T))
        for start in (0, 1000):
            _close(y, retnet_reference(m, x, start, parallel=True))
        _close(y, retnet_reference(m, x, 0, parallel=False))
        _close(m(x, NONE, torch.arange(T) + 1000), y, atol=0)  # pos is not used


def test_retnet_decays_and_angles_follow_the_paper():
    m = Retention(Dims(d_model=64, n_heads=4))
    assert torch.allclose(m.log_gamma().exp(), torch.tensor([1 - 1 / 32, 1 - 1 / 64, 1 - 1 / 128, 1 - 1 / 256]))
    theta = m.angles()  # torchscale: 1 / 10000 ** linspace(0, 1, D/2)
    assert theta.shape == (8,) and theta[0] == 1 and math.isclose(theta[-1].item(), 1e-4, rel_tol=1e-5)


def test_gla_chunked_equals_the_papers_recurrence():
    m, x = _make(GatedLinearAttention), _x()
    with torch.no_grad():
        _close(m(x, NONE, torch.arange(T)), gla_reference(m, x))


def test_gla_is_stable_with_strong_gates():
    """Gates near zero (alpha = sigmoid(-60)^(1/16), log alpha = -3.75 per token, -60 over a chunk of
    16): the chunked form takes only exponents <= 0, stays finite with finite gradients, and equals
    the loop."""
    torch.manual_seed(0)
    m = GatedLinearAttention(DIMS, chunk=16).eval()
    with torch.no_grad():
        m.gk_up.bias.fill_(-60.0)
    x = _x(t=40).requires_grad_()
    y = m(x, NONE, torch.arange(40))
    assert torch.isfinite(y).all()
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all() and all(torch.isfinite(p.grad).all() for p in m.parameters())
    with torch.no_grad():
        _close(y, gla_reference(m, x))


# ---- chunked = recurrent, through forward_state ---------------------------------------------------

MIXERS = [LinearAttention, Retention, GatedLinearAttention]


def _grads(m, x, loss):
    m.zero_grad()
    x.grad = None
    loss.backward()
    return [x.grad.clone()] + [p.grad.clone() for p in m.parameters()]


@pytest.mark.parametrize("cls", MIXERS, ids=lambda c: c.__name__)
def test_chunked_equals_recurrent_and_split_equals_whole(cls):
    """One forward_state over T tokens = T one-token calls (the recurrent step) = two pieces with the
    state carried: outputs, final state and gradients (float32)."""
    m = _make(cls)
    x = _x().requires_grad_()
    pos = torch.arange(T)
    y, s = m.forward_state(x, NONE, pos, None)
    g_whole = _grads(m, x, y.square().sum())

    steps, st = [], None
    for t in range(T):
        yt, st = m.forward_state(x[:, t:t + 1], NONE, pos[:1], st)  # positions restart: they must not matter
        steps.append(yt)
    y_rec = torch.cat(steps, 1)
    _close(y_rec, y)
    for a, b in zip(st, s):
        _close(a, b)
    for a, b in zip(_grads(m, x, y_rec.square().sum()), g_whole):
        _close(a, b, rel=True)

    y1, s1 = m.forward_state(x[:, :7], NONE, pos[:7], None)
    y2, s2 = m.forward_state(x[:, 7:], NONE, pos[:4], s1)
    _close(torch.cat([y1, y2], 1), y)
    for a, b in zip(s2, s):
        _close(a, b)


@pytest.mark.parametrize("cls", MIXERS, ids=lambda c: c.__name__)
def test_cache_is_the_state(cls):
    """cache_size reports the state's numbers per sequence and nothing per token; the cache holds
    exactly that whatever max_len, and a snapshot restores it."""
    m = _make(cls)
    per_tok, per_seq = cls.cache_size(DIMS, {})
    cache = m.new_cache(3, 10_000, dtype=torch.float32)
    assert per_tok == 0 and cache.rewind == "snapshot"
    assert cache.nbytes == 3 * per_seq * 4
    with torch.no_grad():
        m(_x()[:1].expand(3, -1, -1), NONE, torch.arange(T), cache)
        snap = cache.snapshot()
        before = [t.clone() for t in cache.state]
        m(_x(1)[:1, :2].expand(3, -1, -1), NONE, torch.arange(2), cache)
        assert any(not torch.equal(a, b) for a, b in zip(cache.state, before))
        cache.restore(snap)
        assert all(torch.equal(a, b) for a, b in zip(cache.state, before))


@pytest.mark.parametrize("name", ["gpt2-linear", "retnet", "gla"])
def test_named_models_decode_past_the_context(name):
    """Prefill 3 tokens, decode to block_size + 8 with the cache: equals the full forward (posenc
    none for gpt2-linear, whose learned positions stop at block_size)."""
    over = {"posenc": {"name": "none"}} if name == "gpt2-linear" else {}
    model = zoo.build(name, "tiny", **over).eval()
    total = model.block_size + 8
    idx = torch.randint(0, 50, (2, total), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(idx)[0]
        cache = model.new_cache(2, total, dtype=torch.float32)
        parts = [model(idx[:, :3], cache=cache)[0]] + [model(idx[:, t:t + 1], cache=cache)[0] for t in range(3, total)]
    _close(torch.cat(parts, 1), full, atol=1e-4)
