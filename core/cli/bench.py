"""``zoo bench``: the throughput harness (:mod:`zoo.perf.bench`) and its report."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import ZooError, warn
from ..io.atomic import check_output_file, write_json
from .util import json_file_with, overrides, table, whole_number


def _fmt(x, unit=""):
    if x is None:
        return "n/a"
    for lim, suf in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= lim:
            return f"{x / lim:.2f}{suf}{unit}"
    return f"{x:.3g}{unit}"


def format_report(res, vs=None) -> str:
    env = res["environment"]
    lines = [f"zoo bench on {env['device']}, torch {env['torch']}, git {env['git']}, {env['date']}; "
             f"dtype {res['dtype']}, compile {res['compile']}, preset {res['preset']}",
             f"matmul peak: measured {_fmt(res['peak_flops_measured'], 'FLOP/s')}, datasheet "
             f"{_fmt(res['peak_flops_datasheet'], 'FLOP/s')}"]
    old = {r["model"]: r for r in (vs or {}).get("models", [])}
    refname = res.get("reference_model")
    headers = ["model", "params", "train tok/s", "prefill tok/s", "decode b1", "decode bN", "peak mem",
               "cache B/tok", "B/seq", "MFU (meas.)", "MFU (sheet)"]
    if refname:
        headers += [f"train vs {refname}", f"decode vs {refname} (b1/bN)"]
    if vs:
        headers.append("train vs old")
    rows = []
    alongside = [dict(res["reference"], model=f"{refname} (reference)")] if res.get("reference") else []
    for r in alongside + res["models"]:
        bn = r.get(f"decode_tokens_per_sec_b{r['decode_batch']}")
        row = [r["model"], _fmt(r["params"]), _fmt(r["train_tokens_per_sec"]) + f" ±{_spread(r['train_time'])}",
               _fmt(r["prefill_tokens_per_sec"]), _fmt(r["decode_tokens_per_sec_b1"]), _fmt(bn),
               _fmt(r["peak_memory_bytes"], "B"), _fmt(r["kv_cache_bytes_per_token"]),
               _fmt(r.get("cache_bytes_per_sequence")),
               f"{100 * r['mfu_vs_measured_peak']:.1f}%",
               f"{100 * r['mfu_vs_datasheet_peak']:.1f}%" if r["mfu_vs_datasheet_peak"] else "n/a"]
        if refname:
            ratios = r.get(f"vs_{refname}") or {}
            bn = ratios.get(f"decode_b{r['decode_batch']}")
            row += [_ratio(ratios.get("train")), f"{_ratio(ratios.get('decode_b1'))}/{_ratio(bn)}"]
        if vs:
            o = old.get(r["model"])
            row.append(f"{r['train_tokens_per_sec'] / o['train_tokens_per_sec']:.2f}x" if o else "n/a")
        rows.append(row)
    lines.append(table(rows, headers))
    est = sorted({e for r in res["models"] for e in r["flops_per_token"]["estimated_from_params"]})
    if est:
        lines.append(f"FLOPs estimated from parameters (no flops_per_token): {', '.join(est)}")
    for r in res["models"]:
        for b, err in r["decode_errors"].items():
            lines.append(f"{r['model']}: decode at batch {b} failed: {err}")
    if "components" in res:
        c = res["components"]
        lines.append(f"\ncomponents, forward+backward at {c['shape']}:")
        crow = [[x["kind"], x["name"], _fmt(x["time"]["median"], "s") if "time" in x else "error",
                 f"{x['ratio_vs_reference']:.2f}x" if "ratio_vs_reference" in x else x.get("error", ""),
                 x.get("reference", "")] for x in c["components"]]
        lines.append(table(crow, ["kind", "name", "median", "speed vs reference", "reference"]))
    return "\n".join(lines)


def _ratio(x):
    return "-" if x is None else f"{x:.2f}x"


def _spread(t):
    return f"{100 * (t['max'] - t['min']) / (2 * t['median']):.0f}%"


# the smallest value of each integer option (None: not given, the default applies)
MINIMA = {"batch": 1, "seq": 1, "reps": 1, "warmup": 0, "decode_batch": 1, "decode_tokens": 1, "new_tokens": 1,
          "prompt_len": 1, "threads": 1, "slices": 1}


def check_args(args):
    """Ranges, the --json path and the --vs file, before anything is measured."""
    for k, lo in MINIMA.items():
        v = getattr(args, k, None)
        if v is not None and v < lo:
            raise ZooError(f"--{k.replace('_', '-')} must be at least {lo}, not {v}.")
    peer = peer_of(args.vs)
    vs_file = args.vs[0] if args.vs and not peer else None
    if args.json:  # before measuring, so a bad path does not fail after the whole run
        check_output_file(args.json, args.force, inputs=[vs_file] if vs_file else (),
                          ours=json_file_with("new_tokens" if args.cache else "peer" if peer else "environment"),
                          what="--json file")
    if not args.cache:
        for flag, given in (("--set", args.set), ("--only", args.only), ("--hf", args.hf), ("--slices", args.slices)):
            if given:
                warn(f"{flag} applies to zoo bench --cache only; it is ignored here.")
    elif args.vs:
        warn("--vs compares the table of zoo bench; with --cache it is ignored.")
    return read_vs(vs_file) if vs_file and not args.cache else None


def peer_of(vs):
    """(peer, path) for ``--vs transformers`` and ``--vs nanogpt PATH``; None for ``--vs FILE``."""
    from ..perf.peers import PEERS
    if not vs:
        return None
    if vs[0] not in PEERS:
        if len(vs) > 1:
            raise ZooError(f"--vs takes one earlier --json result, transformers, or nanogpt PATH; got {' '.join(vs)!r}.")
        return None
    if vs[0] == "nanogpt" and len(vs) != 2:
        raise ZooError("--vs nanogpt needs the path of a nanoGPT checkout: zoo bench --vs nanogpt PATH "
                       "(git clone https://github.com/karpathy/nanoGPT).")
    if vs[0] == "transformers" and len(vs) != 1:
        raise ZooError(f"--vs transformers takes no path; got {' '.join(vs)!r}.")
    return vs[0], (vs[1] if len(vs) > 1 else None)


def read_vs(path):
    """An earlier ``zoo bench --json`` result: ``{"models": [{"model", "train_tokens_per_sec", ...}]}``."""
    try:
        vs = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ZooError(f"--vs {path!r} is not a text file; give a result written by zoo bench --json.") from None
    except OSError as e:
        raise ZooError(f"cannot read --vs {path!r}: {e.strerror or e}.") from None
    except json.JSONDecodeError as e:
        raise ZooError(f"--vs {path!r} is not valid JSON (line {e.lineno}: {e.msg}); give a result written by "
                       f"zoo bench --json.") from None
    models = vs.get("models") if isinstance(vs, dict) else None
    if not isinstance(models, list) or not all(
            isinstance(m, dict) and isinstance(m.get("model"), str)
            and isinstance(m.get("train_tokens_per_sec"), (int, float)) and m["train_tokens_per_sec"] > 0
            for m in models):
        raise ZooError(f"--vs {path!r} is not a zoo bench --json result (a \"models\" list with \"model\" and "
                       f"\"train_tokens_per_sec\" for each); give a result written by zoo bench --json.")
    return vs


def cmd_bench(args):
    from ..perf.bench import run_bench
    vs = check_args(args)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if args.cache:
        return cmd_bench_cache(args)
    if peer_of(args.vs):
        return cmd_bench_peer(args)
    res = run_bench(args.names, args.preset or "tiny", args.device, args.dtype, args.compile, args.batch, args.seq,
                    args.reps or 5, args.warmup, args.components, args.decode_batch, args.decode_tokens)
    print(format_report(res, vs))
    if args.json:
        write_json(args.json, res)
        print(f"results written to {args.json}")


def cmd_bench_cache(args):
    """Decoding with the KV cache against recomputing the context (and transformers' generate)."""
    from ..nn.device import resolve_device
    from ..perf.bench import bench_cache
    runs = ([args.only] if args.only else ["cache", "recompute"]) + (["hf"] if args.hf else [])
    results = []
    for name in args.names or ["gpt2"]:
        print(f"{name} at preset {args.preset or 'char'}: {args.new_tokens or 500} new tokens after a "
              f"{args.prompt_len or 1}-token prompt, batch {args.batch or 1}")
        results.append(bench_cache(name, args.preset or "char", args.new_tokens or 500, args.prompt_len or 1, args.batch or 1,
                                   str(resolve_device(args.device or "cpu")), overrides(args.set),
                                   compile=args.compile, runs=runs, dtype=args.dtype, slices=args.slices))
    if args.json:
        write_json(args.json, results if len(results) > 1 else results[0])
        print(f"results written to {args.json}")


def cmd_bench_peer(args):
    """The zoo's gpt2 against transformers or nanoGPT on the same weights (zoo.perf.peers)."""
    from ..perf.peers import compare
    peer, path = peer_of(args.vs)
    if args.names and args.names != ["gpt2"]:
        raise ZooError(f"--vs {peer} compares the zoo's gpt2 with the peer's GPT-2; name no other model "
                       f"(got {', '.join(args.names)}).")
    res = compare(peer, args.preset or "char", path, batch=args.batch or 8, reps=args.reps or 20,
                  warmup=args.warmup, dtype=args.dtype, compile_=args.compile, prompt_len=args.prompt_len or 16,
                  new_tokens=args.new_tokens or 200, decode_batches=tuple(args.decode_batches))
    if args.json:
        write_json(args.json, res)
        print(f"results written to {args.json}")


def add_cli(sub):
    s = sub.add_parser("bench", help="measure throughput, decode speed, memory and MFU of named models",
                       description="Measure named models: training, prefill and decode tokens/s, memory, MFU "
                                   "(--components: each component against its reference). With --cache: "
                                   "decoding with the KV cache against recomputing the context, and with --hf "
                                   "against transformers' generate (docs/generate.md).")
    s.add_argument("names", nargs="*", help="models to measure (default: all; with --cache, gpt2)")
    s.add_argument("--preset", help="size preset (default: tiny; with --cache, char)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="with --cache: a model override")
    s.add_argument("--device", help="cpu or cuda (default: cuda when available; with --cache, cpu)")
    s.add_argument("--dtype", help="fp32, bf16 or fp16 (default: bf16 on CUDA, fp32 on CPU; with --cache, fp32)")
    s.add_argument("--compile", action="store_true", help="torch.compile the model for the training step and "
                                                          "prefill (with --cache: the decode step)")
    s.add_argument("--batch", type=whole_number, help="training/prefill batch size (with --cache: sequences decoded, default 1)")
    s.add_argument("--seq", type=whole_number, help="sequence length (default: the preset's context)")
    s.add_argument("--reps", type=whole_number, help="repetitions (default 5; with --vs transformers/nanogpt, 20)")
    s.add_argument("--warmup", type=whole_number, default=2)
    s.add_argument("--decode-batch", type=whole_number, default=8)
    s.add_argument("--decode-tokens", type=whole_number, default=32)
    s.add_argument("--components", action="store_true", help="also measure each component against its reference")
    s.add_argument("--cache", action="store_true", help="time decoding with the KV cache against recomputing the "
                                                        "whole context each step")
    s.add_argument("--new-tokens", type=whole_number, help="with --cache: tokens to decode (default 500; with --vs "
                                                                 "transformers, 200)")
    s.add_argument("--prompt-len", type=whole_number, help="with --cache: prompt tokens (default 1; with --vs "
                                                                 "transformers, 16)")
    s.add_argument("--only", choices=["cache", "recompute"], help="with --cache: time one decoder only")
    s.add_argument("--hf", action="store_true", help="with --cache: also time transformers' generate on the same "
                                                     "GPT-2 configuration (needs transformers)")
    s.add_argument("--slices", type=whole_number, help="with --cache: decode once more with the cache in this many "
                                                       "slices of --new-tokens, each reported with its time per token, "
                                                       "cache bytes and resident memory (constant for a state model)")
    s.add_argument("--threads", type=whole_number, help="CPU threads for torch (default: torch's choice); on a shared "
                                               "machine 1 avoids stalls of an oversubscribed thread pool")
    s.add_argument("--json", metavar="FILE", help="write the results as JSON")
    s.add_argument("--force", action="store_true", help="overwrite a --json file that zoo bench did not write")
    s.add_argument("--vs", nargs="+", metavar="FILE|PEER",
                   help="print ratios against an earlier --json result; or compare gpt2 on the same weights, "
                        "interleaved in one process, with transformers' GPT-2 (--vs transformers: training step "
                        "and greedy decoding, the hf extra) or nanoGPT's model.py (--vs nanogpt PATH: the "
                        "training step; PATH is your nanoGPT checkout)")
    s.add_argument("--decode-batches", type=whole_number, nargs="+", default=[1, 8, 64], metavar="B",
                   help="with --vs transformers: the decoding batch sizes (default 1 8 64)")
    s.set_defaults(fn=cmd_bench)
