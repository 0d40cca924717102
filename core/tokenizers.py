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
        except KeyError:
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
    if t == "bpe":
        from .bpe import BPETokenizer
        return BPETokenizer.from_config(cfg)
    if t == "hf":  # a Hugging Face tokenizer.json of an imported model (zoo import hf)
        from .hf import HFTokenizer
        return HFTokenizer(cfg)
    if t in EXTRA_TYPES:
        return EXTRA_TYPES[t](cfg)
    raise ZooError(f"unknown tokenizer type {t!r} in tokenizer config; known: char, tiktoken, bpe, "
                   f"{', '.join(EXTRA_TYPES)}")


EXTRA_TYPES = {}  # type name -> callable(cfg) for tokenizers defined elsewhere (e.g. trained BPE)


def save_config(tok, path):
    Path(path).write_text(json.dumps(tok.config()), encoding="utf-8")


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


def cmd_tokenizer_train(args):
    import time
    from .bpe import BPETokenizer, train_bpe
    from .data import find_dataset, read_text
    path = find_dataset("tinyshakespeare", args.data)
    text = read_text(path)
    if args.max_chars:
        text = text[:args.max_chars]
    t0 = time.time()
    tok = BPETokenizer(train_bpe(text, args.vocab_size))
    out = Path(args.out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_config(tok, out)
    except OSError as e:
        raise ZooError(f"cannot write {str(out)!r}: {e.strerror}.") from None
    n = len(tok.encode(text))
    print(f"trained a byte-level BPE of {tok.vocab_size} tokens on {len(text):,} characters of {path} in "
          f"{time.time() - t0:.1f}s: {n:,} tokens ({len(text.encode('utf-8')) / n:.2f} bytes/token)")
    print(f"saved to {out}; use it with: zoo train MODEL --tokenizer {out}")


def add_cli(sub):
    s = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer on your corpus")
    tsub = s.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND")
    p = tsub.add_parser("train", help="learn byte-level BPE merges from a text file")
    p.add_argument("--data", help="text file (default: the built-in tinyshakespeare)")
    p.add_argument("--vocab-size", type=int, default=1024)
    p.add_argument("--max-chars", type=int, help="train on only the first this many characters")
    p.add_argument("--out", required=True, help="where to save the tokenizer (JSON)")
    p.set_defaults(fn=cmd_tokenizer_train)
    s.set_defaults(fn=lambda a: (s.print_help(), 2)[1])
