"""The Transformer assembled from components (in the spirit of nanoGPT's model.py).

Token embedding -> positional encoding's ``embed`` -> N pre-norm residual blocks (attention with the
encoding passed at call time, then the feed-forward layer, if the layer has one) -> the head (a
component, next-token prediction by default), which applies the final norm and the output
projection (tied to the token embedding when ``tie_weights``) and computes the loss. ``norm_f``,
``lm_head`` and ``wte`` belong to the model and are shared with the head; a head's own parameters
are under ``head.``. GPT-2 initialisation: N(0, 0.02), residual output
projections scaled by 1/sqrt(2 * n_layers) (Radford et al. 2019).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..errors import ZooError
from ..plugin.contract import DEFAULT_HEAD, SLOT_ATTR
from ..plugin.protocols import HasAuxLoss, carries_state, construct, is_residual
from ..spec.catalog import get_registry
from ..spec.resolve import dims_of, layer_components, layer_groups, layer_spec, no_ffn
from .cache import CarriedState, ModelCache
from .ops import make_norm
from .transforms import apply_transforms


class Block(nn.Module):
    """A pre-norm residual block: the token mixer, then the ffn. ``ffn_cls`` None (``"ffn": "none"``)
    is a block without an ffn and without its norm (``ffn`` and ``norm2`` are None)."""

    def __init__(self, spec, attention_cls, ffn_cls, layer, components=None):
        """``components``: the registry's components (kind -> name -> component) that a composite
        component (:class:`zoo.plugin.protocols.Composite`) takes its parts from."""
        super().__init__()
        dims = dims_of(spec, layer)
        self.layer = layer
        self.norm1 = make_norm(spec["norm"], spec["d_model"], spec["bias"], spec.get("norm_eps"))
        self.attn = construct(attention_cls, dims, spec["attention"]["params"], components)
        # whether this layer carries its mixer's state across training windows (CarriesState, ChoosesCarry)
        self.carries = carries_state(attention_cls, dims, spec["attention"]["params"])
        self.norm2 = self.ffn = None
        if ffn_cls is not None:
            self.norm2 = make_norm(spec["norm"], spec["d_model"], spec["bias"], spec.get("norm_eps"))
            self.ffn = construct(ffn_cls, dims, spec["ffn"]["params"], components)

    def components(self):
        """(kind, module) of the layer components this block has: the attention, and the ffn unless none."""
        return [(kind, getattr(self, attr)) for kind, attr in SLOT_ATTR.items() if getattr(self, attr) is not None]

    def forward(self, x, posenc, pos, cache=None, state=None):  # x: (B, T, C)
        """``state``: the model's :class:`zoo.nn.cache.CarriedState` (training on contiguous windows);
        a mixer that carries state reads and replaces its entry through ``forward_state``."""
        x = x + self._mix(self.norm1(x), posenc, pos, cache, state)  # (B, T, C)
        if self.ffn is None:
            return x
        return x + self.ffn(self.norm2(x))  # (B, T, C)

    def _mix(self, h, posenc, pos, cache, state):  # h: (B, T, C)
        if state is None or not self.carries:
            return self.attn(h, posenc, pos, cache)  # (B, T, C)
        y, state.layers[self.layer] = self.attn.forward_state(h, posenc, pos, state.layers[self.layer])
        return y  # (B, T, C)


def component_classes(reg, components=None):
    """``component_cls(kind, name)`` from a registry (or, given, a registry's ``components``: kind ->
    name -> component): the class, None for ``ffn: none``."""
    def component_cls(kind, name):
        if kind == "ffn" and no_ffn(name):
            return None
        comp = (components or {}).get(kind, {}).get(name)
        return comp.cls if comp is not None else (reg or get_registry()).get(kind, name).cls
    return component_cls


class _Blocks(nn.Module):
    """Some blocks standing in for a model (``blocks`` only), for transforms applied while counting
    parameters."""

    def __init__(self, blocks):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


class Transformer(nn.Module):
    """A decoder-only language model built from a resolved spec and the component classes."""

    def __init__(self, spec: dict, attention_cls, posenc_cls, ffn_cls, component_cls=None, head_cls=None,
                 components=None):
        """``component_cls(kind, name)`` gives the class of a component that a ``layers`` override
        or the spec's ``head`` names (default: from ``components``, else the loaded registry); the
        model-wide classes are given directly. ``ffn_cls`` None: no ffn (``"ffn": "none"``).
        ``components``: the components (kind -> name -> component) of the registry the spec was
        resolved with, where composite components find their parts."""
        super().__init__()
        self.spec = spec
        dims = dims_of(spec)
        if component_cls is None:
            component_cls = component_classes(None, components)
        self.wte = nn.Embedding(spec["vocab_size"], spec["d_model"])
        self.posenc = construct(posenc_cls, dims, spec["posenc"]["params"], components)
        self.drop = nn.Dropout(spec["dropout"])
        self.blocks = nn.ModuleList(self._block(spec, i, attention_cls, ffn_cls, component_cls, components)
                                    for i in range(spec["n_layers"]))
        self.norm_f = make_norm(spec["norm"], spec["d_model"], spec["bias"], spec.get("norm_eps"))
        self.lm_head = nn.Linear(spec["d_model"], spec["vocab_size"], bias=False)
        if spec["tie_weights"]:
            self.lm_head.weight = self.wte.weight
        head = spec.get("head", DEFAULT_HEAD)
        self.head = (head_cls or component_cls("head", head["name"]))(dims, **head["params"])
        self.apply(self._init_weights)
        for m in self.modules():
            if is_residual(m):
                nn.init.normal_(m.weight, mean=0.0, std=0.02 / math.sqrt(2 * spec["n_layers"]))
        self.find_aux_losses()

    @staticmethod
    def _block(spec, i, attention_cls, ffn_cls, component_cls, components=None):
        """Block i, with the attention and ffn that the spec's ``layers`` overrides give it."""
        ls = layer_spec(spec, i)
        if component_cls is None:
            component_cls = component_classes(None, components)
        att = attention_cls if ls["attention"]["name"] == spec["attention"]["name"] else component_cls("attention", ls["attention"]["name"])
        ffn = ffn_cls if ls["ffn"]["name"] == spec["ffn"]["name"] else component_cls("ffn", ls["ffn"]["name"])
        return Block(ls, att, ffn, i, components)

    def find_aux_losses(self):
        """Record the modules that declare an auxiliary loss (:class:`zoo.plugin.protocols.HasAuxLoss`),
        anywhere in the model, so that :meth:`aux_loss` costs one attribute read per such module. A
        layer component that does not declare it (plugin API 1.0: set during forward only) is given
        ``aux_loss = None`` first. Called when the model is built; call it again after replacing
        modules (a transform that adds modules with an auxiliary loss)."""
        for block in self.blocks:
            for _, m in block.components():
                if not isinstance(m, HasAuxLoss):
                    m.aux_loss = None
        self._aux_modules = [m for m in self.modules() if m is not self and isinstance(m, HasAuxLoss)]

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
        names = [f"layer {i} ({layer_components(self.spec, i)['attention']['name']})" for i in range(len(self.blocks))]
        return ModelCache([b.attn.new_cache(batch, max_len, device=device, dtype=dtype) for b in self.blocks], names)

    def carried_layers(self) -> list:
        """Indices of the layers whose mixer carries state across training windows."""
        return [i for i, b in enumerate(self.blocks) if b.carries]

    def new_state(self) -> CarriedState:
        """An empty carried state (every stream starts), for ``forward(..., state=)``."""
        return CarriedState(len(self.blocks))

    def forward(self, idx, targets=None, cache=None, pos=None, state=None):
        """idx: (B, T) token ids. Returns (logits (B, T, V), loss or None), both from the head.

        With ``cache``, the T tokens continue after the ``cache.length`` tokens already seen.
        ``pos`` (T,) overrides their absolute positions. With ``state`` (a :class:`CarriedState`,
        training on contiguous windows), each row continues the stream of the same row of the last
        call: the layers whose mixer carries state start from ``state.layers[i]`` and leave their
        new state there. The loss includes auxiliary losses that modules report (``aux_loss``, see
        :meth:`aux_loss`), e.g. MoE load balancing.
        """
        B, T = idx.shape
        if state is not None and cache is not None:
            raise ZooError("give a forward either a cache (generation) or a carried state (training on "
                           "contiguous windows), not both.")
        if pos is None:
            start = cache.length if cache is not None else 0
            pos = torch.arange(start, start + T, device=idx.device)  # (T,)
            end = start + T
        else:
            end = pos[-1] + 1  # a 0-d tensor: no host sync, so a compiled decode step has no graph break
        x = self.wte(idx)  # (B, T, C)
        x = self.drop(self.posenc.embed(x, pos))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, self.posenc, pos, cache.layers[i] if cache is not None else None, state)  # (B, T, C)
        if cache is not None:
            cache.length = end
        logits, loss = self.head(x, targets, self)  # (B, T, V), scalar or None
        if loss is not None:
            aux = self.aux_loss()
            if aux is not None:
                loss = loss + aux
        return logits, loss

    def aux_loss(self):
        """Sum of the auxiliary losses that modules set during the last forward, or None: the
        modules :meth:`find_aux_losses` recorded at the build (any module, the head included)."""
        total = None
        for m in self._aux_modules:
            a = m.aux_loss  # declared: HasAuxLoss
            if isinstance(a, torch.Tensor):
                total = a if total is None else total + a
        return total


def build_from_spec(spec: dict, reg=None) -> Transformer:
    """The ``nn.Module`` of a resolved spec, its components' classes from ``reg`` (default: the
    loaded registry), with the spec's ``transforms`` applied in order (e.g. LoRA adapters, zoo
    finetune --lora) and the parameters they freeze frozen."""
    reg = reg or get_registry()
    cls = component_classes(reg)
    model = Transformer(spec, cls("attention", spec["attention"]["name"]), cls("posenc", spec["posenc"]["name"]),
                        cls("ffn", spec["ffn"]["name"]), component_cls=cls, components=reg.components)
    if spec.get("transforms"):
        apply_transforms(model, spec, reg)
        model.find_aux_losses()  # a transform may have added modules that report one
    return model


def carried_layers(spec: dict, reg=None) -> list:
    """Indices of the layers of a spec whose mixer class carries state across training windows
    (:class:`zoo.plugin.protocols.CarriesState`), without building the model."""
    reg = reg or get_registry()
    refs = [layer_components(spec, i)["attention"] for i in range(spec["n_layers"])]
    return [i for i, ref in enumerate(refs)
            if carries_state(reg.get("attention", ref["name"]).cls, dims_of(spec, i), ref["params"])]


def _numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


def block_groups(spec: dict, reg=None):
    """(first layer, number of layers, Block) for each distinct layer of a spec, the Block built on
    the meta device (no weights allocated); with the spec's transforms applied (to the distinct
    blocks together, standing in for the model)."""
    reg = reg or get_registry()
    component_cls = component_classes(reg)
    att, ffn = component_cls("attention", spec["attention"]["name"]), component_cls("ffn", spec["ffn"]["name"])
    with torch.device("meta"):
        out = [(first, count, Transformer._block(spec, first, att, ffn, component_cls, reg.components))
               for first, count in layer_groups(spec)]
        if spec.get("transforms"):
            holder = _Blocks([b for _, _, b in out])
            apply_transforms(holder, spec, reg, freeze=False)
            out = [(first, count, block) for (first, count, _), block in zip(out, holder.blocks)]
    return out


def param_count(spec: dict, reg=None) -> int:
    """Parameters of the model a spec describes, counted without allocating its weights and
    without building every layer: one block per distinct layer (see
    :func:`zoo.spec.resolve.layer_groups`), times the layers like it, plus the embedding, the
    positional encoding, the final norm, an untied output projection and the head's own parameters.
    The same number as
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
        head = spec.get("head", DEFAULT_HEAD)
        rest.append(reg.get("head", head["name"]).cls(dims_of(spec), **head["params"]))
    return sum(_numel(m) for m in rest) + sum(count * _numel(b) for _, count, b in groups)
