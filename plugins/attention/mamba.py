"""Mamba: the selective state space layer, S6 (Gu and Dao 2023, "Mamba: Linear-Time Sequence Modeling
with Selective State Spaces", arXiv:2312.00752), as a token mixer; with the optional RMSNorms on dt, B
and C of Jamba's Mamba layers (Lieber et al. 2024, arXiv:2403.19887).

Per token t, with D = expand x d_model channels and N = d_state (the paper's Algorithm 2):

    x_t, z_t  = in_proj(u_t)                                   (D,), (D,)
    x_t       = silu(conv1d(x)_t)                              a causal depthwise conv of d_conv taps
    dt_in, B_t, C_t = x_proj(x_t)                              (R,), (N,), (N,)   R = dt_rank
    [dt_in, B_t, C_t = RMSNorm(dt_in), RMSNorm(B_t), RMSNorm(C_t)]   with bcdt_norm (Jamba)
    dt_t      = softplus(dt_proj(dt_in))                       (D,) input-dependent step
    A         = -exp(A_log)                                    (D, N), S4D-real init A[d, n] = -(n + 1)
    h_t       = exp(dt_t A) * h_(t-1) + (dt_t B_t) * x_t       (D, N)  zero-order hold for A, Euler for B
    y_t       = h_t C_t + D_skip * x_t                         (D,)
    out_t     = out_proj(y_t * silu(z_t))                      (C,)

Two forms, tested against each other and against a plain loop of these equations
(tests/test_mamba.py): the parallel form (training, prefill) runs the diagonal recurrence
h_t = a_t h_(t-1) + b_t as a prefix scan over time by recursive doubling (Hillis and Steele 1986):
log2(L) vectorised steps per chunk of L tokens (``chunk``), exact in fp32 (only products and sums of
the same terms as the loop, regrouped; no exp of cumulative sums that could overflow), chunks
carried one after another; the recurrent form (decoding) updates the state once per token. On the
CPU the plain recurrence (chunk 1) is the fastest (measured in docs/mixers.md: the per-token (B, D,
N) terms stay in cache), so ``chunk: "auto"`` takes 1 there and 64 on an accelerator.

The generation cache is the state (conv_state: the last d_conv - 1 inputs of the convolution, (B, D,
d_conv - 1); ssm_state: h, (B, D, N)), whatever the length: ``cache_size`` -> (0, D (d_conv - 1) +
D N). It rewinds by snapshots. Across training windows the same pair is carried (``forward_state``).
Mamba uses no positional encoding: tag ``posenc`` ["none"], and it runs beside rotary or bias
encodings that other layers use (a hybrid) without applying them (``posenc_ignores``).

The dt projection's bias holds inverse-softplus initial steps (log-uniform in [dt_min, dt_max]) and
A_log its S4D-real values: both live outside ``nn.Linear`` so that the model's N(0, 0.02)
initialisation of Linear layers leaves them as Mamba initialises them.
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
        "d_state": {"type": "integer", "minimum": 1, "default": 16, "description": "N, the state size per channel"},
        "d_conv": {"type": "integer", "minimum": 1, "default": 4, "description": "taps of the causal depthwise convolution"},
        "expand": {"type": "number", "exclusiveMinimum": 0, "default": 2,
                   "description": "channels D = int(expand x d_model)"},
        "dt_rank": {"anyOf": [{"const": "auto"}, {"type": "integer", "minimum": 1}], "default": "auto",
                    "description": "rank R of the dt projection; auto: ceil(d_model / 16)"},
        "conv_bias": {"type": "boolean", "default": True, "description": "a bias in the convolution"},
        "proj_bias": {"type": "boolean", "default": False, "description": "biases in in_proj and out_proj"},
        "dt_min": {"type": "number", "exclusiveMinimum": 0, "default": 0.001, "description": "smallest initial step"},
        "dt_max": {"type": "number", "exclusiveMinimum": 0, "default": 0.1, "description": "largest initial step"},
        "dt_init_floor": {"type": "number", "minimum": 0, "default": 1e-4, "description": "initial steps are at least this"},
        "dt_scale": {"type": "number", "exclusiveMinimum": 0, "default": 1.0,
                     "description": "scale of the dt projection's initial weights, dt_scale / sqrt(R)"},
        "dt_init": {"enum": ["random", "constant"], "default": "random",
                    "description": "the dt projection's initial weights: uniform in +-dt_scale/sqrt(R), or that constant"},
        "bcdt_norm": {"type": "boolean", "default": False,
                      "description": "RMS-normalise dt_in, B and C before use (Jamba's Mamba layers)"},
        "norm_eps": {"type": "number", "exclusiveMinimum": 0, "default": 1e-6, "description": "eps of those RMSNorms"},
        "chunk": {"anyOf": [{"const": "auto"}, {"type": "integer", "minimum": 1}], "default": "auto",
                  "description": "tokens per chunk of the parallel scan (the result is the same; 1: the plain "
                                 "recurrence); auto: 1 on the CPU, where that is fastest, 64 elsewhere"},
    },
}
TAGS = {"causal": True, "kv_cache": True, "posenc": ["none"], "posenc_ignores": ["rotary", "bias"],
        "example_params": {"d_state": 4, "chunk": 4}}


def _shift(t, k, value):
    """t (B, L, ...) moved k steps later along dim 1, the first k filled with ``value`` (one pad op,
    whose backward is a pad again: no full-size zero gradient per step, as slicing would make)."""
    return F.pad(t, (0, 0) * (t.dim() - 2) + (k, -k), value=value)


def prefix_scan(a, b):
    """All states of h_t = a_t h_(t-1) + b_t from h_(-1) = 0, and the products a_0 ... a_t, by
    recursive doubling over dim 1 (log2(L) steps). a, b: (B, L, ...) -> (A, H), each (B, L, ...)."""
    L, k = a.shape[1], 1
    while k < L:  # combine each element with the one k before it (the identity (1, 0) before the start)
        b = b + a * _shift(b, k, 0.0)
        a = a * _shift(a, k, 1.0)
        k *= 2
    return a, b


def selective_scan(dt, A, Bm, Cm, x, h0, chunk):
    """The selective scan: h_t = exp(dt_t A) h_(t-1) + dt_t B_t x_t, y_t = h_t C_t, from h0, chunk by
    chunk (each by recursive doubling; chunk 1 is the plain recurrence, one token per step). The
    discretised (B, L, D, N) terms are formed per chunk; the states of every token are kept for the
    read-out (and autograd).
    dt, x: (B, T, D); A: (D, N); Bm, Cm: (B, T, N); h0: (B, D, N) or None (zeros). All fp32.
    Returns (y (B, T, D), h_(T-1) (B, D, N))."""
    hs, h = [], h0
    for dt_c, B_c, x_c in zip(dt.split(chunk, 1), Bm.split(chunk, 1), x.split(chunk, 1)):
        dA = torch.exp(dt_c[..., None] * A)  # (B, L, D, N)
        dBx = (dt_c * x_c)[..., None] * B_c[:, :, None, :]  # (B, L, D, N)
        if dA.shape[1] == 1:  # one token: the recurrent step
            H = dBx if h is None else dA * h[:, None] + dBx  # (B, 1, D, N)
        else:
            P, H = prefix_scan(dA, dBx)  # (B, L, D, N) each
            if h is not None:
                H = H + P * h[:, None]
        hs.append(H)
        h = H[:, -1]  # (B, D, N)
    H = hs[0] if len(hs) == 1 else torch.cat(hs, 1)  # (B, T, D, N)
    return (H @ Cm[..., None])[..., 0], h  # (B, T, D), (B, D, N)


class MambaState(StateCache):
    """The generation cache: conv (B, D, d_conv - 1), the convolution's last inputs, and ssm (B, D, N),
    the state h. ``rewind = "snapshot"``."""

    def __init__(self, batch, d_inner, d_conv, d_state, device=None, dtype=None):
        dtype = dtype or torch.get_default_dtype()
        conv = torch.zeros(batch, d_inner, d_conv - 1, device=device, dtype=dtype)  # (B, D, K-1)
        ssm = torch.zeros(batch, d_inner, d_state, device=device, dtype=dtype)  # (B, D, N)
        super().__init__((conv, ssm))

    @property
    def conv(self):
        return self.state[0]

    @property
    def ssm(self):
        return self.state[1]


class DtProj(nn.Module):
    """dt = W dt_in + bias, kept apart from ``nn.Linear`` so that Mamba's initialisation survives the model's."""

    def __init__(self, rank, d_inner):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_inner, rank))  # (D, R)
        self.bias = nn.Parameter(torch.empty(d_inner))  # (D,)

    def forward(self, x):  # (..., R) -> (..., D)
        return F.linear(x, self.weight, self.bias)


class Mamba(nn.Module):
    """The selective SSM mixer (S6) with its convolution and gate, between in_proj and out_proj."""

    def __init__(self, dims, d_state=16, d_conv=4, expand=2, dt_rank="auto", conv_bias=True, proj_bias=False,
                 dt_min=0.001, dt_max=0.1, dt_init_floor=1e-4, dt_scale=1.0, dt_init="random", bcdt_norm=False,
                 norm_eps=1e-6, chunk="auto"):
        super().__init__()
        s = self.sizes(dims, {"d_state": d_state, "d_conv": d_conv, "expand": expand, "dt_rank": dt_rank})
        C, D, N, R, K = dims.d_model, s["d_inner"], d_state, s["dt_rank"], d_conv
        self.d_inner, self.d_state, self.d_conv, self.dt_rank, self.chunk = D, N, K, R, chunk
        self.in_proj = nn.Linear(C, 2 * D, bias=proj_bias)
        self.conv1d = nn.Conv1d(D, D, K, groups=D, bias=conv_bias)  # weight (D, 1, K)
        self.x_proj = nn.Linear(D, R + 2 * N, bias=False)
        self.dt_proj = DtProj(R, D)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(D, 1))  # (D, N)
        self.D = nn.Parameter(torch.ones(D))  # (D,)
        self.A_log.zoo_no_decay = self.D.zoo_no_decay = True
        self.out_proj = init_residual_(nn.Linear(D, C, bias=proj_bias))
        self.dt_norm = self.b_norm = self.c_norm = None
        if bcdt_norm:
            self.dt_norm, self.b_norm, self.c_norm = nn.RMSNorm(R, eps=norm_eps), nn.RMSNorm(N, eps=norm_eps), \
                nn.RMSNorm(N, eps=norm_eps)
        with torch.no_grad():  # Mamba's dt initialisation (the reference code's, and transformers')
            std = R ** -0.5 * dt_scale
            if dt_init == "constant":
                self.dt_proj.weight.fill_(std)
            else:
                self.dt_proj.weight.uniform_(-std, std)
            dt = torch.exp(torch.rand(D) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_init_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)

    # ---- what the zoo asks of a mixer ---------------------------------------------------------------

    @classmethod
    def sizes(cls, dims, params):
        """``d_inner`` (D), ``dt_rank`` (R), ``d_state`` (N), ``d_conv`` (K)."""
        rank = params.get("dt_rank", "auto")
        return {"d_inner": int(params.get("expand", 2) * dims.d_model),
                "dt_rank": math.ceil(dims.d_model / 16) if rank in (None, "auto") else int(rank),
                "d_state": int(params.get("d_state", 16)), "d_conv": int(params.get("d_conv", 4))}

    @classmethod
    def validate_spec(cls, dims, params):
        out = []
        if params.get("dt_min", 0.001) > params.get("dt_max", 0.1):
            out.append(f"dt_min={params['dt_min']} is larger than dt_max={params['dt_max']}; swap them")
        if cls.sizes(dims, params)["d_inner"] < 1:
            out.append(f"expand={params.get('expand')} x d_model={dims.d_model} gives no channels; raise expand")
        return out

    @classmethod
    def cache_size(cls, dims, params):
        """Nothing per token; per sequence the convolution's last d_conv - 1 inputs and the state h."""
        s = cls.sizes(dims, params)
        return 0, s["d_inner"] * (s["d_conv"] - 1) + s["d_inner"] * s["d_state"]

    def flops_per_token(self, seq_len):
        """The projections and the convolution, and the scan's multiply-adds: the state update
        (dt B x, and exp(dt A) h) and the read-out h C, 2 x 2 x D x N; elementwise work is free."""
        linears = self.in_proj.weight.numel() + self.x_proj.weight.numel() + self.dt_proj.weight.numel() \
            + self.out_proj.weight.numel() + self.conv1d.weight.numel()
        return 2 * linears + 4 * self.d_inner * self.d_state

    def new_cache(self, batch, max_len, device=None, dtype=None):
        return MambaState(batch, self.d_inner, self.d_conv, self.d_state, device=device, dtype=dtype)

    # ---- the computation -----------------------------------------------------------------------------

    def _conv(self, x, conv_state):
        """Causal depthwise convolution. x: (B, T, D); conv_state: (B, D, K-1) or None (zeros) ->
        (silu(conv) (B, T, D), the new conv_state (B, D, K-1))."""
        B, T, D = x.shape
        K = self.d_conv
        xt = x.transpose(1, 2)  # (B, D, T)
        past = conv_state.to(x.dtype) if conv_state is not None else x.new_zeros(B, D, K - 1)
        full = torch.cat([past, xt], 2)  # (B, D, K-1+T)
        y = F.conv1d(full, self.conv1d.weight, self.conv1d.bias, groups=D)  # (B, D, T)
        return F.silu(y).transpose(1, 2), full[:, :, full.shape[2] - (K - 1):]  # (B, T, D), (B, D, K-1)

    def _ssm_inputs(self, x):
        """x: (B, T, D) -> dt (B, T, D) after softplus, A (D, N), B and C (B, T, N), in fp32."""
        dt_in, Bm, Cm = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        if self.dt_norm is not None:
            dt_in, Bm, Cm = self.dt_norm(dt_in), self.b_norm(Bm), self.c_norm(Cm)
        dt = F.softplus(self.dt_proj(dt_in).float())  # (B, T, D)
        A = -torch.exp(self.A_log.float())  # (D, N)
        return dt, A, Bm.float(), Cm.float()

    def _mix(self, u, state, step):
        """u: (B, T, C); state: (conv (B, D, K-1), ssm (B, D, N)) or None -> (y (B, T, C), new state).
        ``step``: the recurrent form (T == 1), else the parallel scan."""
        conv_state, h = state if state is not None else (None, None)
        x, z = self.in_proj(u).chunk(2, dim=-1)  # (B, T, D) each
        x, conv_state = self._conv(x, conv_state)  # (B, T, D), (B, D, K-1)
        dt, A, Bm, Cm = self._ssm_inputs(x)
        xf = x.float()
        # decoding (T == 1) is one step of the recurrence; a sequence goes through the chunked scan
        y, h_last = selective_scan(dt, A, Bm, Cm, xf, None if h is None else h.float(), 1 if step else self._chunk(x))
        y = (y + xf * self.D.float()) * F.silu(z.float())  # (B, T, D)
        return self.out_proj(y.to(u.dtype)), (conv_state, h_last)  # (B, T, C)

    def _chunk(self, x):
        """The scan's chunk for this input: the param, or for "auto" 1 on the CPU (a token per step
        keeps the (B, D, N) terms in cache: fastest there, measured in docs/mixers.md) and 64 on an
        accelerator (log2(64) vectorised steps instead of 64 launches)."""
        if self.chunk != "auto":
            return self.chunk
        return 1 if x.device.type == "cpu" else 64

    def forward_state(self, x, posenc, pos, state):  # x: (B, T, C), state: (conv, ssm) or None
        return self._mix(x, state, step=x.shape[1] == 1)

    def forward(self, x, posenc, pos, cache=None):  # x: (B, T, C)
        if cache is None:
            return self._mix(x, None, step=False)[0]
        y, (conv, h) = self._mix(x, (cache.conv, cache.ssm), step=x.shape[1] == 1)
        cache.conv.copy_(conv)
        cache.ssm.copy_(h)
        return y  # (B, T, C)


@hookimpl
def register_attention(register):
    register("mamba", Mamba, PARAMS, TAGS)
