"""Learned absolute position embeddings, as in GPT-2 (Radford et al. 2019) and BERT
(Devlin et al. 2018, arXiv:1810.04805): a trainable table of ``max_len`` vectors added to the
token embeddings. It cannot represent positions past ``max_len`` (default: the context length).
"""
import torch.nn as nn

from zoo.components import PosEnc
from zoo.hookspecs import hookimpl

PARAMS = {"type": "object", "additionalProperties": False,
          "properties": {"max_len": {"type": "integer", "minimum": 1,
                                     "description": "table size; defaults to the context length"}}}
TAGS = {"kind": "absolute", "bounded": True}


class LearnedPosEnc(PosEnc):
    def __init__(self, dims, max_len=None):
        super().__init__(dims)
        self.max_len = max_len or dims.block_size
        self.wpe = nn.Embedding(self.max_len, dims.d_model)

    @classmethod
    def validate_spec(cls, dims, params):
        m = params.get("max_len")
        if m is not None and m < dims.block_size:
            return [f"max_len={m} is shorter than the context length block_size={dims.block_size}; "
                    f"raise max_len to at least {dims.block_size} or lower block_size"]
        return []

    def max_positions(self):
        return self.max_len

    def embed(self, x, pos):  # x: (B, T, C), pos: (T,)
        return x + self.wpe(pos)  # (B, T, C) + (T, C)


@hookimpl
def register_posenc(register):
    register("learned", LearnedPosEnc, PARAMS, TAGS)
