"""The zoo's hooks: one per component kind, plus named models, commands and Hugging Face mappings.

Every hook receives a ``register`` callback, in the spirit of simonw/llm. Built-in components
use exactly these hooks, declared as entry points of the group ``zoo`` in pyproject.toml.

These hooks are part of the versioned plugin API (``zoo.PLUGIN_API_VERSION``); a plugin module or
its package declares the version it was written for as ``ZOO_API = "1.1"``. docs/plugins.md
documents the API, with an example per hook. API 1.1 added :func:`register_commands` and
:func:`register_hf_arch`; a plugin written for 1.0 implements neither and keeps working.
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
def register_head(register):
    """Call ``register(name, cls, params_schema, tags)`` for each output head (and its loss)."""


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


@hookspec
def register_commands(register):
    """Call ``register(name, help, add_arguments, run)`` for each ``zoo`` subcommand the package adds
    (API 1.1): ``add_arguments(parser)`` adds its options to an ``argparse`` parser, ``run(args)``
    runs it and returns the exit code (0, or None for 0). A name the zoo's own commands or another
    package already use is refused."""


@hookspec
def register_hf_arch(register):
    """Call ``register(name, from_hf, tensors, matches=None, to_hf=None, probe=None)`` for each Hugging
    Face architecture the package maps onto zoo components (API 1.1); ``name`` is the config's
    ``model_type``. See :class:`zoo.plugin.registry.HFArch` for what each callable does."""
