"""How the next token is drawn from the logits.

Order (as in Hugging Face transformers): repetition penalty (Keskar et al. 2019, CTRL,
arXiv:1909.05858), temperature, top-k, top-p (nucleus, Holtzman et al. 2020, arXiv:1904.09751),
min-p (Nguyen et al. 2024, arXiv:2407.01082); the draw itself is :class:`zoo.generate.Generation`'s.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ZooError


@dataclass
class SamplingParams:
    """How the next token is drawn from the logits. ``top_k=1`` is greedy decoding."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0

    def validate(self):
        t = self.temperature
        if not (isinstance(t, (int, float)) and t > 0 and t != float("inf")):
            raise ZooError(f"temperature must be a positive number, got {t!r}; "
                           f"for (near-)greedy decoding use --top-k 1 or a small temperature such as 0.01.")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise ZooError(f"top-k must be a whole number of at least 1, got {self.top_k!r}.")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ZooError(f"top-p must be in (0, 1], got {self.top_p!r}; 1 keeps every token, 0.9 is usual.")
        if self.min_p is not None and not 0 <= self.min_p < 1:
            raise ZooError(f"min-p must be in [0, 1), got {self.min_p!r}; 0.05 to 0.1 is usual.")
        if not self.repetition_penalty > 0:
            raise ZooError(f"repetition penalty must be positive, got {self.repetition_penalty!r}; "
                           f"1 is none, 1.1 to 1.3 discourages repeats.")
        return self


def next_token_probs(logits, params: SamplingParams, seen=None):
    """logits (B, V) -> probabilities (B, V) after penalty, temperature and truncation.

    ``seen`` (B, V) bool marks tokens already in each sequence, for the repetition penalty.
    """
    import torch
    logits = logits.float()  # (B, V)
    if seen is not None and params.repetition_penalty != 1.0:
        p = params.repetition_penalty
        logits = torch.where(seen, torch.where(logits > 0, logits / p, logits * p), logits)  # (B, V)
    logits = logits / params.temperature  # (B, V)
    # an extreme temperature or penalty overflows float32: +inf is the largest finite logit (so the softmax
    # keeps the tied top tokens, the limit of sampling as the temperature goes to 0), nan a token never drawn
    logits = torch.nan_to_num(logits, nan=float("-inf"), posinf=torch.finfo(logits.dtype).max)  # (B, V)
    if params.top_k is not None and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))  # (B, V)
    if params.top_p is not None and params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        sorted_probs = sorted_logits.softmax(-1)  # (B, V)
        drop = sorted_probs.cumsum(-1) - sorted_probs > params.top_p  # (B, V); the first token always stays
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))  # (B, V)
    probs = logits.softmax(-1)  # (B, V)
    if not bool(torch.isfinite(probs).all()):  # every logit of a row was nan or -inf: the model's output is broken
        raise ZooError("the model's output is not a number (nan or -inf for every token), so there is nothing to "
                       "sample from; its weights may be broken (a diverged run). Sample from an earlier checkpoint.")
    if params.min_p:
        keep = probs >= params.min_p * probs.max(-1, keepdim=True).values  # (B, V)
        probs = probs * keep
        probs = probs / probs.sum(-1, keepdim=True)  # (B, V)
    return probs
