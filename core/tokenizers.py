"""Tokenizers: ``char`` (vocabulary from the corpus, saved with the run) and ``gpt2`` (tiktoken).

Every tokenizer has ``encode(str) -> list[int]``, ``decode(list[int]) -> str``, ``vocab_size``,
``eot`` (an end-of-text id or None) and ``config() -> dict``, a JSON-able description from which
``from_config`` rebuilds it (saved as ``tokenizer.json`` in a run directory and in checkpoints).
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import ZooError


class CharTokenizer:
    """One token per character; the vocabulary is the sorted set of the corpus's characters."""

    kind = "char"

    def __init__(self, chars: str):
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.vocab_size = len(chars)
        self.eot = None

    @classmethod
    def from_text(cls, text: str):
        return cls("".join(sorted(set(text))))

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            unseen = sorted({c for c in text if c not in self.stoi})
            raise ZooError(f"the char tokenizer has never seen {''.join(unseen)!r} (not in its training "
                           f"corpus); use only characters from: {self.chars!r}") from None

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)

    def config(self) -> dict:
        return {"type": "char", "chars": self.chars}


class TiktokenTokenizer:
    """A tiktoken encoding, e.g. GPT-2's BPE. tiktoken downloads its files on first use and caches
    them in ``TIKTOKEN_CACHE_DIR`` (set it to work offline with pre-fetched files)."""

    kind = "tiktoken"

    def __init__(self, encoding: str = "gpt2"):
        import tiktoken
        try:
            self.enc = tiktoken.get_encoding(encoding)
        except Exception as e:
            raise ZooError(f"cannot load the {encoding!r} tokenizer files ({type(e).__name__}: {e}). "
                           f"They are downloaded on first use; offline, point TIKTOKEN_CACHE_DIR at a "
                           f"directory holding tiktoken's cached files.") from None
        self.encoding = encoding
        self.vocab_size = self.enc.n_vocab
        self.eot = self.enc.eot_token

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def decode(self, ids) -> str:
        return self.enc.decode(list(ids))

    def config(self) -> dict:
        return {"type": "tiktoken", "encoding": self.encoding}


def from_config(cfg: dict):
    t = cfg.get("type")
    if t == "char":
        return CharTokenizer(cfg["chars"])
    if t == "tiktoken":
        return TiktokenTokenizer(cfg.get("encoding", "gpt2"))
    if t in EXTRA_TYPES:
        return EXTRA_TYPES[t](cfg)
    raise ZooError(f"unknown tokenizer type {t!r} in tokenizer config; known: char, tiktoken, "
                   f"{', '.join(EXTRA_TYPES)}")


EXTRA_TYPES = {}  # type name -> callable(cfg) for tokenizers defined elsewhere (e.g. trained BPE)


def save_config(tok, path):
    Path(path).write_text(json.dumps(tok.config()), encoding="utf-8")


def load_config(path):
    return from_config(json.loads(Path(path).read_text(encoding="utf-8")))
