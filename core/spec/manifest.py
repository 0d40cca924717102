"""zoo.json files: the manifest schema, reading and checking a manifest (pass 1 of the validation,
see :mod:`zoo.spec.resolve`), user manifests, ``extends`` and ``--set`` overrides."""
from __future__ import annotations

import copy
import json
import math
import os
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from ..errors import ManifestError
from ..plugin.contract import MODEL_KINDS
from ..plugin.registry import ModelSource
from .legacy import upgrade_manifest

MODEL_DEFAULTS = {"norm": "layernorm", "bias": True, "tie_weights": True}
DIM_KEYS = ("n_layers", "n_heads", "d_model", "block_size", "vocab_size", "dropout")


@lru_cache(maxsize=None)
def manifest_schema() -> dict:
    return json.loads(files("zoo.spec").joinpath("schema/manifest.schema.json").read_text(encoding="utf-8"))


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


def whole_numbers(schema: dict, instance, root: dict | None = None):
    """Where ``schema`` expects an integer, turn a float that is a whole number (``1e3``, ``64.0``: JSON
    Schema counts them as integers) into that int, in place; returns the instance (a bare number is
    returned converted). Local ``$ref``s, ``properties``, ``additionalProperties``, ``items`` and the
    ``anyOf``/``oneOf``/``allOf`` branches are followed."""
    root = root if root is not None else schema
    if not isinstance(schema, dict):
        return instance
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        node = root
        for part in ref[2:].split("/"):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        instance = whole_numbers(node, instance, root)
    types = schema.get("type")
    types = [types] if isinstance(types, str) else types or []
    if ("integer" in types and "number" not in types and isinstance(instance, float)
            and math.isfinite(instance) and instance.is_integer()):
        return int(instance)
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key, []) or []:
            instance = whole_numbers(sub, instance, root)
    if isinstance(instance, dict):
        props = schema.get("properties", {}) or {}
        extra = schema.get("additionalProperties")
        for k in list(instance):
            sub = props.get(k, extra if isinstance(extra, dict) else None)
            if sub is not None:
                instance[k] = whole_numbers(sub, instance[k], root)
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(instance):
            instance[i] = whole_numbers(schema["items"], v, root)
    return instance


def _schema_error(validator, instance, where: str, prefix: str, fix: str):
    whole_numbers(validator.schema, instance)  # 64.0 where an integer is expected is 64
    err = best_match(validator.iter_errors(instance))
    if err is None:
        return
    message = err.message
    if err.validator == "pattern" and "description" in err.schema:  # the rule in words, not the regex
        message = f"{err.instance!r} is not allowed: {err.schema['description']}"
    raise ManifestError(f"{where}: at {_path(err, prefix)}: {message}. {fix}")


def check_entry(entry, what: str, name: str, origin: str):
    """Pass 1 for one model or preset entry."""
    _schema_error(_validator(what), entry, f"{what} {name!r} (from {origin})", "",
                  f"Fix the {what} entry; see core/spec/schema/manifest.schema.json for the allowed keys.")


def load_manifest_file(path) -> dict:
    """Read and validate (pass 1) a user manifest file."""
    path = Path(path)
    try:
        data = loads_finite(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"manifest file {str(path)!r} does not exist. Check the path given to "
                            f"--manifest or ZOO_MANIFEST.") from None
    except IsADirectoryError:
        raise ManifestError(f"manifest {str(path)!r} is a directory; give the path of a zoo.json-style file "
                            f"to --manifest or ZOO_MANIFEST.") from None
    except UnicodeDecodeError as e:
        raise ManifestError(f"manifest file {str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start}): "
                            f"a manifest is a JSON file like zoo.json.") from None
    except OSError as e:
        raise ManifestError(f"cannot read manifest file {str(path)!r}: {e.strerror or e}.") from None
    except json.JSONDecodeError as e:
        raise ManifestError(f"manifest file {str(path)!r} is not valid JSON: line {e.lineno}, column "
                            f"{e.colno}: {e.msg}. Fix the JSON syntax.") from None
    except ValueError as e:  # NaN or Infinity (see _no_constant)
        raise ManifestError(f"manifest file {str(path)!r}: {e}.") from None
    data = upgrade_manifest(data)  # an old run's manifest.json (its "lora" key)
    _schema_error(_validator(None), data, f"manifest {str(path)!r}", "",
                  "Fix the manifest; see core/spec/schema/manifest.schema.json for the allowed keys.")
    return data


def _no_constant(name):
    raise ValueError(f"{name} is not a number a manifest can hold; write a finite number")


def _finite(text):
    x = float(text)
    if not math.isfinite(x):
        raise ValueError(f"{text} is too large to be a number; write a finite one")
    return x


def loads_finite(text: str):
    """``json.loads`` refusing NaN, Infinity and numbers too large for a float (ValueError)."""
    return json.loads(text, parse_constant=_no_constant, parse_float=_finite)


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
                table[name] = ModelSource(entry, "<user>", "0", f"manifest {path}")
        if "default_preset" in data:
            reg.default_preset = data["default_preset"]


# ---- extends and overrides --------------------------------------------------------------------

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
        value = loads_finite(raw)
    except json.JSONDecodeError:
        value = raw
    except ValueError as e:  # NaN, Infinity, 1e999
        raise ManifestError(f"override {text!r}: {e}.") from None
    return key, value


def apply_overrides(spec: dict, overrides: dict, model: str) -> dict:
    for key, value in overrides.items():
        parts = key.split(".")
        node = spec
        for i, p in enumerate(parts[:-1]):
            if p not in node or not isinstance(node[p], dict):
                if p in MODEL_KINDS and i == 0:
                    raise ManifestError(f"model {model!r}: override {key!r}: {p} is not set.")
                if node is spec and p not in spec:
                    raise ManifestError(_unknown_key(model, key, spec))
                node[p] = {}
            node = node[p]
        if node is spec and parts[-1] not in spec and parts[-1] not in DIM_KEYS + ("layers",):
            raise ManifestError(_unknown_key(model, key, spec))
        node[parts[-1]] = value
        if parts == ["ffn", "name"] and value == "none":  # no ffn: the old ffn's params go with it
            spec["ffn"] = {"name": "none"}
    return spec


def _unknown_key(model, key, spec):
    import difflib
    keys = sorted(set(spec) - {"name", "preset", "description"})
    close = difflib.get_close_matches(key.split(".")[0], keys, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (f"model {model!r}: unknown override key {key!r}.{hint} Overridable keys: {', '.join(keys)}, "
            f"and component params as e.g. attention.params.NAME.")
