"""A tiktoken encoding (GPT-2's BPE by default), downloaded on first use and cached by tiktoken."""
from __future__ import annotations

from ..errors import ZooError


class TiktokenTokenizer:
    """A tiktoken encoding, e.g. GPT-2's BPE. tiktoken downloads its files on first use and caches
    them in ``TIKTOKEN_CACHE_DIR`` (set it to work offline with pre-fetched files)."""

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
