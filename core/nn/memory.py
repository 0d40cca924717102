"""How much memory there is, and what generation needs, so that a run too large for the machine is
refused with figures before anything is allocated (instead of an out-of-memory kill or a traceback).

The training estimate is :mod:`zoo.perf.memory`; this module sits below the generator, which uses
:func:`generation_bytes`.
"""
from __future__ import annotations

import os

import torch

from ..plugin.protocols import cache_size
from ..spec.resolve import dims_of, layer_components


def fmt_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit, size in (("PiB", 2 ** 50), ("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{int(n)} bytes"


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_available() -> int | None:
    """What a container's memory limit leaves (cgroup v2, then v1), or None without a limit."""
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit, encoding="ascii") as f:
                text = f.read().strip()
            if text == "max":
                return None
            with open(usage, encoding="ascii") as f:
                used = int(f.read().strip())
            lim = int(text)
            return None if lim >= 2 ** 60 else max(0, lim - used)  # v1 writes a huge number for no limit
        except (OSError, ValueError):
            continue
    return None


def available_bytes(device) -> int | None:
    """Free memory on ``device``: ``torch.cuda.mem_get_info`` on a GPU; on the CPU the kernel's
    MemAvailable (or ``os.sysconf``), within a container's memory limit. None when unknown."""
    dev = torch.device(device)
    if dev.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(dev)[0])
        except (RuntimeError, AssertionError):
            return None
    if dev.type != "cpu":
        return None
    known = [n for n in (_meminfo_available(), _cgroup_available()) if n is not None]
    return min(known) if known else None


def device_words(device) -> str:
    dev = torch.device(device)
    return "the GPU" if dev.type == "cuda" else "this machine"


def model_cache_bytes(model, dtype_bytes: int):
    """(bytes per token, fixed bytes per sequence) of a built model's generation cache, from each
    layer's mixer class's own report (as :func:`zoo.nn.cache.cache_bytes` does from the registry);
    None if one has none."""
    per_tok = per_seq = 0
    for i, block in enumerate(model.blocks):
        size = cache_size(type(block.attn), dims_of(model.spec, i),
                          layer_components(model.spec, i)["attention"]["params"])
        if size is None:
            return None
        per_tok, per_seq = per_tok + size[0], per_seq + size[1]
    return per_tok * dtype_bytes, per_seq * dtype_bytes


def cache_bytes_per_token(model, dtype_bytes: int) -> int | None:
    """Cache bytes per token of a built model (see :func:`model_cache_bytes`), None if not reported."""
    size = model_cache_bytes(model, dtype_bytes)
    return None if size is None else size[0]


def generation_bytes(spec: dict, per_token: int | None, batch: int, positions: int, cache_len: int | None,
                     dtype_bytes: int, per_sequence: int = 0) -> dict:
    """What decoding ``batch`` sequences of up to ``positions`` tokens allocates beyond the weights: the
    cache of ``cache_len`` slots per sequence (None: no cache, the context is recomputed) at
    ``per_token`` bytes per token (None: not reported, counted as keys and values of d_model per
    layer) plus ``per_sequence`` fixed bytes per sequence (a recurrent state), the token ids and
    prompt mask (int64 + bool per position), and per step the vocabulary-sized rows (logits,
    probabilities, sampling's sorted copies in float32, the repetition mask)."""
    if not cache_len:
        per_token, per_sequence = None, 0
    elif per_token is None:
        per_token = 2 * spec["d_model"] * spec["n_layers"] * dtype_bytes
    cache = ((per_token or 0) * (cache_len or 0) + per_sequence) * batch
    ids = batch * positions * 9
    vocab = batch * spec["vocab_size"] * (1 + 4 * 6)
    return {"cache": cache, "cache_per_token": per_token or 0, "cache_per_sequence": per_sequence, "ids": ids, "vocab": vocab,
            "total": cache + ids + vocab}
