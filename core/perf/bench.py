"""``zoo bench``: the shared throughput harness.

For each named model: training-step tokens/s (forward, backward, AdamW), prefill tokens/s, decode
tokens/s at batch 1 and batch N with the KV cache, peak memory (CUDA), cache bytes per token and
fixed cache bytes per sequence (a recurrent state), parameters, and MFU; training and decoding
tokens/s relative to ``gpt2`` measured in the same run (``vs_gpt2``; gpt2 is measured alongside when
it is not among the names). Component level (``--components``): each attention's forward+backward against
the plain causal SDPA kernel, each ffn against ``mlp`` at equal parameters, as ratios measured in
the same run.

FLOPs come from the components themselves (:mod:`zoo.perf.flops`), peaks from one table
(:mod:`zoo.perf.peaks`). :func:`bench_cache` times decoding with the cache against recomputing the
context, and against transformers' ``generate`` (``zoo bench --cache``).

Timing: warm-up runs, device synchronisation, several repetitions with fresh random inputs, the
median with its min and max. Absolute times mean something only on a quiet GPU; on a shared CPU
compare ratios measured in one run.
"""
from __future__ import annotations

import datetime
import platform
import subprocess
import time
from pathlib import Path

from ..errors import ZooError
from ..generate.generation import context_window, generate
from ..nn.cache import cache_bytes
from ..nn.device import parse_dtype, resolve_device
from ..nn.transformer import build_from_spec
from ..plugin.base import PosEnc
from ..plugin.contract import Dims
from ..spec.catalog import get_registry
from ..spec.resolve import fill_defaults, resolve_spec
from .flops import model_flops_per_token
from .memory import check_training_memory
from .peaks import datasheet_peak, measured_matmul_peak
from .timing import time_fn

# ---- one model --------------------------------------------------------------------------------

def bench_model(name, preset, device, dtype, batch, seq, compile_=False, reps=5, warmup=2,
                decode_tokens=32, decode_batch=8):
    import torch
    from contextlib import nullcontext

    reg = get_registry()
    spec = resolve_spec(reg, name, preset, {"block_size": max(seq + decode_tokens, 1)} if seq else None)
    seq = seq or spec["block_size"]
    torch.manual_seed(0)
    model = build_from_spec(spec, reg).to(device)
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
    sizes = cache_bytes(spec, reg, 2 if dtype != torch.float32 else 4)
    kv_bytes, seq_bytes = sizes if sizes is not None else (None, None)
    return {
        "model": name, "preset": preset, "params": model.num_params(), "batch": batch, "seq": seq,
        "train_tokens_per_sec": train_tps, "train_time": t_train,
        "prefill_tokens_per_sec": batch * seq / t_prefill["median"], "prefill_time": t_prefill,
        "decode_tokens_per_sec_b1": decode[1]["tokens_per_sec"],
        f"decode_tokens_per_sec_b{decode_batch}": decode[decode_batch]["tokens_per_sec"],
        "decode_batch": decode_batch, "decode_tokens": decode_tokens,
        "decode_errors": {str(b): d["error"] for b, d in decode.items() if "error" in d},
        "peak_memory_bytes": peak_mem, "kv_cache_bytes_per_token": kv_bytes,
        "cache_bytes_per_sequence": seq_bytes,
        "flops_per_token": flops, "train_flops_per_sec": train_tps * flops["train"],
    }


# ---- component level --------------------------------------------------------------------------

def bench_components(device, dtype, batch=8, seq=256, d_model=256, n_heads=4, reps=5, warmup=2):
    """Each attention's forward+backward against plain causal SDPA; each ffn against mlp with the
    same parameter count. Ratios > 1 mean faster than the reference."""
    import torch
    import torch.nn.functional as F
    reg = get_registry()
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


REFERENCE = "gpt2"  # the model every other one is compared with, measured in the same run


def vs_reference(r, ref, decode_batch) -> dict:
    """Training and decoding tokens/s of result ``r`` relative to those of ``ref`` (None where either
    is missing): ``{"train", "decode_b1", "decode_bN"}``."""
    def ratio(key):
        a, b = r.get(key), (ref or {}).get(key)
        return a / b if a and b else None
    return {"train": ratio("train_tokens_per_sec"), "decode_b1": ratio("decode_tokens_per_sec_b1"),
            f"decode_b{decode_batch}": ratio(f"decode_tokens_per_sec_b{decode_batch}")}


def run_bench(names, preset="tiny", device=None, dtype=None, compile_=False, batch=None, seq=None,
              reps=5, warmup=2, components=False, decode_batch=8, decode_tokens=32):
    """Every figure of :func:`bench_model` for each name (default: every named model), and each
    model's tokens/s relative to :data:`REFERENCE` (gpt2), measured in the same run: alongside, under
    ``"reference"``, when it is not among the names."""
    import torch
    device = resolve_device(device)
    dt = parse_dtype(dtype, default=torch.bfloat16 if device.type == "cuda" else torch.float32)
    dname = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dt]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    reg = get_registry()
    names = names or reg.list_models()
    batch = batch or (8 if device.type == "cuda" else 4)
    ref_name = REFERENCE if REFERENCE in reg.list_models() else None  # a manifest may have replaced it
    alongside = ref_name is not None and ref_name not in names
    for n in [*names, *([ref_name] if alongside else [])]:  # validate every name, and that it fits, first
        spec = resolve_spec(reg, n, preset, {"block_size": max(seq + decode_tokens, 1)} if seq else None)
        check_training_memory(spec, reg, device, batch, seq, act_bytes=dt.itemsize, what="measuring",
                              fix="Choose a smaller --preset, --batch or --seq.")
    peak_measured = measured_matmul_peak(device, dt)
    peak_sheet = datasheet_peak(device) if dt == torch.bfloat16 else None
    def measure(n):
        r = bench_model(n, preset, device, dt, batch, seq, compile_, reps, warmup, decode_tokens, decode_batch)
        r["mfu_vs_measured_peak"] = r["train_flops_per_sec"] / peak_measured
        r["mfu_vs_datasheet_peak"] = r["train_flops_per_sec"] / peak_sheet if peak_sheet else None
        return r

    ref = measure(ref_name) if alongside else None  # first, as the models it is compared with are
    results = [measure(n) for n in names]
    ref = ref or next((r for r in results if r["model"] == ref_name), None)
    for r in results + ([ref] if alongside else []):
        r[f"vs_{REFERENCE}"] = vs_reference(r, ref, decode_batch)
    out = {"environment": environment(device), "dtype": dname, "compile": compile_, "preset": preset,
           "peak_flops_measured": peak_measured, "peak_flops_datasheet": peak_sheet, "models": results,
           "reference_model": ref_name, "reference": ref if alongside else None}
    if components:
        out["components"] = bench_components(device, dt, reps=reps, warmup=warmup)
    return out


# ---- decoding: cache against recompute, and transformers ------------------------------------------

def _rss_bytes():
    """(resident memory now, peak resident memory) of this process in bytes; now is None off Linux."""
    import resource
    import sys
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    try:
        with open("/proc/self/statm") as f:
            now = int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        now = None
    return now, peak


def decode_slices(gen, n_tokens, slices, device="cpu"):
    """Run a :class:`zoo.generate.generation.Generation` to its end, timing it in ``slices`` equal
    slices of its ``n_tokens`` steps: per slice the seconds per token (wall and process CPU time), the bytes its cache holds
    (``nbytes``), and the process's resident and peak resident memory at the slice's end (what a
    cache that grows, or any leak, shows in). The first step (prefill and first token) is not timed."""
    import torch
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    it = iter(gen)
    next(it, None)
    bounds = [max(1, round(n_tokens * (k + 1) / slices)) for k in range(slices)]
    out, step, t0, c0 = [], 1, time.perf_counter(), time.process_time()
    for end in bounds:
        start = step
        for _ in range(end - step):
            if next(it, None) is None:
                break
            step += 1
        sync()
        t1, c1 = time.perf_counter(), time.process_time()
        now, peak = _rss_bytes()
        out.append({"tokens": [start, step], "s_per_token": (t1 - t0) / max(step - start, 1),
                    "cpu_s_per_token": (c1 - c0) / max(step - start, 1),
                    "cache_bytes": gen.cache.nbytes if gen.cache is not None else None,
                    "rss_bytes": now, "peak_rss_bytes": peak})
        t0, c0 = t1, c1
    for _ in it:  # whatever is left (none when the slices cover every step)
        pass
    return out


def bench_cache(model_name="gpt2", preset="char", new_tokens=500, prompt_len=1, batch=1, device="cpu",
                overrides=None, seed=0, compile=False, runs=("cache", "recompute"), dtype=None, log=print,
                slices=None):
    """Seconds to decode ``new_tokens`` tokens per sequence with the KV cache ("cache") and by
    recomputing the whole context each step ("recompute"), greedy, same randomly initialised model
    (speed does not depend on the weights); "hf" times Hugging Face transformers' ``generate`` on a
    GPT-2 built from the same configuration (no download). A bounded (learned) model's context is
    raised to fit ``prompt_len + new_tokens``. ``slices``: also decode once more with the cache in
    that many slices of the tokens, reporting each slice's time per token, cache bytes and resident
    memory (:func:`decode_slices`; ``res["slices"]``), so constant memory and time per token show."""
    import torch
    reg = get_registry()
    overrides = dict(overrides or {})
    spec = resolve_spec(reg, model_name, preset, overrides)
    need = prompt_len + new_tokens
    torch.manual_seed(seed)
    model = build_from_spec(spec, reg)
    window, bounded = context_window(model)
    if bounded and window < need:
        log(f"block_size raised from {spec['block_size']} to {need}: {model_name}'s learned positions must "
            f"cover {need} positions")
        overrides["block_size"] = need
        spec = resolve_spec(reg, model_name, preset, overrides)
        torch.manual_seed(seed)
        model = build_from_spec(spec, reg)
    model = model.to(device=device, dtype=parse_dtype(dtype)).eval()
    prompt = torch.randint(0, spec["vocab_size"], (batch, prompt_len), generator=torch.Generator().manual_seed(seed))
    res = {"model": model_name, "preset": preset, "block_size": spec["block_size"], "new_tokens": new_tokens,
           "prompt_len": prompt_len, "batch": batch, "device": str(device), "dtype": str(model.wte.weight.dtype),
           "compile": bool(compile), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if str(device).startswith("cuda"):
        res["gpu"] = torch.cuda.get_device_name(device)
    sizes = cache_bytes(spec, reg, model.wte.weight.element_size())
    res["cache_bytes_per_token"], res["cache_bytes_per_sequence"] = sizes if sizes is not None else (None, None)
    if sizes is not None:
        log(f"    cache: {sizes[0]:,} bytes per token + {sizes[1]:,} fixed bytes per sequence "
            f"({res['dtype'].replace('torch.', '')})")
    outs = {}

    def timed(fn):
        fn(3)  # warm-up (and compilation)
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn(new_tokens)
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0, time.process_time() - c0, out

    for name in runs:
        if name == "hf":
            run = _hf_gpt2_generate(spec, prompt.to(device), device, model.wte.weight.dtype)
        else:
            def run(n, name=name):
                g = generate(model, prompt.tolist(), n, top_k=1, use_cache=name != "recompute",
                             compile=compile and name != "recompute")
                for _ in g:
                    pass
                return g.tokens
        dt, cpu, outs[name] = timed(run)
        res[f"{name}_s"], res[f"{name}_cpu_s"] = dt, cpu
        res[f"{name}_tok_s"] = batch * new_tokens / dt
        log(f"{name:>9}: {dt:8.2f} s wall  {batch * new_tokens / dt:9.1f} tok/s  ({cpu:.2f} s of CPU time)")
    if "cache_s" in res and "recompute_s" in res:
        res["speedup"] = res["recompute_s"] / res["cache_s"]
        res["speedup_cpu_time"] = res["recompute_cpu_s"] / res["cache_cpu_s"]
        res["same_tokens"] = outs["cache"] == outs["recompute"]
        log(f"  speedup: {res['speedup']:.1f}x wall, {res['speedup_cpu_time']:.1f}x CPU time "
            f"(greedy tokens identical: {res['same_tokens']})")
    if slices:
        g = generate(model, prompt.tolist(), new_tokens, top_k=1, compile=compile)
        res["slices"] = rows = decode_slices(g, new_tokens, slices, device)
        log(f"  decoding with the cache in {len(rows)} slices:")
        for r in rows:
            rss = f"{r['rss_bytes'] / 2**20:8.1f} MiB" if r["rss_bytes"] is not None else "     n/a"
            cb = f"{r['cache_bytes']:,}" if r["cache_bytes"] is not None else "n/a"
            log(f"    tokens {r['tokens'][0]:>6}-{r['tokens'][1]:<6} {1e3 * r['s_per_token']:8.3f} ms/token "
                f"({1e3 * r['cpu_s_per_token']:.3f} of CPU time)  "
                f"cache {cb} B  RSS {rss}  peak RSS {r['peak_rss_bytes'] / 2**20:8.1f} MiB")
        first, last = rows[0], rows[-1]
        res["slice_time_ratio"] = last["s_per_token"] / first["s_per_token"]
        res["slice_cpu_time_ratio"] = last["cpu_s_per_token"] / first["cpu_s_per_token"]
        res["peak_rss_growth_bytes"] = last["peak_rss_bytes"] - first["peak_rss_bytes"]
        log(f"  last / first slice time per token: {res['slice_time_ratio']:.2f}x wall, "
            f"{res['slice_cpu_time_ratio']:.2f}x CPU time; peak RSS grew by "
            f"{res['peak_rss_growth_bytes'] / 2**20:.1f} MiB after the first slice")
    if "cache_s" in res and "hf_s" in res:
        res["vs_hf"] = res["hf_s"] / res["cache_s"]
        log(f"  zoo / transformers decode speed: {res['vs_hf']:.2f}x")
    return res


def _hf_gpt2_generate(spec, prompt, device, dtype):
    """A function n -> tokens running transformers' greedy ``generate`` for n new tokens on GPT-2
    built from ``spec``'s sizes (random weights; only the speed is compared)."""
    import torch
    att, pe, ffn = spec["attention"]["name"], spec["posenc"]["name"], spec["ffn"]["name"]
    if (att, pe, ffn) != ("mha", "learned", "mlp"):
        raise ZooError(f"the transformers comparison needs GPT-2's components (mha, learned, mlp); "
                       f"{spec['name']!r} has {att}, {pe}, {ffn}. Use --model gpt2.")
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        raise ZooError("the transformers comparison needs Hugging Face transformers: pip install transformers") from None
    cfg = GPT2Config(vocab_size=spec["vocab_size"], n_positions=spec["block_size"], n_embd=spec["d_model"],
                     n_layer=spec["n_layers"], n_head=spec["n_heads"], resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)
    hf = GPT2LMHeadModel(cfg).to(device=device, dtype=dtype).eval()

    def run(n):
        with torch.no_grad():
            out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
                              do_sample=False, pad_token_id=0)
        return out[:, prompt.shape[1]:].tolist()
    return run
