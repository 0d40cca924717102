"""The Transformer assembled from components (in the spirit of nanoGPT's model.py).

Token embedding -> positional encoding's ``embed`` -> N pre-norm residual blocks (attention with the
encoding passed at call time, then the feed-forward layer) -> final norm -> output head, tied to
the token embedding when ``tie_weights``. GPT-2 initialisation: N(0, 0.02), residual output
projections scaled by 1/sqrt(2 * n_layers) (Radford et al. 2019).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..plugin.contract import SLOT_ATTR
from ..plugin.protocols import construct
from ..spec.catalog import get_registry
from ..spec.resolve import dims_of, layer_groups, layer_spec
from .cache import ModelCache
from .ops import make_norm


class Block(nn.Module):
    def __init__(self, spec, attention_cls, ffn_cls, layer, components=None):
        """``components``: the registry's components (kind -> name -> component) that a composite
        component (:class:`zoo.plugin.protocols.Composite`) takes its parts from."""
        super().__init__()
        dims = dims_of(spec, layer)
        self.norm1 = make_norm(spec["norm"], spec["d_model"], spec["bias"], spec.get("norm_eps"))
        self.attn = construct(attention_cls, dims, spec["attention"]["params"], components)
        self.norm2 = make_norm(spec["norm"], spec["d_model"], spec["bias"], spec.get("norm_eps"))
        self.ffn = construct(ffn_cls, dims, spec["ffn"]["params"], components)

    def forward(self, x, posenc, pos, cache=None):  # x: (B, T, C)
        x = x + self.attn(self.norm1(x), posenc, pos, cache)  # (B, T, C)
        return x + self.ffn(self.norm2(x))  # (B, T, C)


class Transformer(nn.Module):
    """A decoder-only language model built from a resolved spec and the component classes."""

    def __init__(self, spec: dict, attention_cls, posenc_cls, ffn_cls, component_cls=None, components=None):
        """``component_cls(kind, name)`` gives the class of a component that a ``layers`` override
        names (default: from ``components``, else the loaded registry); the model-wide classes are
        given directly. ``components``: the components (kind -> name -> component) of the registry
        the spec was resolved with, where composite components find their parts."""
        super().__init__()
        self.spec = spec
        dims = dims_of(spec)
        self.wte = nn.Embedding(spec["vocab_size"], spec["d_model"])
        self.posenc = construct(posenc_cls, dims, spec["posenc"]["params"], components)
        self.drop = nn.Dropout(spec["dropout"])
        self.blocks = nn.ModuleList(self._block(spec, i, attention_cls, ffn_cls, component_cls, components)
                                    for i in range(spec["n_layers"]))
        self.norm_f = make_norm(spec["norm"], spec["d_model"], spec["bias"], spec.get("norm_eps"))
        self.lm_head = nn.Linear(spec["d_model"], spec["vocab_size"], bias=False)
        if spec["tie_weights"]:
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        for m in self.modules():
            if getattr(m, "zoo_residual", False):
                nn.init.normal_(m.weight, mean=0.0, std=0.02 / math.sqrt(2 * spec["n_layers"]))

    @staticmethod
    def _block(spec, i, attention_cls, ffn_cls, component_cls, components=None):
        """Block i, with the attention and ffn that the spec's ``layers`` overrides give it."""
        ls = layer_spec(spec, i)
        if component_cls is None and components is not None:
            component_cls = lambda kind, name: components[kind][name].cls  # noqa: E731
        elif component_cls is None:
            component_cls = lambda kind, name: get_registry().get(kind, name).cls  # noqa: E731
        att = attention_cls if ls["attention"]["name"] == spec["attention"]["name"] else component_cls("attention", ls["attention"]["name"])
        ffn = ffn_cls if ls["ffn"]["name"] == spec["ffn"]["name"] else component_cls("ffn", ls["ffn"]["name"])
        return Block(ls, att, ffn, i, components)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    @property
    def block_size(self) -> int:
        return self.spec["block_size"]

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.wte.weight.numel()
            if not self.spec["tie_weights"]:
                n -= self.lm_head.weight.numel()
        return n

    def new_cache(self, batch: int, max_len: int, device=None, dtype=None):
        """One cache per layer, preallocated for ``max_len`` tokens (see :class:`zoo.nn.cache.KVCache`)."""
        device = device or self.wte.weight.device
        dtype = dtype or self.wte.weight.dtype
        return ModelCache([b.attn.new_cache(batch, max_len, device=device, dtype=dtype) for b in self.blocks])

    def forward(self, idx, targets=None, cache=None, pos=None):
        """idx: (B, T) token ids. Returns (logits (B, T, V), loss or None).

        With ``cache``, the T tokens continue after the ``cache.length`` tokens already seen.
        ``pos`` (T,) overrides their absolute positions. The loss includes auxiliary losses that
        components report (``aux_loss`` attributes), e.g. MoE load balancing.
        """
        B, T = idx.shape
        if pos is None:
            start = cache.length if cache is not None else 0
            pos = torch.arange(start, start + T, device=idx.device)  # (T,)
            end = start + T
        else:
            end = pos[-1] + 1  # a 0-d tensor: no host sync, so a compiled decode step has no graph break
        x = self.wte(idx)  # (B, T, C)
        x = self.drop(self.posenc.embed(x, pos))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, self.posenc, pos, cache.layers[i] if cache is not None else None)  # (B, T, C)
        if cache is not None:
            cache.length = end
        logits = self.lm_head(self.norm_f(x))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
            aux = self.aux_loss()
            if aux is not None:
                loss = loss + aux
        return logits, loss

    def aux_loss(self):
        """Sum of the auxiliary losses components set during the last forward, or None.
        Only the components themselves are asked (not every submodule), so the cost per step is
        two attribute reads per layer."""
        total = None
        for m in (getattr(b, attr) for b in self.blocks for attr in SLOT_ATTR.values()):
            a = getattr(m, "aux_loss", None)
            if isinstance(a, torch.Tensor):
                total = a if total is None else total + a
        return total


def build_from_spec(spec: dict, reg=None) -> Transformer:
    """The ``nn.Module`` of a resolved spec, its components' classes from ``reg`` (default: the
    loaded registry); a spec with a ``lora`` entry gets its adapters (zoo finetune --lora)."""
    reg = reg or get_registry()
    model = Transformer(spec, reg.get("attention", spec["attention"]["name"]).cls,
                        reg.get("posenc", spec["posenc"]["name"]).cls, reg.get("ffn", spec["ffn"]["name"]).cls,
                        component_cls=lambda kind, name: reg.get(kind, name).cls, components=reg.components)
    if spec.get("lora"):  # low-rank adapters on a frozen base
        from .lora import apply_lora
        apply_lora(model, spec["lora"])
    return model


def _numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


def block_groups(spec: dict, reg=None):
    """(first layer, number of layers, Block) for each distinct layer of a spec, the Block built on
    the meta device (no weights allocated); with the spec's LoRA adapters, if any."""
    reg = reg or get_registry()
    component_cls = lambda kind, name: reg.get(kind, name).cls  # noqa: E731
    att, ffn = component_cls("attention", spec["attention"]["name"]), component_cls("ffn", spec["ffn"]["name"])
    out, adapters = [], 0
    with torch.device("meta"):
        for first, count in layer_groups(spec):
            block = Transformer._block(spec, first, att, ffn, component_cls, reg.components)
            if spec.get("lora"):
                from .lora import add_adapters
                adapters += add_adapters(block, spec["lora"])
            out.append((first, count, block))
    if spec.get("lora") and not adapters:
        from .lora import no_adapters_error
        raise no_adapters_error(spec["lora"])
    return out


def param_count(spec: dict, reg=None) -> int:
    """Parameters of the model a spec describes, counted without allocating its weights and
    without building every layer: one block per distinct layer (see
    :func:`zoo.spec.resolve.layer_groups`), times the layers like it, plus the embedding, the
    positional encoding, the final norm and an untied head. The same number as
    ``build_from_spec(spec).num_params()``, in milliseconds for any number of layers."""
    reg = reg or get_registry()
    groups = block_groups(spec, reg)
    with torch.device("meta"):
        rest = [nn.Embedding(spec["vocab_size"], spec["d_model"]),
                construct(reg.get("posenc", spec["posenc"]["name"]).cls, dims_of(spec), spec["posenc"]["params"],
                          reg.components),
                make_norm(spec["norm"], spec["d_model"], spec["bias"], spec.get("norm_eps"))]
        if not spec["tie_weights"]:
            rest.append(nn.Linear(spec["d_model"], spec["vocab_size"], bias=False))
    return sum(_numel(m) for m in rest) + sum(count * _numel(b) for _, count, b in groups)
