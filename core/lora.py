"""LoRA, low-rank adaptation (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models",
arXiv:2106.09685), and ``zoo finetune``.

A spec with a ``lora`` entry ``{"r", "alpha", "targets", "dropout"}`` builds the model with adapters:
every ``nn.Linear`` inside the target components (``attention``, ``ffn``) of every block gets two
parameters, ``lora_A`` (r, in) and ``lora_B`` (out, r), and a forward hook adding
``dropout(x) A^T B^T * alpha / r`` to its output; every other parameter is frozen. ``lora_B`` starts
at zero, so a fresh adapter leaves the model's function unchanged. The base weights keep their names
in the state dict (``blocks.0.attn.qkv.weight``) and the adapters sit beside them
(``blocks.0.attn.qkv.lora_A``), so a LoRA checkpoint is an ordinary zoo checkpoint: ``zoo train
--resume`` continues it, ``zoo generate`` samples from it. Merging folds the update into the weight,
W + (alpha / r) B A, and drops the adapters. Weights that are not ``nn.Linear`` (the stacked experts
of the moe ffn) get no adapters; the router and shared experts of a MoE do.

``zoo finetune RUN_DIR --data FILE [--lora r=8,alpha=16,targets=attention,ffn]`` trains a model
from a run directory (an imported checkpoint or a finished run) with the trainer of ``zoo train``
(schedule, evaluation, checkpoints, resume, TensorBoard) and saves the adapters on their own
(``adapter.safetensors``). ``zoo lora merge RUN_DIR --out OUT`` writes a run directory with the
adapters merged.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from .errors import ZooError

DEFAULTS = {"alpha": 16, "targets": ["attention"], "dropout": 0.0}
TARGETS = ("attention", "ffn")
ADAPTER = "adapter.safetensors"


def lora_config(cfg: dict) -> dict:
    out = {**DEFAULTS, **cfg}
    bad = [t for t in out["targets"] if t not in TARGETS]
    if bad or not out["targets"]:
        raise ZooError(f"unknown LoRA target(s) {bad}; choose from {', '.join(TARGETS)}.")
    if int(out["r"]) < 1:
        raise ZooError(f"LoRA rank r={out['r']} must be at least 1.")
    return out


def parse_lora(text: str) -> dict:
    """'r=8,alpha=16,targets=attention,ffn' -> {"r": 8, "alpha": 16.0, "targets": [...]}: a value
    without '=' continues the list of the key before it."""
    out, key = {}, None
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if "=" in part:
            key, value = (s.strip() for s in part.split("=", 1))
            out[key] = [value] if key == "targets" else value
        elif key == "targets":
            out[key].append(part)
        else:
            raise ZooError(f"malformed --lora {text!r}: {part!r} is not KEY=VALUE; e.g. "
                           f"--lora r=8,alpha=16,targets=attention,ffn")
    unknown = set(out) - {"r", "alpha", "targets", "dropout"}
    if unknown or "r" not in out:
        raise ZooError(f"--lora {text!r}: " + (f"unknown key(s) {sorted(unknown)}; " if unknown else "r is missing; ")
                       + "keys: r (rank), alpha, targets (attention, ffn), dropout.")
    try:
        cfg = {"r": int(out["r"])}
        if "alpha" in out:
            cfg["alpha"] = float(out["alpha"])
        if "dropout" in out:
            cfg["dropout"] = float(out["dropout"])
    except ValueError:
        raise ZooError(f"--lora {text!r}: r must be an integer, alpha and dropout numbers.") from None
    if "targets" in out:
        cfg["targets"] = out["targets"]
    return lora_config(cfg)


def _hook(module, inputs, output):
    import torch.nn.functional as F
    x = inputs[0]
    if module.lora_dropout and module.training:
        x = F.dropout(x, module.lora_dropout)
    return output + (x @ module.lora_A.t() @ module.lora_B.t()) * module.lora_scale  # (..., out)


def target_linears(model, targets):
    """(name, nn.Linear) of every linear layer inside the target components of every block."""
    import torch.nn as nn
    for i, block in enumerate(model.blocks):
        for kind, attr in (("attention", "attn"), ("ffn", "ffn")):
            if kind in targets:
                for name, m in getattr(block, attr).named_modules():
                    if isinstance(m, nn.Linear):
                        yield f"blocks.{i}.{attr}.{name}", m


def apply_lora(model, cfg: dict):
    """Add adapters to ``model`` in place (see the module docstring) and freeze everything else."""
    import torch
    import torch.nn as nn
    cfg = lora_config(cfg)
    for p in model.parameters():
        p.requires_grad_(False)
    n = 0
    for _, m in target_linears(model, cfg["targets"]):
        out_f, in_f = m.weight.shape
        dev, dt = m.weight.device, m.weight.dtype
        m.lora_A = nn.Parameter(torch.empty(cfg["r"], in_f, device=dev, dtype=dt))  # (r, in)
        m.lora_B = nn.Parameter(torch.zeros(out_f, cfg["r"], device=dev, dtype=dt))  # (out, r)
        if dev.type != "meta":
            nn.init.kaiming_uniform_(m.lora_A, a=math.sqrt(5))  # as nn.Linear initialises its weight
        m.lora_scale = cfg["alpha"] / cfg["r"]
        m.lora_dropout = cfg["dropout"]
        m.register_forward_hook(_hook)
        n += 1
    if n == 0:
        raise ZooError(f"LoRA targets {cfg['targets']} contain no nn.Linear layer in this model; choose other targets.")
    return model


def is_adapter_key(k: str) -> bool:
    return k.endswith(".lora_A") or k.endswith(".lora_B")


def merge_state_dict(sd: dict, cfg: dict) -> dict:
    """A state dict with every adapter folded into its weight, W + (alpha / r) B A, and removed."""
    cfg = lora_config(cfg)
    scale = cfg["alpha"] / cfg["r"]
    out = {k: v for k, v in sd.items() if not is_adapter_key(k)}
    for k in sd:
        if k.endswith(".lora_A"):
            base = k[: -len("lora_A")]
            w = sd[base + "weight"]
            delta = sd[base + "lora_B"].float() @ sd[k].float()  # (out, in)
            out[base + "weight"] = (w.float() + scale * delta).to(w.dtype)
    if "lm_head.weight" in out and "wte.weight" in out and sd.get("lm_head.weight") is sd.get("wte.weight"):
        out["lm_head.weight"] = out["wte.weight"]
    return out


def merged_state_dict(ckpt: dict):
    """(spec without lora, merged state dict) of a LoRA checkpoint."""
    spec = dict(ckpt["spec"])
    cfg = spec.pop("lora")
    sd = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
    return spec, merge_state_dict(sd, cfg)


def adapter_state(sd: dict) -> dict:
    return {k.removeprefix("_orig_mod."): v for k, v in sd.items() if is_adapter_key(k)}


def save_adapter(run_dir, ckpt: dict, base: str | None = None) -> Path:
    """Write the adapters of a LoRA checkpoint on their own: ``adapter.safetensors`` with the LoRA
    config (and the base run it adapts) in its metadata."""
    from .safetensors_io import save_file
    path = Path(run_dir) / ADAPTER
    meta = {"lora": json.dumps(lora_config(ckpt["spec"]["lora"])), "step": str(ckpt.get("step", 0))}
    if base:
        meta["base"] = str(base)
    save_file(adapter_state(ckpt["model"]), path, meta)
    return path


def load_adapter(path) -> tuple[dict, dict]:
    """(lora config, {name: tensor}) of an adapter file."""
    from .safetensors_io import load_file, metadata
    meta = metadata(path)
    if "lora" not in meta:
        raise ZooError(f"{str(path)!r} is not a zoo LoRA adapter (no 'lora' in its metadata).")
    return json.loads(meta["lora"]), load_file(path)


# ---- zoo finetune ---------------------------------------------------------------------------------

FINETUNE_DEFAULTS = {  # small, careful steps from pretrained weights; every one is a flag
    "lora": dict(lr=3e-4, min_lr=3e-5, weight_decay=0.0),
    "full": dict(lr=3e-5, min_lr=3e-6, weight_decay=0.1),
}
FINETUNE_RECIPE = dict(max_iters=200, batch_size=4, grad_accum=1, warmup=10, eval_interval=50, eval_iters=20)
_DIM_KEYS = ("n_layers", "n_heads", "d_model", "block_size", "vocab_size", "dropout")


def _register(name: str, spec: dict, origin: str):
    """Put a spec into the loaded registry as a named model and preset, as zoo.json entries are."""
    import zoo
    from .manifest import check_entry
    from .registry import ModelSource
    entry = {k: v for k, v in spec.items() if k not in ("name", "preset") + _DIM_KEYS}
    preset = {k: spec[k] for k in _DIM_KEYS}
    check_entry(entry, "model", name, origin)
    reg = zoo.get_registry()
    reg.models[name] = ModelSource(entry, "<finetune>", "0", origin)
    reg.presets[name] = ModelSource(preset, "<finetune>", "0", origin)
    return entry, preset


def finetune(run, cfg, lora: dict | None = None, name: str | None = None, block_size: int | None = None,
             log=None) -> dict:
    """Fine-tune the model of run directory ``run`` with the trainer of ``zoo train``; ``cfg`` is a
    ``zoo.train.TrainConfig`` (data, schedule, ...). Returns the trainer's summary."""
    import zoo
    from .checkpoint import load_checkpoint
    from .train import Progress, Trainer
    base_ckpt = load_checkpoint(run)
    spec = dict(base_ckpt["spec"])
    reg = zoo.get_registry()
    if spec.get("lora"):
        raise ZooError(f"{str(run)!r} holds LoRA adapters; merge them first (zoo lora merge {run} --out DIR) "
                       f"and fine-tune the merged run, or continue it with zoo train --resume {run}.")
    if cfg.fsdp:
        raise ZooError("zoo finetune does not shard with FSDP; drop --fsdp.")
    base_sd = {k.removeprefix("_orig_mod."): v for k, v in base_ckpt["model"].items()}
    if block_size:
        pe = spec["posenc"]
        props = zoo.get_registry().get("posenc", pe["name"]).params_schema.get("properties", {})
        if "max_len" in props and pe["params"].get("max_len") is None:  # keep a learned table's size
            spec["posenc"] = {**pe, "params": {**pe["params"], "max_len": spec["block_size"]}}
        spec["block_size"] = block_size
    if lora:
        spec["lora"] = lora_config(lora)
    name = name or f"{spec['name']}-{'lora' if lora else 'ft'}"
    if name in reg.models and reg.models[name].dist != "<finetune>":
        raise ZooError(f"model name {name!r} is already registered by {reg.models[name].origin}; pass --name.")
    entry, preset = _register(name, spec, f"zoo finetune of {run}")
    cfg.tokenizer = _tokenizer_file(run, base_ckpt)
    cfg.preset = name
    cfg.overrides = {"vocab_size": spec["vocab_size"]}  # the trainer would pad it; the weights fix it
    kind = "lora" if lora else "full"
    for k, v in {**FINETUNE_DEFAULTS[kind], **FINETUNE_RECIPE}.items():
        if getattr(cfg, k, None) is None:
            setattr(cfg, k, v)
    trainer = Trainer(name, cfg, log=log)
    try:
        missing, unexpected = trainer.model.load_state_dict(base_sd, strict=False)
    except RuntimeError as e:
        raise ZooError(f"the weights of {str(run)!r} do not fit its spec: {str(e).splitlines()[-1].strip()}") from None
    if unexpected or [k for k in missing if not is_adapter_key(k)]:
        raise ZooError(f"the weights of {str(run)!r} do not fit its spec: missing "
                       f"{[k for k in missing if not is_adapter_key(k)][:3]}, unexpected {unexpected[:3]}.")
    n_train = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.log(f"fine-tuning {spec['name']} from {run}: {kind}, {n_train:,} of {trainer.n_params:,} parameters "
                f"trainable" + (f" (LoRA r={spec['lora']['r']}, alpha={spec['lora']['alpha']}, targets "
                                f"{','.join(spec['lora']['targets'])})" if lora else ""))
    result = trainer.fit(Progress(trainer.dist.main, trainer.cfg.max_iters, trainer.cfg.log_interval))
    if trainer.dist.main:
        run_dir = Path(result["run_dir"])
        (run_dir / "manifest.json").write_text(json.dumps(
            {"version": 1, "presets": {name: preset}, "models": {name: entry}}, indent=2), encoding="utf-8")
        if lora:
            final = load_checkpoint(run_dir)
            result["adapter"] = str(save_adapter(run_dir, final, base=str(run)))
    trainer.dist.close()
    return result


def _tokenizer_file(run, ckpt) -> str:
    """A file holding the base run's tokenizer config, which the trainer loads like any tokenizer
    file: the run's tokenizer.json when it matches the checkpoint, else a copy beside the checkpoint."""
    from .checkpoint import resolve_checkpoint_path
    d = resolve_checkpoint_path(run).parent
    f = d / "tokenizer.json"
    cfg = ckpt.get("tokenizer")
    if f.is_file() and (cfg is None or json.loads(f.read_text(encoding="utf-8")) == cfg):
        return str(f)
    if cfg is None:
        raise ZooError(f"{str(run)!r} has no tokenizer (none in the checkpoint, no tokenizer.json beside it).")
    import tempfile
    fd, path = tempfile.mkstemp(prefix="zoo-finetune-tokenizer-", suffix=".json")
    with open(fd, "w", encoding="utf-8") as fh:
        json.dump(cfg, fh)
    return path


def cmd_finetune(args):
    from .train import TrainConfig
    lora = parse_lora(args.lora) if args.lora else None
    base = dict(out=args.out, run_id=args.run_id, dataset=args.dataset, data=args.data, max_iters=args.max_iters,
                batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr, min_lr=args.min_lr,
                warmup=args.warmup, schedule=args.schedule, weight_decay=args.weight_decay,
                eval_interval=args.eval_interval, eval_iters=args.eval_iters, log_interval=args.log_interval,
                ckpt_interval=args.ckpt_interval, early_stop=args.early_stop, device=args.device, dtype=args.dtype,
                compile=args.compile, seed=args.seed, sample_tokens=args.sample_tokens)
    cfg = TrainConfig(**{k: v for k, v in base.items() if v is not None})
    if args.weight_decay is None:  # TrainConfig's default is for training from scratch
        cfg.weight_decay = FINETUNE_DEFAULTS["lora" if lora else "full"]["weight_decay"]
    res = finetune(args.run, cfg, lora=lora, name=args.name, block_size=args.block_size)
    vh = res.get("val_history") or []
    if len(vh) > 1:
        print(f"val loss {vh[0][1]:.4f} before fine-tuning, {vh[-1][1]:.4f} after {vh[-1][0]} steps "
              f"(best {res['best_val_loss']:.4f}); run directory {res['run_dir']}")
    if "adapter" in res:
        print(f"adapters saved on their own: {res['adapter']}; merged weights: zoo lora merge {res['run_dir']} --out DIR")


def cmd_merge(args):
    from .checkpoint import CKPT_NAME, load_checkpoint, plugins_of, save_checkpoint
    from .hf import _write_atomically
    ckpt = load_checkpoint(args.run)
    if args.adapter:  # adapters from a file, onto the base run given as RUN
        cfg, ad = load_adapter(args.adapter)
        if ckpt["spec"].get("lora"):
            raise ZooError(f"{args.run!r} already holds adapters; give the base run to apply {args.adapter!r} to.")
        sd = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
        missing = [k for k in ad if k[: k.rfind(".")] + ".weight" not in sd]
        if missing:
            raise ZooError(f"the adapter {args.adapter!r} does not fit {args.run!r}: no weight for {missing[0]!r}.")
        spec, merged = dict(ckpt["spec"]), merge_state_dict({**sd, **ad}, cfg)
    else:
        if not ckpt["spec"].get("lora"):
            raise ZooError(f"{args.run!r} holds no LoRA adapters; nothing to merge (or pass --adapter FILE).")
        spec, merged = merged_state_dict(ckpt)

    def fill(d: Path):
        payload = {"model": merged, "spec": spec, "tokenizer": ckpt.get("tokenizer"), "plugins": plugins_of(spec),
                   "step": ckpt.get("step", 0), "zoo_version": __import__("zoo").__version__}
        if ckpt.get("hf"):
            payload["hf"] = ckpt["hf"]
        save_checkpoint(d / CKPT_NAME, payload)
        (d / "spec.json").write_text(json.dumps(spec, indent=2), encoding="utf-8")
        if ckpt.get("tokenizer"):
            (d / "tokenizer.json").write_text(json.dumps(ckpt["tokenizer"]), encoding="utf-8")

    _write_atomically(Path(args.out), fill, args.force)
    print(f"merged the adapters into {args.out} ({spec['name']}, no adapters; zoo export hf works on it)")


def add_cli(sub):
    s = sub.add_parser("finetune", help="fine-tune a run directory (e.g. an imported model), fully or with LoRA",
                       description="Train the model of RUN_DIR further with the trainer of zoo train (schedule, "
                                   "evaluation, checkpoints, TensorBoard). With --lora only low-rank adapters train "
                                   "and are also saved on their own (adapter.safetensors). Continue a fine-tune with "
                                   "zoo train --resume OUT/NAME/RUN_ID.")
    s.add_argument("run", metavar="RUN_DIR")
    s.add_argument("--lora", metavar="SPEC", help="r=8,alpha=16,targets=attention,ffn[,dropout=0.05]; "
                                                  "without it, a full fine-tune")
    s.add_argument("--data", help="a text file, or shards from zoo data prepare made with this run's tokenizer")
    s.add_argument("--dataset", help="built-in dataset (default: tinyshakespeare)")
    s.add_argument("--name", help="model name of the fine-tuned run (default: NAME-lora or NAME-ft)")
    s.add_argument("--block-size", type=int, help="context length for training (default: the model's)")
    s.add_argument("--out", help="runs directory (default: runs)")
    s.add_argument("--run-id")
    s.add_argument("--max-iters", type=int, help="default 200")
    s.add_argument("--batch-size", type=int, help="default 4")
    s.add_argument("--grad-accum", type=int, help="default 1")
    s.add_argument("--lr", type=float, help="default 3e-4 with LoRA, 3e-5 full")
    s.add_argument("--min-lr", type=float)
    s.add_argument("--warmup", type=int, help="default 10")
    s.add_argument("--schedule", choices=["cosine", "wsd", "constant"])
    s.add_argument("--weight-decay", type=float)
    s.add_argument("--eval-interval", type=int, help="default 50")
    s.add_argument("--eval-iters", type=int, help="default 20")
    s.add_argument("--log-interval", type=int)
    s.add_argument("--ckpt-interval", type=int)
    s.add_argument("--early-stop", type=int, metavar="N")
    s.add_argument("--device", default="auto")
    s.add_argument("--dtype", choices=["auto", "float32", "bfloat16"])
    s.add_argument("--compile", action="store_true", default=None)
    s.add_argument("--seed", type=int)
    s.add_argument("--sample-tokens", type=int)
    s.set_defaults(fn=cmd_finetune)

    s = sub.add_parser("lora", help="LoRA adapters: merge them into the weights")
    lsub = s.add_subparsers(dest="lora_command", metavar="SUBCOMMAND")
    p = lsub.add_parser("merge", help="write a run directory with the adapters folded into the weights")
    p.add_argument("run", metavar="RUN_DIR", help="a LoRA run, or with --adapter the base run")
    p.add_argument("--adapter", metavar="FILE", help="an adapter.safetensors to apply to RUN_DIR")
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true")
    p.set_defaults(fn=cmd_merge)
    s.set_defaults(fn=lambda a: (s.print_help(), 2)[1])
