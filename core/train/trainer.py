"""The trainer of ``zoo train`` and ``zoo finetune``.

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

Carried state (segment recurrence): when any layer's mixer carries state across windows
(:class:`zoo.plugin.protocols.CarriesState`), the data comes as contiguous segments
(:class:`zoo.data.SegmentSampler`: each row of the global batch continues its own stream), each
micro-batch's state passes to the next step detached (empty again when the streams restart), the
validation runs as contiguous segments from an empty state, and the checkpoint holds every rank's
state, so a resumed run continues exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

from .. import data as D
from ..errors import ZooError
from ..generate.text import generate_text
from ..io.atomic import write_json
from ..io.checkpoint import CKPT_NAME, load_checkpoint, plugins_of, save_checkpoint
from ..io.faults import fault_point
from ..io.rundir import (RunLock, check_name, check_writable, create_run_dir, never_checkpointed, new_run_id,
                         stale_temp_files)
from ..nn.device import default_dtype, parse_dtype
from ..nn.transformer import build_from_spec, carried_layers
from ..perf.flops import model_flops_per_token
from ..perf.memory import check_training_memory
from ..perf.peaks import datasheet_peak
from ..plugin.protocols import stats_of
from ..spec.catalog import get_registry
from ..spec.manifest import DIM_KEYS
from ..spec.resolve import validate_spec
from ..tokenizers import from_config, get_tokenizer
from ..version import __version__
from .config import TrainConfig, recipe_of, resumed_config
from .dist import Dist
from .progress import Progress, hms
from .schedule import lr_at, param_groups


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


def peak_memory_mb(device) -> float:
    import torch
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def usable_prompt(tok, prompt: str) -> str:
    """``prompt`` if the tokenizer can encode it, else a prompt it can (a corpus without a newline
    has no "\\n"): a text sample must never stop training."""
    try:
        if tok.encode(prompt):
            return prompt
    except ZooError:
        pass
    return "" if getattr(tok, "eot", None) is not None else tok.decode([0])


def _tensor_bytes(obj) -> int:
    """Bytes of the tensors in a (nested) checkpoint payload."""
    import torch
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def sample_text(model, tokenizer, prompt, max_new_tokens, seed=0):
    """A text sample for TensorBoard (the training RNG is left where it was)."""
    import torch
    with torch.random.fork_rng(devices=[] if model.wte.weight.device.type != "cuda" else None):
        return generate_text(model, tokenizer, prompt, max_new_tokens=max_new_tokens, temperature=0.8,
                             top_k=200, seed=seed)


# ---- data ------------------------------------------------------------------------------------

def load_data(cfg: TrainConfig, tok, check_tokenizer: bool = True):
    """-> (train arrays, val arrays, description): the data of ``cfg`` encoded with ``tok``. Token
    shards must have been encoded with ``tok`` (``check_tokenizer``; a resumed run skips it, its
    data is checked by its sha256)."""
    import numpy as np
    path = D.find_dataset(cfg.dataset, cfg.data)
    if path.is_dir():
        meta = D.load_meta(path)
        if check_tokenizer and from_config(meta["tokenizer"]).config() != tok.config():
            raise ZooError(f"the shards in {str(path)!r} were encoded with {meta['tokenizer'].get('type')} tokens, "
                           f"not with this run's {tok.config().get('type')} tokenizer; prepare the shards again "
                           f"with it (zoo data prepare --tokenizer), or train with the shards' own tokenizer.")
        train, val = D.open_shards(path, "train", tok.vocab_size), D.open_shards(path, "val", tok.vocab_size)
        if not val:
            raise ZooError(f"the shards in {str(path)!r} have no validation split; prepare them with a "
                           f"validation share (--val-fraction or --val-tokens).")
        return train, val, f"{sum(len(a) for a in train):,} train tokens in shards at {path}"
    text = D.read_text(path)
    tr, va = D.split_text(text)
    dt = D.token_dtype(tok.vocab_size)
    train, val = np.array(tok.encode(tr), dtype=dt), np.array(tok.encode(va), dtype=dt)
    return [train], [val], f"{len(train):,} train and {len(val):,} val tokens from {path}"


def data_tokenizer(cfg: TrainConfig):
    """The tokenizer a new run on ``cfg``'s data uses: the shards' own (``--tokenizer`` must agree
    with it), else ``cfg.tokenizer`` (char by default, its vocabulary from the text)."""
    path = D.find_dataset(cfg.dataset, cfg.data)
    if path.is_dir():
        meta = D.load_meta(path)
        if cfg.tokenizer:
            want = get_tokenizer(cfg.tokenizer, corpus="") if cfg.tokenizer != "char" else None
            if want is None or want.config() != meta["tokenizer"]:
                raise ZooError(f"the shards in {str(path)!r} were encoded with {meta['tokenizer'].get('type')} "
                               f"tokens, not {cfg.tokenizer!r}; drop --tokenizer or prepare the shards again.")
        return from_config(meta["tokenizer"])
    return get_tokenizer(cfg.tokenizer or "char", corpus=D.read_text(path))


# ---- the trainer -------------------------------------------------------------------------------

EVAL_TOKENS = 16384  # the most tokens of one evaluation forward (Trainer._val_chunks)
EVAL_LOGIT_BYTES = 64 * 2 ** 20  # and the most bytes of its fp32 logits


class Trainer:
    """Trains the model of a resolved spec on ``cfg``'s data with a tokenizer object; names are not
    looked up here (see :func:`zoo.train.start.trainer_for`, which resolves a model name once).

    ``spec``: a resolved spec (``zoo.resolve(...)``, or a checkpoint's), validated again here;
    ``tokenizer``: what encodes the data (its config is saved with the run); ``reg``: the registry
    whose components build the model (default: the loaded one). ``resume=RUN_DIR`` instead takes
    the spec, the tokenizer and the configuration from the run's checkpoint."""

    def __init__(self, spec: dict | None, tokenizer, cfg: TrainConfig, *, reg=None, resume: str | None = None,
                 dist: Dist | None = None, log=None):
        self.t_created = time.time()  # a speedrun's clock (--target-loss) starts with the trainer
        self.dist = dist or Dist(cfg.device)
        self.log = log or Progress(self.dist.main, 1, cfg.log_interval).line
        self.reg = reg or get_registry()
        self.ckpt, self.lock = None, None
        try:
            self._setup(spec, tokenizer, cfg, resume)
        except BaseException:
            self.close()
            raise
    def close(self):
        """Release the run directory (its lock); the trainer's work is over."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _resume(self, resume: str, given: TrainConfig) -> TrainConfig:
        """Lock the run, clean what a killed process left, load its checkpoint; the saved configuration
        with what may change on resume."""
        self.run_dir = Path(resume) if Path(resume).is_dir() else Path(resume).parent
        if never_checkpointed(self.run_dir):
            raise ZooError(f"{resume!r} stopped before its first checkpoint, so there is nothing to resume. Start "
                           f"it again: `zoo train MODEL --run-id {self.run_dir.name} --out {self.run_dir.parent.parent}` "
                           f"replaces that folder.")
        if self.dist.main and self.run_dir.is_dir():
            self.lock = RunLock(self.run_dir).acquire(note=False)  # nothing is written before the checks pass
        self.ckpt = load_checkpoint(resume)
        if "train" not in self.ckpt or "sampler" not in self.ckpt:
            raise ZooError(f"{resume!r} holds weights but no training state (optimizer, sampler); it "
                           f"cannot be resumed. Start a new run, e.g. `zoo train {self.ckpt['spec']['name']}`.")
        return resumed_config(self.ckpt["train"], given)

    def _data_path(self, cfg: TrainConfig, given_data: bool) -> Path:
        """Where the data is; on resume, the data the run trained on (checked by its sha256), wherever
        it is now (``--data`` relocates it)."""
        try:
            path = D.find_dataset(cfg.dataset, cfg.data)
        except ZooError as e:
            if self.ckpt and not given_data:
                raise ZooError(f"{e} This run trained on {cfg.data or cfg.dataset!r}; if the data has moved, "
                               f"pass --data NEW_PATH (it is checked to be the same data).") from None
            raise
        self.data_sha = D.fingerprint(path)
        saved = (self.ckpt or {}).get("data") or {}
        if saved.get("sha256") and saved["sha256"] != self.data_sha:
            raise ZooError(f"the data at {str(path)!r} is not the data this run trained on (its sha256 differs from "
                           f"the one recorded at {saved.get('path')!r}); resume with the same data, or start a new "
                           f"run on this one.")
        return path

    def _setup(self, spec, tok, cfg: TrainConfig, resume):
        import torch
        given_data = cfg.data is not None
        reg = self.reg
        if resume:
            if spec is not None or tok is not None:
                raise ZooError("a resumed run takes its spec and tokenizer from its checkpoint; give only the "
                               "run directory (resume=RUN_DIR), not a spec or a tokenizer.")
            cfg = self._resume(resume, cfg)
            spec, tok = self.ckpt["spec"], from_config(self.ckpt["tokenizer"])
        else:  # both become directories: OUT/<name>/<run-id>
            if not isinstance(spec, dict) or tok is None:
                raise ZooError("the Trainer takes a resolved spec (a dict, e.g. zoo.resolve(NAME, PRESET)) and a "
                               "tokenizer object, or resume=RUN_DIR; zoo.train.train(NAME, cfg) resolves a model "
                               "name for you.")
            check_name(spec.get("name"), "model name")
            if cfg.run_id is not None:
                check_name(cfg.run_id, "run id (--run-id)")
            if cfg.data:
                cfg.data = str(Path(cfg.data).expanduser().resolve())  # a resume from elsewhere finds it
            spec = validate_spec(reg, spec, f"model {spec['name']!r}")  # a spec written by hand, too
            if cfg.preset is None:
                cfg.preset = spec.get("preset")
        self.cfg, self.name, self.tok = cfg, spec["name"], tok
        cfg.fill(recipe_of(reg, cfg.preset))  # the preset's training recipe fills what the user left unset
        if spec["vocab_size"] < tok.vocab_size:
            raise ZooError(f"vocab_size={spec['vocab_size']} is smaller than the tokenizer's "
                           f"{tok.vocab_size} tokens; drop the vocab_size override or raise it.")

        # data before anything is written
        self.data_path = self._data_path(cfg, given_data)
        train_arrays, val_arrays, what = load_data(cfg, tok, check_tokenizer=not self.ckpt)
        self.sample_prompt = usable_prompt(self.tok, cfg.sample_prompt)
        if self.sample_prompt != cfg.sample_prompt and cfg.sample_tokens:
            self.log(f"note: the sample prompt {cfg.sample_prompt!r} is not in the tokenizer's vocabulary; text "
                     f"samples start from {self.sample_prompt!r}")
        self.spec = spec
        T = spec["block_size"]
        self.carried = carried_layers(spec, reg)  # layers whose mixer carries state across windows
        if self.carried:  # contiguous segments: row r of each step continues row r's stream
            self.sampler = D.SegmentSampler(train_arrays, T, cfg.batch_size * cfg.grad_accum * self.dist.world,
                                            seed=cfg.seed)
            self.val_batches = D.segment_batches(val_arrays, T, cfg.batch_size * self.dist.world, cfg.eval_iters)
        else:
            self.sampler = D.WindowSampler(train_arrays, T, seed=cfg.seed)
            # the same validation windows for any world size at the same global batch
            self.val_batches = D.fixed_batches(val_arrays, T, cfg.batch_size, cfg.eval_iters * self.dist.world)
        self.log(f"data: {what}; tokenizer {self.tok.config()['type']} ({self.tok.vocab_size} tokens)")

        # run directory
        if not self.ckpt:
            out = Path(cfg.out)
            if self.dist.main:
                check_writable(out)
                parent = out / self.name
                run_id = cfg.run_id if cfg.run_id is not None else new_run_id(parent)
                if cfg.run_id is not None and (parent / run_id).exists():
                    if not never_checkpointed(parent / run_id):
                        raise ZooError(f"run directory {str(parent / run_id)!r} already exists; choose another "
                                       f"--run-id, or continue it with --resume {parent / run_id}.")
                    old = RunLock(parent / run_id).acquire(note=False)  # refuses while a process still trains there
                    shutil.rmtree(parent / run_id)  # the trainer's own files of a start that never checkpointed
                    old.release()
                    self.log(f"replacing {str(parent / run_id)!r}, a start of this run that never reached a checkpoint")
            else:
                run_id = None
            run_id = self.dist.broadcast(run_id)
            self.run_dir = out / self.name / run_id

        # model
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        dev = self.dist.device
        if dev.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.ptdtype = parse_dtype(cfg.dtype, default=default_dtype(dev))
        check_training_memory(  # a model that cannot fit is refused before it is built
            spec, reg, dev, cfg.batch_size, act_bytes=self.ptdtype.itemsize,
            shards=self.dist.world if self.dist.enabled and cfg.fsdp else 1,
            processes=int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if dev.type == "cpu" else 1)
        self.model = build_from_spec(spec, reg).to(dev)
        self.n_params = self.model.num_params()
        # this rank's carried state, one per micro-batch (its rows of the global batch)
        self.states = [self.model.new_state() for _ in range(cfg.grad_accum)] if self.carried else None
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
        # fused AdamW on CUDA only: the CPU's fused kernel (torch >= 2.4) is faster for a small model
        # (~3 ms of a 55 ms baby step) but its results change with the thread count, so a run resumed in
        # another process drifted from the uninterrupted one (tests/test_train.py); fused kernels take
        # plain tensors, so not under FSDP
        fused = dev.type == "cuda" and not (self.dist.enabled and cfg.fsdp)
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
        self.flops_tok = model_flops_per_token(self.model, spec["block_size"])["train"]
        self.peak = datasheet_peak(dev)

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
        if self.states is not None:
            saved = (ckpt.get("carried_state") or {}).get("ranks") or []
            if len(saved) != self.dist.world:
                raise ZooError(f"the checkpoint holds the carried state of {len(saved)} process(es), this run has "
                               f"{self.dist.world}; resume a model whose mixers carry state with the same number "
                               f"of processes.")
            for st, d in zip(self.states, saved[self.dist.rank]):
                st.load_state_dict(d, self.dist.device)

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
        model_state = self._model_state()
        opt_state = self._opt_state()
        cuda = torch.cuda.get_rng_state(self.dist.device) if self.dist.device.type == "cuda" else None
        states = self.dist.gather((torch.get_rng_state(), cuda))
        carried = ({"ranks": self.dist.gather([st.state_dict() for st in self.states]), "layers": self.carried}
                   if self.states is not None else None)
        if self.dist.main:
            payload = {
                "model": model_state, "optimizer": opt_state, "spec": self.spec, "tokenizer": self.tok.config(),
                "plugins": plugins_of(self.spec, self.reg), "step": self.step, "train": dataclasses.asdict(self.cfg),
                "sampler": self.sampler.state(), "carried_state": carried, "rng": {"torch": [s[0] for s in states], "cuda": [s[1] for s in states]},
                "best_val": self.best_val, "evals_since_best": self.evals_since_best, "elapsed": self.elapsed,
                "world_size": self.dist.world, "zoo_version": __version__,
                "data": {"path": str(self.data_path), "sha256": self.data_sha},
                "torch_version": str(torch.__version__),
            }
            try:
                save_checkpoint(self.run_dir / CKPT_NAME, payload)
            except OSError as e:
                raise ZooError(self._save_failed(e, payload)) from None
        self.dist.barrier()
        self.last_ckpt_step = self.step

    def _save_failed(self, e: OSError, payload) -> str:
        """What to say when a checkpoint cannot be written (a full disk, most likely)."""
        need = _tensor_bytes(payload)
        try:
            free = f"; {shutil.disk_usage(self.run_dir).free / 2**20:,.0f} MB are free there"
        except OSError:
            free = ""
        kept = (f"The last checkpoint (step {self.last_ckpt_step}) is kept: free some space, then continue with "
                f"`zoo train --resume {self.run_dir}`." if self.last_ckpt_step is not None else
                f"No checkpoint was written yet: free some space, then start again with --run-id {self.run_dir.name} "
                f"(the folder is replaced), or remove {str(self.run_dir)!r}.")
        return (f"cannot write the checkpoint of step {self.step} to {str(self.run_dir)!r}: {e.strerror or e}. A "
                f"checkpoint of this run takes about {need / 2**20:,.1f} MB (weights, optimizer state){free}. {kept}")

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate(self) -> float:
        import torch
        self.model.eval()
        total = torch.zeros(2, device=self.dist.device)  # (sum of losses * windows, windows)
        if self.carried:  # contiguous segments from an empty state: this rank's rows of every step
            B, r, kw = self.cfg.batch_size, self.dist.rank, {"state": self.model.new_state()}
            batches = [(x[r * B:(r + 1) * B], y[r * B:(r + 1) * B]) for x, y in self.val_batches]
        else:
            batches, kw = self._val_chunks(), {}
        with torch.no_grad():
            for x, y in batches:
                x, y = x.to(self.dist.device), y.to(self.dist.device)
                with self._autocast():
                    _, loss = self.forward(x, y, **kw)
                total[0] += loss.float() * x.shape[0]
                total[1] += x.shape[0]
        self.dist.all_sum(total)
        self.model.train()
        return (total[0] / total[1]).item()

    def _val_chunks(self):
        """This rank's fixed validation batches, concatenated into chunks of up to EVAL_TOKENS tokens
        whose logits stay under EVAL_LOGIT_BYTES: the same windows and, every window weighing the same,
        the same mean loss, in fewer and larger forwards (a small model on a CPU evaluates several
        times faster). A model with a large vocabulary keeps one batch per forward."""
        import torch
        if getattr(self, "_chunks", None) is None:
            mine = self.val_batches[self.dist.rank::self.dist.world]
            per = max(x.numel() for x, _ in mine) if mine else 1
            n = max(1, min(EVAL_TOKENS // per, EVAL_LOGIT_BYTES // (4 * per * self.spec["vocab_size"])))
            if not self._batch_independent():  # a component whose output depends on the batch keeps its batches
                n = 1
            self._chunks = [(torch.cat([x for x, _ in mine[i:i + n]]), torch.cat([y for _, y in mine[i:i + n]]))
                            for i in range(0, len(mine), n)]
        return self._chunks

    def _batch_independent(self) -> bool:
        """Whether every component of the model declares a sequence's output independent of the rest
        of its batch (the tag ``batch_independent``, default True; the kit checks it)."""
        from ..spec.resolve import layer_components
        refs = [layer_components(self.spec, i)[k] for i in range(self.spec["n_layers"]) for k in ("attention", "ffn")]
        refs += [(self.spec.get(k) or {}) for k in ("posenc", "head")]
        for kind, ref in zip(["attention", "ffn"] * self.spec["n_layers"] + ["posenc", "head"], refs):
            name = ref.get("name") if isinstance(ref, dict) else None
            if name and name != "none" and name in self.reg.components.get(kind, {}):
                if not self.reg.get(kind, name).tags.get("batch_independent", True):
                    return False
        return True

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
        from torch.utils.tensorboard.summary import hparams
        write_json(self.run_dir / "spec.json", self.spec)
        write_json(self.run_dir / "tokenizer.json", self.tok.config(), indent=None)
        entry = {k: v for k, v in self.spec.items() if k not in ("name", "preset") + DIM_KEYS}  # as a manifest holds it
        hp = _flatten(self.spec, "spec.")
        hp.update(_flatten({k: v for k, v in dataclasses.asdict(self.cfg).items() if k != "overrides"}, "train."))
        hp["manifest_hash"] = hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()[:16]
        hp.update({f"plugin.{d}": v for d, v in plugins_of(self.spec, self.reg).items()})
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
                if new_dir:
                    create_run_dir(self.run_dir)
                if self.lock is None:
                    self.lock = RunLock(self.run_dir).acquire()
                else:
                    self.lock.note()
                for p in stale_temp_files(self.run_dir):  # a write that a killed process never finished
                    p.unlink()
                w = self._writer()
                if not self.ckpt:
                    self._write_run_files(w)
            except OSError as e:
                if new_dir:
                    shutil.rmtree(self.run_dir, ignore_errors=True)
                raise ZooError(f"cannot write the run directory {str(self.run_dir)!r}: {e.strerror}. "
                               f"Choose another --out.") from None
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
        stop_reason, target = None, None
        try:
            while self.step < cfg.max_iters:
                fault_point("step")  # a test may kill the process here (zoo.io.faults)
                lr = lr_at(self.step, cfg)
                for g in self.opt.param_groups:
                    g["lr"] = lr
                idx = self.sampler.next_indices(B * A * d.world)
                if self.states is not None and self.sampler.fresh:  # the streams start (again): empty states
                    for st in self.states:
                        st.reset()
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
                    kw = {"state": self.states[a]} if self.states is not None else {}
                    with self._autocast():
                        _, loss = self.forward(x, y, **kw)
                    loss.backward()
                    if self.states is not None:
                        self.states[a].detach()  # the next window starts from it, without its graph
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
                    w.add_scalar("memory/peak_mb", peak_memory_mb(dev), self.step)
                    if self.peak:
                        w.add_scalar("train/mfu", self.flops_tok * tps / (self.peak * d.world), self.step)
                    for mname, m in self.model.named_modules():
                        for k, v in stats_of(m).items():
                            w.add_scalar(f"components/{mname}/{k}", float(v), self.step)
                    aux = self.model.aux_loss()
                    if aux is not None:
                        w.add_scalar("train/aux_loss", float(aux.detach()), self.step)
                last = self.step == cfg.max_iters
                if self.step % cfg.eval_interval == 0 or last:
                    fault_point("eval")
                    v = self.evaluate()
                    val_history.append((self.step, v))
                    improved = v < self.best_val
                    self.best_val = min(self.best_val, v)
                    self.evals_since_best = 0 if improved else self.evals_since_best + 1
                    progress.line(f"step {self.step}: train loss {lossf:.4f}, val loss {v:.4f}"
                                  f"{' (best)' if improved else ''}, {hms(self.elapsed)} elapsed")
                    if w:
                        w.add_scalar("val/loss", v, self.step)
                        w.add_scalar("val/best_loss", self.best_val, self.step)
                    if cfg.sample_tokens > 0 and (d.main or cfg.fsdp):
                        try:
                            text = sample_text(self.model, self.tok, self.sample_prompt, cfg.sample_tokens,
                                               seed=cfg.seed)
                        except ZooError as e:  # a text sample never stops training
                            text = None
                            progress.line(f"note: no text sample at step {self.step}: {e}")
                        if w and text is not None:
                            w.add_text("sample", "```\n" + text + "\n```", self.step)
                    self.model.train()
                    if cfg.target_loss is not None and v <= cfg.target_loss:
                        target = {"step": self.step, "val_loss": v, "wall_time_s": time.time() - self.t_created,
                                  "train_time_s": self.elapsed}
                        stop_reason = (f"target loss {cfg.target_loss:g} reached at step {self.step} (val loss "
                                       f"{v:.4f}): {target['wall_time_s']:.1f} s of wall time since the trainer "
                                       f"started, data, build and evaluations included ({hms(self.elapsed)} of training steps)")
                        self.save()
                        break
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
            self.close()
        warm = tps_hist[min(len(tps_hist) - 1, 5):] if tps_hist else []
        result = {"model": self.name, "run_dir": str(self.run_dir), "params": self.n_params, "steps": self.step,
                  "best_val_loss": self.best_val, "final_val_loss": val_history[-1][1] if val_history else None,
                  "tokens_per_sec": sum(warm) / len(warm) if warm else None, "wall_time_s": time.time() - t_start,
                  "history": history, "val_history": val_history, "target": target}
        progress.line(f"done: {self.name} best val loss {self.best_val:.4f} in {self.step} steps; "
                      f"checkpoint {self.run_dir / 'ckpt.pt'}")
        return result

