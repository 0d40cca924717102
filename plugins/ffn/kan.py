"""Kolmogorov-Arnold network feed-forward (Liu et al. 2024, "KAN: Kolmogorov-Arnold Networks",
arXiv:2404.19756), in the efficient formulation of efficient-kan (Blealtan 2024): a KAN layer's
edge functions phi(x) = w_b * act(x) + sum_i c_i B_i(x) are computed for all edges at once as
act(x) @ W_base + B(x) @ W_spline, where B(x) holds every input's B-spline basis values, one
batched product and no per-edge loop.

Two KAN layers, C -> hidden -> C, replace the MLP. The B-splines have order ``spline_order`` on a
uniform grid of ``grid_size`` intervals over ``grid_range`` (extended by the order on each side, so
each input has grid_size + spline_order basis functions); inputs outside the range get zero spline
and keep the base branch. The basis is the Cox-de Boor recursion written for a uniform grid (no
divisions by knot differences), evaluated only for the order + 1 basis functions that are not
zero at each input and scattered into place, with its derivative in closed form in the backward
pass. Not implemented: the paper's grid updates and its sparsity
regularisation. By default ``hidden`` is chosen so the layer has about the parameters of a 4x GELU
MLP: each edge has grid_size + spline_order + 1 weights, so hidden = 4 x d_model / that.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.components import init_residual_
from zoo.hookspecs import hookimpl

PARAMS = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "hidden": {"type": ["integer", "null"], "minimum": 1, "default": None,
                   "description": "width between the two KAN layers; null: about the parameters of a 4x MLP"},
        "grid_size": {"type": "integer", "minimum": 1, "default": 5, "description": "spline grid intervals"},
        "spline_order": {"type": "integer", "minimum": 0, "default": 3, "description": "B-spline order (3: cubic)"},
        "grid_range": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2,
                       "default": [-2.0, 2.0], "description": "interval the grid covers"},
        "base_activation": {"enum": ["silu", "gelu", "identity"], "default": "silu",
                            "description": "activation of the residual base branch"},
    },
}
TAGS = {"token_wise": True}

ACT = {"silu": F.silu, "gelu": F.gelu, "identity": lambda x: x}


def kan_hidden(d_model, grid_size, spline_order, hidden=None):
    return hidden or max(1, round(4 * d_model / (grid_size + spline_order + 1)))


def local_bspline(u, order):
    """The order + 1 basis values that are not zero at u (grid units, knots 0, 1, 2, ...), by the
    Cox-de Boor recursion restricted to them: entry m is B_{i-m} with i = floor(u). On a uniform
    grid B_j^p = ((u - j) B_j^{p-1} + (j + p + 1 - u) B_{j+1}^{p-1}) / p. Returns i (..., ), the
    values of degree ``order`` and those of degree order - 1 (lists of (...) tensors)."""
    i = torch.floor(u)
    f = u - i  # (...), in [0, 1)
    vals, prev = [torch.ones_like(f)], []
    for p in range(1, order + 1):
        prev = vals
        vals = [((f + m) * prev[m] if m < p else 0) + ((p + 1 - f - m) * prev[m - 1] if m else 0)
                for m in range(p + 1)]
        vals = [v / p for v in vals] if p > 1 else vals
    return i.long(), vals, prev


def _columns(i, n_basis, order):
    """Basis index of each local value (clamped into range) and whether it is a real basis function."""
    idx = i[..., None] - torch.arange(order + 1, device=i.device)  # (..., order + 1)
    valid = (idx >= 0) & (idx < n_basis)  # (..., order + 1)
    return idx.clamp_(0, n_basis - 1), valid


class UniformBSpline(torch.autograd.Function):
    """All n_basis basis values of each input, (N, n_in) -> (N, n_in, n_basis), from the order + 1
    local ones scattered into place; the backward pass uses the closed-form derivative
    dB_j^p/du = B_j^{p-1} - B_{j+1}^{p-1} and keeps only u."""

    @staticmethod
    def forward(ctx, u, n_basis, order):  # u: (N, n_in)
        i, vals, _ = local_bspline(u, order)
        idx, valid = _columns(i, n_basis, order)  # (N, n_in, order + 1)
        out = u.new_zeros(*u.shape, n_basis)  # (N, n_in, n_basis)
        out.scatter_add_(-1, idx, torch.stack(vals, -1) * valid)
        ctx.save_for_backward(u)
        ctx.n_basis, ctx.order = n_basis, order
        return out

    @staticmethod
    def backward(ctx, grad):  # grad: (N, n_in, n_basis)
        (u,) = ctx.saved_tensors
        if ctx.order == 0:  # piecewise constant: zero derivative
            return torch.zeros_like(u), None, None
        i, _, prev = local_bspline(u, ctx.order)
        k = ctx.order
        deriv = torch.stack([(prev[m] if m < k else 0) - (prev[m - 1] if m else 0) for m in range(k + 1)], -1)
        idx, valid = _columns(i, ctx.n_basis, k)  # (N, n_in, order + 1)
        picked = grad.gather(-1, idx)  # (N, n_in, order + 1)
        return (picked * deriv * valid).sum(-1), None, None  # (N, n_in)


class KANLinear(nn.Module):
    """One KAN layer, n_in -> n_out: base branch act(x) @ W_base plus spline branch B(x) @ W_spline."""

    def __init__(self, n_in, n_out, grid_size, spline_order, grid_range, act, bias):
        super().__init__()
        lo, hi = grid_range
        self.h = (hi - lo) / grid_size
        self.t0 = lo - spline_order * self.h  # first knot of the extended grid
        self.n_basis = grid_size + spline_order
        self.order = spline_order
        self.act = ACT[act]
        self.base = nn.Linear(n_in, n_out, bias=bias)
        self.spline = nn.Linear(n_in * self.n_basis, n_out, bias=False)

    def basis(self, x):  # x: (N, n_in) -> (N, n_in, n_basis)
        """B-spline basis values on the uniform grid t_j = t0 + j h."""
        u = (x.float() - self.t0) / self.h  # (N, n_in), position in grid units
        return UniformBSpline.apply(u, self.n_basis, self.order).to(x.dtype)  # (N, n_in, n_basis)

    def forward(self, x):  # x: (N, n_in)
        return self.base(self.act(x)) + self.spline(self.basis(x).flatten(1))  # (N, n_out)


class KAN(nn.Module):
    def __init__(self, dims, hidden=None, grid_size=5, spline_order=3, grid_range=(-2.0, 2.0),
                 base_activation="silu"):
        super().__init__()
        hidden = kan_hidden(dims.d_model, grid_size, spline_order, hidden)
        args = (grid_size, spline_order, tuple(grid_range), base_activation, dims.bias)
        self.fc = KANLinear(dims.d_model, hidden, *args)
        self.proj = KANLinear(hidden, dims.d_model, *args)
        init_residual_(self.proj.base), init_residual_(self.proj.spline)
        self.drop = nn.Dropout(dims.dropout)

    @classmethod
    def validate_spec(cls, dims, params):
        lo, hi = params.get("grid_range", [-2.0, 2.0])
        if not lo < hi:
            return [f"grid_range={[lo, hi]} is empty; give [low, high] with low < high"]
        return []

    def flops_per_token(self, seq_len):
        """Forward FLOPs per token: the base and spline matmuls of both layers (the spline one over
        all n_in x n_basis basis values, as it is computed); evaluating the basis is not counted."""
        return 2 * sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))

    def forward(self, x):  # x: (B, T, C)
        B, T, C = x.shape
        h = self.fc(x.reshape(B * T, C))  # (B*T, hidden)
        return self.drop(self.proj(h)).view(B, T, C)  # (B, T, C)


@hookimpl
def register_ffn(register):
    register("kan", KAN, PARAMS, TAGS)
