"""Base classes a component may derive from (they need torch; :mod:`.contract` does not)."""
from __future__ import annotations

import torch
import torch.nn as nn

from .contract import Dims


class PosEnc(nn.Module):
    """Base class of positional encodings; every method defaults to 'does nothing'."""

    def __init__(self, dims: Dims, **params):
        super().__init__()
        self.dims = dims

    def embed(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:  # x: (B, T, C)
        return x

    def rotate(self, t: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:  # t: (B, H, T, D)
        return t

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor):  # -> (H, Tq, Tk) or None
        return None

    def max_positions(self):
        """The number of positions this encoding can represent, or None if unbounded."""
        return None
