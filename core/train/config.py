"""The training configuration: every option of ``zoo train``, filled from the preset's recipe.

A size preset in zoo.json carries its training recipe as data (``"train": {"max_iters": ...}``), so
a package's own preset brings its own recipe: ``tiny`` is the CI smoke test, ``char`` is nanoGPT's
shakespeare_char recipe (config/train_shakespeare_char.py), ``124m`` its GPT-2 small recipe, and
``baby`` nanoGPT's CPU baby recipe (README: 2000 iterations, batch 12, warmup 100, beta2 0.99) with
twice its learning rate, 2e-3 -> 2e-4 instead of 1e-3 -> 1e-4: measured on gpt2 (docs/train.md),
nanoGPT's rates end at val loss 1.899 and 1.886 (two seeds), short of the 1.88 nanoGPT reports;
2e-3 ends at 1.807. ``--lr 1e-3 --min-lr 1e-4`` gives nanoGPT's rates exactly.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields

from ..errors import ZooError, warn

# what a recipe does not set (a field's own default)
BASE = dict(grad_accum=1, schedule="cosine", decay_frac=0.2, weight_decay=0.1, beta1=0.9, grad_clip=1.0,
            log_interval=10, dtype="auto", sample_tokens=200)
# for a preset without a "train" recipe: the baby recipe's numbers (minutes on a CPU)
DEFAULT_RECIPE = dict(max_iters=2000, batch_size=12, lr=2e-3, min_lr=2e-4, warmup=100, beta2=0.99,
                      eval_interval=250, eval_iters=100)


# the range of each numeric option: integers (at least this), numbers (lo, lo excluded, hi, hi excluded)
INT_RANGES = dict(max_iters=1, batch_size=1, grad_accum=1, eval_interval=1, eval_iters=1, log_interval=1,
                  ckpt_interval=1, warmup=0, early_stop=0, sample_tokens=0, seed=0)
SEED_MAX = 2 ** 32 - 1
# (a rate or a decay above 1000 trains nothing; far above it AdamW's step overflows float32 in a traceback)
FLOAT_RANGES = dict(lr=(0, False, 1000, False), min_lr=(0, False, 1000, False),
                    weight_decay=(0, False, 1000, False), grad_clip=(0, False, None, False),
                    beta1=(0, False, 1, True), beta2=(0, False, 1, True), decay_frac=(0, True, 1, False))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def recipe_of(reg, preset: str):
    """The training recipe a preset carries (None if it carries none, or is not registered)."""
    src = reg.presets.get(preset)
    return None if src is None else src.entry.get("train")


def config_fields() -> set:
    return {f.name for f in fields(TrainConfig)}


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
    schedule: str | None = None  # cosine | wsd | constant
    decay_frac: float | None = None  # wsd: share of the run spent decaying
    weight_decay: float | None = None
    beta1: float | None = None
    beta2: float | None = None
    grad_clip: float | None = None
    eval_interval: int | None = None
    eval_iters: int | None = None
    log_interval: int | None = None
    ckpt_interval: int | None = None  # default: every evaluation
    early_stop: int = 0  # evaluations without improvement before stopping; 0: never
    device: str = "auto"
    dtype: str | None = None  # auto | float32 | bfloat16
    compile: bool = False
    seed: int = 1337
    fsdp: bool = False
    sample_tokens: int | None = None
    sample_prompt: str = "\n"
    target_loss: float | None = None  # stop at the first evaluation whose val loss is at most this

    def fill(self, recipe: dict | None):
        """Fill every unset field from the preset's training recipe (the ``train`` field of a preset in
        zoo.json), or from :data:`DEFAULT_RECIPE` for a preset that carries none (or what a partial
        recipe leaves out); what neither sets takes :data:`BASE`. Then :meth:`check` the ranges."""
        recipe = {**BASE, **DEFAULT_RECIPE, **(recipe or {})}
        for k, v in recipe.items():
            if getattr(self, k, None) is None:
                setattr(self, k, v)
        if self.ckpt_interval is None:
            self.ckpt_interval = self.eval_interval
        if self.__dict__.get("_checked") != self._values():  # filled and checked once already: no second warning
            self.check()
            self.__dict__["_checked"] = self._values()
        return self

    def _values(self) -> tuple:
        return tuple((f.name, repr(getattr(self, f.name))) for f in fields(self))

    def check(self):
        """Every option within its range (a ``ZooError`` naming the option and the range), whole floats
        as ints (``1e3`` is 1000); warnings for valid choices that have no effect."""
        for k, lo in INT_RANGES.items():
            v = getattr(self, k)
            if isinstance(v, float) and math.isfinite(v) and v.is_integer():
                v = int(v)
                setattr(self, k, v)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ZooError(f"{_flag(k)} must be a whole number, not {v!r}.")
            hi = SEED_MAX if k == "seed" else None
            if v < lo or (hi is not None and v > hi):
                rng = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
                raise ZooError(f"{_flag(k)} must be {rng}, not {v}.")
        for k, (lo, lo_open, hi, hi_open) in FLOAT_RANGES.items():
            v = getattr(self, k)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            ok = ok and (v > lo if lo_open else v >= lo) and (hi is None or (v < hi if hi_open else v <= hi))
            if not ok:
                rng = (("(" if lo_open else "[") + f"{lo:g}, " + (f"{hi:g}" + (")" if hi_open else "]")
                                                                   if hi is not None else "infinity)"))
                raise ZooError(f"{_flag(k)} must be a number in {rng}, not {v!r}.")
        if self.schedule not in ("cosine", "wsd", "constant"):
            raise ZooError(f"unknown schedule {self.schedule!r}; choose cosine, wsd or constant.")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ZooError(f"unknown dtype {self.dtype!r}; choose auto, float32 or bfloat16.")
        if self.target_loss is not None and (isinstance(self.target_loss, bool)
                                             or not isinstance(self.target_loss, (int, float))
                                             or not math.isfinite(self.target_loss) or self.target_loss <= 0):
            raise ZooError(f"--target-loss must be a positive number (a validation loss to stop at), not "
                           f"{self.target_loss!r}.")
        if self.lr == 0:
            warn("--lr 0: the weights will not change during this run.")
        elif self.min_lr > self.lr and self.schedule != "constant":
            warn(f"--min-lr {self.min_lr:g} is above --lr {self.lr:g}: the learning rate will rise as it decays.")
        if self.fsdp and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            warn("--fsdp shards the model over the processes of torchrun; in a single process it has no effect "
                 "(run: torchrun --nproc_per_node N -m zoo train ... --fsdp).")
        return self


# what a resumed run may change: how long it goes on, how it is watched, where it runs and where its
# data now lives (checked to be the same data); anything else would make it another run
RESUME_MAY_CHANGE = ("max_iters", "eval_interval", "eval_iters", "log_interval", "sample_tokens", "sample_prompt",
                     "early_stop", "device", "compile", "data", "target_loss")


def _flag(name: str) -> str:
    return {"overrides": "--set", "sample_prompt": "the sample prompt"}.get(name, "--" + name.replace("_", "-"))


def resumed_config(saved: dict, given: TrainConfig) -> TrainConfig:
    """The configuration of a resumed run: the saved one, with what ``given`` sets among
    :data:`RESUME_MAY_CHANGE`; anything else ``given`` sets differently is refused by name. A field is
    taken as given when it differs from TrainConfig's default; the device and --compile always come
    from the resuming command (they change how the run is computed, not what)."""
    base, cfg = TrainConfig(), TrainConfig(**{k: v for k, v in saved.items() if k in config_fields()})
    refused = []
    for f in fields(TrainConfig):
        value = getattr(given, f.name)
        if f.name in ("device", "compile"):
            setattr(cfg, f.name, value)
        elif value == getattr(base, f.name):
            continue
        elif f.name in RESUME_MAY_CHANGE:
            setattr(cfg, f.name, value)
        elif value != getattr(cfg, f.name):
            refused.append(_flag(f.name))
    if refused:
        raise ZooError(f"a resumed run goes on as it was configured, so {', '.join(refused)} cannot change on "
                       f"--resume. Drop {'it' if len(refused) == 1 else 'them'}, or start a new run to change "
                       f"{'it' if len(refused) == 1 else 'them'}. What may change: "
                       f"{', '.join(_flag(n) for n in RESUME_MAY_CHANGE)}.")
    return cfg
