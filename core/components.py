"""The small protocol through which the core and the components meet.

A component class is built as ``cls(dims, **params)`` where ``dims`` is a :class:`Dims` and
``params`` were validated against the component's JSON Schema (defaults filled in).

* attention: ``forward(x, posenc, pos, cache=None) -> y``; x, y: (B, T, C); pos: (T,) absolute
  positions of the T tokens. Optional class methods: ``validate_spec(dims, params) -> [str]``
  (cross-field problems, each a sentence with the fix), ``kv_cache_elems_per_token(dims, params)``
  (cached numbers per token per layer); instance method ``new_cache(batch, max_len, device=None,
  dtype=None)`` returning a layer cache with the :class:`KVCache` interface.
* posenc: a :class:`PosEnc`: ``embed(x, pos)`` for absolute kinds, ``rotate(t, pos)`` for rotary
  kinds (any even last-dimension size, so a partial or decoupled rope part works too),
  ``bias(q_pos, k_pos)`` for additive kinds such as ALiBi. Its tags say its ``kind``.
* ffn: ``forward(x) -> y``, (B, T, C) -> (B, T, C). It may set ``self.aux_loss`` (a scalar tensor)
  during forward; the model adds it to the training loss.

The encoding is passed to attention at call time rather than stored in every layer, so one
instance serves all layers and every attention works with every encoding. Positions are a tensor,
not an int offset, so that decoding with ``torch.compile`` does not recompile at every step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F

POSENC_KINDS = ("absolute", "rotary", "bias", "none")


@dataclass(frozen=True)
class Dims:
    """Model-wide sizes a component may need."""

    d_model: int
    n_heads: int
    n_layers: int = 1
    block_size: int = 64
    vocab_size: int = 256
    bias: bool = True
    dropout: float = 0.0
    layer: int = 0  # index of the block this component lives in

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)


class PosEnc(nn.Module):
    """Base class of positional encodings; every method defaults to 'does nothing'."""

    def __init__(self, dims: Dims, **params):
        super().__init__()
        self.dims = dims

    def embed(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:  # x: (B, T, C)
        return x

    def rotate(self, t: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:  # t: (B, H, T, D)
        return t

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor):  # -> (H, Tq, Tk) or None
        return None

    def max_positions(self):
        """The number of positions this encoding can represent, or None if unbounded."""
        return None


class KVCache(nn.Module):
    """A preallocated key/value cache for one attention layer (static shapes, compile-friendly).

    The small interface the core relies on, which an attention's own cache class (e.g. one that
    keeps a compressed latent) offers too: built by the attention's
    ``new_cache(batch, max_len, device=None, dtype=None)``; ``update(k, v, pos)`` writes the
    entries of absolute positions ``pos`` and returns everything the layer should attend to, with
    the position held by each slot (-1: empty); ``prefill`` starts a new sequence with a prompt,
    ``append`` adds decoded tokens, ``read`` returns the contents without writing, ``reset``
    empties it. Keys are stored after rotation, so a rotary encoding is applied once per token.

    Position p lives in slot ``p % max_len``: past ``max_len`` the cache is a ring buffer holding
    the last ``max_len`` positions, i.e. sliding-window attention of width ``max_len``. A write is
    exact when every query still finds all its keys: T == 1 (decoding), or all positions < max_len.
    Shapes never change, so a decode step can be compiled once and captured in a CUDA graph.
    """

    def __init__(self, batch, n_kv_heads, max_len, head_dim, device=None, dtype=None, v_dim=None):
        super().__init__()
        dtype = dtype or torch.get_default_dtype()
        self.register_buffer("k", torch.zeros(batch, n_kv_heads, max_len, head_dim, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(batch, n_kv_heads, max_len, v_dim or head_dim, device=device, dtype=dtype), persistent=False)
        # absolute position held by each slot; -1 marks an empty slot (masked out)
        self.register_buffer("slot_pos", torch.full((max_len,), -1, device=device, dtype=torch.long), persistent=False)
        self.max_len = max_len

    def update(self, k, v, pos):
        """Write k, v (B, Hkv, T, D) at absolute positions pos (T,); return all slots and positions."""
        slots = pos % self.max_len  # ring buffer: equals pos while pos < max_len
        if k.shape[2] > self.max_len:  # only the last max_len tokens of a long prefill are kept
            k, v, pos, slots = k[:, :, -self.max_len:], v[:, :, -self.max_len:], pos[-self.max_len:], slots[-self.max_len:]
        self.k.index_copy_(2, slots, k.to(self.k.dtype))
        self.v.index_copy_(2, slots, v.to(self.v.dtype))
        self.slot_pos.index_copy_(0, slots, pos)
        return self.k, self.v, self.slot_pos

    def prefill(self, k, v, pos):
        """Start a new sequence: empty the cache, then write the prompt's entries."""
        self.reset()
        return self.update(k, v, pos)

    def append(self, k, v, pos):
        """Add the entries of newly decoded tokens (the same write as ``update``)."""
        return self.update(k, v, pos)

    def read(self):
        """(k (B, Hkv, S, D), v (B, Hkv, S, Dv), slot_pos (S,)) without writing."""
        return self.k, self.v, self.slot_pos

    def reset(self):
        self.slot_pos.fill_(-1)

    @property
    def nbytes(self) -> int:
        """Bytes held for keys and values (the figure ``zoo show`` reports per token, times max_len)."""
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()


def causal_sdpa(q, k, v, q_pos, k_pos, bias=None, window=None, dropout_p=0.0, full_causal=False,
                backend="auto"):
    """Causal scaled-dot-product attention over absolute positions.

    q: (B, H, Tq, D); k, v: (B, Hkv, Tk, D) with H a multiple of Hkv (grouped heads are expanded
    by SDPA itself, no repeated copies). q_pos: (Tq,), k_pos: (Tk,) with -1 for empty cache slots.
    bias: additive (H, Tq, Tk) or None. ``window``: attend only to the last ``window`` positions
    (sliding-window attention). ``full_causal`` says k_pos == q_pos == arange(T), which lets SDPA
    use its flash/causal kernel without a materialised mask. ``backend``: "auto" sends masks and
    biases that the flash kernel cannot take (windows, ALiBi) through FlexAttention on CUDA when
    the torch version has it (training and prefill, not dropout); "flex" forces it (any device,
    eager on the CPU: for tests); "sdpa" forces an explicit mask.
    """
    gqa = q.shape[1] != k.shape[1]
    if full_causal and bias is None and window is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, enable_gqa=gqa)
    if backend == "flex":
        return flex_causal_attention(q, k, v, q_pos, k_pos, bias=bias, window=window)
    if backend == "auto" and q.is_cuda and q.shape[2] > 1 and dropout_p == 0.0 and flex_attention_fn() is not None:
        try:
            return flex_causal_attention(q, k, v, q_pos, k_pos, bias=bias, window=window)
        except Exception as e:  # e.g. no Triton for this GPU: keep working with the explicit mask
            import warnings
            warnings.warn(f"FlexAttention failed ({type(e).__name__}: {e}); using SDPA with an explicit mask from now on")
            _FLEX["compiled"] = None
    allowed = (k_pos[None, :] <= q_pos[:, None]) & (k_pos[None, :] >= 0)  # (Tq, Tk)
    if window is not None:
        allowed = allowed & (q_pos[:, None] - k_pos[None, :] < window)
    if bias is None:
        mask = allowed
    else:
        mask = bias.to(q.dtype).masked_fill(~allowed, float("-inf"))  # (H, Tq, Tk)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, enable_gqa=gqa)


# ---- FlexAttention path (sliding windows, ALiBi) --------------------------------------------------
_FLEX = {}


def flex_attention_fn(compiled=True):
    """torch's flex_attention (compiled on CUDA), or None where this torch version lacks it."""
    key = "compiled" if compiled else "eager"
    if key not in _FLEX:
        try:
            from torch.nn.attention.flex_attention import flex_attention
            _FLEX[key] = torch.compile(flex_attention, dynamic=False) if compiled else flex_attention
        except Exception:  # older torch, or no compiler on this platform
            _FLEX[key] = None
    return _FLEX[key]


def flex_causal_attention(q, k, v, q_pos, k_pos, bias=None, window=None):
    """The same attention as :func:`causal_sdpa`'s masked path through FlexAttention: the causal /
    window / empty-slot rule as a block mask (whole blocks outside the window are skipped) and an
    additive bias as a score modification. q: (B, H, Tq, D); k, v: (B, Hkv, Tk, D) -> (B, H, Tq, Dv)."""
    from torch.nn.attention.flex_attention import create_block_mask
    fn = flex_attention_fn(compiled=q.is_cuda)
    if fn is None:
        raise RuntimeError("flex_attention is not available in this torch version")

    def mask_mod(b, h, qi, ki):
        ok = (k_pos[ki] <= q_pos[qi]) & (k_pos[ki] >= 0)
        if window is not None:
            ok = ok & (q_pos[qi] - k_pos[ki] < window)
        return ok

    block_mask = create_block_mask(mask_mod, None, None, q.shape[2], k.shape[2], device=q.device)
    score_mod = None
    if bias is not None:
        bias_ = bias.to(torch.float32)  # (H, Tq, Tk)

        def score_mod(score, b, h, qi, ki):
            return score + bias_[h, qi, ki]
    return fn(q, k, v, score_mod=score_mod, block_mask=block_mask, enable_gqa=q.shape[1] != k.shape[1])


def init_residual_(linear: nn.Linear):
    """Mark a projection that writes into the residual stream; the model scales its init by
    1/sqrt(2 * n_layers) as GPT-2 does."""
    linear.zoo_residual = True
    return linear


def make_norm(kind: str, dim: int, bias: bool = True, eps: float | None = None):
    """A LayerNorm (eps 1e-5 unless given) or RMSNorm (eps 1e-6 unless given)."""
    if kind == "layernorm":
        return nn.LayerNorm(dim, bias=bias, eps=1e-5 if eps is None else eps)
    if kind == "rmsnorm":
        return nn.RMSNorm(dim, eps=1e-6 if eps is None else eps)
    raise ValueError(f"unknown norm {kind!r}")


def default_kv_elems_per_token(dims: Dims, n_kv_heads: int, head_dim: int | None = None) -> int:
    """Keys and values for the kv heads: 2 x kv heads x head dim numbers per token per layer."""
    return 2 * n_kv_heads * (head_dim or dims.head_dim)


def sinusoid(pos: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """Sinusoidal table for positions pos (T,) -> (T, dim) (Vaswani et al. 2017)."""
    half = dim // 2
    inv = torch.exp(-math.log(base) * torch.arange(half, device=pos.device, dtype=torch.float32) / half)
    ang = pos.to(torch.float32)[:, None] * inv[None, :]  # (T, dim/2)
    out = torch.cat([ang.sin(), ang.cos()], dim=-1)  # (T, 2*half)
    if dim % 2:
        out = F.pad(out, (0, 1))
    return out
