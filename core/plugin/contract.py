"""What a component is: the kinds, the sizes it is built with, and the positional-encoding base.

A component class is built as ``cls(dims, **params)`` where ``dims`` is a :class:`Dims` and
``params`` were validated against the component's JSON Schema (defaults filled in).

* attention: ``forward(x, posenc, pos, cache=None) -> y``; x, y: (B, T, C); pos: (T,) absolute
  positions of the T tokens. Optional class methods: ``validate_spec(dims, params) -> [str]``
  (cross-field problems, each a sentence with the fix), ``kv_cache_elems_per_token(dims, params)``
  (cached numbers per token per layer); instance method ``new_cache(batch, max_len, device=None,
  dtype=None)`` returning a layer cache with the interface of :class:`zoo.nn.cache.KVCache`.
* posenc: a :class:`zoo.plugin.base.PosEnc`: ``embed(x, pos)`` for absolute kinds, ``rotate(t, pos)`` for rotary
  kinds (any even last-dimension size, so a partial or decoupled rope part works too),
  ``bias(q_pos, k_pos)`` for additive kinds such as ALiBi. Its tags say its ``kind``.
* ffn: ``forward(x) -> y``, (B, T, C) -> (B, T, C). Any module may declare ``self.aux_loss`` (a
  scalar tensor, set during forward); the model adds it to the training loss. ``"ffn": "none"``
  is a block without an ffn (and without the norm before it).
* head: ``forward(h, targets, model) -> (logits, loss)``, see :class:`zoo.plugin.protocols.Head`.

The encoding is passed to attention at call time rather than stored in every layer, so one
instance serves all layers and every attention works with every encoding. Positions are a tensor,
not an int offset, so that decoding with ``torch.compile`` does not recompile at every step.
"""
from __future__ import annotations

from dataclasses import dataclass

KINDS = ("attention", "posenc", "ffn", "head", "transform")  # the component kinds, each registered through its own hook
MODEL_KINDS = ("attention", "posenc", "ffn", "head")  # the kinds a spec names one of each (transforms are a list)
LAYER_KINDS = ("attention", "ffn")  # the kinds each layer has (and a ``layers`` override may change)
SLOT_ATTR = {"attention": "attn", "ffn": "ffn"}  # the attribute of a Block holding a layer kind
POSENC_KINDS = ("absolute", "rotary", "bias", "none")
NO_FFN = "none"  # ``"ffn": "none"``: a block without a feed-forward layer (and without its norm); reserved
DEFAULT_HEAD = {"name": "next_token", "params": {}}  # the head of a spec that names none (every spec before heads)


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
    layer: int = 0  # index of the block this component lives in, from 0

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads
