"""Infini-attention (Munkhdalai, Faruqui and Gopal 2024, "Leave No Context Behind: Efficient Infinite
Context Transformers with Infini-attention", arXiv:2404.07143).

The sequence is cut into segments of ``segment`` tokens (boundaries at multiples of ``segment``
from the start of the stream). Within a segment, each head runs local causal softmax attention
(A_dot). Across segments, each head keeps a compressive memory M (d_k x d_v) and a normaliser z
(d_k), read with the segment's queries and updated with its keys and values once the segment is
complete (sigma = elu + 1; paper eqs. 7 to 10, the "Linear + Delta" update):

    A_mem = sigma(Q) M_{s-1} / (sigma(Q) z_{s-1})                   zero on the first segment
    M_s   = M_{s-1} + sigma(K)^T (V - sigma(K) M_{s-1} / (sigma(K) z_{s-1}))   (delta: true)
    M_s   = M_{s-1} + sigma(K)^T V                                             (delta: false)
    z_s   = z_{s-1} + sum_t sigma(K_t)
    A     = sigmoid(beta) * A_mem + (1 - sigmoid(beta)) * A_dot     beta: one learned gate per head

then the heads are concatenated and projected (W_O). The memory reads and writes the keys and
queries before any rotation, so it holds no position; the local attention may use a rotary or bias
encoding (the model's, applied with positions counted from the segment's start), or none. An
absolute encoding is refused: it would tie the memory to positions that restart in every training
window.

Forms. ``forward`` (and ``forward_state`` for T > 1) processes T tokens segment by segment; given
T == 1 it is one recurrent step: attention over the current segment's keys so far plus the memory
read, and the memory update when that token completes the segment. The state is a dict of tensors
(batch first): ``M`` (B, H, D, D) and ``z`` (B, H, D) in float32, and the current, incomplete
segment's keys ``k`` and values ``v`` (B, H, n, D), n < segment. It depends on no absolute
position, so it carries over training windows whose positions restart at 0 (``forward_state``).

Cache: the same state in fixed buffers (``segment`` slots of keys and values, M and z), so decoding
past any length keeps the same boundaries as the full forward and holds the same memory:
``cache_size`` -> (0, 2 x segment x d_model + H x D x (D + 1)) numbers per layer (M and z are kept
in float32 whatever the cache's dtype, as sums over every token ever seen). It rewinds by
snapshots.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from zoo.components import causal_sdpa, init_residual_
from zoo.hookspecs import hookimpl

PARAMS = {"type": "object", "additionalProperties": False,
          "properties": {
              "segment": {"type": ["integer", "null"], "minimum": 1, "default": None,
                          "description": "segment length: local attention within a segment, the memory "
                                         "updated when one completes; null: the model's block_size"},
              "delta": {"type": "boolean", "default": True,
                        "description": "the delta-rule memory update (paper's Linear + Delta); false: the "
                                       "linear update M += sigma(K)^T V"},
              "gate_init": {"type": "number", "default": 0.0,
                            "description": "initial gate logit beta of every head: sigmoid(beta) weighs the "
                                           "memory read, 1 - sigmoid(beta) the local attention"}}}
TAGS = {"causal": True, "kv_cache": True, "posenc": ["rotary", "bias", "none"],
        "example_params": {"segment": 4}}

EPS = 1e-6  # the denominator sigma(Q) z is 0 only before the first segment's update, where M is 0 too


def sigma(t):
    """The memory's nonlinearity, ELU + 1 (positive)."""
    return F.elu(t) + 1


def memory_read(sq, M, z):
    """sigma(Q) M / (sigma(Q) z). sq: (B, H, L, D), M: (B, H, D, Dv), z: (B, H, D) -> (B, H, L, Dv);
    zero while the memory is empty. In float32, autocast or not."""
    with torch.autocast(sq.device.type, enabled=False):
        return (sq @ M) / (sq @ z[..., None]).clamp_min(EPS)


def memory_update(M, z, k, v, delta=True):
    """Fold one complete segment into the memory, in float32 (autocast or not: M and z are sums over
    the whole stream). k: (B, H, S, D), v: (B, H, S, Dv) -> (M, z)."""
    sk = sigma(k.float())  # (B, H, S, D)
    v = v.float()
    if delta:
        v = v - memory_read(sk, M, z)  # (B, H, S, Dv): only what the memory does not already return
    with torch.autocast(sk.device.type, enabled=False):
        return M + sk.transpose(-1, -2) @ v, z + sk.sum(2)  # (B, H, D, Dv), (B, H, D)


class InfiniCache:
    """The generation cache: the current segment's keys and values (``segment`` slots, unrotated, the
    first ``n`` in use), the memory M and the normaliser z. ``rewind = "snapshot"``."""

    rewind = "snapshot"

    def __init__(self, batch, heads, segment, head_dim, device=None, dtype=None):
        dtype = dtype or torch.get_default_dtype()
        self.k = torch.zeros(batch, heads, segment, head_dim, device=device, dtype=dtype)  # (B, H, S, D)
        self.v = torch.zeros(batch, heads, segment, head_dim, device=device, dtype=dtype)  # (B, H, S, D)
        self.M = torch.zeros(batch, heads, head_dim, head_dim, device=device, dtype=torch.float32)  # (B, H, D, D)
        self.z = torch.zeros(batch, heads, head_dim, device=device, dtype=torch.float32)  # (B, H, D)
        self.n = 0  # tokens of the current segment held

    def state(self) -> dict:
        """The state as ``forward_state`` takes it (views of the buffers)."""
        return {"M": self.M, "z": self.z, "k": self.k[:, :, :self.n], "v": self.v[:, :, :self.n]}

    def store(self, st: dict):
        n = st["k"].shape[2]
        self.M.copy_(st["M"])
        self.z.copy_(st["z"])
        self.k[:, :, :n] = st["k"]
        self.v[:, :, :n] = st["v"]
        self.n = n

    def reset(self):
        self.M.zero_()
        self.z.zero_()
        self.n = 0

    def snapshot(self):
        return {name: t.clone() for name, t in self.state().items()}

    def restore(self, snap):
        self.store(snap)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.M, self.z))


class InfiniAttention(nn.Module):
    """Multi-head local softmax attention per segment, gated with a compressive memory of the earlier
    segments."""

    def __init__(self, dims, segment=None, delta=True, gate_init=0.0):
        super().__init__()
        self.segment = int(segment or dims.block_size)
        self.delta = delta
        self.n_heads, self.head_dim = dims.n_heads, dims.head_dim
        self.dropout = dims.dropout
        self.qkv = nn.Linear(dims.d_model, 3 * dims.d_model, bias=dims.bias)
        self.proj = init_residual_(nn.Linear(dims.d_model, dims.d_model, bias=dims.bias))
        self.beta = nn.Parameter(torch.full((dims.n_heads,), float(gate_init)))  # (H,)
        self.beta.zoo_no_decay = True

    @classmethod
    def cache_size(cls, dims, params):
        """Nothing per token; per sequence the segment's keys and values, M and z."""
        S = params.get("segment") or dims.block_size
        H, D = dims.n_heads, dims.head_dim
        return 0, 2 * S * H * D + H * D * D + H * D

    def flops_per_token(self, seq_len):
        """The projections, local attention over the keys a query sees (the segment, nanoGPT's
        convention of the whole window), the memory read and the memory update."""
        H, D = self.n_heads, self.head_dim
        proj = sum(m.weight.numel() for m in (self.qkv, self.proj))
        local = 4 * min(seq_len, self.segment) * H * D
        memory = 2 * H * D * D * (3 if self.delta else 2) + 4 * H * D
        return 2 * proj + local + memory

    def new_cache(self, batch, max_len, device=None, dtype=None):
        return InfiniCache(batch, self.n_heads, self.segment, self.head_dim, device=device, dtype=dtype)

    def empty_state(self, x) -> dict:
        B, H, D = x.shape[0], self.n_heads, self.head_dim
        return {"M": x.new_zeros(B, H, D, D, dtype=torch.float32), "z": x.new_zeros(B, H, D, dtype=torch.float32),
                "k": x.new_zeros(B, H, 0, D), "v": x.new_zeros(B, H, 0, D)}

    def forward_state(self, x, posenc, pos, state):  # x: (B, T, C), pos: (T,)
        """Segment by segment from ``state`` (None: the stream starts). -> (y (B, T, C), new state)."""
        st = self.empty_state(x) if state is None else state
        q, k, v = rearrange(self.qkv(x), "b t (three h d) -> three b h t d", three=3, h=self.n_heads)  # (B, H, T, D) each
        M, z = st["M"], st["z"]
        kp, vp = st["k"].to(x.dtype), st["v"].to(x.dtype)  # (B, H, n, D): the current segment so far
        gate = torch.sigmoid(self.beta.float()).view(1, -1, 1, 1)  # (1, H, 1, 1)
        T, S = x.shape[1], self.segment
        ys, t = [], 0
        while t < T:
            n = kp.shape[2]
            L = min(T - t, S - n)  # the chunk ends at the segment's end or at the input's end
            qc, kc, vc = q[:, :, t:t + L], k[:, :, t:t + L], v[:, :, t:t + L]  # (B, H, L, D)
            kseg, vseg = torch.cat([kp, kc], 2), torch.cat([vp, vc], 2)  # (B, H, n + L, D)
            # local causal attention; positions counted from the segment's start (relative only)
            qpos = pos[t:t + L] - pos[t] + n  # (L,)
            kpos = torch.cat([torch.arange(n, device=pos.device, dtype=pos.dtype), qpos])  # (n + L,)
            a_dot = causal_sdpa(posenc.rotate(qc, qpos), posenc.rotate(kseg, kpos), vseg, qpos, kpos,
                                bias=posenc.bias(qpos, kpos), dropout_p=self.dropout if self.training else 0.0,
                                full_causal=n == 0)  # (B, H, L, D)
            a_mem = memory_read(sigma(qc.float()), M, z)  # (B, H, L, D): the earlier segments
            ys.append((gate * a_mem + (1 - gate) * a_dot.float()).to(x.dtype))
            t += L
            if n + L == S:  # the segment is complete: it goes into the memory
                M, z = memory_update(M, z, kseg, vseg, self.delta)
                kp, vp = kseg[:, :, :0], vseg[:, :, :0]
            else:
                kp, vp = kseg, vseg
        y = torch.cat(ys, 2) if ys else q  # (B, H, T, D)
        return self.proj(rearrange(y, "b h t d -> b t (h d)")), {"M": M, "z": z, "k": kp, "v": vp}

    def forward(self, x, posenc, pos, cache=None):  # x: (B, T, C)
        if cache is None:
            return self.forward_state(x, posenc, pos, None)[0]
        y, st = self.forward_state(x, posenc, pos, cache.state())
        cache.store(st)
        return y  # (B, T, C)


@hookimpl
def register_attention(register):
    register("infini", InfiniAttention, PARAMS, TAGS)
