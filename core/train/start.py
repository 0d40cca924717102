"""The edge of training: a model name resolved once into what the :class:`~zoo.train.trainer.Trainer`
takes (a resolved spec and a tokenizer object), for ``zoo train`` and :func:`train`.

Order, so that nothing is read or written before the cheap checks pass: the names (model, run id),
the preset (``baby`` on a CPU, ``char`` on a GPU when none is given) and its training recipe with
the option ranges, then the spec (an unknown model, preset or override fails here, before the data
is read), then the tokenizer (it reads the data: a char vocabulary comes from the text), then the
vocabulary size from the tokenizer, padded to a multiple of 64 above 256 tokens (unless
``vocab_size`` is overridden), validated with the rest of the spec.
"""
from __future__ import annotations

from ..io.rundir import check_name
from ..spec.catalog import get_registry
from ..spec.resolve import resolve_spec, validate_spec
from .config import TrainConfig, recipe_of
from .dist import Dist
from .progress import Progress
from .trainer import Trainer, data_tokenizer


def padded_vocab(n: int) -> int:
    """The vocabulary size a model gets for a tokenizer of ``n`` tokens: ``n`` up to 256, else
    rounded up to a multiple of 64 (fast matmuls)."""
    return n if n <= 256 else (n + 63) // 64 * 64


def resolve_for_training(name: str, cfg: TrainConfig, reg=None, dist: Dist | None = None, log=None):
    """(spec, tokenizer) of a new run of the named model on ``cfg``'s data; fills ``cfg.preset`` and
    the preset's recipe. The name is looked up here, once."""
    reg = reg or get_registry()
    check_name(name, "model name")
    if cfg.run_id is not None:
        check_name(cfg.run_id, "run id (--run-id)")
    if cfg.preset is None:
        gpu = dist is not None and dist.device.type != "cpu"
        cfg.preset = "char" if gpu else "baby"
        if log:
            log(f"no --preset given: using {cfg.preset!r} ({'nanoGPT shakespeare_char recipe on a GPU' if gpu else 'nanoGPT baby recipe, minutes on a CPU'})")
    cfg.fill(recipe_of(reg, cfg.preset))  # the preset's training recipe fills what the user left unset
    spec = resolve_spec(reg, name, cfg.preset, cfg.overrides)  # an unknown model or override fails before the data is read
    tok = data_tokenizer(cfg)
    if "vocab_size" not in cfg.overrides and spec["vocab_size"] != padded_vocab(tok.vocab_size):
        spec = validate_spec(reg, {**spec, "vocab_size": padded_vocab(tok.vocab_size)},
                             f"model {name!r} (preset {cfg.preset!r})")
    return spec, tok


def trainer_for(name: str, cfg: TrainConfig, reg=None, dist: Dist | None = None, log=None) -> Trainer:
    """A :class:`Trainer` of a new run of the named model (``zoo train NAME``)."""
    dist = dist or Dist(cfg.device)
    log = log or Progress(dist.main, 1, cfg.log_interval).line
    reg = reg or get_registry()
    spec, tok = resolve_for_training(name, cfg, reg, dist, log)
    return Trainer(spec, tok, cfg, reg=reg, dist=dist, log=log)


def train(name: str | dict | None = None, cfg: TrainConfig | None = None, resume: str | None = None, dist=None,
          log=None, progress=None, tokenizer=None, reg=None) -> dict:
    """Train one model (or resume a run) and return a summary with the loss history.

    ``name``: a model name (``zoo list``), resolved at ``cfg.preset`` with ``cfg.overrides``; or a
    resolved spec (a dict) with ``tokenizer`` (default: the data's, as ``zoo train`` picks it).
    ``resume``: a run directory, continued from its checkpoint alone."""
    cfg = cfg or TrainConfig()
    if resume:
        t = Trainer(None, None, cfg, reg=reg, resume=resume, dist=dist, log=log)
    elif isinstance(name, dict):
        t = Trainer(name, tokenizer if tokenizer is not None else data_tokenizer(cfg), cfg, reg=reg, dist=dist,
                    log=log)
    else:
        if tokenizer is not None:
            from ..errors import ZooError
            raise ZooError("a tokenizer goes with a resolved spec (train(spec, cfg, tokenizer=tok)); for a model "
                           "name, set cfg.tokenizer (char, gpt2 or a tokenizer file) instead.")
        if name is None:
            from ..errors import ZooError
            raise ZooError("name a model to train (see `zoo list`), pass a resolved spec, or resume=RUN_DIR.")
        t = trainer_for(name, cfg, reg=reg, dist=dist, log=log)
    if progress is None:
        progress = Progress(t.dist.main, t.cfg.max_iters, t.cfg.log_interval)
    return t.fit(progress)
