"""``zoo train``: the trainer.

One loop serves a laptop CPU, one GPU and ``torchrun`` (DDP, or FSDP2's ``fully_shard`` with
``--fsdp``). AdamW (fused on CUDA) with no weight decay on norms, biases and embeddings; warmup
then cosine decay to a floor, or warmup-stable-decay (Hu et al. 2024, MiniCPM, arXiv:2404.06395);
gradient accumulation with the gradients scaled once per optimizer step; clipping; bf16 autocast
and TF32 on GPUs; optional ``torch.compile``; evaluation on fixed validation batches; optional
early stopping. A non-finite loss stops the run and keeps the last good checkpoint.

Order of one step (so that a resumed run repeats an uninterrupted one exactly): take the step's
batches from the sampler, forward/backward, clip, optimizer step; then, when due, evaluate, write a
text sample (with the RNG state forked, so sampling does not move the training RNG) and the
checkpoint. The checkpoint holds model, optimizer, step, per-rank RNG states and the sampler's
position; the schedule is a function of the step.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ZooError

# Training recipes per size preset. char is nanoGPT's shakespeare_char recipe
# (config/train_shakespeare_char.py) and 124m its GPT-2 small recipe. baby is nanoGPT's CPU baby
# recipe (README: 2000 iterations, batch 12, warmup 100, beta2 0.99) with twice its learning rate,
# 2e-3 -> 2e-4 instead of 1e-3 -> 1e-4: measured on gpt2 (docs/train.md), nanoGPT's rates end at
# val loss 1.899 and 1.886 (two seeds), short of the 1.88 nanoGPT reports; 2e-3 ends at 1.807.
# `--lr 1e-3 --min-lr 1e-4` gives nanoGPT's rates exactly.
RECIPES = {
    "tiny": dict(max_iters=300, batch_size=16, lr=1e-3, min_lr=1e-4, warmup=30, beta2=0.99,
                 eval_interval=100, eval_iters=10),
    "baby": dict(max_iters=2000, batch_size=12, lr=2e-3, min_lr=2e-4, warmup=100, beta2=0.99,
                 eval_interval=250, eval_iters=100),
    "char": dict(max_iters=5000, batch_size=64, lr=1e-3, min_lr=1e-4, warmup=100, beta2=0.99,
                 eval_interval=250, eval_iters=200),
    "124m": dict(max_iters=600000, batch_size=12, grad_accum=40, lr=6e-4, min_lr=6e-5, warmup=2000,
                 beta2=0.95, eval_interval=1000, eval_iters=200, tokenizer="gpt2"),
}
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12,
                   "4090": 165e12, "3090": 71e12}


@dataclass
class TrainConfig:
    preset: str | None = None
    overrides: dict = field(default_factory=dict)
    out: str = "runs"
    run_id: str | None = None
    dataset: str = "tinyshakespeare"
    data: str | None = None
    tokenizer: str | None = None  # char (default for text), gpt2, or a BPE file
    max_iters: int | None = None
    batch_size: int | None = None  # per rank and micro-step
    grad_accum: int | None = None
    lr: float | None = None
    min_lr: float | None = None
    warmup: int | None = None
    schedule: str = "cosine"  # cosine | wsd | constant
    decay_frac: float = 0.2  # wsd: share of the run spent decaying
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float | None = None
    grad_clip: float = 1.0
    eval_interval: int | None = None
    eval_iters: int | None = None
    log_interval: int = 10
    ckpt_interval: int | None = None  # default: every evaluation
    early_stop: int = 0  # evaluations without improvement before stopping; 0: never
    device: str = "auto"
    dtype: str = "auto"  # auto | float32 | bfloat16
    compile: bool = False
    seed: int = 1337
    fsdp: bool = False
    sample_tokens: int = 200
    sample_prompt: str = "\n"

    def fill(self, preset: str):
        recipe = {"grad_accum": 1, **RECIPES.get(preset, RECIPES["baby"])}
        for k, v in recipe.items():
            if getattr(self, k, None) is None:
                setattr(self, k, v)
        if self.ckpt_interval is None:
            self.ckpt_interval = self.eval_interval
        for k in ("max_iters", "batch_size", "grad_accum", "eval_interval", "eval_iters", "log_interval", "ckpt_interval"):
            if getattr(self, k) < 1:
                raise ZooError(f"--{k.replace('_', '-')} must be at least 1, not {getattr(self, k)}.")
        if self.schedule not in ("cosine", "wsd", "constant"):
            raise ZooError(f"unknown schedule {self.schedule!r}; choose cosine, wsd or constant.")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ZooError(f"unknown dtype {self.dtype!r}; choose auto, float32 or bfloat16.")
        return self


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then cosine decay to
    ``min_lr`` at the last step, warmup-stable-decay (linear decay over the last ``decay_frac``),
    or constant."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / (cfg.warmup + 1)
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "wsd":
        decay_start = int(cfg.max_iters * (1 - cfg.decay_frac))
        if step < decay_start:
            return cfg.lr
        frac = (step - decay_start) / max(1, cfg.max_iters - decay_start)
        return cfg.lr + (cfg.min_lr - cfg.lr) * min(1.0, frac)
    frac = (step - cfg.warmup) / max(1, cfg.max_iters - cfg.warmup)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * min(1.0, frac))) * (cfg.lr - cfg.min_lr)


def param_groups(model, weight_decay: float):
    """Weight decay on matrices only: not on norms, biases, embeddings (nn.Embedding weights, and
    parameters a component marks with ``zoo_no_decay``)."""
    import torch.nn as nn
    no_decay = set()
    for m in model.modules():
        if isinstance(m, nn.Embedding):
            no_decay.add(id(m.weight))
        for p in m.parameters(recurse=False):
            if getattr(p, "zoo_no_decay", False):
                no_decay.add(id(p))
    decay, other, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and id(p) not in no_decay else other).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


# ---- distributed -------------------------------------------------------------------------------

class Dist:
    """The process group under torchrun (WORLD_SIZE > 1), or a single process."""

    def __init__(self, device_pref: str):
        import torch
        import torch.distributed as dist
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device_pref == "auto":
            device_pref = "cuda" if torch.cuda.is_available() else "cpu"
        if device_pref.startswith("cuda") and not torch.cuda.is_available():
            raise ZooError("--device cuda was asked for, but PyTorch sees no CUDA GPU here. Use --device cpu.")
        if device_pref == "cuda" and self.world > 1:
            device_pref = f"cuda:{self.local_rank}"
        self.device = torch.device(device_pref)
        if self.device.type == "cuda" and self.device.index is not None:
            torch.cuda.set_device(self.device)
        self.enabled = self.world > 1
        if self.enabled and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_mean(self, t):
        if self.enabled:
            import torch.distributed as dist
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t /= self.world
        return t

    def all_sum(self, t):
        if self.enabled:
            import torch.distributed as dist
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def broadcast(self, obj):
        if not self.enabled:
            return obj
        import torch.distributed as dist
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj):
        if not self.enabled:
            return [obj]
        import torch.distributed as dist
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self):
        if self.enabled:
            import torch.distributed as dist
            dist.barrier()

    def close(self):
        if self.enabled:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()


# ---- progress ----------------------------------------------------------------------------------

def _hms(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """A one-line progress bar on a terminal; plain log lines every ``log_interval`` steps otherwise.
    Silent on ranks other than 0."""

    def __init__(self, enabled: bool, total: int, log_interval: int, stream=None):
        self.stream = stream or sys.stderr
        self.enabled, self.total, self.every = enabled, total, log_interval
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.open_line = False

    def step(self, step, loss, lr, tps, eta):
        if not self.enabled:
            return
        if self.tty:
            width = 24
            done = int(width * step / self.total)
            bar = "#" * done + "." * (width - done)
            self.stream.write(f"\r[{bar}] {step}/{self.total} loss {loss:.4f} {tps / 1e3:.1f}k tok/s {_hms(eta)} left ")
            self.stream.flush()
            self.open_line = True
        elif step % self.every == 0 or step == self.total:
            self.line(f"step {step}/{self.total} loss {loss:.4f} lr {lr:.2e} {tps:,.0f} tok/s eta {_hms(eta)}")

    def line(self, text):
        if not self.enabled:
            return
        if self.open_line:
            self.stream.write("\n")
            self.open_line = False
        print(text, file=self.stream, flush=True)


# ---- helpers -----------------------------------------------------------------------------------

def _flatten(d: dict, prefix="") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        elif v is None:
            out[key] = "None"
        else:
            out[key] = json.dumps(v)
    return out


def _peak_flops(device) -> float | None:
    import torch
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for k, v in PEAK_BF16_FLOPS.items():
        if k in name:
            return v
    return None


def flops_per_token(model, spec) -> float:
    """6N + 12·L·T·C (Kaplan et al. 2020; PaLM, Chowdhery et al. 2022, appendix B)."""
    n = model.num_params(non_embedding=True)
    return 6 * n + 12 * spec["n_layers"] * spec["block_size"] * spec["d_model"]


def _peak_memory_mb(device) -> float:
    import torch
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def sample_text(model, tokenizer, prompt, max_new_tokens, seed=0):
    """A text sample for TensorBoard, through zoo.generate when it is installed."""
    import torch
    try:
        from .generate import generate_text
    except ImportError:
        generate_text = None
    with torch.random.fork_rng(devices=[] if model.wte.weight.device.type != "cuda" else None):
        if generate_text is not None:
            return generate_text(model, tokenizer, prompt, max_new_tokens=max_new_tokens, temperature=0.8,
                                 top_k=200, seed=seed)
        # no zoo.generate: plain sampling without a cache, one token at a time
        torch.manual_seed(seed)
        ids = tokenizer.encode(prompt) or [0]
        idx = torch.tensor([ids], device=model.wte.weight.device)  # (1, T)
        for _ in range(max_new_tokens):
            logits, _ = model(idx[:, -model.block_size:])  # (1, T, V)
            probs = torch.softmax(logits[:, -1].float() / 0.8, dim=-1)  # (1, V)
            idx = torch.cat([idx, torch.multinomial(probs, 1)], dim=1)  # (1, T+1)
        return tokenizer.decode(idx[0, len(ids):].tolist())


def _new_run_id(parent: Path) -> str:
    base = time.strftime("%Y%m%d-%H%M%S")
    rid, i = base, 1
    while (parent / rid).exists():
        i += 1
        rid = f"{base}-{i}"
    return rid


def _check_writable(out: Path):
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ZooError(f"cannot create the runs directory {str(out)!r}: {e.strerror}. Choose another with --out.") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ZooError(f"the runs directory {str(out)!r} is not writable. Choose another with --out.")


# ---- data --------------------------------------------------------------------------------------

def load_data(cfg: TrainConfig, tokenizer_cfg: dict | None = None):
    """-> (tokenizer, train arrays, val arrays, description)."""
    import numpy as np
    from . import data as D
    from .tokenizers import from_config, get_tokenizer
    path = D.find_dataset(cfg.dataset, cfg.data)
    if path.is_dir():
        meta = D.load_meta(path)
        tok = from_config(tokenizer_cfg or meta["tokenizer"])
        if cfg.tokenizer and not tokenizer_cfg:
            want = get_tokenizer(cfg.tokenizer, corpus="") if cfg.tokenizer != "char" else None
            if want is None or want.config() != meta["tokenizer"]:
                raise ZooError(f"the shards in {str(path)!r} were encoded with {meta['tokenizer'].get('type')} "
                               f"tokens, not {cfg.tokenizer!r}; drop --tokenizer or prepare the shards again.")
        train, val = D.open_shards(path, "train"), D.open_shards(path, "val")
        if not val:
            raise ZooError(f"the shards in {str(path)!r} have no validation split; prepare them with a "
                           f"validation share (--val-fraction or --val-tokens).")
        return tok, train, val, f"{sum(len(a) for a in train):,} train tokens in shards at {path}"
    text = D.read_text(path)
    tok = from_config(tokenizer_cfg) if tokenizer_cfg else get_tokenizer(cfg.tokenizer or "char", corpus=text)
    tr, va = D.split_text(text)
    dt = D.token_dtype(tok.vocab_size)
    train, val = np.array(tok.encode(tr), dtype=dt), np.array(tok.encode(va), dtype=dt)
    return tok, [train], [val], f"{len(train):,} train and {len(val):,} val tokens from {path}"


# ---- the trainer -------------------------------------------------------------------------------

class Trainer:
    def __init__(self, name: str | None, cfg: TrainConfig, resume: str | None = None, dist: Dist | None = None,
                 log=None):
        import torch
        import zoo
        from .checkpoint import load_checkpoint
        self.dist = dist or Dist(cfg.device)
        self.log = log or Progress(self.dist.main, 1, cfg.log_interval).line
        self.ckpt = None
        if resume:
            self.ckpt = load_checkpoint(resume)
            if "train" not in self.ckpt or "sampler" not in self.ckpt:
                raise ZooError(f"{resume!r} holds weights but no training state (optimizer, sampler); it "
                               f"cannot be resumed. Start a new run, e.g. `zoo train {self.ckpt['spec']['name']}`.")
            saved = TrainConfig(**{k: v for k, v in self.ckpt["train"].items()
                                   if k in {f.name for f in dataclasses.fields(TrainConfig)}})
            if cfg.max_iters is not None:
                saved.max_iters = cfg.max_iters  # extending a run is allowed; everything else is as saved
            saved.device, saved.compile = cfg.device, cfg.compile
            cfg = saved
            name = self.ckpt["spec"]["name"]
            self.run_dir = Path(resume) if Path(resume).is_dir() else Path(resume).parent
        self.cfg, self.name = cfg, name
        preset = cfg.preset
        if preset is None:
            preset = "baby" if self.dist.device.type == "cpu" else "char"
            self.log(f"no --preset given: using {preset!r} ({'nanoGPT baby recipe, minutes on a CPU' if preset == 'baby' else 'nanoGPT shakespeare_char recipe on a GPU'})")
            cfg.preset = preset
        if not self.ckpt:
            recipe_tok = RECIPES.get(preset, {}).get("tokenizer")
            if cfg.tokenizer is None and recipe_tok and not cfg.data:
                cfg.tokenizer = recipe_tok
        cfg.fill(preset)
        if not self.ckpt:
            zoo.resolve(name, preset, **cfg.overrides)  # an unknown model or override fails before the data is read

        # data and tokenizer before anything is written
        self.tok, train_arrays, val_arrays, what = load_data(cfg, self.ckpt["tokenizer"] if self.ckpt else None)
        if self.ckpt:
            spec = self.ckpt["spec"]
        else:
            ov = dict(cfg.overrides)
            if "vocab_size" not in ov:
                v = self.tok.vocab_size
                ov["vocab_size"] = v if v <= 256 else (v + 63) // 64 * 64  # padded for fast matmuls
            spec = zoo.resolve(name, preset, **ov)
            if spec["vocab_size"] < self.tok.vocab_size:
                raise ZooError(f"vocab_size={spec['vocab_size']} is smaller than the tokenizer's "
                               f"{self.tok.vocab_size} tokens; drop the vocab_size override or raise it.")
        self.spec = spec
        from .data import WindowSampler, fixed_batches
        T = spec["block_size"]
        self.sampler = WindowSampler(train_arrays, T, seed=cfg.seed)
        # the same validation windows for any world size at the same global batch
        self.val_batches = fixed_batches(val_arrays, T, cfg.batch_size, cfg.eval_iters * self.dist.world)
        self.log(f"data: {what}; tokenizer {self.tok.config()['type']} ({self.tok.vocab_size} tokens)")

        # run directory
        if not self.ckpt:
            out = Path(cfg.out)
            if self.dist.main:
                _check_writable(out)
                parent = out / name
                run_id = cfg.run_id or _new_run_id(parent)
                if cfg.run_id and (parent / run_id).exists():
                    raise ZooError(f"run directory {str(parent / run_id)!r} already exists; choose another "
                                   f"--run-id, or continue it with --resume {parent / run_id}.")
            else:
                run_id = None
            run_id = self.dist.broadcast(run_id)
            self.run_dir = out / name / run_id
        self.created_dir = False

        # model
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        dev = self.dist.device
        if dev.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(
            cfg.dtype, torch.bfloat16 if dev.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32)
        self.model = zoo.build_from_spec(spec).to(dev)
        self.n_params = self.model.num_params()
        self.wrapped = self.model
        if self.dist.enabled:
            if cfg.fsdp:
                from torch.distributed.fsdp import fully_shard
                for b in self.model.blocks:
                    fully_shard(b)
                fully_shard(self.model)
            else:
                from torch.nn.parallel import DistributedDataParallel as DDP
                self.wrapped = DDP(self.model, device_ids=[dev.index] if dev.type == "cuda" else None)
        self.forward = torch.compile(self.wrapped) if cfg.compile else self.wrapped
        fused = dev.type == "cuda" and not (self.dist.enabled and cfg.fsdp)  # fused kernels take plain tensors
        self.opt = torch.optim.AdamW(param_groups(self.model, cfg.weight_decay), lr=cfg.lr,
                                     betas=(cfg.beta1, cfg.beta2), fused=fused or None)
        self.step = 0
        self.best_val, self.evals_since_best, self.last_ckpt_step = float("inf"), 0, None
        self.elapsed = 0.0
        if self.ckpt:
            self._load_state(self.ckpt)
        torch.manual_seed(cfg.seed + 1000 * self.dist.rank + 1)  # dropout differs per rank
        if self.ckpt:
            self._load_rng(self.ckpt)
        self.flops_tok = flops_per_token(self.model, spec)
        self.peak = _peak_flops(dev)

    # -- state ---------------------------------------------------------------------------------
    # Model and optimizer state go through torch.distributed.checkpoint's state-dict API in every
    # mode (one process, DDP, FSDP2): full, unsharded tensors on the CPU, the optimizer state keyed by
    # parameter name, so a checkpoint resumes under any of them.
    def _model_state(self):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def _opt_state(self):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        return get_optimizer_state_dict(self.model, self.opt,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def _load_state(self, ckpt):
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)
        opts = StateDictOptions(full_state_dict=True)
        try:
            set_model_state_dict(self.model, ckpt["model"], options=opts)
            set_optimizer_state_dict(self.model, self.opt, ckpt["optimizer"], options=opts)
        except (RuntimeError, KeyError, ValueError) as e:
            raise ZooError(f"the checkpoint's weights or optimizer state do not fit its model: "
                           f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        self.step = int(ckpt["step"])
        self.sampler.load_state(ckpt["sampler"])
        self.best_val = float(ckpt.get("best_val", float("inf")))
        self.evals_since_best = int(ckpt.get("evals_since_best", 0))
        self.elapsed = float(ckpt.get("elapsed", 0.0))
        self.last_ckpt_step = self.step

    def _load_rng(self, ckpt):
        import torch
        rng = ckpt.get("rng") or {}
        states = rng.get("torch") or []
        if len(states) != self.dist.world:
            self.log(f"note: the checkpoint holds RNG states for {len(states)} rank(s), this run has "
                     f"{self.dist.world}; dropout will not repeat the original run exactly")
            return
        torch.set_rng_state(states[self.dist.rank])
        cuda = rng.get("cuda") or []
        if self.dist.device.type == "cuda" and len(cuda) == self.dist.world and cuda[self.dist.rank] is not None:
            torch.cuda.set_rng_state(cuda[self.dist.rank], self.dist.device)

    def save(self):
        import torch
        from .checkpoint import CKPT_NAME, plugins_of, save_checkpoint
        model_state = self._model_state()
        opt_state = self._opt_state()
        cuda = torch.cuda.get_rng_state(self.dist.device) if self.dist.device.type == "cuda" else None
        states = self.dist.gather((torch.get_rng_state(), cuda))
        if self.dist.main:
            payload = {
                "model": model_state, "optimizer": opt_state, "spec": self.spec, "tokenizer": self.tok.config(),
                "plugins": plugins_of(self.spec), "step": self.step, "train": dataclasses.asdict(self.cfg),
                "sampler": self.sampler.state(), "rng": {"torch": [s[0] for s in states], "cuda": [s[1] for s in states]},
                "best_val": self.best_val, "evals_since_best": self.evals_since_best, "elapsed": self.elapsed,
                "world_size": self.dist.world, "zoo_version": __import__("zoo").__version__,
                "torch_version": str(torch.__version__),
            }
            save_checkpoint(self.run_dir / CKPT_NAME, payload)
        self.dist.barrier()
        self.last_ckpt_step = self.step

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate(self) -> float:
        import torch
        self.model.eval()
        total = torch.zeros(2, device=self.dist.device)  # (sum of losses * windows, windows)
        with torch.no_grad():
            for x, y in self.val_batches[self.dist.rank::self.dist.world]:
                x, y = x.to(self.dist.device), y.to(self.dist.device)
                with self._autocast():
                    _, loss = self.forward(x, y)
                total[0] += loss.float() * x.shape[0]
                total[1] += x.shape[0]
        self.dist.all_sum(total)
        self.model.train()
        return (total[0] / total[1]).item()

    def _autocast(self):
        import contextlib
        import torch
        if self.ptdtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.dist.device.type, dtype=self.ptdtype)

    # -- the loop --------------------------------------------------------------------------------
    def _writer(self):
        from torch.utils.tensorboard import SummaryWriter
        if self.ckpt:
            # TensorBoard reads a run's event files in name order, and names start with the creation
            # second: make sure the resumed run's file sorts after the files it continues.
            stamps = [int(p.name.split(".")[3]) for p in self.run_dir.glob("events.out.tfevents.*")
                      if len(p.name.split(".")) > 3 and p.name.split(".")[3].isdigit()]
            while stamps and int(time.time()) <= max(stamps):
                time.sleep(0.05)
        # on resume, hide what a killed process logged after its last checkpoint
        return SummaryWriter(log_dir=str(self.run_dir), purge_step=self.step + 1 if self.ckpt else None)

    def _write_run_files(self, w):
        from .manifest import resolve_entry
        from .tokenizers import save_config
        import zoo
        (self.run_dir / "spec.json").write_text(json.dumps(self.spec, indent=2), encoding="utf-8")
        save_config(self.tok, self.run_dir / "tokenizer.json")
        from .checkpoint import plugins_of
        from torch.utils.tensorboard.summary import hparams
        entry = resolve_entry(zoo.get_registry(), self.spec["name"])
        hp = _flatten(self.spec, "spec.")
        hp.update(_flatten({k: v for k, v in dataclasses.asdict(self.cfg).items() if k != "overrides"}, "train."))
        hp["manifest_hash"] = hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()[:16]
        hp.update({f"plugin.{d}": v for d, v in plugins_of(self.spec).items()})
        hp["params"] = self.n_params
        hp["world_size"] = self.dist.world
        exp, ssi, sei = hparams(hp, {"val/loss": float("nan"), "val/best_loss": float("nan")})
        for s in (exp, ssi, sei):
            w.file_writer.add_summary(s)
        w.add_text("spec", "```\n" + json.dumps(self.spec, indent=2) + "\n```", 0)

    def fit(self, progress: Progress | None = None) -> dict:
        import torch
        cfg, dev, d = self.cfg, self.dist.device, self.dist
        progress = progress or Progress(d.main, cfg.max_iters, cfg.log_interval)
        w = None
        if d.main:
            new_dir = not self.run_dir.exists()
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                w = self._writer()
                if not self.ckpt:
                    self._write_run_files(w)
            except OSError as e:
                if new_dir:
                    shutil.rmtree(self.run_dir, ignore_errors=True)
                raise ZooError(f"cannot write the run directory {str(self.run_dir)!r}: {e.strerror}. "
                               f"Choose another --out.") from None
            self.created_dir = new_dir
            w.add_scalar("model/params", self.n_params, self.step)
            verb = f"resuming at step {self.step} of" if self.ckpt else "training"
            self.log(f"{verb} {self.name} ({self.n_params / 1e6:.2f}M params, preset {cfg.preset}) on {dev} "
                     f"{str(self.ptdtype).replace('torch.', '')} x{d.world}; run dir {self.run_dir}")
        d.barrier()
        B, T, A = cfg.batch_size, self.spec["block_size"], cfg.grad_accum
        tokens_per_step = B * T * A * d.world
        history, val_history = [], []
        if self.step == 0:
            v = self.evaluate()
            val_history.append((0, v))
            self.best_val = v
            if w:
                w.add_scalar("val/loss", v, 0)
        self.model.train()
        t_start, t_last, tps_hist = time.time(), time.time(), []
        stop_reason = None
        fault = int(os.environ.get("ZOO_TEST_SIGKILL_AT_STEP", "0") or 0)  # test hook: see tests/test_train.py
        try:
            while self.step < cfg.max_iters:
                if fault and self.step == fault:
                    import signal
                    os.kill(os.getpid(), signal.SIGKILL)
                lr = lr_at(self.step, cfg)
                for g in self.opt.param_groups:
                    g["lr"] = lr
                idx = self.sampler.next_indices(B * A * d.world)
                loss_sum = torch.zeros((), device=dev)
                for a in range(A):
                    lo = (a * d.world + d.rank) * B
                    x, y = self.sampler.gather(idx[lo:lo + B])
                    x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                    sync = a == A - 1
                    if isinstance(self.wrapped, torch.nn.parallel.DistributedDataParallel):
                        self.wrapped.require_backward_grad_sync = sync
                    elif d.enabled and cfg.fsdp:
                        self.model.set_requires_gradient_sync(sync)
                    with self._autocast():
                        _, loss = self.forward(x, y)
                    loss.backward()
                    loss_sum += loss.detach().float()
                if A > 1:  # gradients of the summed micro-batch losses, scaled once per optimizer step
                    for p in self.model.parameters():
                        if p.grad is not None:
                            p.grad.div_(A)
                gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
                if hasattr(gn, "full_tensor"):
                    gn = gn.full_tensor()
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
                loss_t = d.all_mean(loss_sum / A)
                lossf = loss_t.item()
                if not math.isfinite(lossf):
                    where = (f"the last good checkpoint (step {self.last_ckpt_step}) stays in {self.run_dir}"
                             if self.last_ckpt_step is not None else f"no checkpoint was written yet; {self.run_dir} holds only logs")
                    raise ZooError(f"the training loss became {lossf} at step {self.step + 1}; stopping. {where}. "
                                   f"Lower the learning rate (--lr), raise warmup (--warmup) or clip harder (--grad-clip).")
                self.step += 1
                history.append((self.step, lossf))
                now = time.time()
                dt, t_last = now - t_last, now
                self.elapsed += dt
                tps = tokens_per_step / max(dt, 1e-9)
                tps_hist.append(tps)
                avg_tps = sum(tps_hist[-20:]) / len(tps_hist[-20:])
                eta = (cfg.max_iters - self.step) * tokens_per_step / avg_tps
                progress.step(self.step, lossf, lr, avg_tps, eta)
                if w and (self.step % cfg.log_interval == 0 or self.step == cfg.max_iters or self.step == 1):
                    w.add_scalar("train/loss", lossf, self.step)
                    w.add_scalar("train/lr", lr, self.step)
                    w.add_scalar("train/grad_norm", float(gn), self.step)
                    w.add_scalar("train/tokens_per_sec", tps, self.step)
                    w.add_scalar("time/elapsed_s", self.elapsed, self.step)
                    w.add_scalar("memory/peak_mb", _peak_memory_mb(dev), self.step)
                    if self.peak:
                        w.add_scalar("train/mfu", self.flops_tok * tps / (self.peak * d.world), self.step)
                    for mname, m in self.model.named_modules():
                        fn = getattr(m, "zoo_stats", None)
                        if callable(fn):
                            for k, v in (fn() or {}).items():
                                w.add_scalar(f"components/{mname}/{k}", float(v), self.step)
                    aux = self.model.aux_loss() if hasattr(self.model, "aux_loss") else None
                    if aux is not None:
                        w.add_scalar("train/aux_loss", float(aux.detach()), self.step)
                last = self.step == cfg.max_iters
                if self.step % cfg.eval_interval == 0 or last:
                    v = self.evaluate()
                    val_history.append((self.step, v))
                    improved = v < self.best_val
                    self.best_val = min(self.best_val, v)
                    self.evals_since_best = 0 if improved else self.evals_since_best + 1
                    progress.line(f"step {self.step}: train loss {lossf:.4f}, val loss {v:.4f}"
                                  f"{' (best)' if improved else ''}, {_hms(self.elapsed)} elapsed")
                    if w:
                        w.add_scalar("val/loss", v, self.step)
                        w.add_scalar("val/best_loss", self.best_val, self.step)
                    if cfg.sample_tokens > 0 and (d.main or cfg.fsdp):
                        text = sample_text(self.model, self.tok, cfg.sample_prompt, cfg.sample_tokens, seed=cfg.seed)
                        if w:
                            w.add_text("sample", "```\n" + text + "\n```", self.step)
                    self.model.train()
                    if cfg.early_stop and self.evals_since_best >= cfg.early_stop:
                        stop_reason = f"early stop: no improvement in {cfg.early_stop} evaluations"
                        self.save()
                        break
                if self.step % cfg.ckpt_interval == 0 or last:
                    self.save()
                t_last = time.time()  # evaluation and checkpoint time does not count as training time
            if stop_reason:
                progress.line(stop_reason)
        finally:
            if w:
                w.flush()
                w.close()
        warm = tps_hist[min(len(tps_hist) - 1, 5):] if tps_hist else []
        result = {"model": self.name, "run_dir": str(self.run_dir), "params": self.n_params, "steps": self.step,
                  "best_val_loss": self.best_val, "final_val_loss": val_history[-1][1] if val_history else None,
                  "tokens_per_sec": sum(warm) / len(warm) if warm else None, "wall_time_s": time.time() - t_start,
                  "history": history, "val_history": val_history}
        progress.line(f"done: {self.name} best val loss {self.best_val:.4f} in {self.step} steps; "
                      f"checkpoint {self.run_dir / 'ckpt.pt'}")
        return result


def train(name: str | None = None, cfg: TrainConfig | None = None, resume: str | None = None, dist=None, log=None,
          progress=None) -> dict:
    """Train one model (or resume a run) and return a summary with the loss history."""
    cfg = cfg or TrainConfig()
    t = Trainer(name, cfg, resume=resume, dist=dist, log=log)
    if progress is None:
        progress = Progress(t.dist.main, t.cfg.max_iters, t.cfg.log_interval)
    return t.fit(progress)


# ---- CLI -----------------------------------------------------------------------------------------

def cmd_train(args):
    from .cli import _overrides
    if not args.names and not args.resume:
        raise ZooError("name a model to train (see `zoo list`), or --resume RUN_DIR.")
    if args.names and args.resume:
        raise ZooError("--resume continues one run as it was configured; do not name models with it.")
    base = dict(preset=args.preset, overrides=_overrides(args.set), out=args.out, run_id=args.run_id,
                dataset=args.dataset, data=args.data, tokenizer=args.tokenizer, max_iters=args.max_iters,
                batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr, min_lr=args.min_lr,
                warmup=args.warmup, schedule=args.schedule, weight_decay=args.weight_decay, beta2=args.beta2,
                grad_clip=args.grad_clip, eval_interval=args.eval_interval, eval_iters=args.eval_iters,
                log_interval=args.log_interval, ckpt_interval=args.ckpt_interval, early_stop=args.early_stop,
                device=args.device, dtype=args.dtype, compile=args.compile, seed=args.seed, fsdp=args.fsdp,
                sample_tokens=args.sample_tokens)
    base = {k: v for k, v in base.items() if v is not None}
    dist = Dist(args.device)
    try:
        if args.resume:
            train(cfg=TrainConfig(**base), resume=args.resume, dist=dist)
            return 0
        if len(args.names) > 1 and args.run_id:
            raise ZooError("--run-id names one run; drop it when training several models.")
        results = []
        for name in args.names:
            results.append(train(name, TrainConfig(**base), dist=dist))
        if len(results) > 1 and dist.main:
            print("compare them with: zoo compare " + " ".join(r["run_dir"] for r in results), file=sys.stderr)
    finally:
        dist.close()
    return 0


def add_cli(sub):
    s = sub.add_parser("train", help="train one or more models on Tiny Shakespeare or your own data",
                       description="Train named models one after another. Without --preset: 'baby' on a CPU "
                                   "(minutes), 'char' on a GPU. Runs go to OUT/<model>/<run-id>/. Several GPUs: "
                                   "torchrun --nproc_per_node N -m zoo train NAME.")
    s.add_argument("names", nargs="*", metavar="NAME")
    s.add_argument("--preset", help="size preset (tiny, baby, char, 124m, ...)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="model override, e.g. n_layers=2")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its checkpoint")
    s.add_argument("--out", help="runs directory (default: runs)")
    s.add_argument("--run-id")
    s.add_argument("--dataset", help="built-in dataset (default: tinyshakespeare)")
    s.add_argument("--data", help="a text file, a directory holding tinyshakespeare.txt, or shards from `zoo data prepare`")
    s.add_argument("--tokenizer", help="char (default for text), gpt2, or a file from `zoo tokenizer train`")
    s.add_argument("--max-iters", type=int)
    s.add_argument("--batch-size", type=int, help="sequences per rank per micro-step")
    s.add_argument("--grad-accum", type=int, help="micro-steps per optimizer step")
    s.add_argument("--lr", type=float)
    s.add_argument("--min-lr", type=float)
    s.add_argument("--warmup", type=int)
    s.add_argument("--schedule", choices=["cosine", "wsd", "constant"])
    s.add_argument("--weight-decay", type=float)
    s.add_argument("--beta2", type=float)
    s.add_argument("--grad-clip", type=float, help="0 turns clipping off")
    s.add_argument("--eval-interval", type=int)
    s.add_argument("--eval-iters", type=int, help="fixed validation batches per evaluation")
    s.add_argument("--log-interval", type=int)
    s.add_argument("--ckpt-interval", type=int, help="steps between checkpoints (default: every evaluation)")
    s.add_argument("--early-stop", type=int, metavar="N", help="stop after N evaluations without improvement")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    s.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], help="auto: bf16 autocast on GPUs, fp32 on CPU")
    s.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    s.add_argument("--seed", type=int)
    s.add_argument("--fsdp", action="store_true", default=None, help="under torchrun: shard with FSDP2 instead of DDP")
    s.add_argument("--sample-tokens", type=int, help="tokens of the text sample at each evaluation (0: none)")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("tensorboard", help="open the runs in TensorBoard")
    s.add_argument("--out", default="runs", help="runs directory (default: runs)")
    s.add_argument("--port", type=int, default=6006)
    s.add_argument("--print", action="store_true", help="only print the command")
    s.set_defaults(fn=cmd_tensorboard)


def cmd_tensorboard(args):
    import subprocess
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", args.out, "--port", str(args.port)]
    print(f"$ tensorboard --logdir {args.out} --port {args.port}   # then open http://localhost:{args.port}")
    if args.print:
        return 0
    if not Path(args.out).is_dir():
        raise ZooError(f"no runs directory {args.out!r}; train a model first (`zoo train gpt2`).")
    return subprocess.call(cmd)
