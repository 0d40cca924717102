"""Text corpora: the built-in ``tinyshakespeare`` (shipped compressed in the package), your
own text files, and nanoGPT's split (the first 90% of the characters train, the last 10% validate)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import ZooError
from ..io.atomic import write_atomically

TINYSHAKESPEARE = {
    "file": "tinyshakespeare.txt",
    "url": "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    "size": 1115394,
    "sha256": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    # shipped inside the package, gzip-compressed (434 kB; the text is public domain), so the main job
    # runs on a machine without network; the download above is for a machine whose package lacks it
    "embedded": "tinyshakespeare.txt.gz",
}
DATASETS = {"tinyshakespeare": TINYSHAKESPEARE}


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "zoo"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(info: dict, dest: Path):
    import urllib.request
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(info["url"], timeout=30) as r, open(tmp, "wb") as f:
            f.write(r.read())
    except OSError as e:
        if tmp.exists():
            tmp.unlink()
        raise ZooError(f"{info['file']} is not on this machine and downloading it from {info['url']} failed "
                       f"({type(e).__name__}: {e}). Download it yourself and put it at {dest}, or point "
                       f"ZOO_DATA_DIR at a directory holding {info['file']}, or pass --data FILE.") from None
    if tmp.stat().st_size != info["size"] or _sha256(tmp) != info["sha256"]:
        tmp.unlink()
        raise ZooError(f"the download of {info['url']} does not have the expected size and sha256 "
                       f"({info['size']} bytes, {info['sha256']}); nothing was saved. Retry, or put a "
                       f"correct copy at {dest}.")
    os.replace(tmp, dest)


def find_dataset(name: str = "tinyshakespeare", data: str | None = None) -> Path:
    """The path of the training data: ``data`` (a text file, a directory holding the dataset's file, or
    a shard directory with meta.json), else ``$ZOO_DATA_DIR/<file>``, else the user cache, filled once
    from the copy inside the package (Tiny Shakespeare) or else downloaded (checked by size and sha256)."""
    if data:
        p = Path(data).expanduser()
        if p.is_dir():
            if (p / "meta.json").is_file():  # token shards (zoo.data.shards)
                return p
            info = DATASETS.get(name)
            if info and (p / info["file"]).is_file():
                return p / info["file"]
            raise ZooError(f"--data {data!r} is a directory without meta.json (token shards from `zoo data prepare`)"
                           + (f" or {info['file']}" if info else "") + ". Pass a text file or a shard directory.")
        if not p.is_file():
            raise ZooError(f"data file {data!r} does not exist. Check the path given to --data.")
        return p
    info = DATASETS.get(name)
    if info is None:
        raise ZooError(f"unknown dataset {name!r}; built in: {', '.join(DATASETS)}. Pass --data FILE for "
                       f"your own text file, or a directory made by `zoo data prepare`.")
    env = os.environ.get("ZOO_DATA_DIR")
    if env:
        p = Path(env).expanduser() / info["file"]
        if p.is_file():
            return p
        raise ZooError(f"ZOO_DATA_DIR={env!r} does not hold {info['file']}. Put the file there, or unset "
                       f"ZOO_DATA_DIR to use the zoo's own copy (in {cache_dir()}).")
    p = cache_dir() / info["file"]
    if not p.is_file():
        if not _extract_embedded(info, p):
            _download(info, p)
    return p


def _extract_embedded(info: dict, dest: Path) -> bool:
    """Write the copy shipped in the package to ``dest`` (checked by size and sha256); False if the
    package has none."""
    import gzip
    from importlib.resources import files
    name = info.get("embedded")
    src = files("zoo.data").joinpath(name) if name else None
    if src is None or not src.is_file():
        return False
    data = gzip.decompress(src.read_bytes())
    if len(data) != info["size"] or hashlib.sha256(data).hexdigest() != info["sha256"]:
        raise ZooError(f"the copy of {info['file']} inside the zoo package is damaged (size or sha256 differ); "
                       f"reinstall the zoo, or pass --data FILE.")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(dest, lambda f: f.write(data))
    except OSError as e:
        raise ZooError(f"cannot unpack {info['file']} into {str(dest.parent)!r} ({e.strerror}); set XDG_CACHE_HOME "
                       f"to a writable directory, or ZOO_DATA_DIR to one holding {info['file']}.") from None
    return True


def fingerprint(path) -> str:
    """The sha256 that identifies training data: of a text file, or of a shard directory's meta.json
    (which lists every shard with its token count)."""
    path = Path(path)
    return _sha256(path / "meta.json" if path.is_dir() else path)


def read_text(path: Path) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ZooError(f"data file {str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start}).") from None
    except OSError as e:
        raise ZooError(f"cannot read data file {str(path)!r}: {e.strerror}.") from None
    if not text.strip():
        raise ZooError(f"data file {str(path)!r} is empty. Give a file with text to train on.")
    return text


def split_text(text: str, val_fraction: float = 0.1):
    """nanoGPT's split: the first (1 - val_fraction) of the characters train, the rest validate."""
    n = int(len(text) * (1 - val_fraction))
    return text[:n], text[n:]


def token_dtype(vocab_size: int):
    import numpy as np
    return np.uint16 if vocab_size <= 2 ** 16 else np.uint32
