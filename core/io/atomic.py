"""The one atomic writer: every file and output directory the zoo writes appears whole or not at all.

A file is written to a temporary file in the same directory, flushed to disk, given its mode and
renamed over the target, so a crash or a full disk leaves the previous file. Files get the mode a
plain ``open`` would give (0644 under the usual umask 022). None of the zoo's files holds a secret
today (no tokens or credentials are written); ``private=True`` (0600) is there for one that would.
An output directory is filled under a temporary name beside it and renamed into place, and holds a
marker (``.zoo-output.json``) naming the command that wrote it: ``--force`` replaces only a
directory with that marker, never one holding anything else, and no output may be, contain or lie
inside an input (:func:`check_output_dir`, :func:`check_output_file`).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import ZooError
from .faults import fault_point


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode(private: bool = False) -> int:
    return 0o600 if private else 0o666 & ~umask()


TMP_SUFFIX = ".tmp"


def temp_files_of(path) -> list:
    """The temporary files a write of ``path`` that never finished (a killed process) left beside it."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}-*{TMP_SUFFIX}"))


def write_atomically(path, write, *, private: bool = False):
    """Write ``path`` through ``write(binary file object)``, atomically (see the module docstring)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode(private))  # mkstemp makes it private
        fault_point("write")
        os.replace(tmp, path)
        fault_point("replaced")
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path, text: str, *, private: bool = False):
    write_atomically(path, lambda f: f.write(text.encode("utf-8")), private=private)


def write_json(path, obj, *, indent=2, private: bool = False):
    write_text(path, json.dumps(obj, indent=indent) + ("\n" if indent else ""), private=private)


MARKER = ".zoo-output.json"  # in every directory the zoo writes as an output: which command wrote it


def _real(p) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(p))))


def check_not_input(out, inputs=(), what="output"):
    """Refuse an output whose real path is, contains or is inside one of the inputs."""
    o = _real(out)
    for i in inputs:
        r = _real(i)
        if o == r or r.is_relative_to(o) or o.is_relative_to(r):
            rel = "is" if o == r else "contains" if r.is_relative_to(o) else "is inside"
            raise ZooError(f"the {what} {str(out)!r} {rel} the input {str(i)!r}; writing it could destroy the "
                           f"input. Choose an {what} outside it.")


def written_by_zoo(d) -> dict | None:
    """The marker of a directory the zoo wrote (command, version), or None."""
    try:
        marker = json.loads((Path(d) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and "command" in marker else None


def _listing(d: Path, n=5) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in d.iterdir())
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def check_output_dir(out, force: bool = False, inputs=()):
    """The rule for an output directory: it may be absent or empty; one the zoo wrote (it holds the
    marker) is replaced only with ``force``; anything else is never replaced, ``force`` or not. An
    output that is, contains or is inside an input is refused. Call it before the work, so a refusal
    costs nothing; :func:`replace_dir` calls it again."""
    out = Path(out)
    check_not_input(out, inputs, "output directory")
    if not out.exists():
        return
    if not out.is_dir():
        raise ZooError(f"{str(out)!r} exists and is a file, not a directory; the zoo does not replace it. "
                       f"Choose another output directory.")
    if not any(out.iterdir()):
        return
    marker = written_by_zoo(out)
    if marker is None:
        raise ZooError(f"{str(out)!r} already exists and holds files the zoo did not write ({_listing(out)}); "
                       f"it is never replaced, with --force or without. Choose another output directory.")
    if not force:
        raise ZooError(f"{str(out)!r} already exists (written by `{marker['command']}`); choose another output "
                       f"directory, or pass --force to replace it.")


def replace_dir(out, fill, force: bool = False, command: str = "zoo", inputs=()):
    """Create directory ``out`` by filling a temporary sibling (``fill(path)``) and renaming it into
    place; the rule of :func:`check_output_dir` decides whether an existing ``out`` may be replaced.
    The new directory holds the marker naming ``command``; a failure leaves the old ``out`` as it was."""
    from ..version import __version__
    out = Path(out)
    check_output_dir(out, force, inputs)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    except OSError as e:
        raise ZooError(f"cannot write to {str(out.parent)!r}: {e.strerror}.") from None
    try:
        fill(tmp)
        write_json(tmp / MARKER, {"command": command, "zoo_version": __version__})
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


def check_output_file(path, force: bool = False, inputs=(), ours=None, what="output file"):
    """The rule for an output file: an existing file is overwritten only when ``ours(path)`` says the
    same command wrote it, or with ``force``; never when it is one of the inputs, nor a directory.
    Also checks that its directory exists, so a long run does not fail at its end."""
    path = Path(path)
    check_not_input(path, inputs, what)
    if path.is_dir():
        raise ZooError(f"the {what} {str(path)!r} is a directory; give a file name.")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ZooError(f"cannot write the {what} {str(path)!r}: the directory {str(parent)!r} does not exist.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ZooError(f"cannot write the {what} {str(path)!r}: the directory {str(parent)!r} is not writable.")
    if path.exists() and not force and not (ours and ours(path)):
        raise ZooError(f"{str(path)!r} already exists and was not written by this command; choose another "
                       f"{what}, or pass --force to overwrite it.")
