"""Transforms applied to a built model (the ``transform`` kind): what the core does with them, and
the helpers a transform plugin walks the model with.

A spec's ``"transforms": [{"name", "params"}, ...]`` are built from the registry as
``cls(**params)`` and applied in order after the model is built and before its weights load
(:func:`apply_transforms`). Then each parameter's ``requires_grad`` follows what the transforms say
(:class:`zoo.plugin.protocols.SelectsTrainable`): frozen when one says False and none says True.
:func:`merge_transforms` folds them back into the weights, last first, for ``zoo lora merge`` and
``zoo export hf`` (:class:`zoo.plugin.protocols.MergesWeights`).

A transform reaches the layers it may change only through the components' declarations:
:func:`component_sites` gives the components of every block, :func:`replaceable_linears` the Linear
layers a component declares (:class:`zoo.plugin.protocols.DeclaresLinears`; by default every
``nn.Linear`` below it), :func:`stacked_params` the stacked weights it holds
(:class:`zoo.plugin.protocols.DeclaresStacked`), which a transform that cannot handle them refuses
by name. ``zoo.components`` exports these for plugins.
"""
from __future__ import annotations

import torch.nn as nn

from ..errors import ZooError
from ..plugin.contract import LAYER_KINDS, SLOT_ATTR
from ..plugin.protocols import DeclaresLinears, DeclaresStacked, MergesWeights, trainable_of


def component_sites(model, kinds=LAYER_KINDS):
    """(path, kind, component) of every layer component of ``kinds`` ("attention", "ffn") in
    ``model.blocks``, e.g. ("blocks.0.attn", "attention", <the attention module>)."""
    for i, block in enumerate(model.blocks):
        for kind in kinds:
            comp = getattr(block, SLOT_ATTR[kind], None)
            if isinstance(comp, nn.Module):
                yield f"blocks.{i}.{SLOT_ATTR[kind]}", kind, comp


def replaceable_linears(component) -> list:
    """[(name below the component, module)] of the Linear layers a transform may replace: those the
    component declares in ``zoo_linears``, else every ``nn.Linear`` below it."""
    if isinstance(component, DeclaresLinears):
        return [(name, component.get_submodule(name)) for name in component.zoo_linears]
    return [(name, m) for name, m in component.named_modules() if isinstance(m, nn.Linear)]


def stacked_params(component) -> tuple:
    """Names of the parameters below ``component`` (itself included) that hold several Linear
    weights stacked (``zoo_stacked`` of it and of the modules below it), as paths below it."""
    out = []
    for prefix, m in component.named_modules():
        if isinstance(m, DeclaresStacked):
            out += [f"{prefix}.{n}" if prefix else n for n in m.zoo_stacked]
    return tuple(out)


def replace_module(root, path: str, new):
    """Put ``new`` at ``path`` below ``root`` (in place of what is there)."""
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, new)


def build_transforms(spec: dict, reg) -> list:
    """The transform objects of a resolved spec, in order."""
    return [reg.get("transform", ref["name"]).cls(**ref.get("params", {})) for ref in spec.get("transforms") or []]


def apply_transforms(model, spec: dict, reg, freeze: bool = True) -> list:
    """Apply a spec's transforms to ``model`` in place, in order; with ``freeze`` set each
    parameter's ``requires_grad`` as they say. Returns the transform objects."""
    return apply_all(model, build_transforms(spec, reg), freeze)


def apply_all(model, transforms, freeze: bool = True) -> list:
    """Apply transform objects to ``model`` in place, in order, then (``freeze``) set each
    parameter's ``requires_grad`` as they say (:func:`is_trainable`)."""
    for t in transforms:
        t.apply(model)
    if freeze and transforms:
        for name, p in model.named_parameters():
            p.requires_grad_(is_trainable(transforms, name))
    return transforms


def is_trainable(transforms, name: str) -> bool:
    """A parameter trains unless some transform says False and none says True."""
    says = [trainable_of(t, name) for t in transforms]
    return True in says or False not in says


def freezes_base(spec: dict, reg) -> bool:
    """Whether a spec's transforms freeze the model's own weights (asked of the token embedding's):
    training then keeps gradients and optimizer state only for what they add."""
    transforms = build_transforms(spec, reg)
    return bool(transforms) and not is_trainable(transforms, "wte.weight")


def merge_transforms(spec: dict, sd: dict, reg) -> tuple[dict, dict]:
    """(spec without transforms, state dict with every transform folded into the weights), the
    last transform first. A transform that cannot merge is refused by name."""
    refs = list(spec.get("transforms") or [])
    for ref, t in reversed(list(zip(refs, build_transforms(spec, reg)))):
        if not isinstance(t, MergesWeights):
            raise ZooError(f"transform {ref['name']!r} of {spec.get('name')!r} cannot be folded into the weights "
                           f"(it has no merge); this needs a model without it. Train or export one without "
                           f"that transform.")
        sd = t.merge(sd)
    out = {k: v for k, v in spec.items() if k != "transforms"}
    return out, sd
