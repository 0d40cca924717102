"""zoo: a plugin-based zoo of LLM components.

    import zoo
    zoo.list_models("gpt2*")
    model = zoo.build("gpt2-rope-gqa", preset="tiny", n_layers=4)
    zoo.get_registry().list_components("attention")
"""
from __future__ import annotations

from .errors import ManifestError, PluginError, ZooError

__version__ = "0.1.0"
PLUGIN_API_VERSION = "1.0"

_REGISTRY = None
_MANIFESTS: list = []


def configure(manifests=(), reload: bool = True):
    """Add user manifest files (besides ``ZOO_MANIFEST``) and reload the registry."""
    global _MANIFESTS, _REGISTRY
    _MANIFESTS = list(manifests)
    if reload:
        _REGISTRY = None


def get_registry(strict: bool = False):
    """The loaded plugin registry (cached): components, models, presets and plugin problems."""
    global _REGISTRY
    if _REGISTRY is None:
        from .manifest import add_user_manifests, user_manifest_paths
        from .registry import load_registry
        reg = load_registry()
        reg.warn_problems(strict=strict)
        add_user_manifests(reg, user_manifest_paths(_MANIFESTS))
        _REGISTRY = reg
    return _REGISTRY


def list_models(pattern: str = "*"):
    """Names of the registered models matching a shell-style pattern."""
    return get_registry().list_models(pattern)


def resolve(name: str, preset: str | None = None, **overrides) -> dict:
    """The validated spec of a named model at a preset; overrides use dotted keys
    (``n_layers=4``, ``**{"attention.params.n_kv_heads": 2}``)."""
    from .manifest import resolve_spec
    return resolve_spec(get_registry(), name, preset, overrides)


def build_from_spec(spec: dict, reg=None):
    """Build the ``nn.Module`` of a resolved spec."""
    from .model import Transformer
    reg = reg or get_registry()
    model = Transformer(spec, reg.get("attention", spec["attention"]["name"]).cls,
                        reg.get("posenc", spec["posenc"]["name"]).cls, reg.get("ffn", spec["ffn"]["name"]).cls,
                        component_cls=lambda kind, name: reg.get(kind, name).cls)
    if spec.get("lora"):  # low-rank adapters on a frozen base (zoo finetune --lora)
        from .lora import apply_lora
        apply_lora(model, spec["lora"])
    return model


def build(name: str, preset: str | None = None, **overrides):
    """Build a named model (``zoo list``) at a preset, with overrides, as an ``nn.Module``."""
    return build_from_spec(resolve(name, preset, **overrides))


def load(path, device=None, dtype=None):
    """(model, tokenizer) of a run directory or checkpoint file, the model in eval mode
    (see ``zoo.generate`` to sample from it)."""
    from .generate import load as _load
    return _load(path, device=device, dtype=dtype)


__all__ = ["ZooError", "ManifestError", "PluginError", "build", "build_from_spec", "resolve", "load",
           "list_models", "get_registry", "configure", "param_count", "kv_cache_bytes_per_token",
           "__version__", "PLUGIN_API_VERSION"]


def param_count(spec: dict) -> int:
    """Parameters of the model a spec describes, counted without allocating its weights."""
    import torch
    with torch.device("meta"):
        return build_from_spec(spec).num_params()


def kv_cache_bytes_per_token(spec: dict, dtype_bytes: int = 2):
    """KV-cache bytes per token over all layers, from each layer's attention's own report (None if
    one has none)."""
    from .manifest import dims_of, layer_components
    total = 0
    for i in range(spec["n_layers"]):
        ref = layer_components(spec, i)["attention"]
        fn = getattr(get_registry().get("attention", ref["name"]).cls, "kv_cache_elems_per_token", None)
        if fn is None:
            return None
        total += int(fn(dims_of(spec, i), ref["params"]))
    return total * dtype_bytes
