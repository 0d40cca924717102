"""``zoo finetune``: train the model of a run directory further (an imported checkpoint or a finished
run), fully or through transforms (``--lora``: the ``lora`` transform plugin), with the trainer of
``zoo train`` (schedule, evaluation, checkpoints, resume, TensorBoard). When the transforms freeze
the base weights, what they add (LoRA's adapters) is also saved on its own
(``adapter.safetensors``, the spec's ``transforms`` in its metadata).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import ZooError
from ..io.atomic import write_json
from ..io.checkpoint import load_checkpoint, resolve_checkpoint_path
from ..io.rundir import check_name
from ..io.safetensors import load_file, metadata, save_file
from ..spec.catalog import get_registry
from ..spec.legacy import lora_transform
from ..spec.manifest import DIM_KEYS, check_entry
from ..spec.resolve import validate_spec
from ..tokenizers import from_config, load_config
from .progress import Progress
from .trainer import Trainer

ADAPTER = "adapter.safetensors"


def save_adapter(run_dir, ckpt: dict, added, base: str | None = None) -> Path:
    """Write the tensors the transforms added (``added``: their names, e.g. LoRA's ``lora_A`` and
    ``lora_B``) of a checkpoint on their own: ``adapter.safetensors`` with the spec's transforms (and
    the base run they adapt) in its metadata."""
    path = Path(run_dir) / ADAPTER
    meta = {"transforms": json.dumps(ckpt["spec"]["transforms"]), "step": str(ckpt.get("step", 0))}
    if base:
        meta["base"] = str(base)
    save_file({k: v for k, v in ckpt["model"].items() if k in set(added)}, path, meta)
    return path


def load_adapter(path) -> tuple[list, dict]:
    """(transforms [{"name", "params"}], {name: tensor}) of an adapter file; one written before
    LoRA was a transform (a ``lora`` config in its metadata) is read as a ``lora`` transform."""
    meta = metadata(path)
    try:
        if "transforms" in meta:
            transforms = json.loads(meta["transforms"])
        elif "lora" in meta:
            transforms = [lora_transform(json.loads(meta["lora"]))]
        else:
            raise ZooError(f"{str(path)!r} is not a zoo adapter file (no 'transforms' in its metadata).")
    except json.JSONDecodeError:
        raise ZooError(f"{str(path)!r} is not a zoo adapter file (its metadata is not JSON).") from None
    if not isinstance(transforms, list) or not all(isinstance(t, dict) and isinstance(t.get("name"), str)
                                                   for t in transforms):
        raise ZooError(f"{str(path)!r} is not a zoo adapter file (its transforms are not [{{\"name\", \"params\"}}]).")
    return transforms, load_file(path)


def added_keys(spec: dict, sd_keys, reg=None) -> set:
    """Names in a transformed model's state dict (``sd_keys``) that the model without its transforms
    lacks: what the transforms added (built on the meta device, no weights allocated)."""
    import torch
    from ..nn.transformer import build_from_spec
    with torch.device("meta"):
        plain = build_from_spec({k: v for k, v in spec.items() if k != "transforms"}, reg)
    return set(sd_keys) - set(plain.state_dict())


# ---- zoo finetune ---------------------------------------------------------------------------------

FINETUNE_DEFAULTS = {  # small, careful steps from pretrained weights; every one is a flag
    "lora": dict(lr=3e-4, min_lr=3e-5, weight_decay=0.0),
    "full": dict(lr=3e-5, min_lr=3e-6, weight_decay=0.1),
}
FINETUNE_RECIPE = dict(max_iters=200, batch_size=4, grad_accum=1, warmup=10, eval_interval=50, eval_iters=20)


def finetune(run, cfg, lora: dict | None = None, name: str | None = None, block_size: int | None = None,
             log=None, transforms: list | None = None) -> dict:
    """Fine-tune the model of run directory ``run`` with the trainer of ``zoo train``; ``cfg`` is a
    ``zoo.train.TrainConfig`` (data, schedule, ...). ``transforms`` ([{"name", "params"}]) are
    applied to the model first; ``lora`` (the params of the ``lora`` transform) is short for one more
    of them. Returns the trainer's summary."""
    if name is not None:
        check_name(name, "model name (--name)")
    base_ckpt = load_checkpoint(run)
    spec = dict(base_ckpt["spec"])
    reg = get_registry()
    if spec.get("transforms"):
        names = ", ".join(t["name"] for t in spec["transforms"])
        raise ZooError(f"{str(run)!r} holds transforms ({names}, e.g. LoRA adapters); merge them first (zoo lora "
                       f"merge {run} --out DIR) and fine-tune the merged run, or continue it with zoo train "
                       f"--resume {run}.")
    if cfg.fsdp:
        raise ZooError("zoo finetune does not shard with FSDP; drop --fsdp.")
    base_sd = base_ckpt["model"]
    if block_size:
        pe = spec["posenc"]
        props = reg.get("posenc", pe["name"]).params_schema.get("properties", {})
        if "max_len" in props and pe["params"].get("max_len") is None:  # keep a learned table's size
            spec["posenc"] = {**pe, "params": {**pe["params"], "max_len": spec["block_size"]}}
        spec["block_size"] = block_size
    transforms = list(transforms or []) + ([{"name": "lora", "params": dict(lora)}] if lora else [])
    if transforms:
        spec["transforms"] = transforms
    base_name = spec["name"]
    name = name or f"{base_name}-{'lora' if lora else 'ft'}"
    check_name(name, "model name")
    if name in reg.models:  # the run would pass for that model (zoo compare NAME, its manifest.json)
        raise ZooError(f"model name {name!r} is already registered by {reg.models[name].origin}; pass --name.")
    spec.update(name=name, preset=name)  # its own model and preset, as manifest.json in its run records them
    entry = {k: v for k, v in spec.items() if k not in ("name", "preset") + DIM_KEYS}
    preset = {k: spec[k] for k in DIM_KEYS}
    check_entry(entry, "model", name, f"zoo finetune of {run}")
    spec = validate_spec(reg, spec, f"model {name!r} (preset {name!r})")
    tok = _tokenizer(run, base_ckpt)
    cfg.preset = name
    cfg.overrides = {"vocab_size": spec["vocab_size"]}  # recorded as zoo train records it; the weights fix it
    kind = "lora" if transforms else "full"
    for k, v in {**FINETUNE_DEFAULTS[kind], **FINETUNE_RECIPE}.items():
        if getattr(cfg, k, None) is None:
            setattr(cfg, k, v)
    trainer = Trainer(spec, tok, cfg, reg=reg, log=log)
    try:
        missing, unexpected = trainer.model.load_state_dict(base_sd, strict=False)
    except RuntimeError as e:
        raise ZooError(f"the weights of {str(run)!r} do not fit its spec: {str(e).splitlines()[-1].strip()}") from None
    added = added_keys(trainer.spec, trainer.model.state_dict(), reg) if transforms else set()
    if unexpected or [k for k in missing if k not in added]:
        raise ZooError(f"the weights of {str(run)!r} do not fit its spec: missing "
                       f"{[k for k in missing if k not in added][:3]}, unexpected {unexpected[:3]}.")
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    n_train = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.log(f"fine-tuning {base_name} from {run}: {kind}, {n_train:,} of {trainer.n_params:,} parameters "
                f"trainable" + ("".join(f"; {t['name']} {json.dumps(t['params'])}" for t in trainer.spec["transforms"])
                                if transforms else ""))
    result = trainer.fit(Progress(trainer.dist.main, trainer.cfg.max_iters, trainer.cfg.log_interval))
    if trainer.dist.main:
        run_dir = Path(result["run_dir"])
        write_json(run_dir / "manifest.json", {"version": 1, "presets": {name: preset}, "models": {name: entry}})
        if added and trainable <= added:  # only what the transforms added trained: an adapter of the base
            final = load_checkpoint(run_dir)
            result["adapter"] = str(save_adapter(run_dir, final, added, base=str(run)))
    trainer.dist.close()
    return result


def _tokenizer(run, ckpt):
    """The base run's tokenizer: the checkpoint's, else the tokenizer.json beside it."""
    cfg = ckpt.get("tokenizer")
    if cfg is None:
        f = resolve_checkpoint_path(run).parent / "tokenizer.json"
        if not f.is_file():
            raise ZooError(f"{str(run)!r} has no tokenizer (none in the checkpoint, no tokenizer.json beside it).")
        return load_config(f)
    return from_config(cfg)
