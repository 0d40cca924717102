"""LoRA, low-rank adaptation (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models",
arXiv:2106.09685), as a transform: ``"transforms": [{"name": "lora", "params": {"r": 8, ...}}]``.

Every Linear layer that the target components (``attention``, ``ffn``) of every block declare
(by default every ``nn.Linear`` below them) is replaced by a :class:`LoRALinear`: the same
``weight`` and ``bias`` plus ``lora_A`` (r, in) and ``lora_B`` (out, r), computing
``x W^T + b + dropout(x) A^T B^T * alpha / r``. Every other parameter is frozen. ``lora_B`` starts
at zero, so a fresh adapter leaves the model's function unchanged. The state-dict names stay those
of the plain model (``blocks.0.attn.qkv.weight``) with the adapters beside them
(``blocks.0.attn.qkv.lora_A``), so a LoRA checkpoint is an ordinary zoo checkpoint (``zoo train
--resume``, ``zoo generate``) and checkpoints written before LoRA became a plugin load unchanged.
A component that reads a Linear's weight outside its forward gets W + (alpha / r) B A through
``zoo.components.linear_weight`` (:meth:`LoRALinear.effective_weight`). Merging folds the update
into the weight, W + (alpha / r) B A, and drops the adapters (:meth:`LoRA.merge`).

Stacked weights (a MoE's (E, C, H) expert weights, declared in ``zoo_stacked``) are not Linear
layers. LoRA refuses a target that holds them, naming them, unless ``"stacked": "skip"`` says to
leave them unadapted and adapt the component's Linear layers only (a MoE's router and shared
experts); runs fine-tuned before LoRA was a transform did exactly that and are read with it.
Adapters per stacked expert ((E, r, C) and (E, H, r)) would need the MoE to apply them inside its
grouped products, which its dispatch does not offer; so this transform does not guess at them.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.components import component_sites, replace_module, replaceable_linears, stacked_params
from zoo.errors import ZooError
from zoo.hookspecs import hookimpl

TARGETS = ("attention", "ffn")
PARAMS = {
    "type": "object", "additionalProperties": False, "required": ["r"],
    "properties": {
        "r": {"type": "integer", "minimum": 1, "description": "rank of the adapters"},
        "alpha": {"type": "number", "exclusiveMinimum": 0, "default": 16, "description": "the update is scaled by alpha / r"},
        "targets": {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"enum": list(TARGETS)},
                    "default": ["attention"], "description": "which components' Linear layers get adapters"},
        "dropout": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "default": 0.0,
                    "description": "dropout on the adapters' input"},
        "stacked": {"enum": ["refuse", "skip"], "default": "refuse",
                    "description": "a target holding stacked weights (a MoE's experts): refuse it by name, or "
                                   "leave those weights without adapters and adapt its Linear layers only"},
    },
}
TAGS = {"changes_layers": True, "example_params": {"r": 2, "alpha": 4, "targets": ["attention", "ffn"],
                                                   "stacked": "skip"}}
ADAPTERS = ("lora_A", "lora_B")


class LoRALinear(nn.Linear):
    """An ``nn.Linear`` with a low-rank update: the base layer's own ``weight`` and ``bias`` (the
    same parameters, so tying and names survive) plus ``lora_A`` (r, in) and ``lora_B`` (out, r)."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        nn.Module.__init__(self)  # no fresh weight: the base layer's are kept
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        if getattr(base, "zoo_residual", False):
            self.zoo_residual = True
        dev, dt = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, device=dev, dtype=dt))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, device=dev, dtype=dt))  # (out, r)
        if dev.type != "meta":
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises its weight
        self.lora_scale = alpha / r
        self.lora_dropout = dropout

    def forward(self, x):  # x: (..., in)
        y = F.linear(x, self.weight, self.bias)  # (..., out)
        if self.lora_dropout and self.training:
            x = F.dropout(x, self.lora_dropout)
        return y + (x @ self.lora_A.t() @ self.lora_B.t()) * self.lora_scale  # (..., out)

    def effective_weight(self):
        """W + (alpha / r) B A, (out, in): the weight this layer applies."""
        return self.weight + self.lora_scale * (self.lora_B @ self.lora_A).to(self.weight.dtype)

    def extra_repr(self):
        return f"{super().extra_repr()}, r={self.lora_A.shape[0]}, scale={self.lora_scale:g}"


def is_adapter_key(k: str) -> bool:
    return k.endswith((".lora_A", ".lora_B"))


class LoRA:
    """The transform: adapters on the Linear layers of the targets, everything else frozen."""

    def __init__(self, r, alpha=16, targets=("attention",), dropout=0.0, stacked="refuse"):
        self.r, self.alpha, self.targets = r, alpha, list(targets)
        self.dropout, self.stacked = dropout, stacked

    def apply(self, model):
        n = 0
        for path, kind, comp in list(component_sites(model, self.targets)):
            stacked = stacked_params(comp)
            if stacked and self.stacked == "refuse":
                raise ZooError(f"LoRA cannot adapt {kind} {path!r}: its weights {', '.join(stacked)} are stacked "
                               f"(several Linear weights in one tensor, a mixture of experts), not Linear layers. "
                               f"Set the lora param \"stacked\": \"skip\" (zoo finetune --lora ...,stacked=skip) to "
                               f"adapt only its Linear layers (router, shared experts), or leave {kind} out of the "
                               f"targets.")
            for name, lin in replaceable_linears(comp):
                if type(lin) is not nn.Linear:
                    raise ZooError(f"LoRA cannot adapt {path}.{name}: it is a {type(lin).__name__}, not an nn.Linear "
                                   f"(another transform replaced it, or the component declares a layer of its own). "
                                   f"Apply LoRA before that transform, or target other components.")
                replace_module(comp, name, LoRALinear(lin, self.r, self.alpha, self.dropout))
                n += 1
        if n == 0:
            raise ZooError(f"LoRA targets {self.targets} contain no Linear layer in this model; choose other "
                           f"targets.")

    def trainable(self, name):
        """Only the adapters train."""
        return is_adapter_key(name)

    def merge(self, sd: dict) -> dict:
        """The state dict with every adapter folded into its weight, W + (alpha / r) B A, and removed."""
        problems = adapter_problems(sd, self.r)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ZooError(f"the LoRA adapters do not fit the weights: {problems[0]}{more}.")
        scale = self.alpha / self.r
        out = {k: v for k, v in sd.items() if not is_adapter_key(k)}
        for k in sd:
            if k.endswith(".lora_A"):
                base = k[: -len("lora_A")]
                w = sd[base + "weight"]
                delta = sd[base + "lora_B"].float() @ sd[k].float()  # (out, in)
                out[base + "weight"] = (w.float() + scale * delta).to(w.dtype)
        if "lm_head.weight" in out and "wte.weight" in out and sd.get("lm_head.weight") is sd.get("wte.weight"):
            out["lm_head.weight"] = out["wte.weight"]
        return out

    @classmethod
    def params_from_text(cls, text: str) -> dict:
        """'r=8,alpha=16,targets=attention,ffn' -> {"r": 8, "alpha": 16.0, "targets": [...], ...} with
        the defaults filled in: a value without '=' continues the list of the key before it."""
        return parse_lora(text)


def lora_config(cfg: dict) -> dict:
    """A LoRA params dict checked and with the defaults filled in (the messages of zoo finetune --lora)."""
    defaults = {k: v["default"] for k, v in PARAMS["properties"].items() if "default" in v}
    if not isinstance(cfg, dict) or "r" not in cfg:
        raise ZooError(f"a LoRA config is {{\"r\": rank, \"alpha\", \"targets\", \"dropout\"}}, not {cfg!r}.")
    out = {**defaults, **cfg}
    targets = out["targets"]
    bad = [t for t in targets if t not in TARGETS] if isinstance(targets, list) else [targets]
    if bad or not targets:
        raise ZooError(f"unknown LoRA target(s) {bad}; choose from {', '.join(TARGETS)}.")
    r = out["r"]
    if isinstance(r, float) and math.isfinite(r) and r.is_integer():
        out["r"] = r = int(r)
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ZooError(f"LoRA rank r={r!r} must be a whole number of at least 1.")
    for k, ok, rng in (("alpha", lambda x: x > 0, "(0, infinity)"), ("dropout", lambda x: 0 <= x < 1, "[0, 1)")):
        v = out[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
            raise ZooError(f"LoRA {k}={v!r} must be a number in {rng}.")
    if out["stacked"] not in ("refuse", "skip"):
        raise ZooError(f"LoRA stacked={out['stacked']!r} must be refuse or skip.")
    return out


KEYS = ("r", "alpha", "targets", "dropout", "stacked")


def parse_lora(text: str) -> dict:
    """See :meth:`LoRA.params_from_text`."""
    out, key = {}, None
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if "=" in part:
            key, value = (s.strip() for s in part.split("=", 1))
            out[key] = [value] if key == "targets" else value
        elif key == "targets":
            out[key].append(part)
        else:
            raise ZooError(f"malformed --lora {text!r}: {part!r} is not KEY=VALUE; e.g. "
                           f"--lora r=8,alpha=16,targets=attention,ffn")
    unknown = set(out) - set(KEYS)
    if unknown or "r" not in out:
        raise ZooError(f"--lora {text!r}: " + (f"unknown key(s) {sorted(unknown)}; " if unknown else "r is missing; ")
                       + "keys: r (rank), alpha, targets (attention, ffn), dropout, stacked (refuse, skip).")
    try:
        cfg = {"r": int(out["r"])}
        if "alpha" in out:
            cfg["alpha"] = float(out["alpha"])
        if "dropout" in out:
            cfg["dropout"] = float(out["dropout"])
    except ValueError:
        raise ZooError(f"--lora {text!r}: r must be an integer, alpha and dropout numbers.") from None
    for k in ("targets", "stacked"):
        if k in out:
            cfg[k] = out[k]
    return lora_config(cfg)


def adapter_problems(sd: dict, r: int) -> list[str]:
    """What keeps the adapters in ``sd`` from folding into its weights: for each ``X.lora_A`` (r, in) a
    ``X.lora_B`` (out, r) and a 2-d weight ``X.weight`` (out, in)."""
    out = []
    for k in sorted(k for k in sd if is_adapter_key(k)):
        base = k[: k.rfind(".") + 1]
        w, a, b = sd.get(base + "weight"), sd.get(base + "lora_A"), sd.get(base + "lora_B")
        if k.endswith(".lora_B") and a is not None:
            continue  # checked with its lora_A
        if w is None or getattr(w, "dim", lambda: 0)() != 2:
            out.append(f"no 2-d weight {base + 'weight'!r} for {k!r}")
        elif a is None or b is None:
            out.append(f"{k!r} has no {'lora_A' if a is None else 'lora_B'} beside it")
        elif (a.dim(), b.dim()) != (2, 2) or a.shape[1] != w.shape[1] or b.shape[0] != w.shape[0] \
                or a.shape[0] != r or b.shape[1] != r:
            out.append(f"{base}lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not fit the weight "
                       f"{tuple(w.shape)} at rank {r} (they need ({r}, {w.shape[1]}) and ({w.shape[0]}, {r}))")
    return out


@hookimpl
def register_transform(register):
    register("lora", LoRA, PARAMS, TAGS)
