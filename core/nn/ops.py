"""Operations the components share: causal attention over absolute positions (SDPA, or FlexAttention
for masks and biases the flash kernel cannot take), the norms, the sinusoid table, the
residual-projection mark of GPT-2's initialisation, and the weight a (possibly transformed) Linear
layer applies."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..plugin.protocols import EffectiveWeight


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


def linear_weight(module) -> torch.Tensor:
    """The (out, in) weight a Linear layer applies: ``effective_weight()`` when a transform replaced
    the layer with a module that has one (:class:`zoo.plugin.protocols.EffectiveWeight`, e.g. LoRA's
    W + (alpha / r) B A), else its ``.weight``. A component that uses a declared Linear's weight
    outside the layer's forward (MLA's absorbed decoding) reads it through this, so that a
    transform's change reaches that path too."""
    if isinstance(module, EffectiveWeight):
        return module.effective_weight()
    return module.weight


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


def sinusoid(pos: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """Sinusoidal table for positions pos (T,) -> (T, dim) (Vaswani et al. 2017)."""
    half = dim // 2
    inv = torch.exp(-math.log(base) * torch.arange(half, device=pos.device, dtype=torch.float32) / half)
    ang = pos.to(torch.float32)[:, None] * inv[None, :]  # (T, dim/2)
    out = torch.cat([ang.sin(), ang.cos()], dim=-1)  # (T, 2*half)
    if dim % 2:
        out = F.pad(out, (0, 1))
    return out
