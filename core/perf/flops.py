"""The one FLOPs model: each component reports its own forward FLOPs.

A module may define ``flops_per_token(seq_len)``: forward matmul FLOPs per token (2 per multiply-add)
as it executes them in training, attention over the whole context of ``seq_len`` as nanoGPT counts
it. One that does not is counted as a dense layer (2 x its parameters per token) and the report
says so. Training counts 3 x forward (forward + backward), the convention of the PaLM paper's MFU
(Chowdhery et al. 2022, arXiv:2204.02311) and nanoGPT. ``zoo bench`` and the trainer's MFU both use it.
"""
from __future__ import annotations

from ..plugin.contract import SLOT_ATTR


def _own_flops(module, seq_len):
    fn = getattr(module, "flops_per_token", None)
    if fn is not None:
        return float(fn(seq_len)), True
    return 2.0 * sum(p.numel() for p in module.parameters()), False


def model_flops_per_token(model, seq_len: int) -> dict:
    """Forward FLOPs per token of a zoo Transformer, summed from what each component reports."""
    total, estimated = 0.0, set()
    for block in model.blocks:
        for attr in SLOT_ATTR.values():
            part = getattr(block, attr)
            f, own = _own_flops(part, seq_len)
            total += f
            if not own:
                estimated.add(type(part).__name__)
    total += 2.0 * model.lm_head.weight.numel()  # output head; embedding lookups are free
    return {"forward": total, "train": 3.0 * total, "estimated_from_params": sorted(estimated)}
