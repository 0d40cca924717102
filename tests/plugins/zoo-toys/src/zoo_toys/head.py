"""A toy head: next-token prediction with a learned logit temperature, label smoothing (Szegedy et
al. 2016, arXiv:1512.00567) and the z-loss of PaLM (Chowdhery et al. 2022, arXiv:2204.02311) that
keeps log Z = logsumexp(logits) near 0.

It shares the model's final norm and output projection (``model.norm_f``, ``model.lm_head``) and owns
one parameter, ``head.log_temp``. The z-loss is an auxiliary loss: it declares ``aux_loss`` and the
model adds it to the training loss (the head returns the smoothed cross-entropy only)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.hookspecs import hookimpl

PARAMS = {"type": "object", "additionalProperties": False,
          "properties": {
              "label_smoothing": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.1,
                                  "description": "weight of the uniform distribution in the targets"},
              "z_loss": {"type": "number", "minimum": 0, "default": 1e-4,
                         "description": "coefficient of mean(logsumexp(logits)^2), an auxiliary loss"}}}
TAGS = {}


class SmoothNextToken(nn.Module):
    def __init__(self, dims, label_smoothing=0.1, z_loss=1e-4):
        super().__init__()
        self.label_smoothing, self.z_loss = label_smoothing, z_loss
        self.d_model, self.vocab_size = dims.d_model, dims.vocab_size
        self.log_temp = nn.Parameter(torch.zeros(()))  # logits / exp(log_temp), learned
        self.aux_loss = None  # declared from the start: the model finds it when it is built

    def forward(self, h, targets, model):  # h: (B, T, C), targets: (B, T) or None
        logits = model.lm_head(model.norm_f(h)) * torch.exp(-self.log_temp).to(h.dtype)  # (B, T, V)
        self.aux_loss = None
        if targets is None:
            return logits, None
        flat = logits.float().view(-1, logits.size(-1))  # (B*T, V)
        loss = F.cross_entropy(flat, targets.reshape(-1), ignore_index=-1, label_smoothing=self.label_smoothing)
        if self.training and self.z_loss > 0:
            keep = targets.reshape(-1) != -1  # (B*T,)
            self.aux_loss = self.z_loss * torch.logsumexp(flat[keep], dim=-1).pow(2).mean()
        return logits, loss

    def flops_per_token(self, seq_len):
        """The shared output projection, and the temperature's one multiply per logit."""
        return 2.0 * self.d_model * self.vocab_size + self.vocab_size


@hookimpl
def register_head(register):
    register("smooth_next_token", SmoothNextToken, PARAMS, TAGS)
