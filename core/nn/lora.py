"""LoRA, low-rank adaptation (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models",
arXiv:2106.09685): adapters on a built model, and merging them back into the weights.

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

Fine-tuning with adapters (``zoo finetune --lora``, adapter files) is :mod:`zoo.train.finetune`.
"""
from __future__ import annotations

import math

from ..errors import ZooError
from ..plugin.contract import SLOT_ATTR

DEFAULTS = {"alpha": 16, "targets": ["attention"], "dropout": 0.0}
TARGETS = tuple(SLOT_ATTR)  # the layer kinds whose linear layers may get adapters


def lora_config(cfg: dict) -> dict:
    if not isinstance(cfg, dict) or "r" not in cfg:
        raise ZooError(f"a LoRA config is {{\"r\": rank, \"alpha\", \"targets\", \"dropout\"}}, not {cfg!r}.")
    out = {**DEFAULTS, **cfg}
    targets = out["targets"]
    bad = [t for t in targets if t not in TARGETS] if isinstance(targets, list) else [targets]
    if bad or not targets:
        raise ZooError(f"unknown LoRA target(s) {bad}; choose from {', '.join(TARGETS)}.")
    r = out["r"]
    if isinstance(r, float) and math.isfinite(r) and r.is_integer():
        out["r"] = r = int(r)
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ZooError(f"LoRA rank r={r!r} must be a whole number of at least 1.")
    for k, ok, rng in (("alpha", lambda x: x > 0, "(0, infinity)"), ("dropout", lambda x: 0 <= x < 1, "[0, 1)")):
        v = out[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
            raise ZooError(f"LoRA {k}={v!r} must be a number in {rng}.")
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
    for i, block in enumerate(model.blocks):
        for name, m in _block_linears(block, targets):
            yield f"blocks.{i}.{name}", m


def _block_linears(block, targets):
    import torch.nn as nn
    for kind, attr in SLOT_ATTR.items():
        if kind in targets:
            for name, m in getattr(block, attr).named_modules():
                if isinstance(m, nn.Linear):
                    yield f"{attr}.{name}", m


def add_adapters(block, cfg: dict) -> int:
    """Add adapters to the target linear layers of one block, in place; returns how many."""
    import torch
    import torch.nn as nn
    cfg = lora_config(cfg)
    n = 0
    for _, m in _block_linears(block, cfg["targets"]):
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
    return n


def no_adapters_error(cfg: dict) -> ZooError:
    return ZooError(f"LoRA targets {lora_config(cfg)['targets']} contain no nn.Linear layer in this model; "
                    f"choose other targets.")


def apply_lora(model, cfg: dict):
    """Add adapters to ``model`` in place (see the module docstring) and freeze everything else."""
    for p in model.parameters():
        p.requires_grad_(False)
    if sum(add_adapters(block, cfg) for block in model.blocks) == 0:
        raise no_adapters_error(cfg)
    return model


def is_adapter_key(k: str) -> bool:
    return k.endswith(".lora_A") or k.endswith(".lora_B")


def adapter_problems(sd: dict, cfg: dict) -> list[str]:
    """What keeps the adapters in ``sd`` from folding into its weights: for each ``X.lora_A`` (r, in) a
    ``X.lora_B`` (out, r) and a 2-d weight ``X.weight`` (out, in), with r the config's rank."""
    out = []
    for k in sorted(k for k in sd if is_adapter_key(k)):
        base = k[: k.rfind(".") + 1]
        w, a, b = sd.get(base + "weight"), sd.get(base + "lora_A"), sd.get(base + "lora_B")
        if k.endswith(".lora_B") and a is not None:
            continue  # checked with its lora_A
        if w is None or getattr(w, "dim", lambda: 0)() != 2:
            out.append(f"no 2-d weight {base + 'weight'!r} for {k!r}")
        elif a is None or b is None:
            out.append(f"{k!r} has no {'lora_A' if a is None else 'lora_B'} beside it")
        elif (a.dim(), b.dim()) != (2, 2) or a.shape[1] != w.shape[1] or b.shape[0] != w.shape[0] \
                or a.shape[0] != cfg["r"] or b.shape[1] != cfg["r"]:
            out.append(f"{base}lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not fit the weight "
                       f"{tuple(w.shape)} at rank {cfg['r']} (they need ({cfg['r']}, {w.shape[1]}) and "
                       f"({w.shape[0]}, {cfg['r']}))")
    return out


def merge_state_dict(sd: dict, cfg: dict) -> dict:
    """A state dict with every adapter folded into its weight, W + (alpha / r) B A, and removed."""
    cfg = lora_config(cfg)
    problems = adapter_problems(sd, cfg)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ZooError(f"the LoRA adapters do not fit the weights: {problems[0]}{more}.")
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
    return spec, merge_state_dict(ckpt["model"], cfg)


def adapter_state(sd: dict) -> dict:
    return {k: v for k, v in sd.items() if is_adapter_key(k)}
