"""The segment mixers, infini (Infini-attention) and xl (Transformer-XL), against plain loops of their
papers' equations; decoding keeps the segment boundaries past the context; the memory is the only
path from one segment to the next; carried state over windows equals one pass. (The conformance kit
runs over them in tests/test_conformance.py.)"""
import math

import torch
import torch.nn.functional as F

import zoo
from zoo.components import Dims, PosEnc, sinusoid
from zoo.testing import model_for
from zoo_plugins.attention.infini import InfiniAttention
from zoo_plugins.attention.xl import XLAttention

DIMS = Dims(d_model=16, n_heads=2, n_layers=1, block_size=8, vocab_size=50, bias=True, dropout=0.0)
NONE = PosEnc(DIMS)


def _rope():
    return zoo.get_registry().get("posenc", "rope").cls(DIMS)


def _x(B=2, T=11, seed=0):
    return torch.randn(B, T, DIMS.d_model, generator=torch.Generator().manual_seed(seed))


def _elu1(t):
    return F.elu(t) + 1


def _heads(t, H):  # (T, C) -> (H, T, D)
    return t.view(t.shape[0], H, -1).transpose(0, 1)


# ---- infini: a plain loop of the paper's equations ------------------------------------------------

def infini_reference(mod, x, posenc, pos):
    """Sequence by sequence, head by head, segment by segment, token by token (paper eqs. 7-10):
    local causal attention within the segment (rotary positions from its start), A_mem from the
    memory of earlier segments, the gate, then M and z updated with the complete segment."""
    H, D, S = mod.n_heads, mod.head_dim, mod.segment
    out, states = [], []
    for b in range(x.shape[0]):
        q, k, v = (_heads(t, H) for t in mod.qkv(x[b]).chunk(3, dim=-1))  # (H, T, D)
        ys = torch.zeros(H, x.shape[1], D)
        Ms, zs = [], []
        for h in range(H):
            M, z = torch.zeros(D, D), torch.zeros(D)
            g = torch.sigmoid(mod.beta[h])
            for s0 in range(0, x.shape[1], S):
                idx = list(range(s0, min(s0 + S, x.shape[1])))
                local = pos[idx] - pos[s0]  # positions from the segment's start
                qr = posenc.rotate(q[h, idx][None], local)[0]  # (L, D)
                kr = posenc.rotate(k[h, idx][None], local)[0]
                for i, t in enumerate(idx):
                    scores = torch.stack([qr[i] @ kr[j] / math.sqrt(D) for j in range(i + 1)])
                    a_dot = sum(p * v[h, idx[j]] for j, p in enumerate(torch.softmax(scores, 0)))
                    sq = _elu1(q[h, t])
                    a_mem = (sq @ M) / (sq @ z) if s0 > 0 else torch.zeros(D)
                    ys[h, t] = g * a_mem + (1 - g) * a_dot
                if len(idx) == S:  # M_s = M_{s-1} + sigma(K)^T (V - sigma(K) M_{s-1} / (sigma(K) z_{s-1}))
                    sk = _elu1(k[h, idx])  # (S, D)
                    vv = v[h, idx]
                    if mod.delta and s0 > 0:
                        vv = vv - (sk @ M) / (sk @ z)[:, None]
                    M, z = M + sk.T @ vv, z + sk.sum(0)
            Ms.append(M)
            zs.append(z)
        out.append(mod.proj(ys.transpose(0, 1).reshape(x.shape[1], -1)))
        states.append((torch.stack(Ms), torch.stack(zs)))
    return torch.stack(out), states


def test_infini_equals_a_loop_of_the_papers_equations():
    torch.manual_seed(0)
    x, pos = _x(), torch.arange(11) + 5
    for delta in (True, False):
        for posenc in (NONE, _rope()):
            mod = InfiniAttention(DIMS, segment=3, delta=delta, gate_init=0.3).eval()
            with torch.no_grad():
                mod.beta.copy_(torch.tensor([0.7, -0.4]))
                y, st = mod.forward_state(x, posenc, pos, None)
                ref, ref_states = infini_reference(mod, x, posenc, pos)
            assert torch.allclose(y, ref, atol=1e-5), (delta, (y - ref).abs().max())
            for b, (M, z) in enumerate(ref_states):  # three complete segments in memory, 2 tokens pending
                assert torch.allclose(st["M"][b], M, atol=1e-4) and torch.allclose(st["z"][b], z, atol=1e-4)
            assert st["k"].shape[2] == 2


# ---- xl: the relative attention term by term ------------------------------------------------------

def xl_direct(mod, q, k, v, off):
    """Query i (key index off + i) against key j <= off + i: (a) q.k + (b) q.W_kR R_{i-j} + (c) u.k +
    (d) v.W_kR R_{i-j}, each computed as written. q: (H, L, D), k, v: (H, K, D) -> (H, L, D)."""
    H, L, D = q.shape
    R = sinusoid(torch.arange(k.shape[1]), H * D)  # (K, C): R_0 ... R_{K-1}
    WR = _heads(mod.r_net(R), H)  # (H, K, D): W_kR R_dist
    out = torch.zeros(H, L, D)
    for h in range(H):
        for i in range(L):
            scores = []
            for j in range(off + i + 1):
                d = off + i - j
                a = q[h, i] @ k[h, j]
                b = q[h, i] @ WR[h, d]
                c = mod.u[h] @ k[h, j]
                e = mod.v[h] @ WR[h, d]
                scores.append((a + b + c + e) / math.sqrt(D))
            p = torch.softmax(torch.stack(scores), 0)
            out[h, i] = sum(p[j] * v[h, j] for j in range(off + i + 1))
    return out


def test_xl_relative_shift_equals_the_direct_terms():
    torch.manual_seed(1)
    mod = XLAttention(DIMS, segment=4, mem_len=3)
    H, D = mod.n_heads, mod.head_dim
    for L, K in ((4, 7), (1, 5), (3, 3)):  # memory + segment so far, one decoding step, no memory
        q, k, v = torch.randn(1, H, L, D), torch.randn(1, H, K, D), torch.randn(1, H, K, D)
        with torch.no_grad():
            got = mod.attend(q, k, v, K - L)[0]
            ref = xl_direct(mod, q[0], k[0], v[0], K - L)
        assert torch.allclose(got, ref, atol=1e-5), (L, K, (got - ref).abs().max())


def xl_reference(mod, x):
    """Segment by segment: keys and values of [the last mem_len inputs before the segment, the
    segment], the direct terms (a)-(d), the output projection."""
    H, S = mod.n_heads, mod.segment
    out = []
    for b in range(x.shape[0]):
        ys = []
        for s0 in range(0, x.shape[1], S):
            lo = max(0, s0 - mod.mem_len)
            h = x[b, lo:s0 + S]  # (K, C)
            q = _heads(mod.q(x[b, s0:s0 + S]), H)
            k, v = (_heads(t, H) for t in mod.kv(h).chunk(2, dim=-1))
            ys.append(xl_direct(mod, q, k, v, s0 - lo).transpose(0, 1).reshape(q.shape[1], -1))
        out.append(mod.proj(torch.cat(ys)))
    return torch.stack(out)


def test_xl_forward_equals_segment_by_segment_reference():
    torch.manual_seed(2)
    x = _x(T=10)
    for mem_len in (None, 2, 6, 0):
        mod = XLAttention(DIMS, segment=3, mem_len=mem_len).eval()
        with torch.no_grad():
            y = mod(x, NONE, torch.arange(10))
            assert torch.allclose(y, xl_reference(mod, x), atol=1e-5), mem_len


# ---- decoding keeps the boundaries, past the context, at constant memory --------------------------

def _decode_equals_full(m, total=30, prompts=(1, 6, 21)):
    idx = torch.randint(0, 50, (2, total), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = m(idx)[0]  # (B, total, V): segment by segment, boundaries at multiples of the segment
        for P in prompts:
            cache = m.new_cache(2, total, dtype=torch.float32)
            nbytes = cache.nbytes
            parts = [m(idx[:, :P], cache=cache)[0]]
            parts += [m(idx[:, t:t + 1], cache=cache)[0] for t in range(P, total)]
            assert torch.allclose(torch.cat(parts, 1), full, atol=1e-4), (P, (torch.cat(parts, 1) - full).abs().max())
            assert cache.nbytes == nbytes == m.new_cache(2, 10 * total).nbytes  # whatever the length


def test_cached_decoding_equals_the_segmented_forward_past_the_context():
    reg = zoo.get_registry()
    rope = reg.get("posenc", "rope")
    for name, partner in (("infini", rope), ("infini", None), ("xl", None)):
        m = model_for(reg.get("attention", name), reg, partner=partner).float()  # segment 4, block_size 16
        assert all(b.attn.segment == 4 for b in m.blocks)
        _decode_equals_full(m)


# ---- the memory is the only path across segments ----------------------------------------------------

def _reaches(mod, x, t, out):
    """Whether changing input t changes outputs ``out`` (a slice) of the mixer."""
    x2 = x.clone()
    x2[:, t] += 1.0
    with torch.no_grad():
        return not torch.equal(mod(x, NONE, torch.arange(x.shape[1]))[:, out], mod(x2, NONE, torch.arange(x.shape[1]))[:, out])


def test_only_the_memory_links_segments():
    x = _x(T=12)  # segments of 4: [0, 4), [4, 8), [8, 12)
    torch.manual_seed(4)
    inf = InfiniAttention(DIMS, segment=4).eval()
    assert _reaches(inf, x, 5, slice(8, 12)) and _reaches(inf, x, 1, slice(8, 12))  # through M, z
    with torch.no_grad():
        inf.beta.fill_(-1e4)  # gate closed: sigmoid(beta) == 0, the local attention alone
    assert not _reaches(inf, x, 5, slice(8, 12)) and not _reaches(inf, x, 1, slice(4, 12))
    assert _reaches(inf, x, 5, slice(6, 8))  # within the segment it still does
    xl = XLAttention(DIMS, segment=4).eval()  # mem_len = segment: the previous segment only
    assert _reaches(xl, x, 5, slice(8, 12)) and not _reaches(xl, x, 3, slice(8, 12))
    xl.mem_len = 0  # no memory: segments are independent
    assert not _reaches(xl, x, 5, slice(8, 12)) and _reaches(xl, x, 5, slice(6, 8))


# ---- carried state: windows equal one pass; one step at a time equals the parallel form ---------------

def _close_states(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape and torch.allclose(a[k], b[k], atol=1e-5), k


def test_carried_state_over_windows_equals_one_pass():
    x = _x(T=14)
    torch.manual_seed(5)
    for mod, posenc in ((InfiniAttention(DIMS, segment=4).eval(), _rope()), (XLAttention(DIMS, segment=4, mem_len=6).eval(), NONE)):
        with torch.no_grad():
            whole, st_whole = mod.forward_state(x, posenc, torch.arange(14), None)
            for cut in (8, 6):  # at a boundary, and inside a segment
                # positions restart at 0 in every window, as the trainer gives them
                a, st = mod.forward_state(x[:, :cut], posenc, torch.arange(cut), None)
                b, st = mod.forward_state(x[:, cut:], posenc, torch.arange(14 - cut), st)
                assert torch.allclose(torch.cat([a, b], 1), whole, atol=1e-5), (type(mod).__name__, cut)
                _close_states(st, st_whole)


def test_one_token_steps_equal_the_parallel_form_with_gradients():
    x = _x(T=9)
    torch.manual_seed(6)
    for mod, posenc in ((InfiniAttention(DIMS, segment=4), _rope()), (XLAttention(DIMS, segment=4, mem_len=3), NONE)):
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, sa = mod.forward_state(xa, posenc, torch.arange(9), None)
        ga = torch.autograd.grad(ya.square().sum(), [xa, *mod.parameters()])
        ys, sb = [], None
        for t in range(9):
            y, sb = mod.forward_state(xb[:, t:t + 1], posenc, torch.arange(t, t + 1), sb)
            ys.append(y)
        yb = torch.cat(ys, 1)
        gb = torch.autograd.grad(yb.square().sum(), [xb, *mod.parameters()])
        assert torch.allclose(ya, yb, atol=1e-5)
        _close_states({k: v.detach() for k, v in sa.items()}, {k: v.detach() for k, v in sb.items()})
        for g1, g2 in zip(ga, gb):
            assert torch.allclose(g1, g2, atol=1e-4), type(mod).__name__


def test_model_windows_carry_the_memory():
    for name in ("gpt2-infini", "transformer-xl"):
        torch.manual_seed(7)
        m = zoo.build(name, "tiny", block_size=8).eval()  # segment = block_size = 8
        assert m.carried_layers() == [0, 1]
        idx = torch.randint(0, 96, (2, 24))
        with torch.no_grad():
            whole = m(idx)[0]
            state = m.new_state()
            parts = [m(idx[:, i:i + 8], state=state)[0] for i in range(0, 24, 8)]
            fresh = m(idx[:, 16:24])[0]
        assert torch.allclose(torch.cat(parts, 1), whole, atol=1e-5), name
        assert not torch.allclose(parts[2], fresh, atol=1e-3), name  # the third window sees the first two


def test_cache_sizes_are_what_the_caches_hold():
    reg = zoo.get_registry()
    for name, params in (("infini", {"segment": 4}), ("xl", {"segment": 4, "mem_len": 6})):
        comp = reg.get("attention", name)
        mod = comp.cls(DIMS, **params)
        per_tok, per_seq = comp.cls.cache_size(DIMS, params)
        assert per_tok == 0
        assert mod.new_cache(1, 1000, dtype=torch.float32).nbytes == 4 * per_seq


def test_absolute_positions_are_refused():
    import pytest
    for name in ("transformer-xl", "gpt2-infini"):
        with pytest.raises(zoo.ManifestError, match="does not accept absolute"):
            zoo.resolve(name, "tiny", **{"posenc": {"name": "learned"}})
