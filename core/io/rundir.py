"""Run directories: ``OUT/<model>/<run-id>/``, holding a run's checkpoint, spec, tokenizer and logs, the
marker of the trainer (``.zoo-output.json``), and the lock of the process training in it."""
from __future__ import annotations

import os
import time
from pathlib import Path

from ..errors import ZooError
from .atomic import MARKER, temp_files_of, umask, write_json, written_by_zoo
from .checkpoint import CKPT_NAME


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
    """An OS lock on a run directory (``flock`` on ``RUN/.lock``), held while a process trains in it,
    so that a second ``zoo train --resume`` of the same run stops at once (exit 2, naming the holder)
    instead of both writing the same checkpoint. The lock goes with the process, even when it is
    killed; the ``.lock`` file stays."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / LOCK_NAME
        self.fd = None

    def acquire(self):
        import fcntl
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "another process"
            os.close(fd)
            raise ZooError(f"{str(self.path.parent)!r} is in use: process {holder} is training in it. Wait for it "
                           f"to finish (or stop it), then resume.") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None
