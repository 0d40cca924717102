"""Timing on a device: warm-up runs, synchronisation, the median with its min and max."""
from __future__ import annotations

import statistics
import time


def _sync(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn, device, warmup=2, reps=5, make_input=None):
    """Median, min and max seconds of ``fn(input)`` over ``reps`` runs after ``warmup``."""
    times = []
    for i in range(warmup + reps):
        arg = make_input() if make_input else None
        _sync(device)
        t0 = time.perf_counter()
        fn(arg)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "reps": reps}
