"""The Hugging Face architectures the zoo maps: those registered through the hook
``register_hf_arch`` (plugin API 1.1), the built-in ones (``zoo_plugins.hf.archs``) included. Each is a
:class:`zoo.plugin.registry.HFArch`; :func:`arch_for` picks the one of a config for import,
:func:`export_arch` the first whose ``matches`` accepts a spec for export (built-ins first, then
packages in the order they loaded)."""
from __future__ import annotations

from ...errors import ZooError
from ...spec.catalog import get_registry


def arch_for(cfg: dict):
    """The mapping of a config.json's ``model_type``."""
    archs = get_registry().hf_archs
    mt = cfg.get("model_type")
    if mt not in archs:
        raise ZooError(f"unknown architecture model_type={mt!r} (architectures: {cfg.get('architectures')}); "
                       f"the zoo imports {', '.join(sorted(archs)) or 'none'} (a package adds one through the "
                       f"hook register_hf_arch, docs/plugins.md). Nothing was written.")
    return archs[mt]


def export_arch(spec: dict):
    """The first mapping that can express ``spec``, or a ZooError with every mapping's reasons."""
    head = (spec.get("head") or {}).get("name", "next_token")
    if head != "next_token":
        raise ZooError(f"cannot export {spec['name']!r} to Hugging Face: its head is {head!r}, and the architectures "
                       f"the zoo exports predict the next token with a plain output projection (head next_token).")
    reasons = {}
    for a in get_registry().hf_archs.values():
        if a.matches is None:  # import only
            continue
        why = list(a.matches(spec))
        if not why:
            return a
        reasons[a.name] = why
    detail = "; ".join(f"not {k}: {', '.join(v)}" for k, v in reasons.items())
    raise ZooError(f"cannot export {spec['name']!r} to Hugging Face: its components match no architecture the "
                   f"zoo exports ({detail or 'no mapping exports'}).")
