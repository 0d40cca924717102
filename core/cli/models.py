"""``zoo list``, ``zoo show``, ``zoo plugins``, ``zoo validate`` and ``zoo check``: the models and
components that are registered."""
from __future__ import annotations

import json
import sys

from ..errors import ZooError
from ..plugin.contract import KINDS, LAYER_KINDS, MODEL_KINDS, SLOT_ATTR
from ..plugin.registry import BUILTIN_DIST
from ..spec.catalog import configure, configured_manifests, get_registry
from ..spec.manifest import load_manifest_file
from ..spec.resolve import layer_selection, resolve_spec
from ..version import PLUGIN_API_VERSION
from .util import fmt_params, overrides, table


def _comp(spec, kind):
    c = spec[kind]
    extra = ",".join(f"{k}={v}" for k, v in c["params"].items() if v is not None)
    return f"{c['name']}({extra})" if extra else c["name"]


def param_count(spec, reg):
    from ..perf.memory import count_params
    n = count_params(spec, reg)
    if n is None:
        raise ZooError(f"model {spec['name']!r} is too large for torch to describe: one of its weights would hold "
                       f"more than 2**63 elements or bytes. Choose smaller sizes (--preset, --set) or smaller "
                       f"component params.")
    return n


def cmd_list(args):
    reg = get_registry()
    preset = args.preset or reg.default_preset
    rows, data = [], []
    for name in reg.list_models(args.pattern):
        spec = resolve_spec(reg, name, preset)
        n = param_count(spec, reg)
        rows.append([name, fmt_params(n), _comp(spec, "attention"), _comp(spec, "posenc"), _comp(spec, "ffn"),
                     spec["norm"], reg.models[name].origin])
        data.append({"name": name, "preset": preset, "params": n, "attention": spec["attention"],
                     "posenc": spec["posenc"], "ffn": spec["ffn"], "norm": spec["norm"],
                     "description": spec.get("description", ""), "source": reg.models[name].origin})
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(f"models at preset {preset!r} (presets: {', '.join(reg.presets)})")
        print(table(rows, ["name", "params", "attention", "posenc", "ffn", "norm", "from"]))


def cmd_show(args):
    from ..nn.cache import cache_bytes
    reg = get_registry()
    spec = resolve_spec(reg, args.name, args.preset, overrides(args.set))
    sizes = {"bf16": cache_bytes(spec, reg, 2), "fp32": cache_bytes(spec, reg, 4)}
    info = {"spec": spec, "params": param_count(spec, reg),
            "kv_cache_bytes_per_token": {k: v and v[0] for k, v in sizes.items()},
            # a fixed-size state (a recurrent mixer's) per sequence, whatever its length
            "cache_bytes_per_sequence": {k: v and v[1] for k, v in sizes.items()},
            # multi-head attention's figure for comparison: keys and values, d_model each, per layer
            "mha_kv_cache_bytes_per_token": {"bf16": 2 * spec["d_model"] * spec["n_layers"] * 2,
                                             "fp32": 2 * spec["d_model"] * spec["n_layers"] * 4},
            "component_params": _component_params(spec)}
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(f"{spec['name']} at preset {spec['preset']!r}: {spec.get('description', '')}")
    for key in ("n_layers", "n_heads", "d_model", "block_size", "vocab_size", "dropout", "norm", "bias", "tie_weights"):
        print(f"  {key:<12} {spec[key]}")
    for kind in MODEL_KINDS:
        print(f"  {kind:<12} {spec[kind]['name']} {json.dumps(spec[kind]['params'])}")
    for i, t in enumerate(spec.get("transforms", [])):
        print(f"  {f'transforms[{i}]':<12} {t['name']} {json.dumps(t['params'])}")
    for i, o in enumerate(spec.get("layers", [])):
        start, end, every = layer_selection(o, spec["n_layers"])
        sel = f"layers {start}..{end - 1}" + (f" every {every}" if every > 1 else "")
        print(f"  {f'layers[{i}]':<12} {sel}: " + ", ".join(f"{k} {o[k]['name']} {json.dumps(o[k]['params'])}" for k in LAYER_KINDS if k in o))
    print(f"  {'parameters':<12} {info['params']:,} ({fmt_params(info['params'])})")
    kv, fixed = info["kv_cache_bytes_per_token"], info["cache_bytes_per_sequence"]
    if kv["bf16"] is None:
        print(f"  {'cache':<12} not reported by attention {spec['attention']['name']!r}")
    else:
        total = kv["bf16"] * spec["block_size"] + fixed["bf16"]
        print(f"  {'cache':<12} {kv['bf16']:,} bytes/token in bf16, {kv['fp32']:,} in fp32 "
              f"({total / 2**20:.2f} MiB per sequence of {spec['block_size']} in bf16)")
        print(f"  {'':<12} plus a fixed {fixed['bf16']:,} bytes per sequence in bf16, {fixed['fp32']:,} in fp32 "
              + ("(a state whose size does not grow with the sequence)" if fixed["bf16"] else "(no fixed-size state)"))
    window = spec["attention"]["params"].get("window")
    if kv["bf16"] is not None and window and window < spec["block_size"]:
        print(f"  {'':<12} sliding window {window}: the cache holds at most {window} positions "
              f"({kv['bf16'] * window / 2**20:.2f} MiB per sequence in bf16)")
    print(f"  {'':<12} multi-head attention: {info['mha_kv_cache_bytes_per_token']['bf16']:,} bytes/token in bf16")
    for key, (n, per) in info["component_params"].items():
        print(f"  {SLOT_ATTR[key] + ' params':<12} {n:,} ({fmt_params(n)}) in all layers, {per}")


def _component_params(spec):
    """Parameters of the attention and ffn layers over all blocks (one block built per distinct
    layer, on the meta device)."""
    from ..nn.transformer import block_groups
    groups = block_groups(spec)
    out = {}
    for kind, attr in SLOT_ATTR.items():
        parts = [(getattr(b, attr), n) for _, n, b in groups]  # an ffn is None in a layer with ffn: none
        counts = [(0, n, "none") if m is None else (sum(p.numel() for p in m.parameters()), n, type(m).__name__)
                  for m, n in parts]
        if len({(c, name) for c, _, name in counts}) == 1:
            per = f"{counts[0][0]:,} per layer ({counts[0][2]})"
        else:  # layers that differ (per-layer overrides), in the order of their first layer
            per = "per layer " + ", ".join(f"{c:,} x {n} ({name})" for c, n, name in counts)
        out[kind] = (sum(c * n for c, n, _ in counts), per)
    return out


def cmd_plugins(args):
    reg = get_registry()
    comps = [c.info() for c in reg.list_components()]
    problems = [{"dist": d, "reason": r} for d, r in reg.problems]
    if args.json:
        print(json.dumps({"api_version": PLUGIN_API_VERSION,
                          "distributions": {d: {"version": v, "api": reg.api_versions.get(d)}
                                            for d, v in sorted(reg.dists.items())},
                          "components": comps, "models": {n: {"dist": s.dist, "version": s.version, "origin": s.origin}
                                                          for n, s in sorted(reg.models.items())},
                          "commands": [c.info() for _, c in sorted(reg.commands.items())],
                          "hf_archs": [a.info() for a in reg.hf_archs.values()],
                          "problems": problems}, indent=2, default=str))
        return
    rows = [[c["kind"], c["name"], f"{c['dist']} {c['version']}",
             ", ".join(f"{k}={v}" for k, v in c["tags"].items() if k not in ("example_params", "known_failures"))]
            for c in comps]
    print(table(rows, ["kind", "name", "distribution", "tags"]))
    models_by = {}
    for n, s in sorted(reg.models.items()):
        models_by.setdefault(s.origin, []).append(n)
    print()
    for origin, names in models_by.items():
        print(f"models from {origin}: {', '.join(names)}")
    for _, c in sorted(reg.commands.items()):
        print(f"command `zoo {c.name}` from {c.dist} {c.version}: {c.help}")
    archs_by = {}
    for a in reg.hf_archs.values():
        archs_by.setdefault(f"{a.dist} {a.version}", []).append(a.name + ("" if a.matches else " (import only)"))
    for origin, names in archs_by.items():
        print(f"Hugging Face architectures from {origin}: {', '.join(names)}")
    for p in problems:
        print(f"FAILED {p['dist']}: {p['reason']}")


def cmd_validate(args):
    reg = get_registry()
    if args.file:
        data = load_manifest_file(args.file)
        if _is_the_builtin_manifest(reg, data):
            reg = _with_entries(reg, data, args.file)  # its entries in place of the registered ones
        elif args.file not in configured_manifests():
            configure(configured_manifests() + [args.file])
            reg = get_registry()
        names = list(data.get("models", {}))
    else:
        names = reg.list_models()
    presets = list(reg.presets)
    problems = {}  # (model, message with the preset taken out) -> the presets where it holds
    for name in names:
        for preset in presets:
            try:
                resolve_spec(reg, name, preset)
            except ZooError as e:
                key = str(e).replace(f" (preset {preset!r})", _PRESETS)
                problems.setdefault((name, key), []).append(preset)
    for (name, key), where in problems.items():
        listed = ", ".join(repr(p) for p in where)
        at = f"at every preset: {listed}" if len(where) == len(presets) > 1 else \
            f"at preset{'s' if len(where) > 1 else ''} {listed}"
        print(f"error: {key.replace(_PRESETS, f' ({at})') if _PRESETS in key else f'{key} ({at})'}", file=sys.stderr)
    what = args.file or "the registered models"
    if problems:
        print(f"{what}: {len(problems)} problem(s) in {len(names)} model(s)", file=sys.stderr)
        return 2
    print(f"{what}: {len(names)} model(s) valid at presets {', '.join(presets)}")


_PRESETS = "\0presets\0"  # where a message named the preset, while problems are grouped


def _is_the_builtin_manifest(reg, data) -> bool:
    """Whether a manifest file defines exactly the built-in models and presets (zoo.json, as in a
    checkout): validating it must not add them a second time."""
    builtin = {n for n, s in reg.models.items() if s.dist == BUILTIN_DIST}
    builtin_presets = {n for n, s in reg.presets.items() if s.dist == BUILTIN_DIST}
    return bool(builtin) and set(data.get("models", {})) == builtin and set(data.get("presets", {})) == builtin_presets


def _with_entries(reg, data, path):
    """A copy of the registry whose models and presets of ``data`` are the file's entries."""
    import copy
    from ..plugin.registry import ModelSource
    out = copy.copy(reg)
    origin = f"manifest {path}"
    out.models = {**reg.models, **{n: ModelSource(e, "<user>", "0", origin) for n, e in data.get("models", {}).items()}}
    out.presets = {**reg.presets, **{n: ModelSource(e, "<user>", "0", origin) for n, e in data.get("presets", {}).items()}}
    return out


def cmd_check(args):
    """The kit on registered components: a table (passed, known failures, skipped checks, partner
    components exercised) and, under it, every check with its status (``--verbose``), each failure
    and each skipped check with its reason;
    ``--json``: every check with its status, message and partners, and the skipped checks."""
    from ..testing import check_report
    reg = get_registry()
    kinds = [args.kind] if args.kind else list(KINDS)
    comps = []
    for k in kinds:
        if k not in reg.components:
            raise ZooError(f"unknown kind {k!r}; choose one of {', '.join(KINDS)}.")
        comps += [reg.get(k, args.name)] if args.name else reg.list_components(k)
    rows, failed, results = [], 0, []
    for c in comps:
        rep = check_report(c)
        res = rep["checks"]
        bad = [ch for ch in res if ch["status"] in ("failed", "xpass")]
        failed += len(bad)
        n_ok = sum(ch["status"] == "passed" for ch in res)
        n_x = sum(ch["status"] == "xfail" for ch in res)
        partners = sorted({p for ch in res for p in ch["partners"]})
        rows.append([c.kind, c.name, c.dist, f"{n_ok}/{len(res)}", n_x, len(rep["skipped"]),
                     ", ".join(partners) or "-", "FAIL" if bad else "ok"])
        results.append({"kind": c.kind, "name": c.name, "dist": c.dist, "checks": res, "skipped": rep["skipped"],
                        "partners": partners})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(table(rows, ["kind", "name", "distribution", "passed", "known failures", "skipped", "partners",
                           "status"]))
        if args.verbose:
            print("checks:")
            for r in results:
                for ch in r["checks"]:
                    print(f"  {r['kind']}/{r['name']} {ch['check']}: {ch['status']}")
        for r in results:
            for ch in r["checks"]:
                if ch["status"] in ("failed", "xpass"):
                    why = ch["message"] if ch["status"] == "failed" else "listed as a known failure but passed"
                    print(f"  {r['kind']}/{r['name']} {ch['check']}: {why}")
        skipped = [(r, sk) for r in results for sk in r["skipped"]]
        if skipped:
            print("skipped:")
            for r, sk in skipped:
                print(f"  {r['kind']}/{r['name']} {sk['check']}: {sk['reason']}")
    return 1 if failed else 0


def add_cli(sub):
    s = sub.add_parser("list", help="list named models with their components and size")
    s.add_argument("pattern", nargs="?", default="*", help="shell-style name pattern, e.g. 'gpt2*'")
    s.add_argument("--preset", help="size preset for the parameter count (default: the manifest's)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_list)

    s = sub.add_parser("show", help="the resolved spec of a model, its parameters and KV-cache size")
    s.add_argument("name")
    s.add_argument("--preset")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. attention.params.n_kv_heads=2")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_show)

    s = sub.add_parser("plugins", help="list every registered component, model, command and HF mapping, and where it comes from")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_plugins)

    s = sub.add_parser("validate", help="validate a manifest file (or every registered model) at every preset")
    s.add_argument("file", nargs="?")
    s.set_defaults(fn=cmd_validate)

    s = sub.add_parser("check", help="run the conformance kit on registered components")
    s.add_argument("kind", nargs="?", choices=KINDS)
    s.add_argument("name", nargs="?")
    s.add_argument("-v", "--verbose", action="store_true", help="under the table, every check of each component "
                   "with its status")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_check)
