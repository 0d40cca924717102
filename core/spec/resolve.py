"""A named model resolved to its spec, validated in passes.

1. Each manifest (and each entry a package registers) against the manifest JSON Schema
   (:mod:`zoo.spec.manifest`).
2. The resolved spec (entry + preset + overrides) against the spec schema, then each component's
   ``params`` against that component's own schema, with the schema's defaults filled in.
3. Cross-field constraints: each layer's mixer accepts the posenc's kind (uses it, tag ``posenc``,
   or runs without using it, tag ``posenc_ignores``) and some layer's mixer uses it, d_model
   divides into heads, and each component's own ``validate_spec`` (heads divisible by kv heads,
   context within what a learned posenc allows, ...).

A spec without ``head`` gets the next-token head (:data:`zoo.plugin.contract.DEFAULT_HEAD`), so specs
and checkpoints written before heads existed resolve unchanged; ``"ffn": "none"`` (or ``{"name":
"none"}``) is a block without an ffn, in the model or in a ``layers`` override.

Every error names the model, the JSON path and the fix. Per-layer composition (``layers``
overrides) is resolved here too, and each of the spec's ``transforms`` against its transform's
params schema.
"""
from __future__ import annotations

import copy
import json
import math

from jsonschema import Draft202012Validator

from ..errors import ManifestError
from ..plugin.contract import DEFAULT_HEAD, LAYER_KINDS, MODEL_KINDS, NO_FFN, POSENC_KINDS, Dims
from ..plugin.protocols import spec_problems
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
    with_defaults(spec)
    if overrides:
        spec = with_defaults(apply_overrides(spec, dict(overrides), name))
    for kind in MODEL_KINDS:
        if kind not in spec:
            raise ManifestError(f"model {name!r}: no {kind} is set. Add \"{kind}\": {{\"name\": ...}} to "
                                f"the entry or to a model it extends.")
    check_spec_schema(spec, f"model {name!r} (preset {preset!r})")
    _resolve_components(reg, spec, f"model {name!r}")  # pass 2
    where = _too_large(spec)
    if where:
        raise ManifestError(f"model {name!r} (preset {preset!r}): at {where[0]}: {where[1]} is larger than any size "
                            f"a tensor can have (2**63 - 1). Fix the entry or the override.")
    # pass 3: cross-field constraints
    problems = cross_field_problems(reg, spec)
    if problems:
        raise ManifestError(f"model {name!r} (preset {preset!r}): " + " ".join(problems))
    return spec


def validate_spec(reg, spec, where: str, fix: str = "") -> dict:
    """A stored spec (a checkpoint's) checked as :func:`resolve_spec` checks a fresh one: against
    the spec schema, each component's params against its own schema (defaults filled in), then the
    cross-field constraints. ``where`` names it in the error (e.g. "the spec of checkpoint 'x'"),
    ``fix`` is appended. Returns a copy with the components' defaults filled in."""
    spec = with_defaults(copy.deepcopy(spec))
    check_spec_schema(spec, where, fix)
    _resolve_components(reg, spec, where, fix)
    problems = cross_field_problems(reg, spec)
    if problems:
        raise ManifestError(f"{where}: " + " ".join(problems) + (f" {fix}" if fix else ""))
    return spec


def with_defaults(spec: dict) -> dict:
    """In place: the next-token head where a spec names none, and ``"ffn": "none"`` written out as
    ``{"name": "none", "params": {}}`` (in the model and in each ``layers`` override)."""
    if isinstance(spec, dict):
        spec.setdefault("head", copy.deepcopy(DEFAULT_HEAD))
        layers = spec.get("layers")
        for node in [spec, *(o for o in (layers if isinstance(layers, list) else []) if isinstance(o, dict))]:
            if node.get("ffn") == NO_FFN:
                node["ffn"] = {"name": NO_FFN, "params": {}}
    return spec


def no_ffn(ref) -> bool:
    """Whether an ffn reference is ``none`` (a block without an ffn)."""
    return ref == NO_FFN or (isinstance(ref, dict) and ref.get("name") == NO_FFN)


def check_spec_schema(spec, where: str, fix: str = ""):
    """Pass 1 for a resolved spec: its shape, before anything reads it."""
    _schema_error(_validator("spec"), spec, where, "", fix or "Fix the entry or the override.")


def _resolve_components(reg, spec, where, fix=""):
    """Pass 2: each component's params against its own schema, per-layer overrides and transforms
    too (in place)."""
    for kind in MODEL_KINDS:
        spec[kind] = _resolve_component(reg, where, kind, spec[kind], kind, fix)
    if "transforms" in spec:
        spec["transforms"] = [_resolve_component(reg, where, "transform", ref, f"transforms[{i}]", fix)
                              for i, ref in enumerate(spec["transforms"])]
    for i, override in enumerate(spec.get("layers", [])):
        for kind in LAYER_KINDS:
            if kind in override:
                override[kind] = _resolve_component(reg, where, kind, override[kind], f"layers[{i}].{kind}", fix,
                                                    layers=selected_text(override, spec["n_layers"]))


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


def _resolve_component(reg, where, kind, ref, path, fix="", layers=""):
    """Pass 2 for one component reference at JSON path ``path`` (of a ``layers`` override: the
    ``layers`` it selects, named in errors): the name is registered and the params satisfy its
    schema; returns the reference with defaults filled in."""
    if kind == "ffn" and no_ffn(ref):
        if ref.get("params"):
            raise ManifestError(f"{where}: at {path}.params: ffn 'none' (no feed-forward layer) takes no params, "
                                f"got {json.dumps(ref['params'])}. Remove them.")
        return {"name": NO_FFN, "params": {}}
    if ref["name"] not in reg.components[kind]:
        raise ManifestError(f"{where}: at {path}.name" + (f" ({layers})" if layers else "") + ": " + unknown_name_message(
            kind, ref["name"], reg.components[kind], reg.excluded_hint(kind, ref["name"])[0]))
    comp = reg.get(kind, ref["name"])
    params = ref.get("params", {})
    _schema_error(Draft202012Validator(comp.params_schema), params, where, f"{path}.params",
                  fix or f"Fix the params of {kind} {comp.name!r} (see `zoo plugins --json` for its schema).")
    return {"name": comp.name, "params": fill_defaults(comp.params_schema, params)}


# ---- per-layer composition ----------------------------------------------------------------------

def layer_selection(override: dict, n_layers: int) -> tuple[int, int, int]:
    """(from, to, every) of a ``layers`` override in a model of ``n_layers``: its own, defaults filled
    in, except that with ``shrink_period`` a period (``every``) longer than the model shrinks to the
    model's depth and the offset (``from``) scales with it, ``from * n_layers // every``: from 4
    every 8 selects layers 4, 12, 20, ... of a deep model, and layer n_layers // 2 of one with fewer
    than 8 layers (Jamba's attention layers), so every depth keeps the pattern's share."""
    start, end, every = override.get("from", 0), override.get("to", n_layers), override.get("every", 1)
    if override.get("shrink_period") and every > n_layers:
        start, every = start * n_layers // every, n_layers
    return start, end, every


def layer_selects(override: dict, layer: int, n_layers: int) -> bool:
    """Whether a ``layers`` override applies to layer ``layer`` (0-based)."""
    start, end, every = layer_selection(override, n_layers)
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


def selected_text(override: dict, n_layers: int) -> str:
    """The layers a ``layers`` override selects, in words: "layer 3", "layers 1, 3, 5", "layers 4 to
    60, every 8", "no layer of the 4"."""
    start, every = override.get("from", 0), override.get("every", 1)
    idx = range(start, min(override.get("to", n_layers), n_layers), every)
    if not idx:
        return f"no layer of the {n_layers}"
    if len(idx) <= 6:
        return ("layer " if len(idx) == 1 else "layers ") + ", ".join(map(str, idx))
    return f"layers {idx[0]} to {idx[-1]}" + (f", every {every}" if every > 1 else "")


def first_selected(override: dict, n_layers: int):
    """The first layer a ``layers`` override selects, or None when it selects none."""
    start, end, _ = layer_selection(override, n_layers)
    end = min(end, n_layers)
    return start if start < end else None


def layer_groups(spec: dict) -> list[tuple[int, int]]:
    """(first layer, number of layers) for each distinct composition of the layers (what
    :func:`layer_components` gives), in the order of their first layers.

    Layers differ only through the ``layers`` overrides, so this is worked out from the overrides'
    ranges rather than layer by layer: between the points where an override starts or ends, which
    overrides select a layer repeats with the period of their ``every`` steps. A spec of 100,000
    layers costs about what one of 10 does."""
    n, overrides = spec["n_layers"], spec.get("layers") or []
    if not overrides:
        return [(0, n)]
    sel = [layer_selection(o, n) for o in overrides]  # (from, to, every) of each
    bounds = sorted({0, n} | {min(f, n) for f, _, _ in sel} | {min(t, n) for _, t, _ in sel})
    groups = {}  # the layer's components (as JSON) -> [first layer, count]
    for a, b in zip(bounds, bounds[1:]):
        if a >= b:
            continue
        steps = [e for f, t, e in sel if f <= a and b <= t]
        period = math.lcm(*steps) if steps else 1
        # one representative per residue modulo the period, each standing for every period-th layer
        reps = [(i, len(range(i, b, period))) for i in range(a, min(b, a + period))]
        for i, count in reps:
            key = json.dumps(layer_components(spec, i), sort_keys=True, default=str)
            if key in groups:
                groups[key][1] += count
            else:
                groups[key] = [i, count]
    return sorted((first, count) for first, count in groups.values())


def _layer_problems(reg, spec: dict) -> list[str]:
    out = []
    n = spec["n_layers"]
    pe = reg.get("posenc", spec["posenc"]["name"])
    for i, override in enumerate(spec.get("layers", []) or []):
        first = first_selected(override, n)
        if first is None:
            start, end, every = layer_selection(override, n)
            out.append(f"at layers[{i}]: from={start}, to={end}, every={every}"
                       + (" (after shrink_period)" if override.get("shrink_period") else "")
                       + f" selects no layer of the {n} (0 to {n - 1}); fix the range or drop the override.")
            continue
        for kind in LAYER_KINDS:
            if kind not in override or (kind == "ffn" and no_ffn(override[kind])):
                continue
            comp = reg.get(kind, override[kind]["name"])
            if kind == "attention" and pe.tags.get("kind") not in posenc_accepted(comp.tags):
                out.append(f"at layers[{i}].attention.name ({selected_text(override, n)}): "
                           f"{_not_accepted(reg, comp, pe)}")
            for msg in spec_problems(comp.cls, dims_of(spec, first), override[kind]["params"], reg.components):
                out.append(f"at layers[{i}].{kind}.params: {msg}.")
    return out


# ---- positional encodings: which mixers use them ---------------------------------------------------

def posenc_uses(tags: dict) -> list:
    """The posenc kinds a mixer uses, from its tags: ``posenc``, default all. Absolute encodings are
    applied by the model at the embedding, so a mixer that accepts them uses them."""
    return list(tags.get("posenc", POSENC_KINDS))


def posenc_ignores(tags: dict) -> list:
    """The posenc kinds a mixer runs with but does not use, from its tags: ``posenc_ignores``, default none."""
    return list(tags.get("posenc_ignores", ()))


def posenc_accepted(tags: dict) -> list:
    """The kinds a mixer accepts: those it uses and those it ignores."""
    return posenc_uses(tags) + [k for k in posenc_ignores(tags) if k not in posenc_uses(tags)]


def _not_accepted(reg, att, pe) -> str:
    """The refusal of an encoding a mixer does not accept, naming the encodings it uses (one it only
    ignores would be refused in turn where no other layer uses it)."""
    kind = pe.tags.get("kind")
    ok = sorted(n for n, c in reg.components["posenc"].items() if c.tags.get("kind") in posenc_uses(att.tags))
    return (f"attention {att.name!r} does not accept {kind} encodings like {pe.name!r}; use one of {ok} (it "
            f"uses {posenc_uses(att.tags)} and ignores {posenc_ignores(att.tags)}: tags posenc, posenc_ignores).")


def _layers_text(spec, firsts_counts) -> str:
    n = spec["n_layers"]
    total = sum(c for _, c in firsts_counts)
    if total == n:
        return f"all {n} layers" if n > 1 else "the only layer"
    if n <= 64:
        want = {json.dumps(layer_components(spec, f), sort_keys=True, default=str) for f, _ in firsts_counts}
        idx = [i for i in range(n) if json.dumps(layer_components(spec, i), sort_keys=True, default=str) in want]
        return "layer" + ("s " if len(idx) > 1 else " ") + ", ".join(map(str, idx))
    return f"{total} of the {n} layers, from layer {min(f for f, _ in firsts_counts)}"


def _unused_posenc(reg, spec, pe) -> list[str]:
    """An encoding applied inside the mixers (rotary, bias) that no layer's mixer uses is an error."""
    kind = pe.tags.get("kind")
    if kind in ("absolute", "none"):  # applied once at the embedding by the model / nothing to use
        return []
    by_att = {}  # attention name -> [(first layer, count)]
    for first, count in layer_groups(spec):
        name = layer_components(spec, first)["attention"]["name"]
        if kind in posenc_uses(reg.get("attention", name).tags):
            return []
        by_att.setdefault(name, []).append((first, count))
    who = "; ".join(f"attention {a!r} at {_layers_text(spec, g)}" for a, g in by_att.items())
    ok = sorted(n for n, c in reg.components["posenc"].items()
                if all(c.tags.get("kind") in posenc_accepted(reg.get("attention", a).tags) for a in by_att)
                and c.tags.get("kind") in ("none", "absolute"))
    users = sorted(n for n, c in reg.components["attention"].items() if kind in posenc_uses(c.tags))
    return [(f"at posenc.name: posenc {pe.name!r} is a {kind} encoding that no layer's mixer uses ({who}: "
            f"each ignores {kind} encodings, tag posenc_ignores). Choose a posenc they work with (e.g. "
            f"{ok}), or give some layers a mixer that uses {kind} encodings (e.g. {users}) with a \"layers\" "
            f"override.")]


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
    if kind not in posenc_accepted(att.tags):
        out.append(f"at posenc.name: {_not_accepted(reg, att, pe)}")
    head = spec.get("head", DEFAULT_HEAD)
    comps = [("attention", att), ("posenc", pe), ("head", reg.get("head", head["name"]))]
    if not no_ffn(spec["ffn"]):
        comps.append(("ffn", reg.get("ffn", spec["ffn"]["name"])))
    for kind_, comp in comps:
        for msg in spec_problems(comp.cls, dims, spec[kind_]["params"] if kind_ != "head" else head["params"],
                                 reg.components):
            out.append(f"at {kind_}.params: {msg}.")
    if spec.get("layers"):
        out += _layer_problems(reg, spec)
    if not out:
        out += _unused_posenc(reg, spec, pe)
    return out
