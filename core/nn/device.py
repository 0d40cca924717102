"""The one parser of device and dtype names that every command and function takes
(``--device``, ``--dtype``, ``zoo.load(device=..., dtype=...)``)."""
from __future__ import annotations

import torch

from ..errors import ZooError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(dtype, default=None, allowed=None):
    """A torch dtype from a name (``float32``/``fp32``, ``bfloat16``/``bf16``, ``float16``/``fp16``)
    or a torch dtype; ``None`` or ``"auto"`` gives ``default``. ``allowed`` limits the dtypes."""
    if dtype is None or dtype == "auto":
        return default
    if isinstance(dtype, torch.dtype):
        out = dtype
    elif isinstance(dtype, str) and dtype in DTYPES:
        out = DTYPES[dtype]
    else:
        out = None
    if out is None or (allowed is not None and out not in allowed):
        names = [n for n, d in DTYPES.items() if allowed is None or d in allowed]
        raise ZooError(f"unknown dtype {dtype!r}; choose one of {', '.join(names)}.")
    return out


def dtype_name(dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def resolve_device(name=None) -> torch.device:
    """A torch device from ``auto`` (or None: CUDA when there is a GPU, else the CPU), ``cpu``,
    ``cuda``, ``cuda:N``, ...; a device this machine does not have is an error."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(name, torch.device):
        dev = name
    else:
        try:
            dev = torch.device(name)
        except (RuntimeError, TypeError):
            raise ZooError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ZooError(f"device {name!r} was asked for, but PyTorch sees no CUDA GPU here; use cpu.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ZooError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s).")
    if dev.type not in ("cpu", "cuda"):
        raise ZooError(f"device {name!r} is not supported by the zoo; use auto, cpu, cuda or cuda:N.")
    return dev


def default_dtype(device) -> torch.dtype:
    """What ``auto`` means for compute: bfloat16 on a GPU that has it, else float32."""
    if torch.device(device).type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32
