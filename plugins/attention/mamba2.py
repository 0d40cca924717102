"""Mamba-2: the SSD token mixer (Dao and Gu 2024, "Transformers are SSMs: Generalized Models and
Efficient Algorithms Through Structured State Space Duality", arXiv:2405.21060).

Laid out as Hugging Face transformers' ``Mamba2Mixer`` (and state-spaces/mamba's ``Mamba2``), so the
weights map one to one:

    z, xBC, dt = in_proj(u)                       (d_inner, d_inner + 2 G N, H) features per token
    xBC = silu(causal depthwise conv1d(xBC))      kernel d_conv, over time
    x, B, C = xBC                                 x: (H, P) per token, B and C: (G, N), head h uses group h // (H / G)
    dt = clamp(softplus(dt + dt_bias), time_step_limit)                   (H,)
    A = -exp(A_log)                                                       one scalar per head
    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T     the state, (H, P, N)
    y_t = h_t C_t + D x_t
    out = out_proj(RMSNorm_per_group(y * silu(z)) * weight)

with d_inner = expand x d_model, H = d_inner / head_dim heads of P = head_dim channels, N = d_state,
G = n_groups. The gated norm is Mamba-2's: the gate is applied *before* normalising
(``norm_before_gate=False``), and each of the G groups of d_inner / G channels is normalised on its own.

Two forms of the same map, tested against each other and against a plain loop of the recurrence:

* the chunked SSD algorithm (section 6 of the paper), for training and prefill: the sequence is cut
  into chunks of ``chunk_size`` (any length: the last chunk is padded internally with dt = 0, which
  neither decays nor feeds the state); inside a chunk the output is the quadratic, attention-like
  form ``(C B^T o L) (x dt)`` with L the causal matrix of cumulative decays; across chunks the
  states are passed on by the recurrence, one step per chunk;
* the recurrent step, for decoding one token (T == 1) from the cache: ``conv_state`` (the last
  d_conv - 1 inputs of the convolution) and ``ssm_state`` h.

Positions are not used (no positional encoding: order comes from the recurrence; rotary and bias
encodings are ignored, tag ``posenc_ignores``). The cache is a fixed-size state per sequence,
``cache_size`` -> (0, conv_dim x (d_conv - 1) + H P N), rewound by snapshots. Across training
windows the state (conv_state, ssm_state) is carried (``forward_state``): segment recurrence.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.components import StateCache, init_residual_
from zoo.hookspecs import hookimpl

PARAMS = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "expand": {"type": "integer", "minimum": 1, "default": 2,
                   "description": "d_inner = expand x d_model (Mamba2Config.expand)"},
        "head_dim": {"type": "integer", "minimum": 1, "default": 64,
                     "description": "channels P per SSM head; heads H = d_inner / head_dim (Mamba2Config.head_dim)"},
        "d_state": {"type": "integer", "minimum": 1, "default": 128,
                    "description": "state size N per head and channel (Mamba2Config.state_size)"},
        "n_groups": {"type": "integer", "minimum": 1, "default": 1,
                     "description": "groups G of B and C shared by H / G heads each, and of the gated norm "
                                    "(Mamba2Config.n_groups, 8 there; 1 here, as state-spaces/mamba's default, "
                                    "so that small models with few heads build)"},
        "d_conv": {"type": "integer", "minimum": 1, "default": 4,
                   "description": "kernel of the causal depthwise convolution (Mamba2Config.conv_kernel)"},
        "conv_bias": {"type": "boolean", "default": True,
                      "description": "a bias in the convolution (Mamba2Config.use_conv_bias); in_proj and "
                                     "out_proj follow the model's bias"},
        "chunk_size": {"type": "integer", "minimum": 1, "default": 256,
                       "description": "chunk length of the SSD algorithm (Mamba2Config.chunk_size); any sequence "
                                      "length works, the last chunk is padded internally"},
        "time_step_limit": {"type": "array", "minItems": 2, "maxItems": 2, "default": [0.0, None],
                            "prefixItems": [{"type": "number", "minimum": 0}, {"type": ["number", "null"], "minimum": 0}],
                            "description": "[min, max] clamp of dt after the softplus (Mamba2Config.time_step_limit); "
                                           "null: no upper bound"},
        "time_step_min": {"type": "number", "exclusiveMinimum": 0, "default": 0.001,
                          "description": "smallest initial dt (dt_bias init)"},
        "time_step_max": {"type": "number", "exclusiveMinimum": 0, "default": 0.1,
                          "description": "largest initial dt (dt_bias init)"},
        "time_step_floor": {"type": "number", "minimum": 0, "default": 1e-4,
                            "description": "floor of the initial dt"},
        "norm_eps": {"type": "number", "exclusiveMinimum": 0, "default": 1e-5,
                     "description": "epsilon of the gated RMSNorm (Mamba2Config.layer_norm_epsilon)"},
    },
}
TAGS = {"causal": True, "kv_cache": True, "posenc": ["none"], "posenc_ignores": ["rotary", "bias"],
        # the kit's tiny model: several heads per group, two groups, and chunks that do not divide its
        # sequences, so padding and the passing of states between chunks are both exercised
        "example_params": {"head_dim": 8, "d_state": 8, "n_groups": 2, "chunk_size": 5}}

_DEFAULTS = {k: v["default"] for k, v in PARAMS["properties"].items()}


def mamba2_sizes(dims, params) -> dict:
    """The sizes derived from the params: d_inner, n_heads (of the SSM, not the model's), head_dim,
    d_state, n_groups, conv_dim (channels of the convolution: x, B and C), d_in_proj."""
    p = {**_DEFAULTS, **(params or {})}
    d_inner = p["expand"] * dims.d_model
    conv_dim = d_inner + 2 * p["n_groups"] * p["d_state"]
    n_heads = d_inner // p["head_dim"]
    return {"d_inner": d_inner, "n_heads": n_heads, "head_dim": p["head_dim"], "d_state": p["d_state"],
            "n_groups": p["n_groups"], "conv_dim": conv_dim, "d_conv": p["d_conv"],
            "d_in_proj": d_inner + conv_dim + n_heads}


def segsum(a):
    """Stable segment sums of log-decays a (..., L) -> (..., L, L): out[i, j] = a[j+1] + ... + a[i]
    for j <= i (0 on the diagonal), -inf above it, as a masked cumulative sum (no differences of
    large cumulative sums)."""
    L = a.shape[-1]
    x = a[..., None, :].expand(*a.shape[:-1], L, L)  # (..., i, j): a[j]
    strict = torch.ones(L, L, dtype=torch.bool, device=a.device).tril(-1)  # j < i
    x = x.transpose(-1, -2).masked_fill(~strict, 0)  # (..., i, j): a[i] where j < i
    s = torch.cumsum(x, dim=-2)  # (..., i, j): sum over i' <= i, j < i' of a[i']
    return s.masked_fill(~torch.ones(L, L, dtype=torch.bool, device=a.device).tril(), float("-inf"))


def ssd_chunked(x, dt, A, B, C, chunk_size, h0=None):
    """The chunked SSD algorithm. x: (b, T, H, P), dt: (b, T, H) (after softplus and clamp),
    A: (H,) (negative), B, C: (b, T, H, N) (groups already expanded to heads), h0: (b, H, P, N) or
    None -> y (b, T, H, P) without the D skip, final state (b, H, P, N). float32 throughout."""
    b, T, H, P = x.shape
    N = B.shape[-1]
    L = min(chunk_size, T)
    pad = (-T) % L
    if pad:  # dt = 0 on the padding: no decay (exp(0) = 1) and no input, the final state is unchanged
        x, dt, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
    c = x.shape[1] // L
    xdt = (x * dt[..., None]).reshape(b, c, L, H, P)  # (b, c, L, H, P): discretised input
    a = (dt * A).reshape(b, c, L, H).permute(0, 1, 3, 2)  # (b, c, H, L): log-decay of each step
    B, C = B.reshape(b, c, L, H, N), C.reshape(b, c, L, H, N)
    a_cum = torch.cumsum(a, dim=-1)  # (b, c, H, L)

    # 1. inside each chunk: the quadratic (attention-like) form, masked by the decays between positions
    decay = torch.exp(segsum(a))  # (b, c, H, L, L): prod of the decays after s up to l, 0 for s > l
    scores = torch.einsum("bclhn,bcshn->bchls", C, B) * decay  # (b, c, H, L, L)
    y = torch.einsum("bchls,bcshp->bclhp", scores, xdt)  # (b, c, L, H, P)

    # 2. the state each chunk adds by its end, from a zero start
    to_end = torch.exp(a_cum[..., -1:] - a_cum)  # (b, c, H, L): decay from after position l to the chunk's end
    added = torch.einsum("bclhn,bchl,bclhp->bchpn", B, to_end, xdt)  # (b, c, H, P, N)

    # 3. across chunks: the recurrence h_c = exp(sum of the chunk's a) h_{c-1} + added_c, one step per chunk
    h = x.new_zeros(b, H, P, N) if h0 is None else h0.float()  # (b, H, P, N)
    starts = []
    chunk_decay = torch.exp(a_cum[..., -1])  # (b, c, H)
    for i in range(c):
        starts.append(h)
        h = chunk_decay[:, i, :, None, None] * h + added[:, i]  # (b, H, P, N)
    starts = torch.stack(starts, 1)  # (b, c, H, P, N): the state before each chunk

    # 4. what the state before the chunk contributes, decayed to each position
    y = y + torch.einsum("bclhn,bchpn,bchl->bclhp", C, starts, torch.exp(a_cum))  # (b, c, L, H, P)
    return y.reshape(b, c * L, H, P)[:, :T], h


def ssd_step(x, dt, A, B, C, h):
    """The recurrent form, one token. x: (b, H, P), dt: (b, H), A: (H,), B, C: (b, H, N),
    h: (b, H, P, N) -> y (b, H, P) without the D skip, new state (b, H, P, N). float32."""
    dA = torch.exp(dt * A)  # (b, H)
    h = dA[..., None, None] * h.float() + (dt[..., None] * x)[..., None] * B[:, :, None, :]  # (b, H, P, N)
    return torch.einsum("bhpn,bhn->bhp", h, C), h


class GatedRMSNorm(nn.Module):
    """Mamba-2's gated RMSNorm: RMSNorm(y * silu(z)) normalised over each group of ``group_size``
    channels, times a weight (transformers' ``MambaRMSNormGated``, state-spaces/mamba's
    ``RMSNormGated`` with ``norm_before_gate=False``)."""

    def __init__(self, dim, group_size, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.group_size, self.eps = group_size, eps

    def forward(self, y, z):  # y, z: (B, T, d_inner)
        dtype = y.dtype
        g = (y.float() * F.silu(z.float())).unflatten(-1, (-1, self.group_size))  # (B, T, G, d_inner / G)
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * g.flatten(-2).to(dtype)  # (B, T, d_inner)


class Mamba2Cache(StateCache):
    """The generation cache: conv_state (B, conv_dim, d_conv - 1), the last inputs of the
    convolution, and ssm_state (B, H, P, N). Its size does not depend on the tokens decoded.
    ``rewind = "snapshot"``: a state cannot forget a token, a copy of it goes back."""

    def __init__(self, batch, sizes, device=None, dtype=None):
        dtype = dtype or torch.get_default_dtype()
        s = sizes
        conv = torch.zeros(batch, s["conv_dim"], s["d_conv"] - 1, device=device, dtype=dtype)  # (B, conv_dim, K-1)
        ssm = torch.zeros(batch, s["n_heads"], s["head_dim"], s["d_state"], device=device, dtype=dtype)  # (B, H, P, N)
        super().__init__((conv, ssm))

    @property
    def conv(self):
        return self.state[0]

    @property
    def ssm(self):
        return self.state[1]


class Mamba2(nn.Module):
    """The Mamba-2 mixer (SSD), with the parameter names of transformers' Mamba2Mixer."""

    def __init__(self, dims, expand=2, head_dim=64, d_state=128, n_groups=1, d_conv=4, conv_bias=True,
                 chunk_size=256, time_step_limit=(0.0, None), time_step_min=0.001, time_step_max=0.1,
                 time_step_floor=1e-4, norm_eps=1e-5):
        super().__init__()
        s = self.sizes_ = mamba2_sizes(dims, {"expand": expand, "head_dim": head_dim, "d_state": d_state,
                                              "n_groups": n_groups, "d_conv": d_conv})
        problems = self.validate_spec(dims, {"expand": expand, "head_dim": head_dim, "n_groups": n_groups,
                                             "time_step_limit": time_step_limit})
        if problems:
            from zoo.errors import ZooError
            raise ZooError("mamba2: " + "; ".join(problems) + ".")
        self.d_inner, self.n_heads, self.head_dim = s["d_inner"], s["n_heads"], head_dim
        self.d_state, self.n_groups, self.d_conv, self.conv_dim = d_state, n_groups, d_conv, s["conv_dim"]
        self.chunk_size = chunk_size
        lo, hi = time_step_limit
        self.dt_min, self.dt_max = float(lo), (math.inf if hi is None else float(hi))
        self.in_proj = nn.Linear(dims.d_model, s["d_in_proj"], bias=dims.bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, padding=d_conv - 1,
                                bias=conv_bias)  # weight (conv_dim, 1, d_conv), as transformers stores it
        H = self.n_heads
        # dt_bias: softplus^-1 of dt drawn log-uniformly in [time_step_min, time_step_max] (Mamba's init)
        dt = torch.exp(torch.rand(H) * (math.log(time_step_max) - math.log(time_step_min)) + math.log(time_step_min))
        dt = dt.clamp(min=time_step_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # (H,)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, H + 1, dtype=torch.float32)))  # (H,): A = -1..-H
        self.D = nn.Parameter(torch.ones(H))  # (H,)
        self.norm = GatedRMSNorm(self.d_inner, self.d_inner // n_groups, eps=norm_eps)
        self.out_proj = init_residual_(nn.Linear(self.d_inner, dims.d_model, bias=dims.bias))
        for p in (self.dt_bias, self.A_log, self.D):
            p.zoo_no_decay = True  # as state-spaces/mamba's _no_weight_decay

    # ---- what the core asks of a mixer ----------------------------------------------------------

    @classmethod
    def sizes(cls, dims, params):
        return mamba2_sizes(dims, params)

    @classmethod
    def validate_spec(cls, dims, params):
        p = {**_DEFAULTS, **(params or {})}
        d_inner = p["expand"] * dims.d_model
        out = []
        if d_inner % p["head_dim"]:
            ok = [d for d in range(1, d_inner + 1) if d_inner % d == 0 and d <= 256]
            out.append(f"head_dim={p['head_dim']} does not divide d_inner = expand x d_model = {d_inner}; "
                       f"choose one of {ok}")
        else:
            H = d_inner // p["head_dim"]
            if H % p["n_groups"]:
                ok = [g for g in range(1, H + 1) if H % g == 0]
                out.append(f"n_groups={p['n_groups']} does not divide the {H} SSM heads (d_inner / head_dim); "
                           f"choose one of {ok}")
        lo, hi = p["time_step_limit"]
        if hi is not None and hi < lo:
            out.append(f"time_step_limit={[lo, hi]} has its maximum below its minimum; give [min, max] with "
                       f"min <= max (null: no maximum)")
        return out

    @classmethod
    def cache_size(cls, dims, params):
        """Nothing per token; per sequence the convolution's last d_conv - 1 inputs and the state H x P x N."""
        s = mamba2_sizes(dims, params)
        return 0, s["conv_dim"] * (s["d_conv"] - 1) + s["n_heads"] * s["head_dim"] * s["d_state"]

    def flops_per_token(self, seq_len):
        """The projections and the convolution, and SSD as the chunked form computes it: C B^T and its
        product with x over the chunk (L = min(chunk_size, seq_len) positions), the chunk's state and
        its read-out (H P N each)."""
        L = min(self.chunk_size, max(int(seq_len), 1))
        H, P, N = self.n_heads, self.head_dim, self.d_state
        proj = self.in_proj.weight.numel() + self.out_proj.weight.numel() + self.conv_dim * self.d_conv
        return 2 * (proj + H * L * (N + P) + 2 * H * P * N)

    def new_cache(self, batch, max_len, device=None, dtype=None):
        return Mamba2Cache(batch, self.sizes_, device=device, dtype=dtype)

    # ---- the map ----------------------------------------------------------------------------------

    def _conv(self, xBC, conv_state):
        """Causal depthwise convolution continuing after ``conv_state``. xBC: (B, T, conv_dim),
        conv_state: (B, conv_dim, K-1) or None (zeros) -> (B, T, conv_dim), new conv_state."""
        xt = xBC.transpose(1, 2)  # (B, conv_dim, T)
        K = self.d_conv
        if conv_state is None:
            conv_state = xt.new_zeros(xt.shape[0], self.conv_dim, K - 1)
        full = torch.cat([conv_state.to(xt.dtype), xt], dim=-1)  # (B, conv_dim, K-1+T)
        y = F.conv1d(full, self.conv1d.weight, self.conv1d.bias, groups=self.conv_dim)  # (B, conv_dim, T)
        return y.transpose(1, 2), full[:, :, full.shape[-1] - (K - 1):]  # (B, T, conv_dim), (B, conv_dim, K-1)

    def forward_state(self, x, posenc, pos, state):  # x: (B, T, C), state: (conv_state, ssm_state) or None
        """One window of a stream: T == 1 takes the recurrent step, T > 1 the chunked SSD. Positions
        and the encoding are not used. Returns (y (B, T, C), (conv_state, ssm_state))."""
        Bsz, T, _ = x.shape
        conv_state, h = (None, None) if state is None else state
        zxbcdt = self.in_proj(x)  # (B, T, d_in_proj)
        z, xBC, dt = zxbcdt.split([self.d_inner, self.conv_dim, self.n_heads], dim=-1)
        xBC, conv_state = self._conv(xBC, conv_state)
        xBC = F.silu(xBC)  # (B, T, conv_dim)
        GN = self.n_groups * self.d_state
        xs, Bm, Cm = xBC.float().split([self.d_inner, GN, GN], dim=-1)
        xs = xs.unflatten(-1, (self.n_heads, self.head_dim))  # (B, T, H, P)
        rep = self.n_heads // self.n_groups  # head h reads group h // rep
        Bm = Bm.unflatten(-1, (self.n_groups, self.d_state)).repeat_interleave(rep, dim=2)  # (B, T, H, N)
        Cm = Cm.unflatten(-1, (self.n_groups, self.d_state)).repeat_interleave(rep, dim=2)  # (B, T, H, N)
        dt = F.softplus(dt.float() + self.dt_bias.float()).clamp(self.dt_min, self.dt_max)  # (B, T, H)
        A = -torch.exp(self.A_log.float())  # (H,)
        if T == 1 and h is not None:  # decoding: the recurrent step
            y, h = ssd_step(xs[:, 0], dt[:, 0], A, Bm[:, 0], Cm[:, 0], h)
            y = y[:, None]  # (B, 1, H, P)
        else:  # training and prefill: the chunked SSD
            y, h = ssd_chunked(xs, dt, A, Bm, Cm, self.chunk_size, h)
        y = y + self.D.float()[:, None] * xs  # (B, T, H, P): the D skip
        y = self.norm(y.flatten(2).to(x.dtype), z)  # (B, T, d_inner)
        return self.out_proj(y), (conv_state, h)  # (B, T, C), ((B, conv_dim, K-1), (B, H, P, N))

    def forward(self, x, posenc, pos, cache=None):  # x: (B, T, C)
        if cache is None:
            return self.forward_state(x, posenc, pos, None)[0]
        y, (conv_state, h) = self.forward_state(x, posenc, pos, (cache.conv, cache.ssm))
        cache.conv.copy_(conv_state)
        cache.ssm.copy_(h)
        return y  # (B, T, C)


@hookimpl
def register_attention(register):
    register("mamba2", Mamba2, PARAMS, TAGS)
