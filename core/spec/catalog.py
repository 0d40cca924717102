"""The loaded registry: the plugins discovered through entry points, the models and presets they
register (checked against the manifest schema), and the user's manifest files (``--manifest``,
``ZOO_MANIFEST``). Loaded once and cached; :func:`configure` changes the manifests and reloads."""
from __future__ import annotations

from ..plugin.registry import Registry, discover
from .manifest import _schema_error, _validator, add_user_manifests, check_entry, user_manifest_paths

_STATE = {"registry": None, "manifests": []}


def check_registered(what: str, name, entry, origin: str):
    """Pass 1 of the validation for what a plugin registers: a model or preset entry, or a manifest."""
    if what == "manifest":
        _schema_error(_validator(None), entry, origin, "",
                      "Fix it; see core/spec/schema/manifest.schema.json for the allowed keys.")
    else:
        _schema_error(_validator("name"), name, f"{what} name {name!r} (from {origin})", "",
                      f"Rename the {what}.")
        check_entry(entry, what, name, origin)


def load_registry(extra_plugins=(), use_entry_points=True) -> Registry:
    """Discover the plugins (see :func:`zoo.plugin.registry.discover`), checking the models they register."""
    return discover(extra_plugins, use_entry_points, check_model=check_registered)


def configure(manifests=(), reload: bool = True):
    """Add user manifest files (besides ``ZOO_MANIFEST``) and reload the registry."""
    _STATE["manifests"] = list(manifests)
    if reload:
        _STATE["registry"] = None


def configured_manifests() -> list:
    return list(_STATE["manifests"])


def get_registry(strict: bool = False) -> Registry:
    """The loaded plugin registry (cached): components, models, presets and plugin problems."""
    if _STATE["registry"] is None:
        reg = load_registry()
        reg.warn_problems(strict=strict)
        add_user_manifests(reg, user_manifest_paths(_STATE["manifests"]))
        _STATE["registry"] = reg
    return _STATE["registry"]
