"""Caches for generation: the key/value cache of softmax attention, the per-layer caches of one
generation (:class:`ModelCache`), and what a cache costs per token."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..plugin.contract import Dims
from ..spec.resolve import dims_of, layer_components


class KVCache(nn.Module):
    """A preallocated key/value cache for one attention layer (static shapes, compile-friendly).

    The small interface the core relies on, which an attention's own cache class (e.g. one that
    keeps a compressed latent) offers too: built by the attention's
    ``new_cache(batch, max_len, device=None, dtype=None)``; ``update(k, v, pos)`` writes the
    entries of absolute positions ``pos`` and returns everything the layer should attend to, with
    the position held by each slot (-1: empty); ``read`` returns the contents without writing, ``reset``
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

    def read(self):
        """(k (B, Hkv, S, D), v (B, Hkv, S, Dv), slot_pos (S,)) without writing."""
        return self.k, self.v, self.slot_pos

    def reset(self):
        self.slot_pos.fill_(-1)

    @property
    def nbytes(self) -> int:
        """Bytes held for keys and values (the figure ``zoo show`` reports per token, times max_len)."""
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()


def default_kv_elems_per_token(dims: Dims, n_kv_heads: int, head_dim: int | None = None) -> int:
    """Keys and values for the kv heads: 2 x kv heads x head dim numbers per token per layer."""
    return 2 * n_kv_heads * (head_dim or dims.head_dim)


class ModelCache:
    """The per-layer caches of one generation, and the next position to write (``length``: the
    number of positions seen, including any that a ring buffer has since dropped)."""

    def __init__(self, layers):
        self.layers = layers
        self._length = 0

    @property
    def length(self) -> int:
        n = self._length
        return n if isinstance(n, int) else int(n)  # a tensor when the last forward was given pos

    @length.setter
    def length(self, n):
        self._length = n

    def reset(self):
        """Forget every cached position, keeping the preallocated buffers (reuse for a new prompt)."""
        for layer in self.layers:
            if hasattr(layer, "reset"):
                layer.reset()
        self._length = 0


def kv_cache_bytes_per_token(spec: dict, reg, dtype_bytes: int = 2):
    """KV-cache bytes per token over all layers, from each layer's attention's own report (None if
    one has none)."""
    total = 0
    for i in range(spec["n_layers"]):
        ref = layer_components(spec, i)["attention"]
        fn = getattr(reg.get("attention", ref["name"]).cls, "kv_cache_elems_per_token", None)
        if fn is None:
            return None
        total += int(fn(dims_of(spec, i), ref["params"]))
    return total * dtype_bytes
