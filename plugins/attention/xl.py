"""Transformer-XL attention (Dai, Yang, Yang, Carbonell, Le and Salakhutdinov 2019, "Transformer-XL:
Attentive Language Models Beyond a Fixed-Length Context", arXiv:1901.02860): segment-level
recurrence with relative positional encoding.

The stream is cut into segments of ``segment`` tokens (boundaries at multiples of ``segment`` from
its start). The tokens of a segment attend, causally, to [memory, current segment]: the memory is
the last ``mem_len`` inputs to this layer before the segment's start (the previous segment when
``mem_len == segment``), with the gradient stopped (SG). With h_j the layer's inputs, q_i = W_q h_i,
k_j = W_kE h_j, v_j = W_v h_j, and R the sinusoid table of relative distances, the score of query i
for key j is the paper's (section 3.3)

    A_ij = q_i k_j  (a)  +  q_i W_kR R_{i-j}  (b)  +  u k_j  (c)  +  v W_kR R_{i-j}  (d)

with u and v learned per head, scaled by 1/sqrt(d_head), masked causally, softmax, times the values,
heads concatenated and projected. (b) + (d) is computed for every distance at once and moved into
place by the relative shift of the reference implementation (pad a zero column, reshape, drop a
row), which tests/test_segment_mixers.py checks against a direct computation of (a) to (d).

Forms. ``forward`` (and ``forward_state`` for T > 1) processes T tokens segment by segment; given
T == 1 it is one recurrent step. The carried state (``forward_state``, training on contiguous
windows) is the layer's inputs: ``mem`` (B, m, C), m <= mem_len, detached, and ``cur`` (B, n, C), the
current, incomplete segment's inputs (empty when windows are whole segments, as with the default
``segment`` = block_size): keys and values are computed from them with the current weights, as in
the paper. The mixer uses no absolute position (only its own relative encoding), so the state
carries over windows whose positions restart at 0; a model's posenc must be ``none``.

Cache (decoding): the keys and values of the memory (``mem_len`` slots) and of the current segment
(``segment`` slots), the same as projecting the stored inputs, without recomputing them at every
step; when a segment completes, the memory becomes the last ``mem_len`` of (memory, segment).
``cache_size`` -> (0, 2 x (mem_len + segment) x d_model) numbers per layer, whatever the length. It
rewinds by snapshots.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from zoo.components import init_residual_, sinusoid
from zoo.hookspecs import hookimpl

PARAMS = {"type": "object", "additionalProperties": False,
          "properties": {
              "segment": {"type": ["integer", "null"], "minimum": 1, "default": None,
                          "description": "segment length; null: the model's block_size"},
              "mem_len": {"type": ["integer", "null"], "minimum": 0, "default": None,
                          "description": "memory length: the inputs before the segment's start that it "
                                         "attends to; null: the segment length"}}}
TAGS = {"causal": True, "kv_cache": True, "posenc": ["none"], "example_params": {"segment": 4}}


def rel_shift(x):
    """The relative shift of Transformer-XL's reference implementation. x: (B, H, L, K) with x[i, r]
    the score of query i against distance K - 1 - r -> (B, H, L, K) with out[i, j] = x[i, j + L - 1 - i],
    the score against key j at distance (K - L + i) - j, valid where j <= K - L + i (the causal part;
    the rest holds other entries and must be masked)."""
    B, H, L, K = x.shape
    padded = torch.cat([x.new_zeros(B, H, L, 1), x], dim=-1)  # (B, H, L, K + 1)
    return padded.view(B, H, K + 1, L)[:, :, 1:].reshape(B, H, L, K)  # (B, H, L, K)


class XLCache:
    """The generation cache: keys and values of the memory (``mem_len`` slots, the first ``m`` in use)
    and of the current segment (``segment`` slots, the first ``n``). ``rewind = "snapshot"``."""

    rewind = "snapshot"

    def __init__(self, batch, heads, mem_len, segment, head_dim, device=None, dtype=None):
        dtype = dtype or torch.get_default_dtype()
        self.mem_k = torch.zeros(batch, heads, mem_len, head_dim, device=device, dtype=dtype)  # (B, H, M, D)
        self.mem_v = torch.zeros(batch, heads, mem_len, head_dim, device=device, dtype=dtype)  # (B, H, M, D)
        self.cur_k = torch.zeros(batch, heads, segment, head_dim, device=device, dtype=dtype)  # (B, H, S, D)
        self.cur_v = torch.zeros(batch, heads, segment, head_dim, device=device, dtype=dtype)  # (B, H, S, D)
        self.m = self.n = 0

    def read(self):
        """(memory keys, memory values, segment keys, segment values) in use, (B, H, m or n, D)."""
        return (self.mem_k[:, :, :self.m], self.mem_v[:, :, :self.m],
                self.cur_k[:, :, :self.n], self.cur_v[:, :, :self.n])

    def store(self, mk, mv, ck, cv):
        self.m, self.n = mk.shape[2], ck.shape[2]
        self.mem_k[:, :, :self.m], self.mem_v[:, :, :self.m] = mk, mv
        self.cur_k[:, :, :self.n], self.cur_v[:, :, :self.n] = ck, cv

    def reset(self):
        self.m = self.n = 0

    def snapshot(self):
        return tuple(t.clone() for t in self.read())

    def restore(self, snap):
        self.store(*snap)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.mem_k, self.mem_v, self.cur_k, self.cur_v))


class XLAttention(nn.Module):
    """Multi-head attention over [memory, segment] with Transformer-XL's relative positions."""

    @property
    def mem_len(self) -> int:
        """The memory's length: the ``mem_len`` param, or else ``segment`` read when the layer runs
        (the previous segment, wherever the boundaries are moved)."""
        return self.segment if self._mem_len is None else self._mem_len

    @mem_len.setter
    def mem_len(self, n):
        self._mem_len = None if n is None else int(n)

    def __init__(self, dims, segment=None, mem_len=None):
        super().__init__()
        C = dims.d_model
        self.segment = int(segment or dims.block_size)
        self._mem_len = None if mem_len is None else int(mem_len)  # None: the segment's length
        self.n_heads, self.head_dim = dims.n_heads, dims.head_dim
        self.dropout = dims.dropout
        self.q = nn.Linear(C, C, bias=dims.bias)  # W_q
        self.kv = nn.Linear(C, 2 * C, bias=dims.bias)  # W_kE and W_v
        self.r_net = nn.Linear(C, C, bias=False)  # W_kR: relative encodings R -> per-head keys
        self.proj = init_residual_(nn.Linear(C, C, bias=dims.bias))
        self.u = nn.Parameter(torch.randn(self.n_heads, self.head_dim) * 0.02)  # (H, D): content bias
        self.v = nn.Parameter(torch.randn(self.n_heads, self.head_dim) * 0.02)  # (H, D): position bias
        self.u.zoo_no_decay = self.v.zoo_no_decay = True

    @classmethod
    def cache_size(cls, dims, params):
        """Nothing per token; per sequence the keys and values of the memory and the segment."""
        S = params.get("segment") or dims.block_size
        M = S if params.get("mem_len") is None else params["mem_len"]
        return 0, 2 * (M + S) * dims.d_model

    def flops_per_token(self, seq_len):
        """Projections of the token (q, k, v, output), keys and values of the memory and the relative
        encodings once per segment (per token: times (mem_len [+ segment]) / segment), and (a)+(c),
        (b)+(d) and the values over the mem_len + segment keys a query sees (nanoGPT's convention)."""
        S = min(seq_len, self.segment)
        C = self.n_heads * self.head_dim
        keys = S + self.mem_len
        proj = self.q.weight.numel() + self.kv.weight.numel() + self.proj.weight.numel()
        per_segment = self.kv.weight.numel() * self.mem_len + self.r_net.weight.numel() * keys
        return 2 * proj + 2 * per_segment / S + 6 * keys * C

    def new_cache(self, batch, max_len, device=None, dtype=None):
        return XLCache(batch, self.n_heads, self.mem_len, self.segment, self.head_dim, device=device, dtype=dtype)

    def _heads(self, t):
        return rearrange(t, "b t (h d) -> b h t d", h=self.n_heads)  # (B, H, T, D)

    def _kv(self, h):  # h: (B, T, C) -> keys, values (B, H, T, D)
        k, v = self.kv(h).chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    def attend(self, q, k, v, off):
        """Relative attention of L queries over K = off + L keys, query i being key off + i.
        q: (B, H, L, D), k, v: (B, H, K, D) -> (B, H, L, D)."""
        L, K = q.shape[2], k.shape[2]
        dist = torch.arange(K - 1, -1, -1, device=q.device)  # (K,): the distance of each row of R
        r = self._heads(self.r_net(sinusoid(dist, self.n_heads * self.head_dim).to(q.dtype))[None])[0]  # (H, K, D)
        bd = rel_shift((q + self.v[:, None].to(q.dtype)) @ r.transpose(-1, -2))  # (B, H, L, K): (b) + (d)
        allowed = torch.arange(K, device=q.device)[None] <= off + torch.arange(L, device=q.device)[:, None]  # (L, K)
        mask = (bd / math.sqrt(self.head_dim)).masked_fill(~allowed, float("-inf"))  # (B, H, L, K)
        return F.scaled_dot_product_attention(q + self.u[:, None].to(q.dtype), k, v, attn_mask=mask,
                                              dropout_p=self.dropout if self.training else 0.0)  # (a) + (c)

    def _segments(self, q, k_det, v_det, det_lo, k_live, v_live, m, n):
        """The T new queries q (B, H, T, D), segment by segment. Keys are indexed from the oldest
        memory token held (0) on: the current segment starts at m, n of its tokens came before q.
        k_det, v_det: keys and values from detached inputs, for the memory, indices det_lo on;
        k_live, v_live: from the inputs themselves, for the segment, indices m on.
        -> (y (B, H, T, D), the index where the last, incomplete segment starts)."""
        T, S = q.shape[2], self.segment
        ys, t, start = [], 0, m
        while t < T:
            L = min(T - t, S - n)  # the chunk ends at the segment's end or at the input's end
            lo = max(0, start - self.mem_len)
            keys = torch.cat([k_det[:, :, lo - det_lo:start - det_lo], k_live[:, :, start - m:start - m + n + L]], 2)
            vals = torch.cat([v_det[:, :, lo - det_lo:start - det_lo], v_live[:, :, start - m:start - m + n + L]], 2)
            ys.append(self.attend(q[:, :, t:t + L], keys, vals, start - lo + n))  # (B, H, L, D)
            t, n = t + L, n + L
            if n == S:  # the segment is complete: from now on it is memory
                start, n = start + S, 0
        return (torch.cat(ys, 2) if ys else q), start

    def _out(self, y):
        return self.proj(rearrange(y, "b h t d -> b t (h d)"))  # (B, T, C)

    def forward_state(self, x, posenc, pos, state):  # x: (B, T, C)
        """Segment by segment from ``state`` = {"mem", "cur"} inputs (None: the stream starts).
        -> (y (B, T, C), new state)."""
        mem = x[:, :0] if state is None else state["mem"].to(x.dtype)  # (B, m, C)
        cur = x[:, :0] if state is None else state["cur"].to(x.dtype)  # (B, n, C)
        m, n, T, S = mem.shape[1], cur.shape[1], x.shape[1], self.segment
        h = torch.cat([mem, cur, x], 1)  # (B, m + n + T, C): every input, indexed as in _segments
        last = m + S * ((n + T - 1) // S) if T else m  # start of the last segment the queries are in
        det_lo = max(0, m - self.mem_len)  # only the memory of the segments processed is projected
        k_det, v_det = self._kv(h[:, det_lo:last].detach())  # (B, H, last - det_lo, D): memory, SG
        k_live, v_live = self._kv(h[:, m:])  # (B, H, n + T, D)
        y, start = self._segments(self._heads(self.q(x)), k_det, v_det, det_lo, k_live, v_live, m, n)
        new = {"mem": h[:, max(0, start - self.mem_len):start].detach(), "cur": h[:, start:]}
        return self._out(y), new

    def forward(self, x, posenc, pos, cache=None):  # x: (B, T, C)
        if cache is None:
            return self.forward_state(x, posenc, pos, None)[0]
        mk, mv, ck, cv = (t.to(x.dtype) for t in cache.read())  # (B, H, m or n, D)
        m, n = mk.shape[2], ck.shape[2]
        k_new, v_new = self._kv(x)  # (B, H, T, D)
        k, v = torch.cat([mk, ck, k_new], 2), torch.cat([mv, cv, v_new], 2)  # (B, H, m + n + T, D)
        y, start = self._segments(self._heads(self.q(x)), k, v, 0, k[:, :, m:], v[:, :, m:], m, n)
        lo = max(0, start - self.mem_len)
        cache.store(k[:, :, lo:start], v[:, :, lo:start], k[:, :, start:], v[:, :, start:])
        return self._out(y)


@hookimpl
def register_attention(register):
    register("xl", XLAttention, PARAMS, TAGS)
