"""SwiGLU feed-forward (Shazeer 2020, "GLU Variants Improve Transformer", arXiv:2002.05202), as in
Llama: down(silu(gate(x)) * up(x)). The default hidden width, 8/3 x d_model rounded up to a
multiple of 64, keeps the parameter count of a 4x GELU MLP."""
import torch.nn as nn
import torch.nn.functional as F

from zoo.components import init_residual_
from zoo.hookspecs import hookimpl

PARAMS = {"type": "object", "additionalProperties": False,
          "properties": {
              "hidden": {"type": "integer", "minimum": 1,
                         "description": "hidden width; default 8/3 x d_model rounded up to multiple_of"},
              "multiple_of": {"type": "integer", "minimum": 1, "default": 64}}}
TAGS = {"token_wise": True}


class SwiGLU(nn.Module):
    def __init__(self, dims, hidden=None, multiple_of=64):
        super().__init__()
        hidden = self.sizes(dims, {"hidden": hidden, "multiple_of": multiple_of})["hidden"]
        self.gate_up = nn.Linear(dims.d_model, 2 * hidden, bias=dims.bias)
        self.down = init_residual_(nn.Linear(hidden, dims.d_model, bias=dims.bias))
        self.drop = nn.Dropout(dims.dropout)

    @classmethod
    def sizes(cls, dims, params):
        """``hidden``: the width of gate and up, ``hidden`` or 8/3 x d_model rounded up to ``multiple_of``."""
        if params.get("hidden"):
            return {"hidden": params["hidden"]}
        m = params.get("multiple_of") or 64
        return {"hidden": -(-int(8 * dims.d_model / 3) // m) * m}

    def flops_per_token(self, seq_len):
        """Forward FLOPs per token: 2 per weight of the two (three) matmuls."""
        return 2 * sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))

    def forward(self, x):  # (B, T, C)
        gate, up = self.gate_up(x).chunk(2, dim=-1)  # (B, T, H) each
        return self.drop(self.down(F.silu(gate) * up))  # (B, T, C)


@hookimpl
def register_ffn(register):
    register("swiglu", SwiGLU, PARAMS, TAGS)
