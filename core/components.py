"""``zoo.components``: what a component author imports (part of the public plugin API).

``Dims`` and ``PosEnc`` are defined in :mod:`zoo.plugin.contract`, the caches in
:mod:`zoo.nn.cache`, the shared operations in :mod:`zoo.nn.ops` and what a transform walks a model
with in :mod:`zoo.nn.transforms`; docs/plugins.md describes each.
Nothing in the zoo itself imports this module."""
from .nn.cache import KVCache, StateCache, default_kv_elems_per_token  # noqa: F401
from .nn.ops import (causal_sdpa, flex_attention_fn, flex_causal_attention, init_residual_,  # noqa: F401
                     linear_weight, make_norm, sinusoid)
from .nn.transforms import component_sites, replace_module, replaceable_linears, stacked_params  # noqa: F401
from .plugin.base import PosEnc  # noqa: F401
from .plugin.contract import POSENC_KINDS, Dims  # noqa: F401

__all__ = ["Dims", "PosEnc", "POSENC_KINDS", "KVCache", "StateCache", "default_kv_elems_per_token", "causal_sdpa",
           "flex_attention_fn", "flex_causal_attention", "init_residual_", "make_norm", "sinusoid",
           "linear_weight", "component_sites", "replaceable_linears", "stacked_params", "replace_module",
           "parts_for"]


def parts_for(cls, params: dict, reg=None) -> dict:
    """The ``parts`` a composite component (:class:`zoo.plugin.protocols.Composite`) is made of
    with these params, from ``reg`` (default: the loaded registry), for building one by hand (a
    unit test). A model's build passes them itself, from the registry its spec was resolved with."""
    from .plugin.protocols import parts_of
    from .spec.catalog import get_registry
    return parts_of(cls, params, (reg or get_registry()).components)
