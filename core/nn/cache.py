"""Caches for generation: the key/value cache of softmax attention, the per-layer caches of one
generation (:class:`ModelCache`) and how they rewind, and what a cache costs per token and per
sequence."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import ZooError
from ..plugin.contract import Dims
from ..plugin.protocols import cache_nbytes, cache_size, reset_cache, rewind_of
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

    It rewinds by ``truncate(n)`` (``rewind = "truncate"``): positions >= n are forgotten. Exact while
    the ring has not wrapped; once it has, the positions it overwrote cannot come back, so a
    truncation that decoding would need them for raises :class:`zoo.errors.ZooError` (with a ring of
    S slots, going back one position always works; going back k works while the oldest position
    held is at most n - S + 1).
    """

    rewind = "truncate"

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

    def truncate(self, n: int):
        """Forget every position >= n (slots marked empty; their contents are masked out). Raises
        ZooError where the ring buffer has already overwritten a position that decoding at n attends
        to (see the class docstring)."""
        n = int(n)
        held = self.slot_pos[self.slot_pos >= 0]  # (held,)
        if not held.numel() or int(held.max()) < n:
            return
        kept = held[held < n]
        need = max(0, n - self.max_len + 1)  # the oldest position a query at n still sees
        oldest = int(kept.min()) if kept.numel() else n
        if oldest > need:
            lo, top = int(held.min()), int(held.max()) + 1
            raise ZooError(f"cannot truncate this cache to {n} positions: it is a ring buffer of "
                           f"{self.max_len} slots that has already overwritten positions {need}..{oldest - 1}, "
                           f"which decoding at position {n} attends to. Rewind at most "
                           f"{max(0, top - (lo + self.max_len - 1))} token(s) here, or decode with a cache "
                           f"of more slots (new_cache(batch, max_len)).")
        self.slot_pos.masked_fill_(self.slot_pos >= n, -1)

    @property
    def nbytes(self) -> int:
        """Bytes held for keys and values (the figure ``zoo show`` reports per token, times max_len)."""
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()


class StateCache:
    """A generation cache that is a fixed-size state (Mamba, linear attention, ...): a few tensors,
    batch first, whose size does not depend on the tokens decoded. ``rewind = "snapshot"``: a state
    cannot forget a token, so a copy of it goes back. ``state`` is the tuple of tensors; a mixer
    updates them in place (``copy_``). Subclass it to name the tensors."""

    rewind = "snapshot"

    def __init__(self, tensors):
        self.state = tuple(tensors)

    def reset(self):
        for t in self.state:
            t.zero_()

    def snapshot(self):
        return tuple(t.clone() for t in self.state)

    def restore(self, snap):
        for t, s in zip(self.state, snap):
            t.copy_(s)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state)


def default_kv_elems_per_token(dims: Dims, n_kv_heads: int, head_dim: int | None = None) -> int:
    """Keys and values for the kv heads: 2 x kv heads x head dim numbers per token per layer."""
    return 2 * n_kv_heads * (head_dim or dims.head_dim)


class ModelCache:
    """The per-layer caches of one generation, and the next position to write (``length``: the
    number of positions seen, including any that a ring buffer has since dropped).

    Rewinding (speculative decoding): :meth:`truncate` where every layer's cache truncates;
    :meth:`snapshot` / :meth:`restore` where every layer's cache truncates or takes snapshots;
    :meth:`not_rewindable` names the layers that cannot, so that a caller refuses them by name.
    ``names[i]`` says which mixer layer i is (e.g. ``"layer 3 (mamba)"``)."""

    def __init__(self, layers, names=None):
        self.layers = layers
        self.names = list(names) if names is not None else [f"layer {i}" for i in range(len(layers))]
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
            reset_cache(layer)
        self._length = 0

    def rewind_modes(self) -> list:
        """Each layer's cache's ``rewind``: "truncate", "snapshot" or "none"."""
        return [rewind_of(layer) for layer in self.layers]

    def not_rewindable(self, modes=("truncate", "snapshot")) -> list:
        """Names of the layers whose cache cannot rewind in one of ``modes`` (["truncate"]: the layers
        :meth:`truncate` refuses; default: those :meth:`snapshot` refuses)."""
        return [f"{name} (rewind={mode!r})" for name, mode in zip(self.names, self.rewind_modes())
                if mode not in modes]

    def _refuse(self, what, modes, fix):
        bad = self.not_rewindable(modes)
        if bad:
            raise ZooError(f"cannot {what}: the cache of {', '.join(bad)} cannot. {fix}")

    def truncate(self, n: int):
        """Forget every position >= n in every layer; ``length`` becomes n."""
        n = int(n)
        if not 0 <= n <= self.length:
            raise ZooError(f"cannot truncate the cache to {n} positions: it holds {self.length}; "
                           f"give a length from 0 to {self.length}.")
        self._refuse(f"truncate the cache to {n} positions", ("truncate",),
                     "Use snapshot() before the tokens to undo and restore() after, where every layer's "
                     "cache offers snapshots, or decode without rewinding.")
        for layer in self.layers:
            layer.truncate(n)
        self._length = n

    def snapshot(self):
        """Something :meth:`restore` goes back to: the length, and each snapshot layer's snapshot
        (a truncating layer is truncated back to the length instead)."""
        self._refuse("take a snapshot of the cache", ("truncate", "snapshot"),
                     "Decode without rewinding (speculative decoding cannot use this model).")
        return self.length, [layer.snapshot() if mode == "snapshot" else None
                             for layer, mode in zip(self.layers, self.rewind_modes())]

    def restore(self, snap):
        """Go back to what :meth:`snapshot` returned (positions decoded since are forgotten)."""
        length, layers = snap
        if length > self.length:
            raise ZooError(f"cannot restore a snapshot at {length} positions into a cache at {self.length}: "
                           f"a snapshot only goes back.")
        for layer, mode, s in zip(self.layers, self.rewind_modes(), layers):
            if mode == "snapshot":
                layer.restore(s)
            else:
                layer.truncate(length)
        self._length = length

    @property
    def nbytes(self) -> int:
        """Bytes held by every layer's cache."""
        return sum(cache_nbytes(layer) for layer in self.layers)


def cache_bytes(spec: dict, reg, dtype_bytes: int = 2):
    """(bytes per token, fixed bytes per sequence) of the generation cache over all layers, from each
    layer's mixer's own report (:func:`zoo.plugin.protocols.cache_size`); None if one has none."""
    per_tok = per_seq = 0
    for i in range(spec["n_layers"]):
        ref = layer_components(spec, i)["attention"]
        size = cache_size(reg.get("attention", ref["name"]).cls, dims_of(spec, i), ref["params"])
        if size is None:
            return None
        per_tok, per_seq = per_tok + size[0], per_seq + size[1]
    return per_tok * dtype_bytes, per_seq * dtype_bytes


def kv_cache_bytes_per_token(spec: dict, reg, dtype_bytes: int = 2):
    """Cache bytes per token over all layers (see :func:`cache_bytes`; None if a layer does not say)."""
    size = cache_bytes(spec, reg, dtype_bytes)
    return None if size is None else size[0]


# ---- carried state across training windows ----------------------------------------------------

def _map_tensors(obj, fn):
    """``fn`` applied to every tensor of a state (a tensor, or a tuple/list/dict of them, nested)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return obj


class CarriedState:
    """The state each layer's mixer carries from one training window to the next (segment
    recurrence, :class:`zoo.plugin.protocols.CarriesState`): ``layers[i]`` is layer i's state (None:
    the stream starts here, or the layer carries nothing). ``Transformer.forward(..., state=s)``
    updates it in place, as it does ``ModelCache.length``; the trainer calls :meth:`detach` between
    windows, so gradients stop at the window's start (truncated backpropagation through time)."""

    def __init__(self, n_layers: int):
        self.layers = [None] * n_layers

    def reset(self):
        """Every stream starts anew (an empty state)."""
        self.layers = [None] * len(self.layers)

    def detach(self):
        """Cut the states from the graph of the window that produced them (in place)."""
        self.layers = [_map_tensors(s, lambda t: t.detach()) for s in self.layers]

    def state_dict(self) -> dict:
        """The states as CPU tensors, for a checkpoint."""
        return {"layers": [_map_tensors(s, lambda t: t.detach().cpu().clone()) for s in self.layers]}

    def load_state_dict(self, d: dict, device=None):
        layers = list(d["layers"])
        if len(layers) != len(self.layers):
            raise ZooError(f"the checkpoint's carried state has {len(layers)} layers, the model {len(self.layers)}; "
                           f"it is not this model's state.")
        self.layers = [_map_tensors(s, lambda t: t.to(device) if device is not None else t) for s in layers]
