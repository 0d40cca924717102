"""zoo.json: loading, ``extends``, and validation in passes.

1. Each manifest (and each entry a package registers) against the manifest JSON Schema.
2. The resolved spec (entry + preset + overrides) against the spec schema, then each component's
   ``params`` against that component's own schema, with the schema's defaults filled in.
3. Cross-field constraints: the attention accepts the posenc's kind, d_model divides into heads,
   and each component's own ``validate_spec`` (heads divisible by kv heads, context within what a
   learned posenc allows, ...).

Every error names the model, the JSON path and the fix.
"""
from __future__ import annotations

import copy
import json
import os
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from .components import POSENC_KINDS, Dims
from .errors import ManifestError
from .registry import KINDS

MODEL_DEFAULTS = {"norm": "layernorm", "bias": True, "tie_weights": True}
DIM_KEYS = ("n_layers", "n_heads", "d_model", "block_size", "vocab_size", "dropout")


@lru_cache(maxsize=None)
def manifest_schema() -> dict:
    return json.loads(files("zoo").joinpath("schema/manifest.schema.json").read_text(encoding="utf-8"))


@lru_cache(maxsize=None)
def _validator(defname: str | None):
    root = manifest_schema()
    schema = root if defname is None else {"$defs": root["$defs"], "$ref": f"#/$defs/{defname}"}
    return Draft202012Validator(schema)


def _path(error, prefix="") -> str:
    parts = [prefix] if prefix else []
    for p in error.absolute_path:
        parts.append(f"[{p}]" if isinstance(p, int) else str(p))
    return ".".join(parts) or "(top level)"


def _schema_error(validator, instance, where: str, prefix: str, fix: str):
    err = best_match(validator.iter_errors(instance))
    if err is None:
        return
    raise ManifestError(f"{where}: at {_path(err, prefix)}: {err.message}. {fix}")


def check_entry(entry, what: str, name: str, origin: str):
    """Pass 1 for one model or preset entry."""
    _schema_error(_validator(what), entry, f"{what} {name!r} (from {origin})", "",
                  f"Fix the {what} entry; see core/schema/manifest.schema.json for the allowed keys.")


def load_manifest_file(path) -> dict:
    """Read and validate (pass 1) a user manifest file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"manifest file {str(path)!r} does not exist. Check the path given to "
                            f"--manifest or ZOO_MANIFEST.") from None
    except json.JSONDecodeError as e:
        raise ManifestError(f"manifest file {str(path)!r} is not valid JSON: line {e.lineno}, column "
                            f"{e.colno}: {e.msg}. Fix the JSON syntax.") from None
    _schema_error(_validator(None), data, f"manifest {str(path)!r}", "",
                  "Fix the manifest; see core/schema/manifest.schema.json for the allowed keys.")
    return data


def user_manifest_paths(extra=()):
    env = os.environ.get("ZOO_MANIFEST", "")
    paths = [p for p in env.split(os.pathsep) if p]
    return paths + [str(p) for p in extra if p]


def add_user_manifests(reg, paths):
    """Add the models and presets of user manifest files; a name clash is an error."""
    for path in paths:
        data = load_manifest_file(path)
        for table, key, what in ((reg.presets, "presets", "preset"), (reg.models, "models", "model")):
            for name, entry in data.get(key, {}).items():
                if name in table:
                    raise ManifestError(
                        f"manifest {path!r}: {key}.{name}: the {what} name {name!r} is already defined by "
                        f"{table[name].origin}. Rename it, or use \"extends\": \"{name}\" to build on it.")
                from .registry import ModelSource
                table[name] = ModelSource(entry, "<user>", "0", f"manifest {path}")
        if "default_preset" in data:
            reg.default_preset = data["default_preset"]


# ---- resolution -------------------------------------------------------------------------------

def resolve_entry(reg, name: str) -> dict:
    """Follow ``extends`` and merge: a child's keys replace its parent's (a component reference is
    replaced whole, params included)."""
    chain, cur = [], name
    while cur is not None:
        if cur in chain:
            raise ManifestError(f"model {name!r}: extends forms a cycle: {' -> '.join(chain + [cur])}. "
                                f"Remove one of the extends links.")
        if cur not in reg.models:
            if cur == name:
                raise ManifestError(unknown_model_message(reg, name))
            raise ManifestError(f"model {chain[-1]!r}: at extends: unknown model {cur!r}. "
                                f"{unknown_model_message(reg, cur)}")
        chain.append(cur)
        cur = reg.models[cur].entry.get("extends")
    merged = dict(MODEL_DEFAULTS)
    for n in reversed(chain):
        merged.update(copy.deepcopy({k: v for k, v in reg.models[n].entry.items() if k != "extends"}))
    return merged


def unknown_model_message(reg, name):
    import difflib
    close = difflib.get_close_matches(name, list(reg.models), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (f"unknown model {name!r}.{hint} Known models: {', '.join(sorted(reg.models))}. "
            f"See `zoo list`.")


def parse_override(text: str):
    """'key=value' -> (key, value); value is JSON if it parses, else a string."""
    if "=" not in text:
        raise ManifestError(f"malformed override {text!r}: expected KEY=VALUE, e.g. --set n_layers=4 or "
                            f"--set attention.params.n_kv_heads=2.")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ManifestError(f"malformed override {text!r}: the key before '=' is empty.")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


def apply_overrides(spec: dict, overrides: dict, model: str) -> dict:
    for key, value in overrides.items():
        parts = key.split(".")
        node = spec
        for i, p in enumerate(parts[:-1]):
            if p not in node or not isinstance(node[p], dict):
                if p in KINDS and i == 0:
                    raise ManifestError(f"model {model!r}: override {key!r}: {p} is not set.")
                if node is spec and p not in spec:
                    raise ManifestError(_unknown_key(model, key, spec))
                node[p] = {}
            node = node[p]
        if node is spec and parts[-1] not in spec and parts[-1] not in DIM_KEYS + ("layers",):
            raise ManifestError(_unknown_key(model, key, spec))
        node[parts[-1]] = value
    return spec


def _unknown_key(model, key, spec):
    import difflib
    keys = sorted(set(spec) - {"name", "preset", "description"})
    close = difflib.get_close_matches(key.split(".")[0], keys, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (f"model {model!r}: unknown override key {key!r}.{hint} Overridable keys: {', '.join(keys)}, "
            f"and component params as e.g. attention.params.NAME.")


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
        comp = reg.get(kind, spec[kind]["name"]) if spec[kind]["name"] in reg.components[kind] else None
        if comp is None:
            from .registry import unknown_name_message
            raise ManifestError(f"model {name!r}: at {kind}.name: "
                                + unknown_name_message(kind, spec[kind]["name"], reg.components[kind]))
        params = spec[kind].get("params", {})
        _schema_error(Draft202012Validator(comp.params_schema), params, f"model {name!r}",
                      f"{kind}.params", f"Fix the params of {kind} {comp.name!r} (see `zoo plugins --json` "
                      f"for its schema).")
        spec[kind] = {"name": comp.name, "params": fill_defaults(comp.params_schema, params)}
    for i, override in enumerate(spec.get("layers", [])):  # per-layer overrides, the same way
        for kind in LAYER_KINDS:
            if kind in override:
                override[kind] = _resolve_component(reg, name, kind, override[kind], f"layers[{i}].{kind}")
    # pass 3: cross-field constraints
    problems = cross_field_problems(reg, spec)
    if problems:
        raise ManifestError(f"model {name!r} (preset {preset!r}): " + " ".join(problems))
    return spec


def _resolve_component(reg, model, kind, ref, where):
    """Pass 2 for one component reference at JSON path ``where``: the name is registered and the
    params satisfy its schema; returns the reference with defaults filled in."""
    if ref["name"] not in reg.components[kind]:
        from .registry import unknown_name_message
        raise ManifestError(f"model {model!r}: at {where}.name: "
                            + unknown_name_message(kind, ref["name"], reg.components[kind]))
    comp = reg.get(kind, ref["name"])
    params = ref.get("params", {})
    _schema_error(Draft202012Validator(comp.params_schema), params, f"model {model!r}", f"{where}.params",
                  f"Fix the params of {kind} {comp.name!r} (see `zoo plugins --json` for its schema).")
    return {"name": comp.name, "params": fill_defaults(comp.params_schema, params)}


# ---- per-layer composition ----------------------------------------------------------------------

LAYER_KINDS = ("attention", "ffn")


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
        selected = [j for j in range(n) if layer_selects(override, j, n)]
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
