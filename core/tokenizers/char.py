"""The character tokenizer: one token per character of the corpus (nanoGPT's shakespeare_char)."""
from __future__ import annotations

from ..errors import ZooError


class CharTokenizer:
    """One token per character; the vocabulary is the sorted set of the corpus's characters."""

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
            unseen = "".join(sorted({c for c in text if c not in self.stoi}))
            known = repr(self.chars) if len(self.chars) <= 80 else f"{self.chars[:80]!r} and {len(self.chars) - 80} more"
            raise ZooError(f"the char tokenizer has never seen {unseen[:40]!r}{' and more' if len(unseen) > 40 else ''} "
                           f"(not in its training corpus); it knows {len(self.chars)} characters: {known}") from None

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)

    def config(self) -> dict:
        return {"type": "char", "chars": self.chars}
