"""Run directories: ``OUT/<model>/<run-id>/``, holding a run's checkpoint, spec, tokenizer and logs, the
marker of the trainer (``.zoo-output.json``), and the lock of the process training in it."""
from __future__ import annotations

import os
import time
from pathlib import Path, PureWindowsPath

from ..errors import ZooError
from .atomic import MARKER, temp_files_of, umask, write_json, write_text, written_by_zoo
from .checkpoint import CKPT_NAME

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


LOCK_NAME = ".lock"
# what a run directory holds besides its checkpoint: files the trainer itself writes
RUN_FILES = ("spec.json", "tokenizer.json", MARKER, LOCK_NAME)


def stale_temp_files(run_dir) -> list:
    """Temporary checkpoint files a killed process left in a run directory (this release's names
    and those of older ones, ``.ckpt-*.tmp``)."""
    run_dir = Path(run_dir)
    return temp_files_of(run_dir / CKPT_NAME) + sorted(run_dir.glob(".ckpt-*.tmp"))


def never_checkpointed(run_dir) -> bool:
    """Whether ``run_dir`` is a run the trainer started that never wrote a checkpoint (killed, or
    stopped before its first one): it holds the trainer's marker and only files the trainer writes."""
    run_dir = Path(run_dir)
    marker = written_by_zoo(run_dir)
    if marker is None or marker.get("command") != "zoo train" or (run_dir / CKPT_NAME).exists():
        return False
    stale = set(stale_temp_files(run_dir))
    for name in RUN_FILES:
        stale.update(temp_files_of(run_dir / name))
    return all(p.name in RUN_FILES or p.name.startswith("events.out.tfevents.") or p in stale
               for p in run_dir.iterdir())


def create_run_dir(run_dir, command: str = "zoo train"):
    """Create ``run_dir`` with the marker of ``command`` already in it: it is filled under a hidden
    temporary name and renamed into place, so a run directory never exists without its marker (a
    process killed while creating it leaves at most that hidden folder, which the next start of the
    same run id removes)."""
    import shutil
    import tempfile
    from ..version import __version__
    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    for old in run_dir.parent.glob(f".{run_dir.name}-*"):  # what a killed creation left
        if old.is_dir() and all(p.name.startswith(MARKER) or p.name.startswith(f".{MARKER}") for p in old.iterdir()):
            shutil.rmtree(old, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=run_dir.parent, prefix=f".{run_dir.name}-"))
    try:
        write_json(tmp / MARKER, {"command": command, "zoo_version": __version__})
        os.chmod(tmp, 0o777 & ~umask())
        os.rename(tmp, run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class RunLock:
    """An OS lock on a run directory (``flock`` on the directory itself), held while a process trains
    in it, so that a second ``zoo train --resume`` of the same run stops at once (exit 2, naming the
    holder) instead of both writing the same checkpoint. The lock goes with the process, even when
    it is killed. The holder's process id is written to ``RUN/.lock`` once it starts writing the run
    (:meth:`note`), so a refused or failed resume leaves the folder as it was."""

    def __init__(self, run_dir):
        self.dir = Path(run_dir)
        self.fd = None

    def acquire(self, note: bool = True):
        import fcntl
        fd = os.open(self.dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            try:
                holder = "process " + (self.dir / LOCK_NAME).read_text(encoding="ascii").strip()
            except (OSError, UnicodeDecodeError):
                holder = "another process"
            raise ZooError(f"{str(self.dir)!r} is in use: {holder} is training in it. Wait for it to finish (or "
                           f"stop it), then resume.") from None
        self.fd = fd
        if note:
            self.note()
        return self

    def note(self):
        """Write the holder's process id (for the message another process gets)."""
        write_text(self.dir / LOCK_NAME, str(os.getpid()))

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None
