"""zoo: a plugin-based zoo of LLM components.

    import zoo
    zoo.list_models("gpt2*")
    model = zoo.build("gpt2-rope-gqa", preset="tiny", n_layers=4)
    zoo.get_registry().list_components("attention")

This module is the facade only: each function hands over to the layer that does the work
(``zoo.spec``, ``zoo.nn``, ``zoo.io``); nothing inside the zoo imports it. docs/plugins.md
describes the layout.
"""
from __future__ import annotations

from .errors import ManifestError, PluginError, ZooError
from .spec.catalog import configure, get_registry
from .version import PLUGIN_API_VERSION, __version__

__all__ = ["ZooError", "ManifestError", "PluginError", "build", "build_from_spec", "resolve", "load",
           "list_models", "get_registry", "configure", "param_count", "kv_cache_bytes_per_token",
           "__version__", "PLUGIN_API_VERSION"]


def list_models(pattern: str = "*"):
    """Names of the registered models matching a shell-style pattern."""
    return get_registry().list_models(pattern)


def resolve(name: str, preset: str | None = None, **overrides) -> dict:
    """The validated spec of a named model at a preset; overrides use dotted keys
    (``n_layers=4``, ``**{"attention.params.n_kv_heads": 2}``)."""
    from .spec.resolve import resolve_spec
    return resolve_spec(get_registry(), name, preset, overrides)


def build_from_spec(spec: dict, reg=None):
    """Build the ``nn.Module`` of a resolved spec."""
    from .nn.transformer import build_from_spec as build_
    return build_(spec, reg)


def build(name: str, preset: str | None = None, **overrides):
    """Build a named model (``zoo list``) at a preset, with overrides, as an ``nn.Module``."""
    return build_from_spec(resolve(name, preset, **overrides))


def load(path, device=None, dtype=None):
    """(model, tokenizer) of a run directory or checkpoint file, the model in eval mode
    (see ``zoo.generate`` to sample from it)."""
    from .io.checkpoint import load_run
    return load_run(path, device=device, dtype=dtype)


def param_count(spec: dict) -> int:
    """Parameters of the model a spec describes, counted without allocating its weights."""
    from .nn.transformer import param_count as count
    return count(spec)


def kv_cache_bytes_per_token(spec: dict, dtype_bytes: int = 2):
    """KV-cache bytes per token over all layers, from each layer's attention's own report (None if
    one has none)."""
    from .nn.cache import kv_cache_bytes_per_token as kv_bytes
    return kv_bytes(spec, get_registry(), dtype_bytes)
