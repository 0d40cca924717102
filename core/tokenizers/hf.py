"""The tokenizer of a model imported from Hugging Face: its ``tokenizer.json``, run by the optional
``tokenizers`` package."""
from __future__ import annotations

from ..errors import ZooError


class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` (fast tokenizer), run by the ``tokenizers`` package.

    The file's text is kept in the config itself, so a run directory and its checkpoint are
    self-contained. ``encode`` adds no special tokens (like tiktoken's ``encode_ordinary``); ``eot``
    is the model's end-of-text id from its config.
    """

    def __init__(self, cfg: dict):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ZooError("this model's tokenizer is a Hugging Face tokenizer.json, which needs the "
                           "`tokenizers` package: pip install 'zoo[hf]' (or pip install tokenizers).") from None
        self.cfg = {"type": "hf", "json": cfg["json"], "eot": cfg.get("eot"), "bos": cfg.get("bos")}
        try:
            self.tok = Tokenizer.from_str(cfg["json"])
        except Exception as e:
            raise ZooError(f"the Hugging Face tokenizer.json cannot be read ({type(e).__name__}: {e}).") from None
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        self.eot = cfg.get("eot")

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def config(self) -> dict:
        return dict(self.cfg)
