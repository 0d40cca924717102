"""Next-token prediction, the language-modelling head of GPT (Radford et al. 2018) and nanoGPT: the
final norm, a linear map to the vocabulary (tied to the token embedding when the spec says so, as
in Press & Wolf 2017, arXiv:1608.05859), and the cross-entropy of each position's logits against
the next token (targets -1 are ignored).

It owns no weights: ``norm_f``, ``lm_head`` and ``wte`` belong to the model (their state-dict keys
predate heads) and are shared with every head."""
import torch.nn as nn
import torch.nn.functional as F

from zoo.hookspecs import hookimpl

PARAMS = {"type": "object", "additionalProperties": False, "properties": {}}
TAGS = {}


class NextToken(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.d_model, self.vocab_size = dims.d_model, dims.vocab_size

    def forward(self, h, targets, model):  # h: (B, T, C), targets: (B, T) or None
        logits = model.lm_head(model.norm_f(h))  # (B, T, V)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def flops_per_token(self, seq_len):
        """The shared output projection, 2 x d_model x vocab_size (the norm is not a matmul)."""
        return 2.0 * self.d_model * self.vocab_size


@hookimpl
def register_head(register):
    register("next_token", NextToken, PARAMS, TAGS)
