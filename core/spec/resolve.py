"""A named model resolved to its spec, validated in passes.

1. Each manifest (and each entry a package registers) against the manifest JSON Schema
   (:mod:`zoo.spec.manifest`).
2. The resolved spec (entry + preset + overrides) against the spec schema, then each component's
   ``params`` against that component's own schema, with the schema's defaults filled in.
3. Cross-field constraints: the attention accepts the posenc's kind, d_model divides into heads,
   and each component's own ``validate_spec`` (heads divisible by kv heads, context within what a
   learned posenc allows, ...).

Every error names the model, the JSON path and the fix. Per-layer composition (``layers``
overrides) is resolved here too.
"""
from __future__ import annotations

import copy

from jsonschema import Draft202012Validator

from ..errors import ManifestError
from ..plugin.contract import KINDS, LAYER_KINDS, POSENC_KINDS, Dims
from ..plugin.registry import unknown_name_message
from .manifest import DIM_KEYS, _schema_error, _validator, apply_overrides, resolve_entry


def fill_defaults(schema: dict, params: dict) -> dict:
    out = dict(params)
    for k, sub in schema.get("properties", {}).items():
        if k not in out and isinstance(sub, dict) and "default" in sub:
            out[k] = copy.deepcopy(sub["default"])
    return out


def resolve_spec(reg, name: str, preset: str | None = None, overrides: dict | None = None) -> dict:
    """The fully resolved, validated spec of a named model at a preset, with overrides."""
    entry = resolve_entry(reg, name)
    preset = preset or reg.default_preset
    if preset not in reg.presets:
        import difflib
        close = difflib.get_close_matches(preset, list(reg.presets), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ManifestError(f"model {name!r}: unknown preset {preset!r}.{hint} Known presets: "
                            f"{', '.join(reg.presets)}.")
    p = {k: v for k, v in reg.presets[preset].entry.items() if k in DIM_KEYS}
    p.setdefault("dropout", 0.0)
    spec = {"name": name, "preset": preset, **p, **entry}
    if overrides:
        spec = apply_overrides(spec, dict(overrides), name)
    for kind in KINDS:
        if kind not in spec:
            raise ManifestError(f"model {name!r}: no {kind} is set. Add \"{kind}\": {{\"name\": ...}} to "
                                f"the entry or to a model it extends.")
    _schema_error(_validator("spec"), spec, f"model {name!r} (preset {preset!r})", "",
                  "Fix the entry or the override.")
    # pass 2: each component's params against its own schema
    for kind in KINDS:
        spec[kind] = _resolve_component(reg, name, kind, spec[kind], kind)
    for i, override in enumerate(spec.get("layers", [])):  # per-layer overrides, the same way
        for kind in LAYER_KINDS:
            if kind in override:
                override[kind] = _resolve_component(reg, name, kind, override[kind], f"layers[{i}].{kind}")
    where = _too_large(spec)
    if where:
        raise ManifestError(f"model {name!r} (preset {preset!r}): at {where[0]}: {where[1]} is larger than any size "
                            f"a tensor can have (2**63 - 1). Fix the entry or the override.")
    # pass 3: cross-field constraints
    problems = cross_field_problems(reg, spec)
    if problems:
        raise ManifestError(f"model {name!r} (preset {preset!r}): " + " ".join(problems))
    return spec


def _too_large(node, path=""):
    """(JSON path, value) of the first integer beyond 64 bits in a spec, or None."""
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list):
        items = ((f"[{i}]", v) for i, v in enumerate(node))
    else:
        return (path or "(top level)", node) if isinstance(node, int) and abs(node) >= 2 ** 63 else None
    for k, v in items:
        found = _too_large(v, k if not path else (f"{path}{k}" if str(k).startswith("[") else f"{path}.{k}"))
        if found:
            return found
    return None


def _resolve_component(reg, model, kind, ref, where):
    """Pass 2 for one component reference at JSON path ``where``: the name is registered and the
    params satisfy its schema; returns the reference with defaults filled in."""
    if ref["name"] not in reg.components[kind]:
        raise ManifestError(f"model {model!r}: at {where}.name: "
                            + unknown_name_message(kind, ref["name"], reg.components[kind]))
    comp = reg.get(kind, ref["name"])
    params = ref.get("params", {})
    _schema_error(Draft202012Validator(comp.params_schema), params, f"model {model!r}", f"{where}.params",
                  f"Fix the params of {kind} {comp.name!r} (see `zoo plugins --json` for its schema).")
    return {"name": comp.name, "params": fill_defaults(comp.params_schema, params)}


# ---- per-layer composition ----------------------------------------------------------------------

def layer_selects(override: dict, layer: int, n_layers: int) -> bool:
    """Whether a ``layers`` override applies to layer ``layer`` (0-based)."""
    start, end, every = override.get("from", 0), override.get("to", n_layers), override.get("every", 1)
    return start <= layer < end and (layer - start) % every == 0


def layer_components(spec: dict, layer: int) -> dict:
    """The attention and ffn references of one layer: the model's, replaced by each ``layers``
    override that selects the layer, in order (a later override wins)."""
    out = {kind: spec[kind] for kind in LAYER_KINDS}
    for override in spec.get("layers", []) or []:
        if layer_selects(override, layer, spec["n_layers"]):
            out.update({kind: override[kind] for kind in LAYER_KINDS if kind in override})
    return out


def layer_spec(spec: dict, layer: int) -> dict:
    """The spec as one layer sees it: its own attention and ffn in place of the model's."""
    return {**spec, **layer_components(spec, layer)}


def _layer_problems(reg, spec: dict) -> list[str]:
    out = []
    n = spec["n_layers"]
    pe = reg.get("posenc", spec["posenc"]["name"])
    for i, override in enumerate(spec.get("layers", []) or []):
        # the layers selected are from, from + every, ... below min(to, n_layers): the first is `from`
        start = override.get("from", 0)
        selected = [start] if start < min(override.get("to", n), n) else []
        if not selected:
            out.append(f"at layers[{i}]: from={override.get('from', 0)}, to={override.get('to', n)}, "
                       f"every={override.get('every', 1)} selects no layer of the {n} (0 to {n - 1}); fix the "
                       f"range or drop the override.")
            continue
        for kind in LAYER_KINDS:
            if kind not in override:
                continue
            comp = reg.get(kind, override[kind]["name"])
            if kind == "attention":
                accepted = comp.tags.get("posenc", list(POSENC_KINDS))
                if pe.tags.get("kind") not in accepted:
                    ok = sorted(n_ for n_, c in reg.components["posenc"].items() if c.tags.get("kind") in accepted)
                    out.append(f"at layers[{i}].attention.name: attention {comp.name!r} does not accept "
                               f"{pe.tags.get('kind')} encodings like {pe.name!r}; use one of {ok}.")
            check = getattr(comp.cls, "validate_spec", None)
            if check is not None:
                for msg in check(dims_of(spec, selected[0]), override[kind]["params"]) or []:
                    out.append(f"at layers[{i}].{kind}.params: {msg}.")
    return out


def dims_of(spec: dict, layer: int = 0) -> Dims:
    return Dims(d_model=spec["d_model"], n_heads=spec["n_heads"], n_layers=spec["n_layers"],
                block_size=spec["block_size"], vocab_size=spec["vocab_size"], bias=spec["bias"],
                dropout=spec["dropout"], layer=layer)


def cross_field_problems(reg, spec: dict) -> list[str]:
    out = []
    if spec["d_model"] % spec["n_heads"]:
        out.append(f"at d_model: d_model={spec['d_model']} is not divisible by n_heads={spec['n_heads']}; "
                   f"choose sizes where it is.")
        return out
    dims = dims_of(spec)
    att = reg.get("attention", spec["attention"]["name"])
    pe = reg.get("posenc", spec["posenc"]["name"])
    kind = pe.tags.get("kind")
    if kind not in POSENC_KINDS:
        out.append(f"posenc {pe.name!r} (from {pe.dist}) declares kind {kind!r}; it must be one of {POSENC_KINDS}.")
    accepted = att.tags.get("posenc", list(POSENC_KINDS))
    if kind not in accepted:
        ok = sorted(n for n, c in reg.components["posenc"].items() if c.tags.get("kind") in accepted)
        out.append(f"at posenc.name: attention {att.name!r} does not accept {kind} encodings like "
                   f"{pe.name!r}; use one of {ok}.")
    for kind_, comp in (("attention", att), ("posenc", pe), ("ffn", reg.get("ffn", spec["ffn"]["name"]))):
        check = getattr(comp.cls, "validate_spec", None)
        if check is not None:
            for msg in check(dims, spec[kind_]["params"]) or []:
                out.append(f"at {kind_}.params: {msg}.")
    if spec.get("layers"):
        out += _layer_problems(reg, spec)
    return out
