"""Multi-head latent attention, MLA (DeepSeek-AI 2024, "DeepSeek-V2", arXiv:2405.04434, section 2.1).

Keys and values are compressed jointly into a latent ``c_kv`` of ``kv_lora_rank`` numbers per token
(RMS-normalised) and expanded per head by one up-projection into a no-rope key part of
``qk_nope_head_dim`` and a value of ``v_head_dim``. Queries may be compressed the same way
(``q_lora_rank``). Position enters through a decoupled part: each head's query has
``qk_rope_head_dim`` extra features, and one key of that size, shared by all heads, is computed
from the token directly; the encoding rotates both (any encoding works: with a non-rotary one the
shared part is simply unrotated, ALiBi's bias and absolute embeddings act as usual).

The cache holds only the latent and the rotated shared key: (kv_lora_rank + qk_rope_head_dim)
numbers per token per layer, against 2 x n_heads x head_dim for multi-head attention.

Absorbed decoding (section 2.1.3 of the paper): the key up-projection W_UK is folded into the query,
q_nope W_UK -> a query in latent space, and the value up-projection W_UV is applied after attention,
so decoding attends over the cached latents directly (one shared "kv head" of size
kv_lora_rank + rope for keys and kv_lora_rank for values) without expanding keys and values per
head. Training and prefill without a cache use the materialised path; both give the same result,
also with a transform on ``wkv_b``: the absorbed path reads its weight through ``linear_weight``.
"""
import math

import torch
import torch.nn as nn
from einops import rearrange

from zoo.components import KVCache, causal_sdpa, init_residual_, linear_weight
from zoo.hookspecs import hookimpl


def _size(desc, default):
    return {"type": ["integer", "null"], "minimum": 1, "default": None,
            "description": f"{desc}; null: {default}"}


PARAMS = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "kv_lora_rank": _size("size of the cached key/value latent c_kv", "4 x head_dim (DeepSeek-V2's ratio)"),
        "q_lora_rank": _size("rank of the query compression", "no query compression (as DeepSeek-V2-Lite)"),
        "qk_nope_head_dim": _size("per-head query/key features without position", "head_dim"),
        "qk_rope_head_dim": {"type": ["integer", "null"], "minimum": 0, "default": None,
                             "description": "per-head query features and shared key features that the "
                                            "posenc rotates (even); 0: none; null: head_dim / 2"},
        "v_head_dim": _size("per-head value features", "head_dim"),
        "softmax_scale": {"type": ["number", "null"], "exclusiveMinimum": 0, "default": None,
                          "description": "scale of the attention logits; null: 1/sqrt(qk_nope_head_dim + "
                                         "qk_rope_head_dim). DeepSeek-V2 with YaRN rope scaling multiplies it "
                                         "by mscale^2 (set by zoo import hf)"},
        "decode": {"enum": ["absorbed", "materialized"], "default": "absorbed",
                   "description": "how attention with a cache runs: over the latent with the up-projections "
                                  "absorbed, or with keys and values expanded per head"},
    },
}
TAGS = {"kv_cache": True, "causal": True, "posenc": ["absolute", "rotary", "bias", "none"]}


def mla_sizes(dims, params):
    """(kv_lora_rank, q_lora_rank or None, nope, rope, v_head_dim) with the defaults applied."""
    hd = dims.head_dim
    rope = params.get("qk_rope_head_dim")
    rope = max(2, hd // 2 // 2 * 2) if rope is None else rope
    return (params.get("kv_lora_rank") or 4 * hd, params.get("q_lora_rank"),
            params.get("qk_nope_head_dim") or hd, rope, params.get("v_head_dim") or hd)


class LatentCache(KVCache):
    """MLA's cache: one buffer of [latent | rotated shared rope key] per token, (B, 1, S, r + rope);
    the values are the latent itself, a view of the same buffer (nothing is stored twice). It rewinds
as :class:`KVCache` does (``truncate(n)``, the same ring-buffer limits)."""

    def __init__(self, batch, max_len, rank, rope, device=None, dtype=None):
        nn.Module.__init__(self)
        dtype = dtype or torch.get_default_dtype()
        self.register_buffer("k", torch.zeros(batch, 1, max_len, rank + rope, device=device, dtype=dtype), persistent=False)
        self.register_buffer("slot_pos", torch.full((max_len,), -1, device=device, dtype=torch.long), persistent=False)
        self.max_len, self.rank = max_len, rank

    @property
    def v(self):  # (B, 1, S, r): the latent
        return self.k[..., :self.rank]

    def update(self, latent, k_rope, pos):
        """Write latent (B, 1, T, r) and rotated k_rope (B, 1, T, rope) at positions pos (T,)."""
        entry = torch.cat([latent, k_rope], dim=-1)  # (B, 1, T, r + rope)
        slots = pos % self.max_len
        if entry.shape[2] > self.max_len:
            entry, pos, slots = entry[:, :, -self.max_len:], pos[-self.max_len:], slots[-self.max_len:]
        self.k.index_copy_(2, slots, entry.to(self.k.dtype))
        self.slot_pos.index_copy_(0, slots, pos)
        return self.k, self.v, self.slot_pos

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size()


class MultiHeadLatentAttention(nn.Module):
    def __init__(self, dims, kv_lora_rank=None, q_lora_rank=None, qk_nope_head_dim=None,
                 qk_rope_head_dim=None, v_head_dim=None, decode="absorbed", softmax_scale=None):
        super().__init__()
        params = dict(kv_lora_rank=kv_lora_rank, q_lora_rank=q_lora_rank, qk_nope_head_dim=qk_nope_head_dim,
                      qk_rope_head_dim=qk_rope_head_dim, v_head_dim=v_head_dim)
        self.rank, self.q_rank, self.nope, self.rope, self.v_dim = mla_sizes(dims, params)
        self.n_heads, self.decode, self.dropout = dims.n_heads, decode, dims.dropout
        C, H, qk = dims.d_model, dims.n_heads, self.nope + self.rope
        if self.q_rank:
            self.wq_a = nn.Linear(C, self.q_rank, bias=dims.bias)  # down-projection of queries
            self.q_norm = nn.RMSNorm(self.q_rank, eps=1e-6)
            self.wq_b = nn.Linear(self.q_rank, H * qk, bias=False)
        else:
            self.wq = nn.Linear(C, H * qk, bias=dims.bias)
        self.wkv_a = nn.Linear(C, self.rank + self.rope, bias=dims.bias)  # latent and shared rope key
        self.kv_norm = nn.RMSNorm(self.rank, eps=1e-6)
        self.wkv_b = nn.Linear(self.rank, H * (self.nope + self.v_dim), bias=False)  # W_UK and W_UV
        self.proj = init_residual_(nn.Linear(H * self.v_dim, C, bias=dims.bias))
        self.scale = softmax_scale or 1.0 / math.sqrt(qk)

    @classmethod
    def sizes(cls, dims, params):
        """The sizes :func:`mla_sizes` resolves, by the names of the params (q_lora_rank None: none)."""
        return dict(zip(("kv_lora_rank", "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"),
                        mla_sizes(dims, params)))

    @classmethod
    def validate_spec(cls, dims, params):
        rope = mla_sizes(dims, params)[3]
        if rope % 2:
            return [f"qk_rope_head_dim={rope} is odd; rotary encodings rotate pairs of features, "
                    f"choose an even size"]
        return []

    @classmethod
    def cache_size(cls, dims, params):
        """(per token, per sequence) numbers cached per layer: the latent and the shared rope key."""
        rank, _, _, rope, _ = mla_sizes(dims, params)
        return rank + rope, 0

    def flops_per_token(self, seq_len):
        """Forward FLOPs per token as trained (materialized keys and values): every projection,
        plus QK^T over nope+rope features and AV over v features for each head, over the context."""
        proj = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        return 2 * proj + 2 * seq_len * self.n_heads * (self.nope + self.rope + self.v_dim)

    def new_cache(self, batch, max_len, device=None, dtype=None):
        return LatentCache(batch, max_len, self.rank, self.rope, device=device, dtype=dtype)

    def forward(self, x, posenc, pos, cache=None):  # x: (B, T, C)
        q = self.wq_b(self.q_norm(self.wq_a(x))) if self.q_rank else self.wq(x)  # (B, T, H*(nope+rope))
        q = rearrange(q, "b t (h d) -> b h t d", h=self.n_heads)  # (B, H, T, nope+rope)
        q_nope, q_rope = q.split([self.nope, self.rope], dim=-1)  # (B, H, T, nope), (B, H, T, rope)
        q_rope = posenc.rotate(q_rope, pos)  # (B, H, T, rope)
        c, k_rope = self.wkv_a(x).split([self.rank, self.rope], dim=-1)  # (B, T, r), (B, T, rope)
        c = self.kv_norm(c)[:, None]  # (B, 1, T, r)
        k_rope = posenc.rotate(k_rope[:, None], pos)  # (B, 1, T, rope), shared by the heads
        k_pos = pos
        if cache is not None:
            kv, c, k_pos = cache.update(c, k_rope, pos)  # (B, 1, S, r+rope), (B, 1, S, r), (S,)
            k_rope = kv[..., self.rank:]  # (B, 1, S, rope)
        bias = posenc.bias(pos, k_pos)  # (H, T, S) or None
        if cache is not None and self.decode == "absorbed":
            y = self._absorbed(q_nope, q_rope, kv, c, pos, k_pos, bias)  # (B, H, T, v)
        else:
            y = self._materialized(q_nope, q_rope, c, k_rope, pos, k_pos, bias, full_causal=cache is None)
        return self.proj(rearrange(y, "b h t d -> b t (h d)"))  # (B, T, C)

    def _materialized(self, q_nope, q_rope, c, k_rope, pos, k_pos, bias, full_causal):
        """Keys and values expanded per head from the latent, then ordinary attention."""
        B, H, S = c.shape[0], self.n_heads, c.shape[2]
        kv = rearrange(self.wkv_b(c[:, 0]), "b s (h d) -> b h s d", h=H)  # (B, H, S, nope+v)
        k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)  # (B, H, S, nope), (B, H, S, v)
        k = torch.cat([k_nope, k_rope.expand(B, H, S, self.rope)], dim=-1)  # (B, H, S, nope+rope)
        q = torch.cat([q_nope, q_rope], dim=-1)  # (B, H, T, nope+rope); SDPA's scale is 1/sqrt(qk)
        if self.scale != 1.0 / math.sqrt(q.shape[-1]):  # a softmax_scale of its own
            q = q * (self.scale * math.sqrt(q.shape[-1]))
        return causal_sdpa(q, k, v, pos, k_pos, bias=bias, dropout_p=self.dropout if self.training else 0.0,
                           full_causal=full_causal)  # (B, H, T, v)

    def _absorbed(self, q_nope, q_rope, kv, c, pos, k_pos, bias):
        """Attention over the latents: W_UK folded into the query, W_UV applied to the output. The
        weight is what wkv_b applies (``linear_weight``), so a transform's change to the layer (LoRA)
        reaches this path as it reaches the materialised one."""
        w = linear_weight(self.wkv_b).to(q_nope.dtype).view(self.n_heads, self.nope + self.v_dim, self.rank)  # (H, nope+v, r)
        w_uk, w_uv = w[:, :self.nope], w[:, self.nope:]  # (H, nope, r), (H, v, r)
        q_lat = torch.einsum("bhtn,hnr->bhtr", q_nope, w_uk)  # (B, H, T, r)
        q = torch.cat([q_lat, q_rope], dim=-1)  # (B, H, T, r+rope)
        q = q * (self.scale * math.sqrt(q.shape[-1]))  # SDPA divides by sqrt(r+rope); the model's scale is 1/sqrt(qk)
        o = causal_sdpa(q, kv.to(q.dtype), c.to(q.dtype), pos, k_pos, bias=bias,
                        dropout_p=self.dropout if self.training else 0.0)  # (B, H, T, r), one shared kv head
        return torch.einsum("bhtr,hvr->bhtv", o, w_uv)  # (B, H, T, v)


@hookimpl
def register_attention(register):
    register("mla", MultiHeadLatentAttention, PARAMS, TAGS)
