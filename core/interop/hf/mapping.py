"""What a Hugging Face architecture mapping imports (part of the public plugin API, 1.1).

A mapping is registered through the hook ``register_hf_arch`` (see
:class:`zoo.plugin.registry.HFArch` and docs/plugins.md); the built-in ones (``zoo_plugins.hf.archs``)
use this module and nothing else of the zoo's internals:

* the tensor operations of a plan (:mod:`.ops`): :class:`Copy`, :class:`T`, :class:`Cat`,
  :class:`Zeros`, :class:`ExpertsIn`, :class:`ExpertsOut`, :class:`RopeRows`, each with ``fwd``
  (HF tensors -> the zoo tensor) and its exact inverse ``inv``;
* :func:`component_sizes`: the sizes a component derives from its params, asked of the component
  itself (its class method ``sizes``, protocol :class:`zoo.plugin.protocols.DeclaresSizes`), so a
  mapping never repeats a component's formula;
* :func:`layer_components` (a layer's attention and ffn, ``layers`` overrides applied), and the small
  helpers :func:`need`, :func:`refuse`, :func:`yarn` and :func:`get_mscale` that config mappings share.
"""
from __future__ import annotations

import math

from ...errors import ZooError
from ...plugin.protocols import sizes_of
from ...spec.catalog import get_registry
from ...spec.resolve import dims_of, fill_defaults, layer_components
from .ops import Cat, Copy, ExpertsIn, ExpertsOut, RopeRows, T, Zeros

__all__ = ["Cat", "Copy", "ExpertsIn", "ExpertsOut", "RopeRows", "T", "Zeros", "component_sizes", "get_mscale",
           "layer_components", "need", "refuse", "yarn"]


class Sizes(dict):
    """A component's sizes; a size it does not declare is a :class:`ZooError` naming it."""

    def __init__(self, sizes, what):
        super().__init__(sizes)
        self.what = what

    def __missing__(self, key):
        raise ZooError(f"the {self.what} does not declare its size {key!r} (class method sizes(dims, params), "
                       f"docs/plugins.md), which this Hugging Face mapping needs; it declares "
                       f"{sorted(self) or 'none'}.")


def final_norm_and_head(spec: dict, hf_norm: str, ignored=()):
    """The end of a plan for an RMSNorm model: (entries, ignored names). The final norm's weight from
    ``hf_norm``; the output head's own weight unless the spec ties it, in which case transformers'
    ``lm_head.weight`` is the embedding and is ignored."""
    out = [("norm_f.weight", [hf_norm], Copy())]
    ignored = set(ignored)
    if spec["tie_weights"]:
        ignored.add("lm_head.weight")
    else:
        out.append(("lm_head.weight", ["lm_head.weight"], Copy()))
    return out, ignored


def component_sizes(spec: dict, kind: str, layer: int | None = None, component: dict | None = None) -> Sizes:
    """The sizes of the ``kind`` component of a resolved spec (of layer ``layer`` if given, else the
    model's), or of ``component`` (``{"name", "params"}``, defaults filled from its schema), as the
    component's class method ``sizes(dims, params)`` reports them."""
    comp = component or (layer_components(spec, layer)[kind] if layer is not None else spec[kind])
    registered = get_registry().get(kind, comp["name"])
    params = fill_defaults(registered.params_schema, comp.get("params") or {})
    return Sizes(sizes_of(registered.cls, dims_of(spec, layer or 0), params), f"{kind} {comp['name']!r}")


def need(cfg: dict, key: str, arch: str):
    """``cfg[key]``, or a :class:`ZooError` saying the config lacks it."""
    if cfg.get(key) is None:
        raise ZooError(f"{arch} config.json has no {key!r}; the file is incomplete.")
    return cfg[key]


def refuse(arch: str, what: str, fix: str = ""):
    """Refuse, by name, a config option no zoo component represents."""
    raise ZooError(f"cannot import this {arch} checkpoint: {what}, which no zoo component represents"
                   + (f"; {fix}" if fix else "") + ". Nothing was written.")


def get_mscale(scale, mscale=1.0):
    """YaRN's attention temperature, as transformers computes it."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def yarn(rp: dict, cfg: dict) -> dict:
    """The rope component's yarn scaling of a config's rope parameters."""
    factor = float(rp["factor"])
    old = int(rp.get("original_max_position_embeddings") or need(cfg, "max_position_embeddings", "yarn rope"))
    att = rp.get("attention_factor")
    if att is None:
        m, m_all = rp.get("mscale"), rp.get("mscale_all_dim")
        att = get_mscale(factor, m) / get_mscale(factor, m_all) if m and m_all else get_mscale(factor)
    return {"type": "yarn", "factor": factor, "original_max_position_embeddings": old,
            "beta_fast": float(rp.get("beta_fast") or 32), "beta_slow": float(rp.get("beta_slow") or 1),
            "attention_factor": float(att), "truncate": bool(rp.get("truncate", True))}
