"""The learning-rate schedule and the optimizer's parameter groups."""
from __future__ import annotations

import math

from .config import TrainConfig


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

    from ..plugin.protocols import no_decay
    skip = set()
    for m in model.modules():
        if isinstance(m, nn.Embedding):
            skip.add(id(m.weight))
        for p in m.parameters(recurse=False):
            if no_decay(p):
                skip.add(id(p))
    decay, other, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and id(p) not in skip else other).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]
