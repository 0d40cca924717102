"""The one atomic writer: every file and output directory the zoo writes appears whole or not at all.

A file is written to a temporary file in the same directory, flushed to disk, given its mode and
renamed over the target, so a crash or a full disk leaves the previous file. Files get the mode a
plain ``open`` would give (0644 under the usual umask 022). None of the zoo's files holds a secret
today (no tokens or credentials are written); ``private=True`` (0600) is there for one that would.
An output directory is filled under a temporary name beside it and renamed into place.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import ZooError


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode(private: bool = False) -> int:
    return 0o600 if private else 0o666 & ~umask()


def write_atomically(path, write, *, private: bool = False):
    """Write ``path`` through ``write(binary file object)``, atomically (see the module docstring)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode(private))  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path, text: str, *, private: bool = False):
    write_atomically(path, lambda f: f.write(text.encode("utf-8")), private=private)


def write_json(path, obj, *, indent=2, private: bool = False):
    write_text(path, json.dumps(obj, indent=indent) + ("\n" if indent else ""), private=private)


def replace_dir(out, fill, force: bool = False):
    """Create directory ``out`` by filling a temporary sibling (``fill(path)``), then renaming it
    into place; with ``force`` an existing ``out`` is replaced, otherwise it must be empty or absent."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not force:
            raise ZooError(f"{str(out)!r} already exists and is not empty; choose another output directory "
                           f"or pass --force to replace it.")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    except OSError as e:
        raise ZooError(f"cannot write to {str(out.parent)!r}: {e.strerror}.") from None
    try:
        fill(tmp)
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it private; give it a normal directory's mode
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-old-"))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
