"""Run directories: ``OUT/<model>/<run-id>/``, holding a run's checkpoint, spec, tokenizer and logs."""
from __future__ import annotations

import os
import time
from pathlib import Path

from ..errors import ZooError


def new_run_id(parent: Path) -> str:
    base = time.strftime("%Y%m%d-%H%M%S")
    rid, i = base, 1
    while (parent / rid).exists():
        i += 1
        rid = f"{base}-{i}"
    return rid


def check_writable(out: Path):
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ZooError(f"cannot create the runs directory {str(out)!r}: {e.strerror}. Choose another with --out.") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ZooError(f"the runs directory {str(out)!r} is not writable. Choose another with --out.")
