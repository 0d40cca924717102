"""Run directories: ``OUT/<model>/<run-id>/``, holding a run's checkpoint, spec, tokenizer and logs."""
from __future__ import annotations

import os
import time
from pathlib import Path, PureWindowsPath

from ..errors import ZooError

NAME_RULE = ("a name is one directory inside the runs directory: not empty, not '.', and without '..', "
             "a path separator ('/' or '\\') or a control character")


def name_problem(value) -> str | None:
    """Why ``value`` cannot be a model name or run id (a directory ``OUT/<model>/<run-id>``), or
    None. The manifest schema's ``name`` pattern states the same rule."""
    if not isinstance(value, str):
        return f"is a {type(value).__name__}, not a string"
    if not value:
        return "is empty"
    if os.path.isabs(value) or PureWindowsPath(value).is_absolute():
        return "is an absolute path"
    if "/" in value or "\\" in value or os.sep in value or (os.altsep and os.altsep in value):
        return "contains a path separator"
    if ".." in value:
        return "contains '..'"
    if value == ".":
        return "is '.'"
    if any(ord(c) < 32 for c in value):
        return "contains a control character"
    return None


def check_name(value, what: str):
    """Refuse a model name or run id that would write outside the runs directory (ZooError)."""
    problem = name_problem(value)
    if problem:
        raise ZooError(f"{what} {value!r} {problem}; {NAME_RULE}. Choose another.")


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
