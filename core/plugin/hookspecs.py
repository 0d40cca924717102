"""The zoo's hooks: one per component kind (transforms included), plus one for named models.

Every hook receives a ``register`` callback, in the spirit of simonw/llm. Built-in components
use exactly these hooks, declared as entry points of the group ``zoo`` in pyproject.toml.

These hooks are part of the versioned plugin API (``zoo.PLUGIN_API_VERSION``); a plugin module or
its package declares the version it was written for as ``ZOO_API = "1.0"``. docs/plugins.md
documents the API, with an example per hook.
"""
import pluggy

hookspec = pluggy.HookspecMarker("zoo")
hookimpl = pluggy.HookimplMarker("zoo")


@hookspec
def register_attention(register):
    """Call ``register(name, cls, params_schema, tags)`` for each attention implementation."""


@hookspec
def register_posenc(register):
    """Call ``register(name, cls, params_schema, tags)`` for each positional encoding."""


@hookspec
def register_ffn(register):
    """Call ``register(name, cls, params_schema, tags)`` for each feed-forward layer."""


@hookspec
def register_transform(register):
    """Call ``register(name, cls, params_schema, tags)`` for each transform: a class built as
    ``cls(**params)`` whose ``apply(model)`` changes a built model in place (see
    :class:`zoo.plugin.protocols.Transform`). A spec lists the transforms to apply, in order, as
    ``"transforms": [{"name": ..., "params": {...}}]``."""


@hookspec
def register_models(register):
    """Call ``register(name, entry)`` with zoo.json-style model entries, or
    ``register(None, manifest)`` with a whole manifest dict (``{"models": ..., "presets": ...}``)."""
