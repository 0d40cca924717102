"""The one FLOPs model: each component reports its own forward FLOPs.

Any module may define ``flops_per_token(seq_len)``: forward matmul FLOPs per token (2 per multiply-add)
as it executes them in training, attention over the whole context of ``seq_len`` as nanoGPT counts
it. One that does not is counted as a dense layer (2 x its parameters per token) and the report
says so. Training counts 3 x forward (forward + backward), the convention of the PaLM paper's MFU
(Chowdhery et al. 2022, arXiv:2204.02311) and nanoGPT. ``zoo bench`` and the trainer's MFU both use it.
"""
from __future__ import annotations

from ..plugin.protocols import ReportsFlops, flops_of


def model_flops_per_token(model, seq_len: int) -> dict:
    """Forward FLOPs per token of a zoo Transformer, summed from what its modules report.

    Every module that reports its FLOPs (:class:`zoo.plugin.protocols.ReportsFlops`) is counted,
    wherever it is (a mixer, an ffn, the head, a module of a transform), its submodules through it;
    each layer component that does not report them counts as 2 x its parameters (and is listed in
    ``estimated_from_params``). The head reports the output projection it applies; a head that does
    not report counts as the shared ``lm_head`` plus 2 x its own parameters. Embedding lookups are free."""
    total, estimated = 0.0, set()
    slots = {id(m) for b in model.blocks for _, m in b.components()}

    def visit(m):
        nonlocal total
        if isinstance(m, ReportsFlops) or id(m) in slots:
            f, own = flops_of(m, seq_len)
            total += f
            if not own:
                estimated.add(type(m).__name__)
            return
        for child in m.children():
            visit(child)

    for name, child in model.named_children():
        if name not in ("head", "lm_head"):
            visit(child)
    head = model.head
    if isinstance(head, ReportsFlops):
        total += flops_of(head, seq_len)[0]
    else:
        total += 2.0 * model.lm_head.weight.numel() + flops_of(head, seq_len)[0]
    return {"forward": total, "train": 3.0 * total, "estimated_from_params": sorted(estimated)}
