"""The linear-attention family: three token mixers whose cache is a fixed-size state ``S`` updated as
``S_t = decay_t * S_(t-1) + k_t^T v_t`` and read as ``o_t = q_t S_t``, each with its own decay.

``linear`` -- Katharopoulos et al. 2020, "Transformers are RNNs: Fast Autoregressive Transformers
with Linear Attention", arXiv:2006.16236. Feature map phi(x) = elu(x) + 1, no decay, and the
normaliser z::

    S_t = S_(t-1) + phi(k_t)^T v_t      z_t = z_(t-1) + phi(k_t)
    y_t = phi(q_t) S_t / (phi(q_t) . z_t + eps)

``retnet`` -- Sun et al. 2023, "Retentive Network: A Successor to Transformer for Large Language
Models", arXiv:2307.08621. Multi-scale retention: per-head decay gamma_h = 1 - 2^(-5-h), queries
and keys rotated xPos-style (Theta_n = e^(i n theta), theta_j = 10000^(-j / (D/2 - 1)) on adjacent
pairs of features, as the authors' torchscale code has it), keys scaled by D^-1/2, GroupNorm over
heads, a swish output gate and an output projection; the value width is ``v_factor`` x d_model (2 in
the paper). The paper's parallel form is ``(Q K^T * D) V`` with D_nm = gamma^(n-m) for n >= m and q,
k rotated by their absolute positions. Here the rotation is part of the recurrence instead: the
decay is the complex number gamma e^(-i theta), applied in real arithmetic to pairs of the key
dimension of S, ``S_t = gamma R(-theta) S_(t-1) + k_t^T v_t``, ``o_t = q_t S_t``. That is the same
function of the inputs (tests/test_linear_attention.py proves it against the parallel form), but
it depends on relative distances only, so a state carried across training windows, whose
positions restart at 0, stays exact. The paper's extra score normalisations (D / sqrt(row sum),
R / max(|row sum|, 1)) scale each row and are cancelled by the GroupNorm (up to its eps); they are
left out.

``gla`` -- Yang et al. 2024, "Gated Linear Attention Transformers with Hardware-Efficient
Training", arXiv:2312.06635. Per-key data-dependent gates alpha_t = sigmoid(x_t W1 W2 + b)^(1/16)
with a low-rank W1 W2 (rank 16), ``S_t = diag(alpha_t) S_(t-1) + k_t^T v_t``, ``o_t = q_t S_t``
(q scaled by d_k^-1/2), then a per-head RMSNorm gated by swish(x W_r) and an output projection, as
flash-linear-attention's GLA layer computes it; keys are d_model/2 wide and values d_model wide.

Two forms each, tested against each other and against plain loops of the papers' equations:
the chunked form (training, prefill; T > 1) is exact attention-like work within chunks of ``chunk``
tokens plus the state between chunks, any length (the last chunk is shorter); the recurrent form
(decoding, T == 1) updates the state one token at a time. The mixing runs in float32 whatever the
input's dtype; GLA's gates are handled as cumulative sums of log alpha within a chunk, and every
exponent the chunked form takes is <= 0, so no gate strength overflows.

The generation cache is the state (``cache_size`` -> (0, numbers per sequence)), rewound by
snapshots. ``forward_state`` carries it across training windows (segment recurrence). The mixers
use no positional encoding of the model's (absolute ones act on the embeddings; rotary and bias
ones are ignored, tag ``posenc_ignores``).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.components import StateCache, init_residual_
from zoo.hookspecs import hookimpl

POSENC_TAGS = {"posenc": ["absolute", "none"], "posenc_ignores": ["rotary", "bias"]}


def _chunk_param(default):
    return {"type": "integer", "minimum": 1, "default": default,
            "description": "tokens per chunk of the chunked (training, prefill) form; any sequence length works"}


# ---- the mixing, as functions of per-head features (float32) ------------------------------------
# q, k: (B, H, T, Dk); v: (B, H, T, Dv); S: (B, H, Dk, Dv)

def linear_chunked(q, k, v, S, z, chunk, eps):
    """Katharopoulos et al.'s causal linear attention, chunked. q, k are the features phi(q), phi(k);
    z: (B, H, Dk). Returns (o (B, H, T, Dv), S, z)."""
    outs = []
    for s in range(0, q.shape[2], chunk):
        qc, kc, vc = q[:, :, s:s + chunk], k[:, :, s:s + chunk], v[:, :, s:s + chunk]  # (B, H, L, D*)
        A = (qc @ kc.transpose(-1, -2)).tril()  # (B, H, L, L): phi(q_i) . phi(k_j), j <= i
        num = A @ vc + qc @ S  # (B, H, L, Dv)
        den = A.sum(-1) + (qc * z[:, :, None]).sum(-1)  # (B, H, L)
        outs.append(num / (den[..., None] + eps))
        S = S + kc.transpose(-1, -2) @ vc  # (B, H, Dk, Dv)
        z = z + kc.sum(2)  # (B, H, Dk)
    return torch.cat(outs, 2), S, z


def linear_step(q, k, v, S, z, eps):
    """One token: q, k (B, H, Dk), v (B, H, Dv). Returns (o (B, H, Dv), S, z)."""
    S = S + k[..., :, None] * v[..., None, :]  # (B, H, Dk, Dv)
    z = z + k  # (B, H, Dk)
    o = (q[..., None, :] @ S)[..., 0, :] / ((q * z).sum(-1, keepdim=True) + eps)  # (B, H, Dv)
    return o, S, z


def rotate_pairs(t, n, theta):
    """Rotate adjacent pairs (t[..., 2j], t[..., 2j+1]) of t (..., T, D) by the angle n * theta_j:
    n (T,) positions (any real number), theta (D/2,)."""
    ang = n.to(torch.float32)[:, None] * theta[None, :]  # (T, D/2)
    cos, sin = ang.cos(), ang.sin()
    x0, x1 = t[..., 0::2], t[..., 1::2]  # (..., T, D/2)
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], -1).flatten(-2)  # (..., T, D)


def _rotate_rows(S, n, theta):
    """R(n theta) applied to the key dimension of states S (B, H, Dk, Dv)."""
    return rotate_pairs(S.transpose(-1, -2), torch.tensor([float(n)], device=S.device), theta).transpose(-1, -2)


def retention_chunked(q, k, v, log_gamma, theta, S, chunk):
    """Retention with the rotation in the recurrence, chunked. log_gamma: (H,), theta: (Dk/2,).
    Within a chunk, q and k are rotated by their offsets from the chunk's start, which makes the
    intra-chunk part the paper's parallel form; the state enters rotated by its age."""
    outs = []
    lg = log_gamma[:, None, None]  # (H, 1, 1)
    for s in range(0, q.shape[2], chunk):
        qc, kc, vc = q[:, :, s:s + chunk], k[:, :, s:s + chunk], v[:, :, s:s + chunk]  # (B, H, L, D*)
        L = qc.shape[2]
        i = torch.arange(L, device=q.device, dtype=torch.float32)  # (L,)
        qr, kr = rotate_pairs(qc, i, theta), rotate_pairs(kc, i, theta)  # (B, H, L, Dk)
        lag = i[:, None] - i[None, :]  # (L, L): i - j
        D = torch.exp(lag.clamp(min=0) * lg) * (lag >= 0)  # (H, L, L): gamma^(i-j), j <= i
        inner = ((qr @ kr.transpose(-1, -2)) * D) @ vc  # (B, H, L, Dv)
        cross = torch.exp((i[:, None] + 1) * lg) * (rotate_pairs(qc, i + 1, theta) @ S)  # (B, H, L, Dv)
        outs.append(inner + cross)
        kw = kr * torch.exp((L - 1 - i)[:, None] * lg)  # (B, H, L, Dk): gamma^(L-1-j) R(j) k_j
        S = torch.exp(L * lg)[None] * _rotate_rows(S, -L, theta) \
            + _rotate_rows(kw.transpose(-1, -2) @ vc, -(L - 1), theta)  # (B, H, Dk, Dv)
    return torch.cat(outs, 2), S


def retention_step(q, k, v, log_gamma, theta, S):
    """One token: S = gamma R(-theta) S + k^T v, o = q S. q, k (B, H, Dk), v (B, H, Dv)."""
    S = torch.exp(log_gamma)[:, None, None] * _rotate_rows(S, -1, theta) + k[..., :, None] * v[..., None, :]
    return (q[..., None, :] @ S)[..., 0, :], S  # (B, H, Dv), (B, H, Dk, Dv)


def gla_chunked(q, k, v, log_alpha, S, chunk):
    """Gated linear attention, chunked. log_alpha: (B, H, T, Dk), <= 0. Within a chunk the gates
    are cumulated in log space, b_i = sum_(s <= i) log alpha_s, and every factor is exp of a
    difference b_i - b_j with j <= i (or of b_i itself), so <= 1: stable for any gate strength."""
    outs = []
    for s in range(0, q.shape[2], chunk):
        qc, kc, vc = q[:, :, s:s + chunk], k[:, :, s:s + chunk], v[:, :, s:s + chunk]  # (B, H, L, D*)
        b = log_alpha[:, :, s:s + chunk].cumsum(2)  # (B, H, L, Dk)
        L = qc.shape[2]
        causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()  # (L, L): j <= i
        diff = (b[:, :, :, None] - b[:, :, None]).masked_fill(~causal[:, :, None], float("-inf"))  # (B, H, L, L, Dk)
        A = (qc[:, :, :, None] * kc[:, :, None] * diff.exp()).sum(-1)  # (B, H, L, L)
        outs.append(A @ vc + (qc * b.exp()) @ S)  # (B, H, L, Dv)
        last = b[:, :, -1:]  # (B, H, 1, Dk)
        S = last.transpose(-1, -2).exp() * S + (kc * (last - b).exp()).transpose(-1, -2) @ vc  # (B, H, Dk, Dv)
    return torch.cat(outs, 2), S


def gla_step(q, k, v, log_alpha, S):
    """One token: S = diag(alpha) S + k^T v, o = q S. q, k, log_alpha (B, H, Dk), v (B, H, Dv)."""
    S = log_alpha.exp()[..., None] * S + k[..., :, None] * v[..., None, :]  # (B, H, Dk, Dv)
    return (q[..., None, :] @ S)[..., 0, :], S  # (B, H, Dv), (B, H, Dk, Dv)


# ---- the cache and the shared module plumbing -----------------------------------------------------

class _StateMixer(nn.Module):
    """What the three share: heads, the cache, forward/forward_state. A subclass says its state's
    shapes (``state_shapes``, and the class method ``_shapes(dims, params)``) and mixes (``_mix(x, state) -> (y, state)``, chunked for T > 1, one
    recurrent step for T == 1)."""

    state_shapes: list  # the state's tensors' shapes without the batch, set by __init__

    @classmethod
    def cache_size(cls, dims, params):
        """Nothing per token; the state's numbers per sequence."""
        return 0, sum(math.prod(s) for s in cls._shapes(dims, params))

    def _zeros(self, batch, device, dtype=torch.float32):
        return tuple(torch.zeros(batch, *s, device=device, dtype=dtype) for s in self.state_shapes)

    def new_cache(self, batch, max_len, device=None, dtype=None):
        """The state, (B, ...) tensors of fixed size: decoding runs past any length."""
        return StateCache(self._zeros(batch, device, dtype or torch.get_default_dtype()))

    def forward_state(self, x, posenc, pos, state):  # x: (B, T, C); state: tuple of tensors or None
        """(y (B, T, C), new state). ``state`` None starts the stream (a zero state). ``pos`` and
        ``posenc`` are not used: the mixing depends on relative distances only."""
        if state is None:
            state = self._zeros(x.shape[0], x.device)
        state = tuple(s.float() for s in state)
        return self._mix(x, state)

    def forward(self, x, posenc, pos, cache=None):  # x: (B, T, C)
        if cache is None:
            return self.forward_state(x, posenc, pos, None)[0]
        y, state = self.forward_state(x, posenc, pos, cache.state)
        for t, s in zip(cache.state, state):
            t.copy_(s)
        return y  # (B, T, C)

    @staticmethod
    def _fp32(x):
        """The mixing runs in float32, also under autocast."""
        return torch.autocast(x.device.type, enabled=False)

    def _heads(self, t, n):  # (B, T, n * D) -> (B, n, T, D), float32
        # contiguous: aot_autograd's backward of the chunked form fails on the transposed view (torch 2.13)
        return t.reshape(*t.shape[:2], n, -1).transpose(1, 2).float().contiguous()


# ---- linear (Katharopoulos et al. 2020) -----------------------------------------------------------

LINEAR_PARAMS = {"type": "object", "additionalProperties": False,
                 "properties": {"chunk": _chunk_param(64),
                                "eps": {"type": "number", "exclusiveMinimum": 0, "default": 1e-6,
                                        "description": "added to the normaliser phi(q) . z"},
                                "carry": {"type": "boolean", "default": False,
                                          "description": "carry the state across contiguous training windows "
                                                         "(off: independent windows, as in the paper; the state "
                                                         "has no decay, so over a long stream it averages "
                                                         "everything seen, see docs/mixers.md)"}}}
LINEAR_TAGS = {"causal": True, "kv_cache": True, **POSENC_TAGS, "example_params": {"chunk": 5, "carry": True}}


class LinearAttention(_StateMixer):
    """Causal linear attention with phi = elu + 1 and its normaliser, multi-head (head_dim = C / H)."""

    def __init__(self, dims, chunk=64, eps=1e-6, carry=False):
        super().__init__()
        self.n_heads, self.head_dim, self.chunk, self.eps = dims.n_heads, dims.head_dim, chunk, eps
        self.qkv = nn.Linear(dims.d_model, 3 * dims.d_model, bias=dims.bias)
        self.proj = init_residual_(nn.Linear(dims.d_model, dims.d_model, bias=dims.bias))
        self.drop = nn.Dropout(dims.dropout)
        self.state_shapes = self._shapes(dims, {})

    @classmethod
    def carries(cls, dims, params):
        """Whether a layer carries its state across training windows: the ``carry`` param
        (zoo.plugin.protocols.ChoosesCarry)."""
        return bool(params.get("carry", False))

    @classmethod
    def _shapes(cls, dims, params):
        H, D = dims.n_heads, dims.head_dim
        return [(H, D, D), (H, D)]  # S, z


    def flops_per_token(self, seq_len):
        """The projections, plus per head: phi(q) phi(k)^T and A V within a chunk, q S and k^T v."""
        L, H, D = min(self.chunk, seq_len), self.n_heads, self.head_dim
        return 2 * (self.qkv.weight.numel() + self.proj.weight.numel()) + H * (4 * L * D + 4 * D * D)

    def _mix(self, x, state):
        B, T, C = x.shape
        q, k, v = (self._heads(t, self.n_heads) for t in self.qkv(x).split(C, -1))  # (B, H, T, D) each
        q, k = F.elu(q) + 1, F.elu(k) + 1  # phi
        S, z = state
        with self._fp32(x):
            if T == 1:
                o, S, z = linear_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], S, z, self.eps)
                o = o[:, :, None]  # (B, H, 1, D)
            else:
                o, S, z = linear_chunked(q, k, v, S, z, self.chunk, self.eps)  # (B, H, T, D)
        y = o.transpose(1, 2).reshape(B, T, C).to(x.dtype)  # (B, T, C)
        return self.drop(self.proj(y)), (S, z)


# ---- retnet (Sun et al. 2023) ---------------------------------------------------------------------

RETNET_PARAMS = {"type": "object", "additionalProperties": False,
                 "properties": {"chunk": _chunk_param(64),
                                "v_factor": {"type": "number", "exclusiveMinimum": 0, "default": 2,
                                             "description": "value (and gate) width as a multiple of d_model; "
                                                            "the paper's 2 keeps a block at 12 d^2 with a 2d FFN"},
                                "theta_base": {"type": "number", "exclusiveMinimum": 0, "default": 10000.0,
                                               "description": "base of the rotation angles"},
                                "norm_eps": {"type": "number", "exclusiveMinimum": 0, "default": 1e-5,
                                             "description": "eps of the GroupNorm over heads"}}}
RETNET_TAGS = {"causal": True, "kv_cache": True, **POSENC_TAGS, "example_params": {"chunk": 5}}


class Retention(_StateMixer):
    """Multi-scale retention: decay gamma_h per head, the rotation in the recurrence, GroupNorm over
    heads, swish gate, output projection."""

    def __init__(self, dims, chunk=64, v_factor=2, theta_base=10000.0, norm_eps=1e-5):
        super().__init__()
        sz = self.sizes(dims, {"v_factor": v_factor})
        C, H = dims.d_model, dims.n_heads
        self.n_heads, self.head_dim, self.v_head_dim, self.chunk = H, dims.head_dim, sz["v_head_dim"], chunk
        V = H * self.v_head_dim
        self.q_proj = nn.Linear(C, C, bias=dims.bias)
        self.k_proj = nn.Linear(C, C, bias=dims.bias)
        self.v_proj = nn.Linear(C, V, bias=dims.bias)
        self.g_proj = nn.Linear(C, V, bias=dims.bias)
        self.out_proj = init_residual_(nn.Linear(V, C, bias=dims.bias))
        self.group_norm = nn.GroupNorm(H, V, eps=norm_eps, affine=True)
        self.drop = nn.Dropout(dims.dropout)
        self.theta_base = theta_base
        self.state_shapes = self._shapes(dims, {"v_factor": v_factor})

    def angles(self, device=None):
        """theta_j = base^(-j / (D/2 - 1)), j < D/2 (torchscale's linspace): (D/2,), float32."""
        return self.theta_base ** -torch.linspace(0, 1, self.head_dim // 2, device=device, dtype=torch.float32)

    def log_gamma(self, device=None):
        """log gamma_h, gamma_h = 1 - 2^(-5-h): (H,), float32."""
        return torch.log1p(-2.0 ** (-5 - torch.arange(self.n_heads, device=device, dtype=torch.float32)))

    @classmethod
    def sizes(cls, dims, params):
        """``v_head_dim``: each head's value width, v_factor x d_model / n_heads."""
        return {"head_dim": dims.head_dim, "v_head_dim": int(params.get("v_factor", 2) * dims.d_model) // dims.n_heads}

    @classmethod
    def validate_spec(cls, dims, params):
        out = []
        if dims.head_dim % 2:
            out.append(f"retention rotates pairs of query/key features, and head_dim = d_model / n_heads = "
                       f"{dims.head_dim} is odd; choose d_model and n_heads with an even quotient")
        if cls.sizes(dims, params)["v_head_dim"] < 1:
            out.append(f"v_factor={params.get('v_factor')} leaves no value features per head; raise it")
        return out

    @classmethod
    def _shapes(cls, dims, params):
        return [(dims.n_heads, dims.head_dim, cls.sizes(dims, params)["v_head_dim"])]


    def flops_per_token(self, seq_len):
        """The projections, plus per head: Q K^T and its product with V within a chunk, q S and k^T v."""
        L, H, D, Dv = min(self.chunk, seq_len), self.n_heads, self.head_dim, self.v_head_dim
        proj = sum(m.weight.numel() for m in (self.q_proj, self.k_proj, self.v_proj, self.g_proj, self.out_proj))
        return 2 * proj + H * (2 * L * D + 2 * L * Dv + 4 * D * Dv)

    def _mix(self, x, state):
        B, T, C = x.shape
        H = self.n_heads
        q = self._heads(self.q_proj(x), H)  # (B, H, T, D)
        k = self._heads(self.k_proj(x), H) * self.head_dim ** -0.5  # (B, H, T, D)
        v = self._heads(self.v_proj(x), H)  # (B, H, T, Dv)
        (S,) = state
        lg, theta = self.log_gamma(x.device), self.angles(x.device)
        with self._fp32(x):
            if T == 1:
                o, S = retention_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], lg, theta, S)
                o = o[:, :, None]  # (B, H, 1, Dv)
            else:
                o, S = retention_chunked(q, k, v, lg, theta, S, self.chunk)  # (B, H, T, Dv)
            o = o.transpose(1, 2).reshape(B * T, H * self.v_head_dim)  # (B*T, H*Dv)
            gn = self.group_norm
            o = F.group_norm(o, H, gn.weight.float(), None if gn.bias is None else gn.bias.float(), gn.eps)
        y = F.silu(self.g_proj(x)) * o.reshape(B, T, -1).to(x.dtype)  # (B, T, H*Dv)
        return self.drop(self.out_proj(y)), (S,)


# ---- gla (Yang et al. 2024) -----------------------------------------------------------------------

GLA_PARAMS = {"type": "object", "additionalProperties": False,
              "properties": {"chunk": _chunk_param(16),
                             "expand_k": {"type": "number", "exclusiveMinimum": 0, "default": 0.5,
                                          "description": "key (and query) width as a multiple of d_model"},
                             "expand_v": {"type": "number", "exclusiveMinimum": 0, "default": 1.0,
                                          "description": "value (and output gate) width as a multiple of d_model"},
                             "gate_rank": {"type": "integer", "minimum": 1, "default": 16,
                                           "description": "rank of the low-rank gate projection W1 W2"},
                             "gate_normalizer": {"type": "number", "exclusiveMinimum": 0, "default": 16,
                                                 "description": "tau: alpha = sigmoid(x W1 W2 + b)^(1/tau)"},
                             "norm_eps": {"type": "number", "exclusiveMinimum": 0, "default": 1e-5,
                                          "description": "eps of the per-head RMSNorm"}}}
GLA_TAGS = {"causal": True, "kv_cache": True, **POSENC_TAGS, "example_params": {"chunk": 5}}


class GatedLinearAttention(_StateMixer):
    """GLA: per-key data-dependent decay, a swish-gated per-head RMSNorm, output projection."""

    def __init__(self, dims, chunk=16, expand_k=0.5, expand_v=1.0, gate_rank=16, gate_normalizer=16,
                 norm_eps=1e-5):
        super().__init__()
        sz = self.sizes(dims, {"expand_k": expand_k, "expand_v": expand_v})
        C, H = dims.d_model, dims.n_heads
        self.n_heads, self.chunk, self.gate_normalizer = H, chunk, gate_normalizer
        self.k_head_dim, self.v_head_dim = sz["k_head_dim"], sz["v_head_dim"]
        K, V = H * self.k_head_dim, H * self.v_head_dim
        self.q_proj = nn.Linear(C, K, bias=dims.bias)
        self.k_proj = nn.Linear(C, K, bias=dims.bias)
        self.v_proj = nn.Linear(C, V, bias=dims.bias)
        self.g_proj = nn.Linear(C, V, bias=dims.bias)  # the output gate, swish(x W_r)
        self.gk_down = nn.Linear(C, gate_rank, bias=False)  # W1
        self.gk_up = nn.Linear(gate_rank, K, bias=True)  # W2 and b: the paper's gate bias
        self.o_norm = nn.RMSNorm(self.v_head_dim, eps=norm_eps)  # per head, shared across heads (fla)
        self.o_proj = init_residual_(nn.Linear(V, C, bias=dims.bias))
        self.drop = nn.Dropout(dims.dropout)
        self.state_shapes = self._shapes(dims, {"expand_k": expand_k, "expand_v": expand_v})

    @classmethod
    def sizes(cls, dims, params):
        """``k_head_dim``, ``v_head_dim``: each head's key and value width (expand_k, expand_v x d_model / n_heads)."""
        return {"k_head_dim": int(params.get("expand_k", 0.5) * dims.d_model) // dims.n_heads,
                "v_head_dim": int(params.get("expand_v", 1.0) * dims.d_model) // dims.n_heads}

    @classmethod
    def validate_spec(cls, dims, params):
        sz = cls.sizes(dims, params)
        return [f"{name}={params.get(name)} leaves no {what} features per head at d_model={dims.d_model}, "
                f"n_heads={dims.n_heads}; raise it"
                for name, what, n in (("expand_k", "key", sz["k_head_dim"]), ("expand_v", "value", sz["v_head_dim"]))
                if n < 1]

    @classmethod
    def _shapes(cls, dims, params):
        sz = cls.sizes(dims, params)
        return [(dims.n_heads, sz["k_head_dim"], sz["v_head_dim"])]


    def flops_per_token(self, seq_len):
        """The projections, plus per head within a chunk the gated scores (3 per key feature and
        pair) and A V, and q S and k^T v."""
        L, H, K, V = min(self.chunk, seq_len), self.n_heads, self.k_head_dim, self.v_head_dim
        proj = sum(m.weight.numel() for m in (self.q_proj, self.k_proj, self.v_proj, self.g_proj, self.gk_down,
                                               self.gk_up, self.o_proj))
        return 2 * proj + H * (2 * L * K + 2 * L * V + 4 * K * V)

    def _mix(self, x, state):
        B, T, C = x.shape
        H = self.n_heads
        q = self._heads(self.q_proj(x), H) * self.k_head_dim ** -0.5  # (B, H, T, K)
        k = self._heads(self.k_proj(x), H)  # (B, H, T, K)
        v = self._heads(self.v_proj(x), H)  # (B, H, T, V)
        log_alpha = self._heads(self.gk_up(self.gk_down(x)), H)  # (B, H, T, K): gate logits
        (S,) = state
        with self._fp32(x):
            log_alpha = F.logsigmoid(log_alpha) / self.gate_normalizer  # (B, H, T, K): log sigmoid(.)^(1/tau)
            if T == 1:
                o, S = gla_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], log_alpha[:, :, 0], S)
                o = o[:, :, None]  # (B, H, 1, V)
            else:
                o, S = gla_chunked(q, k, v, log_alpha, S, self.chunk)  # (B, H, T, V)
            o = F.rms_norm(o, (self.v_head_dim,), self.o_norm.weight.float(), self.o_norm.eps)  # (B, H, T, V)
        o = o.transpose(1, 2).reshape(B, T, -1).to(x.dtype)  # (B, T, H*V)
        return self.drop(self.o_proj(F.silu(self.g_proj(x)) * o)), (S,)


@hookimpl
def register_attention(register):
    register("linear", LinearAttention, LINEAR_PARAMS, LINEAR_TAGS)
    register("retnet", Retention, RETNET_PARAMS, RETNET_TAGS)
    register("gla", GatedLinearAttention, GLA_PARAMS, GLA_TAGS)
