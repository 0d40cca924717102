"""Squared-ReLU feed-forward layer (So et al. 2021, "Primer: Searching for Efficient Transformers
for Language Modeling", arXiv:2109.08668, section 3; also modded-nanogpt's MLP).

    y = proj(relu(fc(x)) ** 2)

Primer found that squaring the ReLU of the MLP's hidden layer is one of the two changes that
account for most of its gains; it costs one elementwise multiply more than a ReLU MLP and keeps
its parameter count (2 x hidden_mult x C^2).
"""
import torch.nn as nn
import torch.nn.functional as F

from zoo.components import init_residual_
from zoo.hookspecs import hookimpl

PARAMS = {"type": "object", "additionalProperties": False,
          "properties": {
              "hidden_mult": {"type": "number", "exclusiveMinimum": 0, "default": 4,
                              "description": "hidden width as a multiple of d_model"}}}
TAGS = {"token_wise": True}


class ReLU2(nn.Module):
    """Linear(C, hidden_mult*C), squared ReLU, Linear(hidden_mult*C, C)."""

    def __init__(self, dims, hidden_mult=4):
        super().__init__()
        hidden = int(hidden_mult * dims.d_model)
        self.fc = nn.Linear(dims.d_model, hidden, bias=dims.bias)
        # writes into the residual stream: the zoo scales its init by 1/sqrt(2 * n_layers)
        self.proj = init_residual_(nn.Linear(hidden, dims.d_model, bias=dims.bias))
        self.drop = nn.Dropout(dims.dropout)

    def flops_per_token(self, seq_len):
        """Forward matmul FLOPs per token (2 per multiply-add), for MFU in `zoo bench` and training
        logs; the squaring is elementwise and not counted."""
        return 2 * (self.fc.weight.numel() + self.proj.weight.numel())

    def forward(self, x):  # x: (B, T, C)
        h = F.relu(self.fc(x)).square()  # (B, T, H)
        return self.drop(self.proj(h))  # (B, T, C)


@hookimpl
def register_ffn(register):
    register("relu2", ReLU2, PARAMS, TAGS)
