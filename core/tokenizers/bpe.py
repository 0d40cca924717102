"""Byte-level BPE trained on the user's corpus (Sennrich et al. 2016, arXiv:1508.07909; byte-level
as in GPT-2, Radford et al. 2019), saved as JSON and encoded through tiktoken.

Training splits the text with GPT-2's pre-tokenisation pattern, counts the distinct chunks, and
repeatedly merges the most frequent adjacent pair of tokens (ties broken by the smaller pair), with
incremental pair counts so each merge touches only the chunks that contain the pair. The merged
tokens' bytes, in merge order, are tiktoken's ``mergeable_ranks``; tiktoken then encodes exactly
as the learned merges do. One special token, ``<|endoftext|>``, takes the last id.
"""
from __future__ import annotations

import base64
import collections
import heapq

from ..errors import ZooError

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"


def train_bpe(text: str, vocab_size: int, pattern: str = GPT2_PATTERN) -> list[bytes]:
    """Learn merges until the vocabulary (256 bytes + merges + <|endoftext|>) has ``vocab_size``
    entries. Returns the merged tokens' bytes in merge order."""
    import regex
    n_merges = vocab_size - 257
    if n_merges < 0:
        raise ZooError(f"--vocab-size must be at least 257 (256 bytes and <|endoftext|>), not {vocab_size}.")
    if not text:
        raise ZooError("the corpus is empty; give text to train the tokenizer on.")
    chunk_counts = collections.Counter(regex.findall(pattern, text))
    words = [list(c.encode("utf-8")) for c in chunk_counts]  # token ids per distinct chunk
    freq = list(chunk_counts.values())
    vocab = {i: bytes([i]) for i in range(256)}
    pair_count = collections.Counter()
    where = collections.defaultdict(set)  # pair -> indices of words that contain it
    for wi, w in enumerate(words):
        for a, b in zip(w, w[1:]):
            pair_count[(a, b)] += freq[wi]
            where[(a, b)].add(wi)
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)
    merges = []
    while len(merges) < n_merges and heap:
        negc, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -negc or -negc <= 0:
            continue  # stale heap entry
        new = 256 + len(merges)
        vocab[new] = vocab[pair[0]] + vocab[pair[1]]
        merges.append(vocab[new])
        changed = set()
        for wi in list(where.pop(pair, ())):
            w, f = words[wi], freq[wi]
            for a, b in zip(w, w[1:]):  # remove this word's old pairs
                pair_count[(a, b)] -= f
                changed.add((a, b))
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == pair[0] and w[i + 1] == pair[1]:
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[wi] = out
            for a, b in zip(out, out[1:]):  # add its new pairs
                pair_count[(a, b)] += f
                where[(a, b)].add(wi)
                changed.add((a, b))
        pair_count.pop(pair, None)
        for p in changed:
            c = pair_count.get(p, 0)
            if c > 0:
                heapq.heappush(heap, (-c, p))
            else:
                pair_count.pop(p, None)
    return merges


class BPETokenizer:
    """A trained byte-level BPE, encoded and decoded by tiktoken."""

    def __init__(self, merges: list[bytes], pattern: str = GPT2_PATTERN, name: str = "zoo-bpe"):
        import tiktoken
        self.merges, self.pattern, self.name = merges, pattern, name
        ranks = {bytes([i]): i for i in range(256)}
        for i, m in enumerate(merges):
            ranks[m] = 256 + i
        self.eot = 256 + len(merges)
        self.enc = tiktoken.Encoding(name=name, pat_str=pattern, mergeable_ranks=ranks,
                                     special_tokens={EOT: self.eot})
        self.vocab_size = self.eot + 1

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def decode(self, ids) -> str:
        return self.enc.decode(list(ids))

    def config(self) -> dict:
        return {"type": "bpe", "name": self.name, "pattern": self.pattern,
                "merges": [base64.b64encode(m).decode("ascii") for m in self.merges]}

    @classmethod
    def from_config(cls, cfg: dict):
        try:
            merges = [base64.b64decode(m) for m in cfg["merges"]]
            return cls(merges, cfg.get("pattern", GPT2_PATTERN), cfg.get("name", "zoo-bpe"))
        except (KeyError, TypeError, ValueError) as e:
            raise ZooError(f"the BPE tokenizer config is malformed ({type(e).__name__}: {e}); "
                           f"train it again with `zoo tokenizer train`.") from None
