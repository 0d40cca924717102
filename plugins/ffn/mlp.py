"""The GELU MLP of GPT-2 / the original Transformer (Vaswani et al. 2017, arXiv:1706.03762;
GELU: Hendrycks & Gimpel 2016, arXiv:1606.08415): Linear(C, mult*C), GELU, Linear(mult*C, C)."""
import torch.nn as nn
import torch.nn.functional as F

from zoo.components import init_residual_
from zoo.hookspecs import hookimpl

PARAMS = {"type": "object", "additionalProperties": False,
          "properties": {
              "hidden_mult": {"type": "number", "exclusiveMinimum": 0, "default": 4,
                              "description": "hidden width as a multiple of d_model"},
              "approximate": {"enum": ["none", "tanh"], "default": "none",
                              "description": "GELU variant; GPT-2 used tanh"}}}
TAGS = {"token_wise": True}


class MLP(nn.Module):
    def __init__(self, dims, hidden_mult=4, approximate="none"):
        super().__init__()
        hidden = self.sizes(dims, {"hidden_mult": hidden_mult})["hidden"]
        self.fc = nn.Linear(dims.d_model, hidden, bias=dims.bias)
        self.proj = init_residual_(nn.Linear(hidden, dims.d_model, bias=dims.bias))
        self.approximate = approximate
        self.drop = nn.Dropout(dims.dropout)

    @classmethod
    def sizes(cls, dims, params):
        """``hidden``: the hidden width, hidden_mult x d_model rounded down."""
        return {"hidden": int(params.get("hidden_mult", 4) * dims.d_model)}

    def flops_per_token(self, seq_len):
        """Forward FLOPs per token: 2 per weight of the two (three) matmuls."""
        return 2 * sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))

    def forward(self, x):  # (B, T, C)
        return self.drop(self.proj(F.gelu(self.fc(x), approximate=self.approximate)))  # (B, T, C)


@hookimpl
def register_ffn(register):
    register("mlp", MLP, PARAMS, TAGS)
