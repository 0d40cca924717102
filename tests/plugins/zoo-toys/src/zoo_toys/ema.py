"""A toy token mixer with a fixed-size recurrent state: a per-channel exponential moving average (the
EMA of Mega, Ma et al. 2022, arXiv:2209.10655, reduced to its simplest, damped, one-dimensional form).

    u_t = in_proj(x_t)                        (C,)
    h_t = a * h_{t-1} + (1 - a) * u_t         a = sigmoid(decay_logit), one learnable decay per channel
    y_t = out_proj(h_t)

Causal, position-free (it ignores rotary and bias encodings; absolute ones act on the embeddings).
Two forms, tested against each other: the parallel form (training, prefill) weighs every earlier
input by a^(t-s) at once, the recurrent form (decoding) updates the state one token at a time. The
generation cache is the state h, (B, C) numbers whatever the length: ``cache_size`` -> (0, C). It
rewinds by snapshots (a state cannot forget a token: ``truncate`` is refused by name). Across
training windows the state is carried (``forward_state``): segment recurrence.

Written against the documented plugin contract only (docs/plugins.md), as a third party would.
"""
import math

import torch
import torch.nn as nn

from zoo.components import init_residual_
from zoo.hookspecs import hookimpl

PARAMS = {"type": "object", "additionalProperties": False,
          "properties": {"init_decay": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1,
                                        "default": 0.9, "description": "initial decay a of every channel"}}}
TAGS = {"causal": True, "kv_cache": True, "posenc": ["absolute", "none"]}


class EMAState:
    """The generation cache: the state h (B, C). ``rewind = "snapshot"``: a copy of h goes back."""

    rewind = "snapshot"

    def __init__(self, batch, channels, device=None, dtype=None):
        self.h = torch.zeros(batch, channels, device=device, dtype=dtype or torch.get_default_dtype())  # (B, C)

    def reset(self):
        self.h.zero_()

    def snapshot(self):
        return self.h.clone()

    def restore(self, snap):
        self.h.copy_(snap)

    @property
    def nbytes(self) -> int:
        return self.h.numel() * self.h.element_size()


class EMAMixer(nn.Module):
    """Per-channel exponential moving average between two projections."""

    def __init__(self, dims, init_decay=0.9):
        super().__init__()
        C = dims.d_model
        self.in_proj = nn.Linear(C, C, bias=dims.bias)
        self.out_proj = init_residual_(nn.Linear(C, C, bias=dims.bias))
        logit = math.log(init_decay / (1 - init_decay))  # sigmoid(logit) = init_decay
        self.decay_logit = nn.Parameter(torch.full((C,), logit))  # (C,)

    @classmethod
    def cache_size(cls, dims, params):
        """Nothing per token; the state, d_model numbers, per sequence."""
        return 0, dims.d_model

    def flops_per_token(self, seq_len):
        """The two projections (the average itself is elementwise)."""
        return 2 * (self.in_proj.weight.numel() + self.out_proj.weight.numel())

    def new_cache(self, batch, max_len, device=None, dtype=None):
        return EMAState(batch, self.in_proj.out_features, device=device, dtype=dtype)

    def _scan(self, u, h0):
        """Parallel form. u: (B, T, C), h0: (B, C) or None -> all states (B, T, C)."""
        T = u.shape[1]
        log_a = nn.functional.logsigmoid(self.decay_logit.float())  # (C,)
        t = torch.arange(T, device=u.device)
        lag = (t[:, None] - t[None, :]).clamp(min=0)  # (T, T): t - s
        w = torch.exp(lag[None] * log_a[:, None, None]) * (t[:, None] >= t[None, :])  # (C, T, T): a^(t-s), s <= t
        h = torch.einsum("cts,bsc->btc", w, (1 - log_a.exp()) * u.float())  # (B, T, C)
        if h0 is not None:
            h = h + torch.exp((t[:, None] + 1) * log_a) * h0.float()[:, None]  # (B, T, C): a^(t+1) h0
        return h

    def _step(self, u, h):
        """Recurrent form, one token. u: (B, C), h: (B, C) -> (B, C)."""
        a = torch.sigmoid(self.decay_logit.float())  # (C,)
        return a * h.float() + (1 - a) * u.float()

    def forward_state(self, x, posenc, pos, state):  # x: (B, T, C), state: (B, C) or None
        h = self._scan(self.in_proj(x), state)  # (B, T, C)
        return self.out_proj(h.to(x.dtype)), h[:, -1]  # (B, T, C), (B, C)

    def forward(self, x, posenc, pos, cache=None):  # x: (B, T, C)
        if cache is None:
            return self.forward_state(x, posenc, pos, None)[0]
        u = self.in_proj(x)  # (B, T, C)
        if x.shape[1] == 1:  # decoding: the recurrent form
            h = self._step(u[:, 0], cache.h)[:, None]  # (B, 1, C)
        else:  # prefill: the parallel form from the cached state
            h = self._scan(u, cache.h)  # (B, T, C)
        cache.h.copy_(h[:, -1])
        return self.out_proj(h.to(x.dtype))  # (B, T, C)


@hookimpl
def register_attention(register):
    register("ema", EMAMixer, PARAMS, TAGS)


@hookimpl
def register_models(register):
    register("gpt2-ema", {"extends": "gpt2", "description": "GPT-2 with the toy EMA mixer in place of attention",
                          "attention": {"name": "ema"}})
