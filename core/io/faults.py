"""Fault injection for the tests: a process can be killed at a chosen moment of its work.

``ZOO_TEST_SIGKILL_AT=N`` sends the process SIGKILL at the N-th fault point it passes (1-based);
``ZOO_TEST_SIGKILL_AT=NAME:N`` at the N-th point called NAME (the trainer passes "step" at the start
of every optimizer step and "eval" before every evaluation; a checkpoint write passes "write" when
the temporary file is complete and "replaced" once it is in place). ``ZOO_TEST_SIGNAL=INT`` sends
SIGINT instead (a Ctrl-C). Without the variable a fault point does nothing but count.
"""
from __future__ import annotations

import os
import signal

_STATE = {"spec": None, "counts": {}}


def fault_point(name: str):
    spec = _STATE["spec"]
    if spec is None:
        spec = _STATE["spec"] = os.environ.get("ZOO_TEST_SIGKILL_AT", "")
    if not spec:
        return
    want, _, n = spec.rpartition(":")
    counts = _STATE["counts"]
    key = name if want else ""
    if want and want != name:
        return
    counts[key] = counts.get(key, 0) + 1
    if counts[key] == int(n):
        sig = signal.SIGINT if os.environ.get("ZOO_TEST_SIGNAL", "").upper() == "INT" else signal.SIGKILL
        os.kill(os.getpid(), sig)
