"""``zoo.hookspecs``: the hook markers a plugin module uses (``from zoo.hookspecs import hookimpl``).

Part of the public plugin API; the hooks are defined in :mod:`zoo.plugin.hookspecs`."""
from .plugin.hookspecs import (hookimpl, hookspec, register_attention, register_commands,  # noqa: F401
                               register_ffn, register_head, register_hf_arch, register_models,
                               register_posenc, register_transform)
