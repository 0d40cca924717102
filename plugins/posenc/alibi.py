"""ALiBi, attention with linear biases (Press et al. 2022, "Train Short, Test Long",
arXiv:2108.12409): no position embedding; each head adds ``-slope * distance`` to its attention
scores, with head slopes a geometric sequence."""
import math

import torch

from zoo.components import PosEnc
from zoo.hookspecs import hookimpl

PARAMS = {"type": "object", "additionalProperties": False, "properties": {}}
TAGS = {"kind": "bias", "bounded": False}


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """The paper's slopes: 2^(-8/n), 2^(-16/n), ...; for n not a power of two, the closest power
    of two's slopes followed by every other slope of the next power (as in the reference code)."""
    def pow2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start ** i for i in range(n)]
    if math.log2(n_heads).is_integer():
        s = pow2(n_heads)
    else:
        p = 2 ** math.floor(math.log2(n_heads))
        s = pow2(p) + pow2(2 * p)[0::2][: n_heads - p]
    return torch.tensor(s, dtype=torch.float32)


class AlibiPosEnc(PosEnc):
    def __init__(self, dims):
        super().__init__(dims)
        self.register_buffer("slopes", alibi_slopes(dims.n_heads), persistent=False)  # (H,)

    def bias(self, q_pos, k_pos):  # q_pos: (Tq,), k_pos: (Tk,)
        dist = (q_pos[:, None] - k_pos[None, :]).to(torch.float32)  # (Tq, Tk)
        return -self.slopes[:, None, None] * dist[None]  # (H, Tq, Tk)


@hookimpl
def register_posenc(register):
    register("alibi", AlibiPosEnc, PARAMS, TAGS)
