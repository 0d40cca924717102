"""The tensor operations of a Hugging Face mapping: ``fwd`` (HF tensors -> the zoo tensor) and its
exact inverse ``inv``, so export undoes import. Mappings import them from :mod:`.mapping`."""
from __future__ import annotations


class Copy:
    def fwd(self, parts):
        return parts[0]

    def inv(self, t):
        return [t]


class T(Copy):
    """Conv1D (in, out) <-> nn.Linear (out, in)."""

    def fwd(self, parts):
        if parts[0].dim() != 2:
            raise ValueError(f"expected a matrix, got shape {tuple(parts[0].shape)}")
        return parts[0].t()

    def inv(self, t):
        return [t.t()]


class Cat(Copy):
    """Separate projections <-> one fused projection (rows concatenated)."""

    def __init__(self, sizes):
        self.sizes = list(sizes)

    def fwd(self, parts):
        if [p.shape[0] for p in parts] != self.sizes or len({p.shape[1:] for p in parts}) != 1:
            raise ValueError(f"shapes {[tuple(p.shape) for p in parts]} do not stack into rows {self.sizes}")
        return torch_cat(parts)

    def inv(self, t):
        return list(t.split(self.sizes, dim=0))


class Zeros(Copy):
    """A zoo buffer with no Hugging Face counterpart that starts at zero (MoE routing bias)."""

    def __init__(self, shape):
        self.shape = tuple(shape)

    def fwd(self, parts):
        import torch
        return torch.zeros(self.shape)

    def inv(self, t):
        if t.abs().max() != 0:
            raise ValueError("is not zero, and the Hugging Face architecture has no place for it")
        return []


class ExpertsIn(Copy):
    """Per-expert gate and up (H, C) each, listed g0, u0, g1, u1, ... <-> stacked (E, C, 2H)."""

    def fwd(self, parts):
        import torch
        return torch.stack([torch_cat(parts[i:i + 2]).t() for i in range(0, len(parts), 2)])  # (E, C, 2H)

    def inv(self, t):
        out = []
        for w in t:  # (C, 2H)
            out += list(w.t().chunk(2, dim=0))  # gate (H, C), up (H, C)
        return out


class ExpertsOut(Copy):
    """Per-expert down (C, H) <-> stacked (E, H, C)."""

    def fwd(self, parts):
        import torch
        return torch.stack([p.t() for p in parts])  # (E, H, C)

    def inv(self, t):
        return [w.t() for w in t]


class RopeRows(Copy):
    """Rows of a projection whose rotary part is laid out in interleaved pairs (x0, x1), (x2, x3), ...
    (DeepSeek's complex-number rope) <-> the half-split layout of the rope component (x0..x_{r/2-1},
    then their partners). Rows form groups of ``group`` (a head); in each, rows offset..offset+rope
    are the rotary part. Permuting the rows of both q and k leaves every dot product unchanged."""

    def __init__(self, group, offset, rope):
        import torch
        self.group, self.offset = group, offset
        self.perm = torch.cat([torch.arange(0, rope, 2), torch.arange(1, rope, 2)])  # half-split <- interleaved
        self.back = self.perm.argsort()

    def _apply(self, t, perm):
        g = t.reshape(-1, self.group, *t.shape[1:]).clone()  # (n_groups, group, ...)
        r = g[:, self.offset:self.offset + len(perm)]
        g[:, self.offset:self.offset + len(perm)] = r[:, perm]
        return g.reshape(t.shape)

    def fwd(self, parts):
        if parts[0].shape[0] % self.group:
            raise ValueError(f"shape {tuple(parts[0].shape)} does not split into groups of {self.group} rows")
        return self._apply(parts[0], self.perm)

    def inv(self, t):
        return [self._apply(t, self.back)]


def torch_cat(parts):
    import torch
    return torch.cat(parts, dim=0)
