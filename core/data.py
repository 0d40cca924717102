"""Training data: the built-in ``tinyshakespeare`` corpus, token shards, and the window sampler.

* Text corpora are read whole, split as nanoGPT does (first 90% of the characters train, the last
  10% validation) and encoded with the run's tokenizer.
* ``zoo data prepare`` turns text files, or a Hugging Face dataset streamed through the optional
  ``datasets`` package, into token shards: raw little-endian uint16 (vocabulary <= 65536) or uint32
  files ``train_000000.bin``, ``val_000000.bin``, ... beside a ``meta.json`` holding the dtype, the
  tokenizer config and each shard's token count. Training memory-maps them (never loads a shard whole).
* :class:`WindowSampler` draws windows of ``block_size + 1`` tokens without replacement within an
  epoch (a fresh permutation and a fresh start offset each epoch), gives each distributed rank
  disjoint windows, and its position (epoch, cursor) is saved in checkpoints so a resumed run sees
  the same batches as an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .errors import ZooError

TINYSHAKESPEARE = {
    "file": "tinyshakespeare.txt",
    "url": "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    "size": 1115394,
    "sha256": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
}
DATASETS = {"tinyshakespeare": TINYSHAKESPEARE}
META = "meta.json"


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
    a shard directory with meta.json), else ``$ZOO_DATA_DIR/<file>``, else the user cache, downloading
    a built-in dataset once (checked by size and sha256)."""
    if data:
        p = Path(data).expanduser()
        if p.is_dir():
            if (p / META).is_file():
                return p
            info = DATASETS.get(name)
            if info and (p / info["file"]).is_file():
                return p / info["file"]
            raise ZooError(f"--data {data!r} is a directory without {META} (token shards from `zoo data prepare`)"
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
                       f"ZOO_DATA_DIR to download it into {cache_dir()}.")
    p = cache_dir() / info["file"]
    if not p.is_file():
        _download(info, p)
    return p


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


# ---- token shards ------------------------------------------------------------------------------

class ShardWriter:
    """Writes a stream of token arrays into fixed-size shards of one split."""

    def __init__(self, out: Path, split: str, dtype, shard_tokens: int):
        self.out, self.split, self.dtype, self.shard_tokens = out, split, dtype, shard_tokens
        self.shards, self.f, self.n_in_shard = [], None, 0

    def write(self, ids):
        import numpy as np
        arr = np.asarray(ids, dtype=self.dtype)
        while arr.size:
            if self.f is None:
                name = f"{self.split}_{len(self.shards):06d}.bin"
                self.f = open(self.out / name, "wb")
                self.shards.append({"file": name, "tokens": 0})
                self.n_in_shard = 0
            take = min(arr.size, self.shard_tokens - self.n_in_shard)
            arr[:take].astype("<" + np.dtype(self.dtype).str[1:]).tofile(self.f)
            self.n_in_shard += take
            self.shards[-1]["tokens"] += take
            arr = arr[take:]
            if self.n_in_shard >= self.shard_tokens:
                self.f.close()
                self.f = None

    def close(self):
        if self.f is not None:
            self.f.close()
            self.f = None

    @property
    def tokens(self) -> int:
        return sum(s["tokens"] for s in self.shards)


def prepare_shards(out, tokenizer, texts_train=(), texts_val=(), documents=None, val_tokens: int = 0,
                   shard_tokens: int = 100_000_000, max_tokens: int | None = None) -> dict:
    """Encode texts into shards under ``out``. Either explicit train/val texts, or an iterable of
    ``documents`` whose first ``val_tokens`` tokens go to validation. Documents are separated by the
    tokenizer's end-of-text token when it has one. Returns the metadata written to meta.json."""
    import numpy as np
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ZooError(f"cannot create the shard directory {str(out)!r}: {e.strerror}.") from None
    if any(out.glob("*.bin")) or (out / META).exists():
        raise ZooError(f"{str(out)!r} already holds shards; choose an empty directory or delete them first.")
    dtype = token_dtype(tokenizer.vocab_size)
    w = {s: ShardWriter(out, s, dtype, shard_tokens) for s in ("train", "val")}
    limit = max_tokens or float("inf")
    eot = [tokenizer.eot] if tokenizer.eot is not None else []

    def total():
        return w["train"].tokens + w["val"].tokens

    try:
        if documents is None:
            for split, texts in (("val", texts_val), ("train", texts_train)):
                for t in texts:
                    ids = tokenizer.encode(t)
                    room = int(min(len(ids), limit - total()))
                    w[split].write(ids[:room])
        else:
            for doc in documents:
                if total() >= limit:
                    break
                ids = eot + tokenizer.encode(doc)
                room = int(min(len(ids), limit - total()))
                split = "val" if w["val"].tokens < val_tokens else "train"
                w[split].write(ids[:room])
    finally:
        for x in w.values():
            x.close()
    if w["train"].tokens == 0:
        raise ZooError(f"no training tokens were written to {str(out)!r}: the input is empty, or the token "
                       f"limit is smaller than the validation share.")
    meta = {"format": "zoo-shards-1", "dtype": np.dtype(dtype).name, "byteorder": "little",
            "tokenizer": tokenizer.config(), "vocab_size": tokenizer.vocab_size,
            "shards": {s: x.shards for s, x in w.items()}, "tokens": {s: x.tokens for s, x in w.items()}}
    tmp = out / (META + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1), encoding="utf-8")
    os.replace(tmp, out / META)
    return meta


def load_meta(directory) -> dict:
    p = Path(directory) / META
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ZooError(f"cannot read shard metadata {str(p)!r} ({type(e).__name__}); re-run `zoo data prepare`.") from None
    if meta.get("format") != "zoo-shards-1":
        raise ZooError(f"{str(p)!r} is not zoo shard metadata (format {meta.get('format')!r}).")
    return meta


def open_shards(directory, split: str):
    """The memory-mapped token arrays of one split (np.memmap, read-only)."""
    import numpy as np
    meta = load_meta(directory)
    arrays = []
    for s in meta["shards"].get(split, []):
        path = Path(directory) / s["file"]
        expected = s["tokens"] * np.dtype(meta["dtype"]).itemsize
        if not path.is_file() or path.stat().st_size != expected:
            raise ZooError(f"shard {str(path)!r} is missing or has the wrong size (expected {expected} bytes); "
                           f"re-run `zoo data prepare`.")
        if s["tokens"]:
            arrays.append(np.memmap(path, dtype=np.dtype(meta["dtype"]).newbyteorder("<"), mode="r"))
    return arrays


# ---- sampling ----------------------------------------------------------------------------------

class WindowSampler:
    """Windows of ``block_size + 1`` tokens from a list of token arrays, without replacement within
    an epoch.

    Each epoch chooses a random start offset in [0, block_size) for every array, cuts it into
    non-overlapping windows from there, and shuffles all windows with a generator seeded by
    (seed, epoch). A step takes the next ``global_batch`` windows; rank r of w takes its contiguous
    share of them, so ranks see disjoint data and the union over ranks is the same for any world
    size. ``state()``/``load_state()`` carry the position across a resume.
    """

    def __init__(self, arrays, block_size: int, seed: int = 0):
        self.arrays = [a for a in arrays if len(a) > block_size]
        self.block_size = block_size
        self.seed = seed
        if not self.arrays:
            longest = max((len(a) for a in arrays), default=0)
            raise ZooError(f"the data is shorter than the context: {longest} tokens, but a training window "
                           f"needs block_size + 1 = {block_size + 1}. Use more data or a smaller block_size "
                           f"(--set block_size=N).")
        self.epoch, self.cursor = 0, 0
        self._order = None

    def _build(self):
        import numpy as np
        rng = np.random.default_rng([self.seed, self.epoch])
        win, starts, which = self.block_size + 1, [], []
        for i, a in enumerate(self.arrays):
            off = int(rng.integers(0, self.block_size)) if len(a) - win >= self.block_size else 0
            s = np.arange(off, len(a) - win + 1, self.block_size, dtype=np.int64)  # window starts
            starts.append(s)
            which.append(np.full(len(s), i, dtype=np.int64))
        starts, which = np.concatenate(starts), np.concatenate(which)
        perm = rng.permutation(len(starts))
        self._order = (which[perm], starts[perm])

    def windows_per_epoch(self) -> int:
        if self._order is None:
            self._build()
        return len(self._order[0])

    def next_indices(self, n: int):
        """The next n (array, start) pairs, moving to a new epoch when this one runs out."""
        out = []
        while len(out) < n:
            if self._order is None:
                self._build()
            which, starts = self._order
            take = min(n - len(out), len(which) - self.cursor)
            out += list(zip(which[self.cursor:self.cursor + take].tolist(), starts[self.cursor:self.cursor + take].tolist()))
            self.cursor += take
            if self.cursor >= len(which):
                self.epoch, self.cursor, self._order = self.epoch + 1, 0, None
        return out

    def gather(self, idx):
        """(array, start) pairs -> x, y int64 tensors of shape (len(idx), block_size)."""
        import numpy as np
        import torch
        win = np.stack([np.asarray(self.arrays[a][s:s + self.block_size + 1], dtype=np.int64) for a, s in idx])
        t = torch.from_numpy(win)  # (B, T+1)
        return t[:, :-1], t[:, 1:]  # (B, T), (B, T)

    def state(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed}

    def load_state(self, st: dict):
        self.epoch, self.cursor, self.seed, self._order = int(st["epoch"]), int(st["cursor"]), int(st["seed"]), None


def fixed_batches(arrays, block_size: int, batch_size: int, n_batches: int, seed: int = 1234):
    """The same validation windows at every evaluation: ``n_batches`` batches of evenly spaced
    windows over the split (all of it when it is small enough), independent of the training RNG."""
    import numpy as np
    arrays = [a for a in arrays if len(a) > block_size]
    if not arrays:
        raise ZooError(f"the validation split is shorter than the context (block_size + 1 = {block_size + 1} "
                       f"tokens). Use more data or a smaller block_size.")
    cand = [(i, s) for i, a in enumerate(arrays) for s in range(0, len(a) - block_size - 1 + 1, block_size)]
    need = n_batches * batch_size
    if len(cand) > need:
        pick = np.linspace(0, len(cand) - 1, need).round().astype(int)
        cand = [cand[j] for j in pick]
    sampler = WindowSampler(arrays, block_size, seed)
    batches = [cand[j:j + batch_size] for j in range(0, len(cand), batch_size)]
    return [sampler.gather(b) for b in batches if b]


# ---- `zoo data` --------------------------------------------------------------------------------

def _hf_documents(name, config, split, field):
    try:
        import datasets
    except ImportError:
        raise ZooError("streaming a Hugging Face dataset needs the optional `datasets` package: "
                       "pip install datasets") from None
    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as e:
        raise ZooError(f"cannot open Hugging Face dataset {name!r} (config {config!r}, split {split!r}): "
                       f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    for row in ds:
        if field not in row:
            raise ZooError(f"dataset {name!r} has no field {field!r}; its fields: {', '.join(row)}. "
                           f"Pass --text-field.")
        yield row[field]


def cmd_prepare(args):
    from .tokenizers import get_tokenizer
    if bool(args.inputs) == bool(args.hf):
        raise ZooError("give text files to encode, or --hf DATASET (e.g. --hf HuggingFaceFW/fineweb-edu "
                       "--hf-config sample-10BT), not both and not neither.")
    if args.shard_tokens < 1:
        raise ZooError("--shard-tokens must be at least 1.")
    if args.hf:
        tok = get_tokenizer(args.tokenizer or "gpt2")
        docs = _hf_documents(args.hf, args.hf_config, args.hf_split, args.text_field)
        meta = prepare_shards(args.out, tok, documents=docs, val_tokens=args.val_tokens,
                              shard_tokens=args.shard_tokens, max_tokens=args.max_tokens)
    else:
        texts = [read_text(Path(p)) for p in args.inputs]
        tok = get_tokenizer(args.tokenizer or "gpt2", corpus="".join(texts))
        parts = [split_text(t, args.val_fraction) for t in texts]
        meta = prepare_shards(args.out, tok, texts_train=[a for a, _ in parts], texts_val=[b for _, b in parts],
                              shard_tokens=args.shard_tokens, max_tokens=args.max_tokens)
    n = {s: len(v) for s, v in meta["shards"].items()}
    print(f"wrote {meta['tokens']['train']:,} train tokens in {n['train']} shard(s) and {meta['tokens']['val']:,} "
          f"val tokens in {n['val']} shard(s) ({meta['dtype']}) to {args.out}")
    print(f"train on them with: zoo train MODEL --data {args.out}")


def add_cli(sub):
    s = sub.add_parser("data", help="prepare token shards for training")
    dsub = s.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    p = dsub.add_parser("prepare", help="encode text files or a streamed Hugging Face dataset into token shards")
    p.add_argument("inputs", nargs="*", help="text files (each split 90/10 into train/val)")
    p.add_argument("--out", required=True, help="directory for the shards and meta.json")
    p.add_argument("--tokenizer", help="char, gpt2 (default) or a trained BPE file from `zoo tokenizer train`")
    p.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard (default 1e8)")
    p.add_argument("--max-tokens", type=int, help="stop after this many tokens in all")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of each text file for validation")
    p.add_argument("--hf", metavar="DATASET", help="a Hugging Face dataset to stream, e.g. HuggingFaceFW/fineweb-edu")
    p.add_argument("--hf-config", help="dataset config, e.g. sample-10BT")
    p.add_argument("--hf-split", default="train")
    p.add_argument("--text-field", default="text")
    p.add_argument("--val-tokens", type=int, default=1_000_000,
                   help="with --hf: the first this many tokens go to validation")
    p.set_defaults(fn=cmd_prepare)
    s.set_defaults(fn=lambda a: (s.print_help(), 2)[1])
