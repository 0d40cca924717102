"""Token shards (``zoo data prepare``): raw little-endian uint16 (vocabulary <= 65536) or uint32 files
``train_000000.bin``, ``val_000000.bin``, ... beside a ``meta.json`` holding the dtype, the tokenizer
config and each shard's token count. Training memory-maps them (never loads a shard whole). The
documents come from text files or a Hugging Face dataset streamed through the optional ``datasets``.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import ZooError
from ..io.atomic import write_json
from .corpus import token_dtype

META = "meta.json"


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
    write_json(out / META, meta, indent=1)
    return meta


DTYPES = ("uint16", "uint32")


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def meta_problem(meta) -> str | None:
    """What is wrong with the structure of a shard ``meta.json`` (None if nothing)."""
    if not isinstance(meta, dict):
        return "it is not a JSON object"
    if meta.get("format") != "zoo-shards-1":
        return f"its format is {meta.get('format')!r}, not 'zoo-shards-1'"
    if meta.get("dtype") not in DTYPES:
        return f"its dtype is {meta.get('dtype')!r}, not one of {', '.join(DTYPES)}"
    tok = meta.get("tokenizer")
    if not isinstance(tok, dict) or not isinstance(tok.get("type"), str):
        return "it has no tokenizer config (\"tokenizer\": {\"type\": ...})"
    if "vocab_size" in meta and not (_is_count(meta["vocab_size"]) and meta["vocab_size"] > 0):
        return f"its vocab_size is {meta['vocab_size']!r}, not a positive whole number"
    shards = meta.get("shards")
    if not isinstance(shards, dict) or not isinstance(shards.get("train"), list):
        return "it has no \"shards\" with a \"train\" list"
    for split, entries in shards.items():
        if not isinstance(entries, list):
            return f"shards.{split} is not a list"
        for i, e in enumerate(entries):
            if not (isinstance(e, dict) and isinstance(e.get("file"), str) and e["file"] and _is_count(e.get("tokens"))):
                return f"shards.{split}[{i}] is not {{\"file\": NAME, \"tokens\": COUNT}}"
    return None


def load_meta(directory) -> dict:
    p = Path(directory) / META
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: bad JSON or not UTF-8
        raise ZooError(f"cannot read shard metadata {str(p)!r} ({type(e).__name__}); re-run `zoo data prepare`.") from None
    problem = meta_problem(meta)
    if problem:
        raise ZooError(f"{str(p)!r} is not zoo shard metadata: {problem}. Re-run `zoo data prepare`.")
    return meta


def open_shards(directory, split: str, vocab_size: int | None = None):
    """The memory-mapped token arrays of one split (np.memmap, read-only). Every id must be below
    ``vocab_size`` (default: the metadata's): each shard's largest id is computed once on the memmap (one
    pass over the file), so ids a model has no embedding for are an error here, not an IndexError in
    training."""
    import numpy as np
    meta = load_meta(directory)
    limit = vocab_size or meta.get("vocab_size")
    dtype = np.dtype(meta["dtype"]).newbyteorder("<")
    arrays = []
    for s in meta["shards"].get(split, []):
        path = Path(directory) / s["file"]
        expected = s["tokens"] * dtype.itemsize
        if not path.is_file() or path.stat().st_size != expected:
            raise ZooError(f"shard {str(path)!r} is missing or has the wrong size (expected {expected} bytes); "
                           f"re-run `zoo data prepare`.")
        if s["tokens"]:
            arr = np.memmap(path, dtype=dtype, mode="r")
            top = int(arr.max())
            if limit is not None and top >= limit:
                raise ZooError(f"shard {str(path)!r} holds token id {top}, but the vocabulary has {limit} tokens "
                               f"(ids 0 to {limit - 1}): the shards were not made with this tokenizer. Prepare them "
                               f"again with `zoo data prepare --tokenizer ...`.")
            arrays.append(arr)
    return arrays


def hf_documents(name, config, split, field):
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
