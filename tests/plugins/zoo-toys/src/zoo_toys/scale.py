"""A toy transform: a learnable gain per output feature on Linear layers, ``y = g * (x W^T + b)`` with
``g`` starting at 1 (a fresh transform changes nothing). The idea of scaling a frozen layer's
outputs by learned vectors is IA3's (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is
Better and Cheaper than In-Context Learning", arXiv:2205.05638); this toy scales every declared
Linear of its targets and trains everything (it freezes nothing).

Written against the documented contract only: the layers it replaces are those the components
declare (``zoo.components.replaceable_linears``), the replacement reports the weight it applies
(``effective_weight``) so that a component reading it outside the forward (MLA's absorbed decoding)
sees the gain, and ``merge`` folds the gain into the weight and bias.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.components import component_sites, replace_module, replaceable_linears
from zoo.hookspecs import hookimpl

PARAMS = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "targets": {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"enum": ["attention", "ffn"]},
                    "default": ["attention", "ffn"], "description": "which components' Linear layers get a gain"},
    },
}
TAGS = {"changes_layers": True}


class ScaledLinear(nn.Linear):
    """The base layer's own weight and bias, and ``gain`` (out,), starting at 1."""

    def __init__(self, base: nn.Linear):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.gain = nn.Parameter(torch.ones(self.out_features, device=base.weight.device, dtype=base.weight.dtype))

    def forward(self, x):  # x: (..., in) -> (..., out)
        return F.linear(x, self.weight, self.bias) * self.gain

    def effective_weight(self):
        return self.weight * self.gain[:, None]  # (out, in)


class Scale:
    def __init__(self, targets=("attention", "ffn")):
        self.targets = list(targets)

    def apply(self, model):
        for _, _, comp in list(component_sites(model, self.targets)):
            for name, lin in replaceable_linears(comp):
                replace_module(comp, name, ScaledLinear(lin))

    def merge(self, sd):
        out = dict(sd)
        for k in sd:
            if k.endswith(".gain"):
                base, g = k[: -len("gain")], sd[k]
                w = out[base + "weight"]
                out[base + "weight"] = (w.float() * g.float()[:, None]).to(w.dtype)
                if base + "bias" in out:
                    out[base + "bias"] = (out[base + "bias"].float() * g.float()).to(out[base + "bias"].dtype)
                del out[k]
        return out


@hookimpl
def register_transform(register):
    register("scale", Scale, PARAMS, TAGS)
