"""The zoo's GPT-2 side by side with peers nobody here wrote, in one process, on the same weights
(``zoo bench --vs transformers`` and ``zoo bench --vs nanogpt PATH``).

- transformers' ``GPT2LMHeadModel`` (the ``hf`` extra), given the zoo model's weights through the
  Hugging Face export mapping (:mod:`zoo.interop.hf`): the training step (forward, backward, AdamW)
  and greedy decoding with ``generate`` (its defaults: the dynamic cache, no compile) against the
  zoo's :func:`zoo.generate.generate`; the greedy tokens must be equal.
- nanoGPT's ``model.py`` from a checkout the user points to (it is never a dependency and never
  copied here; importing it runs that file): the training step, on the same weights.

Every figure is a ratio measured in the same process: repetitions alternate between the models
(zoo, peer, peer, zoo, ...) and each side's median is taken, so a machine that slows down slows
both. A ratio above 1 means the zoo is faster.
"""
from __future__ import annotations

import importlib.util
import statistics
import time
from pathlib import Path

from ..errors import ZooError
from ..generate.generation import generate
from ..nn.device import parse_dtype, resolve_device
from ..nn.transformer import build_from_spec
from ..spec.catalog import get_registry
from ..spec.resolve import resolve_spec

PEERS = ("transformers", "nanogpt")


def zoo_gpt2(preset="char", seed=0, block_size=None):
    """(spec, model) of the zoo's ``gpt2`` at ``preset`` without dropout (a timing must not depend on
    a random mask), randomly initialised with ``seed``."""
    import torch
    reg = get_registry()
    over = {"dropout": 0.0}
    if block_size:
        over["block_size"] = block_size
    spec = resolve_spec(reg, "gpt2", preset, over)
    torch.manual_seed(seed)
    return spec, build_from_spec(spec, reg)


def transformers_gpt2(spec, model):
    """transformers' ``GPT2LMHeadModel`` holding ``model``'s weights (through the export mapping)."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        raise ZooError("zoo bench --vs transformers needs Hugging Face transformers: pip install 'zoo[hf]' "
                       "(or pip install transformers).") from None
    from ..interop.hf.archs import export_arch
    from ..interop.hf.convert import convert_from_zoo
    arch = export_arch(spec)
    cfg = arch.to_hf(spec, None)
    cfg.update(bos_token_id=None, eos_token_id=None, pad_token_id=None)
    hf = GPT2LMHeadModel(GPT2Config(**{k: v for k, v in cfg.items() if k != "architectures"}))
    sd = convert_from_zoo(spec, model.state_dict(), arch)
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith(("attn.bias", "attn.masked_bias")) and k != "lm_head.weight"]
    if missing or unexpected:
        raise ZooError(f"the transformers GPT-2 did not take the zoo's weights: missing {missing[:3]}, "
                       f"unexpected {unexpected[:3]}.")
    hf.tie_weights()
    return hf.eval()


def load_nanogpt(path):
    """nanoGPT's ``model`` module from a checkout (a directory holding model.py, or model.py itself)."""
    p = Path(path).expanduser()
    f = p / "model.py" if p.is_dir() else p
    if not f.is_file():
        raise ZooError(f"--vs nanogpt {str(path)!r}: no model.py there; give the directory of a nanoGPT checkout "
                       f"(git clone https://github.com/karpathy/nanoGPT).")
    mod_spec = importlib.util.spec_from_file_location("zoo_peer_nanogpt_model", f)
    mod = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(mod)
    except Exception as e:  # noqa: BLE001 -- the user's file: whatever it raises is reported, not trusted
        raise ZooError(f"--vs nanogpt: importing {str(f)!r} failed: {type(e).__name__}: {e}") from None
    if not (hasattr(mod, "GPT") and hasattr(mod, "GPTConfig")):
        raise ZooError(f"--vs nanogpt: {str(f)!r} defines no GPT and GPTConfig; is it nanoGPT's model.py?")
    return mod


NANOGPT_NAMES = (("norm1", "ln_1"), ("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"), ("norm2", "ln_2"),
                 ("ffn.fc", "mlp.c_fc"), ("ffn.proj", "mlp.c_proj"))


def nanogpt_gpt2(mod, spec, model):
    """nanoGPT's ``GPT`` of ``spec``'s sizes holding ``model``'s weights (nanoGPT uses nn.Linear, so
    the tensors copy as they are; only the names change)."""
    import torch
    if spec["ffn"]["params"].get("approximate", "none") != "none":
        raise ZooError("nanoGPT's MLP uses the exact GELU; compare a gpt2 whose mlp is exact.")
    cfg = mod.GPTConfig(block_size=spec["block_size"], vocab_size=spec["vocab_size"], n_layer=spec["n_layers"],
                        n_head=spec["n_heads"], n_embd=spec["d_model"], dropout=0.0, bias=spec["bias"])
    out = _quiet(lambda: mod.GPT(cfg))
    names = {"wte.weight": "transformer.wte.weight", "posenc.wpe.weight": "transformer.wpe.weight",
             "norm_f.weight": "transformer.ln_f.weight", "norm_f.bias": "transformer.ln_f.bias"}
    for i in range(spec["n_layers"]):
        for z, n in NANOGPT_NAMES:
            for t in ("weight", "bias"):
                names[f"blocks.{i}.{z}.{t}"] = f"transformer.h.{i}.{n}.{t}"
    sd = model.state_dict()
    theirs = out.state_dict()
    with torch.no_grad():
        for z, n in names.items():
            if z in sd:
                if n not in theirs or theirs[n].shape != sd[z].shape:
                    raise ZooError(f"--vs nanogpt: its model has no tensor {n} of shape {tuple(sd[z].shape)}; is it "
                                   f"nanoGPT's model.py?")
                theirs[n].copy_(sd[z])
    return out.eval()


def _quiet(fn):
    """nanoGPT prints its parameter count when it builds a model: keep the report clean."""
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        return fn()


def interleaved(fns: dict, reps: int, warmup: int = 2):
    """{name: [seconds, ...]}: each function timed ``reps`` times after ``warmup`` calls, the order
    of the functions reversed every repetition so that neither side always runs first."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    names = list(fns)
    times = {n: [] for n in names}
    for r in range(reps):
        for n in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t0)
    return times


def _summary(ts):
    return {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts), "reps": len(ts)}


def _train_step(model, x, y, loss_of, autocast):
    import torch
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step():
        with autocast():
            loss = loss_of(model, x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def compare(peer, preset="char", nanogpt_path=None, batch=8, reps=20, warmup=3, dtype=None, compile_=False,
            prompt_len=16, new_tokens=200, decode_batches=(1, 8, 64), decode_reps=None, seed=0, log=print):
    """The training step (and, against transformers, greedy decoding) of the zoo's gpt2 against
    ``peer`` on the same weights, same threads, interleaved. Returns a JSON-ready dict."""
    import contextlib
    import torch
    if peer not in PEERS:
        raise ZooError(f"unknown peer {peer!r}; zoo bench --vs compares with {', '.join(PEERS)} (or reads an "
                       f"earlier --json result).")
    dev = resolve_device("cpu")
    dt = parse_dtype(dtype, default=torch.float32, allowed=(torch.float32, torch.bfloat16))
    spec, model = zoo_gpt2(preset, seed)
    if peer == "nanogpt":
        if nanogpt_path is None:
            raise ZooError("zoo bench --vs nanogpt needs the path of a nanoGPT checkout: --vs nanogpt PATH.")
        other = nanogpt_gpt2(load_nanogpt(nanogpt_path), spec, model)
    else:
        other = transformers_gpt2(spec, model)
    B = batch or 8
    if peer == "transformers" and prompt_len + new_tokens > spec["block_size"]:
        raise ZooError(f"decoding {new_tokens} tokens after {prompt_len} needs {prompt_len + new_tokens} positions; "
                       f"gpt2 at preset {preset} has {spec['block_size']}. Ask for fewer (--new-tokens, --prompt-len).")
    T = spec["block_size"]
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, spec["vocab_size"], (B, T), generator=g)
    y = torch.randint(0, spec["vocab_size"], (B, T), generator=g)
    res = {"peer": peer, "preset": preset, "dims": {k: spec[k] for k in ("n_layers", "n_heads", "d_model",
                                                                         "block_size", "vocab_size")},
           "batch": B, "dtype": str(dt).removeprefix("torch."), "compile": compile_, "reps": reps,
           "threads": torch.get_num_threads(), "torch": torch.__version__, "device": str(dev)}
    with torch.no_grad():  # the same weights: the same logits
        a = model.eval()(x)[0]
        b = _peer_logits(peer, other, x)
        res["max_logit_diff"] = float((a - b).abs().max())
    log(f"zoo gpt2 vs {peer} at preset {preset} ({B} x {T}, {res['dtype']}, compile {compile_}, "
        f"{res['threads']} threads): same weights, max |logit difference| {res['max_logit_diff']:.2e}")

    def zoo_loss(m, x, y):
        return m(x, y)[1]

    def peer_loss(m, x, y):
        if peer == "nanogpt":
            return m(x, y)[1]
        return torch.nn.functional.cross_entropy(m(input_ids=x).logits.float().flatten(0, 1), y.flatten())

    auto = ((lambda: torch.autocast("cpu", dtype=dt)) if dt != torch.float32 else contextlib.nullcontext)
    zm, om = (torch.compile(model), torch.compile(other)) if compile_ else (model, other)
    t = interleaved({"zoo": _train_step(zm, x, y, zoo_loss, auto), peer: _train_step(om, x, y, peer_loss, auto)},
                    reps, warmup)
    res["train"] = {"zoo": _summary(t["zoo"]), peer: _summary(t[peer])}
    res["train"]["zoo_speed_vs_peer"] = res["train"][peer]["median_s"] / res["train"]["zoo"]["median_s"]
    log(f"training step: zoo {1e3 * res['train']['zoo']['median_s']:.1f} ms, {peer} "
        f"{1e3 * res['train'][peer]['median_s']:.1f} ms (medians of {reps}): zoo speed "
        f"{res['train']['zoo_speed_vs_peer']:.2f}x")
    if peer == "transformers":
        res["decode"] = compare_decoding(model, other, spec, prompt_len, new_tokens, decode_batches,
                                         decode_reps or max(3, reps // 4), seed, log)
    return res


def _peer_logits(peer, other, x):
    if peer == "nanogpt":  # nanoGPT returns the last position only unless it gets targets
        return other(x, x)[0]
    return other(input_ids=x).logits


def compare_decoding(model, hf, spec, prompt_len=16, new_tokens=200, batches=(1, 8, 64), reps=5, seed=0, log=print):
    """Greedy decoding of ``new_tokens`` after a ``prompt_len``-token prompt at each batch size: the
    zoo's generate against transformers' ``generate`` (its defaults), interleaved; tokens compared."""
    import torch
    model.eval()
    out = {"prompt_len": prompt_len, "new_tokens": new_tokens}
    for b in batches:
        prompt = torch.randint(0, spec["vocab_size"], (b, prompt_len), generator=torch.Generator().manual_seed(seed + b))
        got = {}

        def zoo_run(p=prompt):
            g = generate(model, p.tolist(), new_tokens, top_k=1)
            for _ in g:
                pass
            got["zoo"] = g.tokens

        def hf_run(p=prompt):
            with torch.no_grad():
                o = hf.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=new_tokens,
                                min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
            got["transformers"] = o[:, p.shape[1]:].tolist()

        t = interleaved({"zoo": zoo_run, "transformers": hf_run}, reps, warmup=1)
        zs, hs = statistics.median(t["zoo"]), statistics.median(t["transformers"])
        row = {"zoo": _summary(t["zoo"]), "transformers": _summary(t["transformers"]),
               "zoo_tokens_per_sec": b * new_tokens / zs, "transformers_tokens_per_sec": b * new_tokens / hs,
               "zoo_speed_vs_peer": hs / zs, "same_tokens": got["zoo"] == got["transformers"]}
        out[f"b{b}"] = row
        log(f"decoding at batch {b}: zoo {row['zoo_tokens_per_sec']:.0f} tok/s, transformers "
            f"{row['transformers_tokens_per_sec']:.0f} tok/s: zoo speed {row['zoo_speed_vs_peer']:.2f}x "
            f"(greedy tokens equal: {row['same_tokens']})")
    return out
