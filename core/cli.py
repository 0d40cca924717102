"""The ``zoo`` command. Errors a user can cause print one paragraph and exit with code 2."""
from __future__ import annotations

import argparse
import json
import sys
import warnings

from .errors import ZooError


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def _table(rows, headers):
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _overrides(pairs):
    from .manifest import parse_override
    return dict(parse_override(p) for p in pairs or [])


def _comp(spec, kind):
    c = spec[kind]
    extra = ",".join(f"{k}={v}" for k, v in c["params"].items() if v is not None)
    return f"{c['name']}({extra})" if extra else c["name"]


# ---- commands ---------------------------------------------------------------------------------

def cmd_list(args):
    import zoo
    reg = zoo.get_registry()
    preset = args.preset or reg.default_preset
    rows, data = [], []
    for name in reg.list_models(args.pattern):
        spec = zoo.resolve(name, preset)
        n = zoo.param_count(spec)
        rows.append([name, _fmt_params(n), _comp(spec, "attention"), _comp(spec, "posenc"), _comp(spec, "ffn"),
                     spec["norm"], reg.models[name].origin])
        data.append({"name": name, "preset": preset, "params": n, "attention": spec["attention"],
                     "posenc": spec["posenc"], "ffn": spec["ffn"], "norm": spec["norm"],
                     "description": spec.get("description", ""), "source": reg.models[name].origin})
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(f"models at preset {preset!r} (presets: {', '.join(reg.presets)})")
        print(_table(rows, ["name", "params", "attention", "posenc", "ffn", "norm", "from"]))


def cmd_show(args):
    import zoo
    spec = zoo.resolve(args.name, args.preset, **_overrides(args.set))
    info = {"spec": spec, "params": zoo.param_count(spec),
            "kv_cache_bytes_per_token": {"bf16": zoo.kv_cache_bytes_per_token(spec, 2),
                                         "fp32": zoo.kv_cache_bytes_per_token(spec, 4)},
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
    for kind in ("attention", "posenc", "ffn"):
        print(f"  {kind:<12} {spec[kind]['name']} {json.dumps(spec[kind]['params'])}")
    for i, o in enumerate(spec.get("layers", [])):
        sel = f"layers {o.get('from', 0)}..{o.get('to', spec['n_layers']) - 1}" + (f" every {o['every']}" if o.get("every", 1) > 1 else "")
        print(f"  {f'layers[{i}]':<12} {sel}: " + ", ".join(f"{k} {o[k]['name']} {json.dumps(o[k]['params'])}" for k in ("attention", "ffn") if k in o))
    print(f"  {'parameters':<12} {info['params']:,} ({_fmt_params(info['params'])})")
    kv = info["kv_cache_bytes_per_token"]
    if kv["bf16"] is None:
        print(f"  {'kv cache':<12} not reported by attention {spec['attention']['name']!r}")
    else:
        print(f"  {'kv cache':<12} {kv['bf16']:,} bytes/token in bf16, {kv['fp32']:,} in fp32 "
              f"({kv['bf16'] * spec['block_size'] / 2**20:.2f} MiB per sequence of {spec['block_size']} in bf16)")
    window = spec["attention"]["params"].get("window")
    if kv["bf16"] is not None and window and window < spec["block_size"]:
        print(f"  {'':<12} sliding window {window}: the cache holds at most {window} positions "
              f"({kv['bf16'] * window / 2**20:.2f} MiB per sequence in bf16)")
    print(f"  {'':<12} multi-head attention: {info['mha_kv_cache_bytes_per_token']['bf16']:,} bytes/token in bf16")
    for key, (n, per) in info["component_params"].items():
        print(f"  {('attn' if key == 'attention' else key) + ' params':<12} {n:,} ({_fmt_params(n)}) in all layers, {per}")


def _component_params(spec):
    """Parameters of the attention and ffn layers over all blocks (counted on the meta device)."""
    import torch
    import zoo
    with torch.device("meta"):
        model = zoo.build_from_spec(spec)
    out = {}
    for kind, attr in (("attention", "attn"), ("ffn", "ffn")):
        counts = [sum(p.numel() for p in getattr(b, attr).parameters()) for b in model.blocks]
        names = sorted({type(getattr(b, attr)).__name__ for b in model.blocks})
        per = f"{counts[0]:,} per layer" if len(set(counts)) == 1 else "per layer " + ", ".join(f"{c:,}" for c in counts)
        out[kind] = (sum(counts), f"{per} ({', '.join(names)})")
    return out


def cmd_plugins(args):
    import zoo
    reg = zoo.get_registry()
    comps = [c.info() for c in reg.list_components()]
    problems = [{"dist": d, "reason": r} for d, r in reg.problems]
    if args.json:
        print(json.dumps({"api_version": zoo.PLUGIN_API_VERSION,
                          "distributions": {d: {"version": v, "api": reg.api_versions.get(d)}
                                            for d, v in sorted(reg.dists.items())},
                          "components": comps, "models": {n: {"dist": s.dist, "version": s.version, "origin": s.origin}
                                                          for n, s in sorted(reg.models.items())},
                          "problems": problems}, indent=2, default=str))
        return
    rows = [[c["kind"], c["name"], f"{c['dist']} {c['version']}",
             ", ".join(f"{k}={v}" for k, v in c["tags"].items() if k not in ("example_params", "known_failures"))]
            for c in comps]
    print(_table(rows, ["kind", "name", "distribution", "tags"]))
    models_by = {}
    for n, s in sorted(reg.models.items()):
        models_by.setdefault(s.origin, []).append(n)
    print()
    for origin, names in models_by.items():
        print(f"models from {origin}: {', '.join(names)}")
    for p in problems:
        print(f"FAILED {p['dist']}: {p['reason']}")


def cmd_validate(args):
    import zoo
    from .manifest import load_manifest_file
    reg = zoo.get_registry()
    if args.file:
        data = load_manifest_file(args.file)
        if args.file not in zoo._MANIFESTS:
            zoo.configure(zoo._MANIFESTS + [args.file])
            reg = zoo.get_registry()
        names = list(data.get("models", {}))
    else:
        names = reg.list_models()
    errors = 0
    for name in names:
        for preset in reg.presets:
            try:
                zoo.resolve(name, preset)
            except ZooError as e:
                errors += 1
                print(f"error: {e}", file=sys.stderr)
    what = args.file or "the registered models"
    if errors:
        print(f"{what}: {errors} problem(s) in {len(names)} model(s)", file=sys.stderr)
        return 2
    print(f"{what}: {len(names)} model(s) valid at presets {', '.join(reg.presets)}")


def cmd_check(args):
    import zoo
    from .testing import run_checks
    reg = zoo.get_registry()
    kinds = [args.kind] if args.kind else ["attention", "posenc", "ffn"]
    comps = []
    for k in kinds:
        if k not in reg.components:
            raise ZooError(f"unknown kind {k!r}; choose attention, posenc or ffn.")
        comps += [reg.get(k, args.name)] if args.name else reg.list_components(k)
    rows, failed, results = [], 0, []
    for c in comps:
        res = run_checks(c)
        bad = [(n, s, m) for n, s, m in res if s in ("failed", "xpass")]
        failed += len(bad)
        status = "FAIL" if bad else "ok"
        n_ok = sum(s == "passed" for _, s, _ in res)
        n_x = sum(s == "xfail" for _, s, _ in res)
        rows.append([c.kind, c.name, c.dist, f"{n_ok}/{len(res)}", n_x, status])
        results.append({"kind": c.kind, "name": c.name, "dist": c.dist,
                        "checks": [{"check": n, "status": s, "message": m} for n, s, m in res]})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(_table(rows, ["kind", "name", "distribution", "passed", "known failures", "status"]))
        for r in results:
            for ch in r["checks"]:
                if ch["status"] in ("failed", "xpass"):
                    why = ch["message"] if ch["status"] == "failed" else "listed as a known failure but passed"
                    print(f"  {r['kind']}/{r['name']} {ch['check']}: {why}")
    return 1 if failed else 0


# ---- parser -----------------------------------------------------------------------------------

def build_parser():
    p = argparse.ArgumentParser(prog="zoo", description="A plugin-based zoo of LLM components.")
    p.add_argument("--strict", action="store_true", help="treat plugin load failures as errors (exit 2)")
    p.add_argument("--manifest", action="append", default=[], metavar="FILE",
                   help="an extra zoo.json-style manifest of your own models (also: ZOO_MANIFEST)")
    p.add_argument("--version", action="version", version=f"zoo {__import__('zoo').__version__} (plugin API {__import__('zoo').PLUGIN_API_VERSION})")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

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

    s = sub.add_parser("plugins", help="list every registered component and where it comes from")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_plugins)

    s = sub.add_parser("validate", help="validate a manifest file (or every registered model) at every preset")
    s.add_argument("file", nargs="?")
    s.set_defaults(fn=cmd_validate)

    s = sub.add_parser("check", help="run the conformance kit on registered components")
    s.add_argument("kind", nargs="?", choices=["attention", "posenc", "ffn"])
    s.add_argument("name", nargs="?")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_check)

    # Commands that live in their own core module: each exposes add_cli(subparsers) and keeps its
    # heavy imports (torch) inside the command functions so that `zoo --help` stays fast.
    import importlib
    for mod in COMMAND_MODULES:
        try:
            m = importlib.import_module(f"zoo.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"zoo.{mod}":
                raise
            continue
        if hasattr(m, "add_cli"):
            m.add_cli(sub)
    return p


COMMAND_MODULES = ["train", "data", "tokenizers", "compare", "generate", "bench", "scaffold", "hf"]


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "fn", None):
        parser.print_help()
        return 2
    import zoo
    from .registry import PluginWarning
    try:
        zoo.configure(args.manifest)
        with warnings.catch_warnings():
            warnings.simplefilter("always", PluginWarning)
            warnings.showwarning = lambda m, c, *a, **k: print(f"zoo: warning: {m}", file=sys.stderr)
            zoo.get_registry(strict=args.strict)
        return args.fn(args) or 0
    except ZooError as e:
        print(f"zoo: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zoo: interrupted", file=sys.stderr)
        return 130
