"""Grouped-query attention (Ainslie et al. 2023, "GQA: Training Generalized Multi-Query
Transformer Models from Multi-Head Checkpoints", arXiv:2305.13245).

One implementation, three names: ``n_kv_heads == n_heads`` is multi-head attention (``mha``,
Vaswani et al. 2017, arXiv:1706.03762) and ``n_kv_heads == 1`` is multi-query attention
(``mqa``, Shazeer 2019, arXiv:1911.02150). Optional QK-norm (Dehghani et al. 2023,
arXiv:2302.05442) normalises queries and keys per head before the dot product. Runs through
``torch.nn.functional.scaled_dot_product_attention`` with causal masking.

``window`` gives sliding-window attention (Beltagy et al. 2020, arXiv:2004.05150; Mistral 7B,
Jiang et al. 2023, arXiv:2310.06825): each token attends to itself and the ``window - 1`` tokens
before it, in training through the mask and in decoding through a ring-buffer cache of ``window``
slots. On CUDA the windowed mask goes through FlexAttention where torch has it.
"""
import torch
import torch.nn as nn
from einops import rearrange

from zoo.components import KVCache, causal_sdpa, default_kv_elems_per_token, init_residual_
from zoo.hookspecs import hookimpl

ALL_POSENC = ["absolute", "rotary", "bias", "none"]
TAGS = {"kv_cache": True, "causal": True, "posenc": ALL_POSENC, "sliding_window": "window"}


def _params(kv_default):
    props = {
        "n_kv_heads": {"type": "integer", "minimum": 1,
                       "description": "number of key/value heads; must divide n_heads"},
        "qk_norm": {"type": "boolean", "default": False,
                    "description": "RMS-normalise queries and keys per head"},
        "window": {"type": ["integer", "null"], "minimum": 1, "default": None,
                   "description": "sliding-window size: attend to the last `window` positions "
                                  "(this one included); null attends to the whole context"},
    }
    if kv_default is not None:
        props["n_kv_heads"]["default"] = kv_default
    return {"type": "object", "additionalProperties": False, "properties": props}


GQA_PARAMS = _params(None)  # n_kv_heads defaults to a divisor of n_heads near n_heads / 4
MHA_PARAMS = {"type": "object", "additionalProperties": False,
              "properties": {"qk_norm": GQA_PARAMS["properties"]["qk_norm"],
                             "window": GQA_PARAMS["properties"]["window"]}}
MQA_PARAMS = MHA_PARAMS


class GroupedQueryAttention(nn.Module):
    """Causal self-attention with ``n_kv_heads`` key/value heads shared by groups of query heads."""

    def __init__(self, dims, n_kv_heads=None, qk_norm=False, window=None):
        super().__init__()
        self.window = window
        self.n_heads = dims.n_heads
        self.n_kv_heads = self.kv_heads(dims, {"n_kv_heads": n_kv_heads})
        self.head_dim = dims.head_dim
        self.dropout = dims.dropout
        kv_dim = self.n_kv_heads * self.head_dim
        self.qkv = nn.Linear(dims.d_model, dims.d_model + 2 * kv_dim, bias=dims.bias)
        self.proj = init_residual_(nn.Linear(dims.d_model, dims.d_model, bias=dims.bias))
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else None

    @staticmethod
    def kv_heads(dims, params):
        n = params.get("n_kv_heads")
        if n is not None:
            return n
        # default: the largest divisor of n_heads not above n_heads / 4
        return max(d for d in range(1, max(1, dims.n_heads // 4) + 1) if dims.n_heads % d == 0)

    @classmethod
    def sizes(cls, dims, params):
        """``n_kv_heads`` (with the default applied) and ``head_dim`` (d_model / n_heads)."""
        return {"n_kv_heads": cls.kv_heads(dims, params), "head_dim": dims.head_dim}

    @classmethod
    def validate_spec(cls, dims, params):
        n = cls.kv_heads(dims, params)
        if dims.n_heads % n:
            ok = [d for d in range(1, dims.n_heads + 1) if dims.n_heads % d == 0]
            return [f"n_kv_heads={n} does not divide n_heads={dims.n_heads}; choose one of {ok}"]
        return []

    @classmethod
    def cache_size(cls, dims, params):
        """(per token, per sequence) numbers cached per layer: keys and values of the kv heads."""
        return default_kv_elems_per_token(dims, cls.kv_heads(dims, params)), 0

    def flops_per_token(self, seq_len):
        """Forward FLOPs per token: the projections, plus QK^T and AV over the keys a query sees
        (counted over the whole context, nanoGPT's convention, or the window)."""
        keys = min(seq_len, self.window) if self.window is not None else seq_len
        proj = sum(m.weight.numel() for m in (self.qkv, self.proj))
        return 2 * proj + 4 * keys * self.n_heads * self.head_dim

    def new_cache(self, batch, max_len, device=None, dtype=None):
        if self.window is not None:  # a ring buffer: a window's worth of slots is all decoding needs
            max_len = min(max_len, self.window)
        return KVCache(batch, self.n_kv_heads, max_len, self.head_dim, device=device, dtype=dtype)

    def forward(self, x, posenc, pos, cache=None):
        q, k, v = self.qkv(x).split([self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim,
                                     self.n_kv_heads * self.head_dim], dim=-1)
        q = rearrange(q, "b t (h d) -> b h t d", h=self.n_heads)  # (B, H, T, D)
        k = rearrange(k, "b t (h d) -> b h t d", h=self.n_kv_heads)  # (B, Hkv, T, D)
        v = rearrange(v, "b t (h d) -> b h t d", h=self.n_kv_heads)  # (B, Hkv, T, D)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = posenc.rotate(q, pos), posenc.rotate(k, pos)
        k_pos = pos
        if cache is not None and self.window is not None and x.shape[1] > 1:
            # several new tokens and a ring buffer: writing them first could overwrite keys the
            # earlier of them still see, so attend over the old slots plus the new keys
            old_k, old_v, old_pos = (t.clone() for t in cache.read())  # (B, Hkv, S, D) x2, (S,)
            cache.update(k, v, pos)
            k = torch.cat([old_k, k], dim=2)  # (B, Hkv, S + T, D)
            v = torch.cat([old_v, v], dim=2)  # (B, Hkv, S + T, D)
            k_pos = torch.cat([old_pos, pos])  # (S + T,)
        elif cache is not None:
            k, v, k_pos = cache.update(k, v, pos)  # (B, Hkv, S, D), (S,)
        y = causal_sdpa(q, k, v, pos, k_pos, bias=posenc.bias(pos, k_pos), window=self.window,
                        dropout_p=self.dropout if self.training else 0.0,
                        full_causal=cache is None)  # (B, H, T, D)
        return self.proj(rearrange(y, "b h t d -> b t (h d)"))  # (B, T, C)


class MultiHeadAttention(GroupedQueryAttention):
    """Multi-head attention: grouped attention with one kv head per query head."""

    def __init__(self, dims, qk_norm=False, window=None):
        super().__init__(dims, n_kv_heads=dims.n_heads, qk_norm=qk_norm, window=window)

    @staticmethod
    def kv_heads(dims, params):
        return dims.n_heads


class MultiQueryAttention(GroupedQueryAttention):
    """Multi-query attention: grouped attention with a single kv head."""

    def __init__(self, dims, qk_norm=False, window=None):
        super().__init__(dims, n_kv_heads=1, qk_norm=qk_norm, window=window)

    @staticmethod
    def kv_heads(dims, params):
        return 1


@hookimpl
def register_attention(register):
    register("gqa", GroupedQueryAttention, GQA_PARAMS, TAGS)
    register("mha", MultiHeadAttention, MHA_PARAMS, TAGS)
    register("mqa", MultiQueryAttention, MQA_PARAMS, TAGS)
