"""Fixed sinusoidal absolute positions (Vaswani et al. 2017, "Attention Is All You Need",
arXiv:1706.03762), computed from the positions on the fly: no table, no length limit."""
from zoo.components import PosEnc, sinusoid
from zoo.hookspecs import hookimpl

PARAMS = {"type": "object", "additionalProperties": False,
          "properties": {"base": {"type": "number", "exclusiveMinimum": 1, "default": 10000.0}}}
TAGS = {"kind": "absolute", "bounded": False}


class SinusoidalPosEnc(PosEnc):
    def __init__(self, dims, base=10000.0):
        super().__init__(dims)
        self.base = base

    def embed(self, x, pos):  # x: (B, T, C)
        return x + sinusoid(pos, x.shape[-1], self.base).to(x.dtype)  # (B, T, C) + (T, C)


@hookimpl
def register_posenc(register):
    register("sinusoidal", SinusoidalPosEnc, PARAMS, TAGS)
