"""Tokenizers: ``char`` (vocabulary from the corpus, saved with the run), ``tiktoken`` (GPT-2's BPE),
``bpe`` (byte-level BPE trained on your corpus) and ``hf`` (an imported model's tokenizer.json).

Every tokenizer has ``encode(str) -> list[int]``, ``decode(list[int]) -> str``, ``vocab_size``,
``eot`` (an end-of-text id or None) and ``config() -> dict``, a JSON-able description from which
:func:`from_config` rebuilds it (saved as ``tokenizer.json`` in a run directory and in checkpoints).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import ZooError
from .bpe import BPETokenizer
from .char import CharTokenizer
from .hf import HFTokenizer
from .tiktoken import TiktokenTokenizer

__all__ = ["CharTokenizer", "TiktokenTokenizer", "BPETokenizer", "HFTokenizer", "from_config", "load_config",
           "get_tokenizer"]


def from_config(cfg: dict):
    t = cfg.get("type") if isinstance(cfg, dict) else None
    try:
        if t == "char":
            if not isinstance(cfg["chars"], str) or not cfg["chars"]:
                raise TypeError("chars must be a non-empty string")
            return CharTokenizer(cfg["chars"])
        if t == "tiktoken":
            return TiktokenTokenizer(cfg.get("encoding", "gpt2"))
        if t == "bpe":
            return BPETokenizer.from_config(cfg)
        if t == "hf":  # a Hugging Face tokenizer.json of an imported model (zoo import hf)
            return HFTokenizer(cfg)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ZooError(f"the {t} tokenizer config is malformed ({type(e).__name__}: {e}).") from None
    raise ZooError(f"unknown tokenizer type {t!r} in tokenizer config; known: char, tiktoken, bpe, hf.")


def load_config(path):
    return from_config(json.loads(Path(path).read_text(encoding="utf-8")))


def get_tokenizer(name: str, corpus: str | None = None):
    """A tokenizer by name: ``char`` (its vocabulary from ``corpus``), ``gpt2`` or another tiktoken
    encoding, or the path of a tokenizer file (``zoo tokenizer train``, or a run's tokenizer.json)."""
    if name == "char":
        if corpus is None:
            raise ZooError("the char tokenizer needs the corpus to build its vocabulary from.")
        return CharTokenizer.from_text(corpus)
    p = Path(name).expanduser()
    if p.suffix == ".json" or p.is_file():
        if not p.is_file():
            raise ZooError(f"tokenizer file {name!r} does not exist; train one with `zoo tokenizer train`.")
        try:
            return load_config(p)
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ZooError(f"tokenizer file {name!r} is not a zoo tokenizer config ({type(e).__name__}).") from None
    import tiktoken
    if name not in tiktoken.list_encoding_names():
        raise ZooError(f"unknown tokenizer {name!r}: use char, gpt2 (or another tiktoken encoding: "
                       f"{', '.join(tiktoken.list_encoding_names())}), or a file from `zoo tokenizer train`.")
    return TiktokenTokenizer(name)
