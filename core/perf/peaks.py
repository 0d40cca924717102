"""The one table of accelerator peaks, and a measured matmul peak to set beside it (MFU)."""
from __future__ import annotations

from .timing import time_fn

# dense bf16 tensor-core peaks from the vendors' datasheets (FLOP/s), matched on the device name
DATASHEET_BF16 = [  # the first name found in the device's name wins, so longer names come first
    ("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12),
    ("L40", 181e12), ("L4", 121e12), ("A10G", 70e12), ("A10", 125e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12),
]


def datasheet_peak(device):
    import torch
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in DATASHEET_BF16:
        if key in name:
            return flops
    return None


def measured_matmul_peak(device, dtype, n=None, reps=5) -> float:
    """FLOP/s of a large square matmul in ``dtype`` on ``device``."""
    import torch
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = time_fn(lambda _: a @ b, device, warmup=2, reps=reps)
    return 2 * n ** 3 / t["median"]
