"""What training a model needs in memory, estimated before the model is built, so that a run that
cannot fit (``--set n_layers=100000``, ``--set d_model=1000000000``) is refused with the figures
instead of being killed by the kernel or failing with a traceback.

The estimate is a floor, not a forecast: a run it lets through may still not fit, but one it refuses
cannot. Per parameter, 16 bytes: fp32 weights (4), gradients (4) and AdamW's two moments (8); with
transforms that freeze the base weights (LoRA) only the weights count (the adapters are small). Activations kept for the backward pass: 16
values per token, per layer and per ``d_model`` channel (the residual stream, norms, attention and
feed-forward inputs; measured on a CPU, gpt2 keeps about 36 and MoE and KAN layers more), in the
autocast dtype, plus the logits and their gradient (8 bytes per vocabulary entry per token).

Parameters are counted with :func:`zoo.nn.transformer.param_count` (on the meta device). A spec whose
embedding and norms alone cannot fit is refused before that count, so an absurd size answers at once.
"""
from __future__ import annotations

from ..errors import ZooError
from ..nn.memory import available_bytes, device_words, fmt_bytes

BYTES_PER_PARAM = 16  # fp32 weights, gradients, AdamW's exp_avg and exp_avg_sq
ACT_VALUES = 16  # activations kept per token, per layer and per d_model channel (a floor)
LOGIT_BYTES = 8  # the logits and their gradient, per vocabulary entry per token


def activation_bytes(spec: dict, batch: int, seq: int, act_bytes: int = 4) -> int:
    """Activations a training step keeps for the backward pass, for ``batch`` sequences of ``seq``."""
    tokens = batch * seq
    return tokens * (ACT_VALUES * spec["n_layers"] * spec["d_model"] * act_bytes + LOGIT_BYTES * spec["vocab_size"])


def min_params(spec: dict) -> int:
    """A floor on the parameters, without building anything: the token embedding and the two norms'
    weights of every block."""
    return spec["vocab_size"] * spec["d_model"] + 2 * spec["n_layers"] * spec["d_model"]


def count_params(spec: dict, reg=None) -> int | None:
    """The parameters of a spec (None when a tensor is too large for torch to even describe)."""
    from ..nn.transformer import param_count
    try:
        return param_count(spec, reg)
    except (RuntimeError, OverflowError, MemoryError):  # "Storage size calculation overflowed"
        return None
    except TypeError as e:  # a size beyond 64 bits: "Overflow when unpacking long long"
        if "overflow" in str(e).lower():
            return None
        raise


def _frozen(spec: dict, reg=None) -> bool:
    """Whether the spec's transforms freeze the base weights (LoRA): then only the weights count."""
    if not spec.get("transforms"):
        return False
    from ..nn.transforms import freezes_base
    from ..spec.catalog import get_registry
    return freezes_base(spec, reg or get_registry())


def training_bytes(spec: dict, reg=None, batch: int = 1, seq: int | None = None, act_bytes: int = 4,
                   shards: int = 1, limit: int | None = None) -> dict:
    """The floor of what training ``spec`` needs: ``{"params", "state", "activations", "total",
    "exact"}``. ``shards`` divides the parameter state (FSDP). With ``limit``, the parameters are not
    counted when the floor without them already exceeds it (``exact`` is then False)."""
    seq = seq or spec["block_size"]
    per_param = 4 if _frozen(spec, reg) else BYTES_PER_PARAM
    act = activation_bytes(spec, batch, seq, act_bytes)
    floor = per_param * min_params(spec) // shards + act
    params, exact, describable = min_params(spec), False, True
    if limit is None or floor <= limit:
        n = count_params(spec, reg)
        if n is not None:
            params, exact = n, True
        else:
            describable = False
    state = per_param * params // shards
    return {"params": params, "state": state, "activations": act, "total": state + act, "exact": exact,
            "per_param": per_param, "describable": describable}


def check_training_memory(spec: dict, reg=None, device="cpu", batch: int = 1, seq: int | None = None,
                          act_bytes: int = 4, shards: int = 1, processes: int = 1, what: str = "training",
                          fix: str = "Choose smaller sizes (--preset, --set) or a smaller --batch-size."):
    """Raise a ``ZooError`` with the figures when training ``spec`` cannot fit in the memory available on
    ``device`` (``processes`` sharing it, e.g. torchrun ranks on one CPU). Returns the estimate."""
    have = available_bytes(device)
    if have is None:
        return None
    have //= max(1, processes)
    est = training_bytes(spec, reg, batch, seq, act_bytes, shards, limit=have)
    sizes = ", ".join(f"{k}={spec[k]:,}" for k in ("n_layers", "d_model", "vocab_size", "block_size"))
    if not est["describable"]:
        raise ZooError(f"{what} {spec['name']!r} ({sizes}): a weight of this model would be larger than torch can "
                       f"describe (more than 2**63 elements or bytes), far beyond the {fmt_bytes(have)} available "
                       f"on {device_words(device)}. {fix}")
    if est["total"] <= have:
        return est
    seq = seq or spec["block_size"]
    params = f"{est['params']:,} parameters" if est["exact"] else f"at least {est['params']:,} parameters"
    weights = "fp32 weights" if est["per_param"] == 4 else "fp32 weights, gradients and AdamW"
    raise ZooError(f"{what} {spec['name']!r} ({sizes}) needs at least {fmt_bytes(est['total'])}: {params} x "
                   f"{est['per_param']} bytes ({weights}) = {fmt_bytes(est['state'])}, plus about "
                   f"{fmt_bytes(est['activations'])} of activations for a batch of {batch:,} x {seq:,} tokens; "
                   f"{device_words(device)} has {fmt_bytes(have)} available"
                   + (f" per process ({processes} share it)" if processes > 1 else "")
                   + f". {fix}")
