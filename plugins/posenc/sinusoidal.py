"""Fixed sinusoidal absolute positions (Vaswani et al. 2017, "Attention Is All You Need",
arXiv:1706.03762), computed from the positions on the fly: no table, no length limit.

The sinusoids have unit amplitude, while the zoo's token embeddings start with std 0.02 (GPT-2's
initialisation, not the paper's sqrt(d_model)-scaled embeddings), so added as they are they swamp
token identity. By default they are multiplied by a learnable scalar initialised to 1/sqrt(d_model),
the "scaled sinusoidal" encoding of Hua et al. 2022 ("Transformer Quality in Linear Time",
arXiv:2202.10447). ``scale: "fixed"`` adds them unscaled, as in the original paper.
"""
import math

import torch
import torch.nn as nn

from zoo.components import PosEnc, sinusoid
from zoo.hookspecs import hookimpl

PARAMS = {"type": "object", "additionalProperties": False,
          "properties": {
              "base": {"type": "number", "exclusiveMinimum": 1, "default": 10000.0},
              "scale": {"enum": ["learned", "fixed"], "default": "learned",
                        "description": "'learned': a trainable gain initialised to 1/sqrt(d_model) "
                                       "(Hua et al. 2022); 'fixed': unit amplitude (Vaswani et al. 2017)"}}}
TAGS = {"kind": "absolute", "bounded": False}


class SinusoidalPosEnc(PosEnc):
    def __init__(self, dims, base=10000.0, scale="learned"):
        super().__init__(dims)
        self.base = base
        self.gain = nn.Parameter(torch.tensor(1.0 / math.sqrt(dims.d_model))) if scale == "learned" else None

    def embed(self, x, pos):  # x: (B, T, C)
        pe = sinusoid(pos, x.shape[-1], self.base).to(x.dtype)  # (T, C)
        if self.gain is not None:
            pe = pe * self.gain.to(x.dtype)
        return x + pe  # (B, T, C) + (T, C)


@hookimpl
def register_posenc(register):
    register("sinusoidal", SinusoidalPosEnc, PARAMS, TAGS)
