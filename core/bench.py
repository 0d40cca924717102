"""``zoo bench``: the shared throughput harness.

For each named model: training-step tokens/s (forward, backward, AdamW), prefill tokens/s, decode
tokens/s at batch 1 and batch N with the KV cache, peak memory (CUDA), KV-cache bytes per token,
parameters, and MFU. Component level (``--components``): each attention's forward+backward against
the plain causal SDPA kernel, each ffn against ``mlp`` at equal parameters, as ratios measured in
the same run.

FLOPs come from the components themselves: a module may define ``flops_per_token(seq_len)`` (forward
matmul FLOPs per token, 2 per multiply-add); one that does not is counted as a dense layer (2 x its
parameters per token) and the report says so. Training counts 3 x forward (forward + backward), the
convention of the PaLM paper's MFU (Chowdhery et al. 2022, arXiv:2204.02311) and nanoGPT.

Timing: warm-up runs, device synchronisation, several repetitions with fresh random inputs, the
median with its min and max. Absolute times mean something only on a quiet GPU; on a shared CPU
compare ratios measured in one run.
"""
from __future__ import annotations

import datetime
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

from .errors import ZooError

# dense bf16 tensor-core peaks from the vendors' datasheets (FLOP/s), matched on the device name
DATASHEET_BF16 = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12),
                  ("L40S", 362e12), ("A10G", 70e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12)]


# ---- FLOPs ------------------------------------------------------------------------------------

def _own_flops(module, seq_len):
    fn = getattr(module, "flops_per_token", None)
    if fn is not None:
        return float(fn(seq_len)), True
    return 2.0 * sum(p.numel() for p in module.parameters()), False


def model_flops_per_token(model, seq_len: int) -> dict:
    """Forward FLOPs per token of a zoo Transformer, summed from what each component reports."""
    total, estimated = 0.0, set()
    for block in model.blocks:
        for part in (block.attn, block.ffn):
            f, own = _own_flops(part, seq_len)
            total += f
            if not own:
                estimated.add(type(part).__name__)
    total += 2.0 * model.lm_head.weight.numel()  # output head; embedding lookups are free
    return {"forward": total, "train": 3.0 * total, "estimated_from_params": sorted(estimated)}


# ---- timing -----------------------------------------------------------------------------------

def _sync(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn, device, warmup=2, reps=5, make_input=None):
    """Median, min and max seconds of ``fn(input)`` over ``reps`` runs after ``warmup``."""
    times = []
    for i in range(warmup + reps):
        arg = make_input() if make_input else None
        _sync(device)
        t0 = time.perf_counter()
        fn(arg)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "reps": reps}


def measured_matmul_peak(device, dtype, n=None, reps=5) -> float:
    """FLOP/s of a large square matmul in ``dtype`` on ``device``."""
    import torch
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = time_fn(lambda _: a @ b, device, warmup=2, reps=reps)
    return 2 * n ** 3 / t["median"]


def datasheet_peak(device):
    import torch
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in DATASHEET_BF16:
        if key in name:
            return flops
    return None


# ---- one model --------------------------------------------------------------------------------

def bench_model(name, preset, device, dtype, batch, seq, compile_=False, reps=5, warmup=2,
                decode_tokens=32, decode_batch=8):
    import torch
    import zoo
    from contextlib import nullcontext

    spec = zoo.resolve(name, preset, **({"block_size": max(seq + decode_tokens, 1)} if seq else {}))
    seq = seq or spec["block_size"]
    torch.manual_seed(0)
    model = zoo.build_from_spec(spec).to(device)
    V = spec["vocab_size"]
    amp = (torch.autocast(device_type=device.type, dtype=dtype) if dtype != torch.float32 else nullcontext())
    step_model = torch.compile(model) if compile_ else model
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused) if fused else torch.optim.AdamW(model.parameters(), lr=1e-4)

    def batch_of(b, t):
        return lambda: torch.randint(0, V, (b, t + 1), device=device)

    def train_step(idx):
        with amp:
            _, loss = step_model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    t_train = time_fn(train_step, device, warmup, reps, batch_of(batch, seq))
    peak_mem = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None

    model.eval()

    @torch.no_grad()
    def prefill(idx):
        with amp:
            step_model(idx[:, :-1])

    t_prefill = time_fn(prefill, device, warmup, reps, batch_of(batch, seq))

    # decode within the context: half of what is left after the new tokens is the prompt
    decode_tokens = max(1, min(decode_tokens, spec["block_size"] // 2))
    prompt_len = max(1, min(seq, spec["block_size"] - decode_tokens) // 2)

    def decode_run(b):

        @torch.no_grad()
        def run(idx):
            cache = model.new_cache(b, prompt_len + decode_tokens, device=device,
                                    dtype=dtype if dtype != torch.float32 else None)
            with amp:
                logits, _ = model(idx[:, :prompt_len], cache=cache)
                nxt = logits[:, -1:].argmax(-1)
                for _ in range(decode_tokens):
                    logits, _ = model(nxt, cache=cache)
                    nxt = logits[:, -1:].argmax(-1)  # (b, 1)
        return run, batch_of(b, prompt_len)

    decode = {}
    for b in (1, decode_batch):
        try:
            run, make = decode_run(b)
            t = time_fn(run, device, 1, max(2, reps // 2), make)
            decode[b] = {"tokens_per_sec": b * decode_tokens / t["median"], "time": t}
        except Exception as e:  # an attention without a cache still gets its other figures
            decode[b] = {"tokens_per_sec": None, "error": f"{type(e).__name__}: {e}"}

    flops = model_flops_per_token(model, seq)
    train_tps = batch * seq / t_train["median"]
    kv_bytes = zoo.kv_cache_bytes_per_token(spec, 2 if dtype != torch.float32 else 4)
    return {
        "model": name, "preset": preset, "params": model.num_params(), "batch": batch, "seq": seq,
        "train_tokens_per_sec": train_tps, "train_time": t_train,
        "prefill_tokens_per_sec": batch * seq / t_prefill["median"], "prefill_time": t_prefill,
        "decode_tokens_per_sec_b1": decode[1]["tokens_per_sec"],
        f"decode_tokens_per_sec_b{decode_batch}": decode[decode_batch]["tokens_per_sec"],
        "decode_batch": decode_batch, "decode_tokens": decode_tokens,
        "decode_errors": {str(b): d["error"] for b, d in decode.items() if "error" in d},
        "peak_memory_bytes": peak_mem, "kv_cache_bytes_per_token": kv_bytes,
        "flops_per_token": flops, "train_flops_per_sec": train_tps * flops["train"],
    }


# ---- component level --------------------------------------------------------------------------

def bench_components(device, dtype, batch=8, seq=256, d_model=256, n_heads=4, reps=5, warmup=2):
    """Each attention's forward+backward against plain causal SDPA; each ffn against mlp with the
    same parameter count. Ratios > 1 mean faster than the reference."""
    import torch
    import torch.nn.functional as F
    import zoo
    from .components import Dims, PosEnc
    from .manifest import fill_defaults

    reg = zoo.get_registry()
    dims = Dims(d_model=d_model, n_heads=n_heads, n_layers=1, block_size=seq, vocab_size=256, bias=False)
    pos = torch.arange(seq, device=device)
    pe = PosEnc(dims)
    x_of = lambda: torch.randn(batch, seq, d_model, device=device, dtype=dtype, requires_grad=True)  # noqa: E731

    def fwd_bwd(fn):
        def run(x):
            fn(x).float().sum().backward()
        return run

    hd = d_model // n_heads
    ref = time_fn(fwd_bwd(lambda x: F.scaled_dot_product_attention(
        *(x.view(batch, seq, n_heads, hd).transpose(1, 2),) * 3, is_causal=True)), device, warmup, reps, x_of)
    rows = []
    for c in reg.list_components("attention"):
        try:
            torch.manual_seed(0)
            m = c.cls(dims, **fill_defaults(c.params_schema, c.tags.get("example_params", {}))).to(device, dtype)
            t = time_fn(fwd_bwd(lambda x: m(x, pe, pos)), device, warmup, reps, x_of)
            rows.append({"kind": "attention", "name": c.name, "time": t, "reference": "causal sdpa",
                         "ratio_vs_reference": ref["median"] / t["median"]})
        except Exception as e:
            rows.append({"kind": "attention", "name": c.name, "error": f"{type(e).__name__}: {e}"})
    mlp_cls = reg.get("ffn", "mlp").cls
    for c in reg.list_components("ffn"):
        try:
            torch.manual_seed(0)
            m = c.cls(dims, **fill_defaults(c.params_schema, c.tags.get("example_params", {}))).to(device, dtype)
            n = sum(p.numel() for p in m.parameters())
            ref_mlp = mlp_cls(dims, hidden_mult=max(n / (2 * d_model * d_model), 1 / d_model)).to(device, dtype)
            t = time_fn(fwd_bwd(m), device, warmup, reps, x_of)
            tr = time_fn(fwd_bwd(ref_mlp), device, warmup, reps, x_of)
            rows.append({"kind": "ffn", "name": c.name, "params": n, "time": t,
                         "reference": f"mlp with {sum(p.numel() for p in ref_mlp.parameters())} params",
                         "ratio_vs_reference": tr["median"] / t["median"]})
        except Exception as e:
            rows.append({"kind": "ffn", "name": c.name, "error": f"{type(e).__name__}: {e}"})
    return {"shape": {"batch": batch, "seq": seq, "d_model": d_model, "n_heads": n_heads},
            "sdpa_reference_time": ref, "components": rows}


# ---- the command ------------------------------------------------------------------------------

def _git_revision():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip() or None
    except Exception:
        return None


def environment(device):
    import torch
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
            "torch": torch.__version__, "git": _git_revision(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def run_bench(names, preset="tiny", device=None, dtype=None, compile_=False, batch=None, seq=None,
              reps=5, warmup=2, components=False, decode_batch=8, decode_tokens=32):
    import torch
    import zoo
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ZooError("--device cuda was asked for but no CUDA device is available; use --device cpu.")
    dtypes = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
              "fp16": torch.float16, "float16": torch.float16}
    dname = dtype or ("bf16" if device.type == "cuda" else "fp32")
    if dname not in dtypes:
        raise ZooError(f"unknown --dtype {dname!r}; choose one of fp32, bf16, fp16.")
    dt = dtypes[dname]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    names = names or zoo.list_models()
    for n in names:
        zoo.resolve(n, preset)  # validate every name before measuring anything
    batch = batch or (8 if device.type == "cuda" else 4)
    peak_measured = measured_matmul_peak(device, dt)
    peak_sheet = datasheet_peak(device) if dt == torch.bfloat16 else None
    results = []
    for n in names:
        r = bench_model(n, preset, device, dt, batch, seq, compile_, reps, warmup, decode_tokens, decode_batch)
        r["mfu_vs_measured_peak"] = r["train_flops_per_sec"] / peak_measured
        r["mfu_vs_datasheet_peak"] = r["train_flops_per_sec"] / peak_sheet if peak_sheet else None
        results.append(r)
    out = {"environment": environment(device), "dtype": dname, "compile": compile_, "preset": preset,
           "peak_flops_measured": peak_measured, "peak_flops_datasheet": peak_sheet, "models": results}
    if components:
        out["components"] = bench_components(device, dt, reps=reps, warmup=warmup)
    return out


def _fmt(x, unit=""):
    if x is None:
        return "n/a"
    for lim, suf in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= lim:
            return f"{x / lim:.2f}{suf}{unit}"
    return f"{x:.3g}{unit}"


def format_report(res, vs=None) -> str:
    from .cli import _table
    env = res["environment"]
    lines = [f"zoo bench on {env['device']}, torch {env['torch']}, git {env['git']}, {env['date']}; "
             f"dtype {res['dtype']}, compile {res['compile']}, preset {res['preset']}",
             f"matmul peak: measured {_fmt(res['peak_flops_measured'], 'FLOP/s')}, datasheet "
             f"{_fmt(res['peak_flops_datasheet'], 'FLOP/s')}"]
    old = {r["model"]: r for r in (vs or {}).get("models", [])}
    headers = ["model", "params", "train tok/s", "prefill tok/s", "decode b1", "decode bN", "peak mem",
               "kv B/tok", "MFU (meas.)", "MFU (sheet)"]
    if vs:
        headers.append("train vs old")
    rows = []
    for r in res["models"]:
        bn = r.get(f"decode_tokens_per_sec_b{r['decode_batch']}")
        row = [r["model"], _fmt(r["params"]), _fmt(r["train_tokens_per_sec"]) + f" ±{_spread(r['train_time'])}",
               _fmt(r["prefill_tokens_per_sec"]), _fmt(r["decode_tokens_per_sec_b1"]), _fmt(bn),
               _fmt(r["peak_memory_bytes"], "B"), _fmt(r["kv_cache_bytes_per_token"]),
               f"{100 * r['mfu_vs_measured_peak']:.1f}%",
               f"{100 * r['mfu_vs_datasheet_peak']:.1f}%" if r["mfu_vs_datasheet_peak"] else "n/a"]
        if vs:
            o = old.get(r["model"])
            row.append(f"{r['train_tokens_per_sec'] / o['train_tokens_per_sec']:.2f}x" if o else "n/a")
        rows.append(row)
    lines.append(_table(rows, headers))
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
        lines.append(_table(crow, ["kind", "name", "median", "speed vs reference", "reference"]))
    return "\n".join(lines)


def _spread(t):
    return f"{100 * (t['max'] - t['min']) / (2 * t['median']):.0f}%"


def cmd_bench(args):
    res = run_bench(args.names, args.preset, args.device, args.dtype, args.compile, args.batch, args.seq,
                    args.reps, args.warmup, args.components, args.decode_batch, args.decode_tokens)
    vs = None
    if args.vs:
        try:
            vs = json.loads(Path(args.vs).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ZooError(f"cannot read --vs {args.vs!r}: {e}") from None
    print(format_report(res, vs))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
        print(f"results written to {args.json}")


def add_cli(sub):
    s = sub.add_parser("bench", help="measure throughput, decode speed, memory and MFU of named models")
    s.add_argument("names", nargs="*", help="models to measure (default: all)")
    s.add_argument("--preset", default="tiny")
    s.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    s.add_argument("--dtype", help="fp32, bf16 or fp16 (default: bf16 on CUDA, fp32 on CPU)")
    s.add_argument("--compile", action="store_true", help="torch.compile the model for the training step and prefill")
    s.add_argument("--batch", type=int, help="training/prefill batch size")
    s.add_argument("--seq", type=int, help="sequence length (default: the preset's context)")
    s.add_argument("--reps", type=int, default=5)
    s.add_argument("--warmup", type=int, default=2)
    s.add_argument("--decode-batch", type=int, default=8)
    s.add_argument("--decode-tokens", type=int, default=32)
    s.add_argument("--components", action="store_true", help="also measure each component against its reference")
    s.add_argument("--json", metavar="FILE", help="write the results as JSON")
    s.add_argument("--vs", metavar="FILE", help="print ratios against an earlier --json result")
    s.set_defaults(fn=cmd_bench)
