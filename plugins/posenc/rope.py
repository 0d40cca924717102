"""Rotary position embedding, RoPE (Su et al. 2021, "RoFormer", arXiv:2104.09864).

Rotates pairs of query/key features by position-dependent angles, so that their dot product
depends on relative position. ``rotary_fraction`` < 1 rotates only the first part of each head
(GPT-NeoX / Pythia style "partial rotary"); ``rotate`` accepts any last-dimension size, so MLA's
decoupled rope part works with it too. Angles are computed from the positions on the fly.

``scaling`` stretches the frequencies for longer contexts: ``linear`` position interpolation
(Chen et al. 2023, arXiv:2306.15595) divides them all by ``factor``; ``llama3`` (Meta's Llama 3.1,
arXiv:2407.21783) divides only the low frequencies and interpolates smoothly between the two bands,
exactly as Hugging Face transformers' ``rope_type: llama3``; ``yarn`` (Peng et al. 2023,
arXiv:2309.00071) blends interpolated and original frequencies along a ramp between the dimensions
that rotate ``beta_fast`` and ``beta_slow`` times over the original context, and multiplies the
rotated features by ``attention_factor`` (default 0.1 ln(factor) + 1), as transformers' ``yarn``.
"""
import math

import torch

from zoo.components import PosEnc
from zoo.hookspecs import hookimpl

PARAMS = {"type": "object", "additionalProperties": False,
          "properties": {
              "theta": {"type": "number", "exclusiveMinimum": 0, "default": 10000.0,
                        "description": "base of the rotation frequencies"},
              "rotary_fraction": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 1.0,
                                  "description": "fraction of each head's features that are rotated"},
              "scaling": {"default": None, "description": "frequency scaling for long contexts: null, "
                          "{type: linear, factor} or {type: llama3, factor, low_freq_factor, high_freq_factor, "
                          "original_max_position_embeddings}",
                          "anyOf": [
                              {"type": "null"},
                              {"type": "object", "additionalProperties": False, "required": ["type", "factor"],
                               "properties": {"type": {"const": "linear"},
                                              "factor": {"type": "number", "exclusiveMinimum": 0}}},
                              {"type": "object", "additionalProperties": False,
                               "required": ["type", "factor", "low_freq_factor", "high_freq_factor",
                                            "original_max_position_embeddings"],
                               "properties": {"type": {"const": "llama3"},
                                              "factor": {"type": "number", "exclusiveMinimum": 0},
                                              "low_freq_factor": {"type": "number", "exclusiveMinimum": 0},
                                              "high_freq_factor": {"type": "number", "exclusiveMinimum": 0},
                                              "original_max_position_embeddings": {"type": "integer", "minimum": 1}}},
                              {"type": "object", "additionalProperties": False,
                               "required": ["type", "factor", "original_max_position_embeddings"],
                               "properties": {"type": {"const": "yarn"},
                                              "factor": {"type": "number", "exclusiveMinimum": 0},
                                              "original_max_position_embeddings": {"type": "integer", "minimum": 1},
                                              "beta_fast": {"type": "number", "exclusiveMinimum": 0, "default": 32},
                                              "beta_slow": {"type": "number", "exclusiveMinimum": 0, "default": 1},
                                              "attention_factor": {"type": "number", "exclusiveMinimum": 0},
                                              "truncate": {"type": "boolean", "default": True}}}]}}}
TAGS = {"kind": "rotary", "bounded": False}


class RotaryPosEnc(PosEnc):
    def __init__(self, dims, theta=10000.0, rotary_fraction=1.0, scaling=None):
        super().__init__(dims)
        self.theta = theta
        self.rotary_fraction = rotary_fraction
        self.scaling = scaling

    @classmethod
    def validate_spec(cls, dims, params):
        rot = int(dims.head_dim * params.get("rotary_fraction", 1.0))
        if rot < 2:
            return [f"rotary_fraction={params.get('rotary_fraction')} rotates {rot} of head_dim={dims.head_dim} "
                    f"features; rotate at least 2 (raise rotary_fraction)"]
        s = params.get("scaling")
        if s and s["type"] == "llama3" and s["high_freq_factor"] <= s["low_freq_factor"]:
            return [f"scaling: high_freq_factor={s['high_freq_factor']} must be greater than "
                    f"low_freq_factor={s['low_freq_factor']}"]
        return []

    def inv_freq(self, rot, device=None):
        """The rotation frequencies of ``rot`` rotated features, scaled as ``scaling`` says: (rot/2,)."""
        inv = self.theta ** (-torch.arange(0, rot, 2, device=device, dtype=torch.float32) / rot)  # (rot/2,)
        s = self.scaling
        if not s:
            return inv
        if s["type"] == "linear":
            return inv / s["factor"]
        if s["type"] == "yarn":
            return self._yarn(inv, rot, s)
        # llama3: wavelengths longer than old_len / low_freq_factor are divided by factor, shorter than
        # old_len / high_freq_factor kept, and those between interpolated
        old_len, lo, hi, factor = s["original_max_position_embeddings"], s["low_freq_factor"], s["high_freq_factor"], s["factor"]
        wavelen = 2 * math.pi / inv  # (rot/2,)
        scaled = torch.where(wavelen > old_len / lo, inv / factor, inv)  # (rot/2,)
        smooth = (old_len / wavelen - lo) / (hi - lo)  # (rot/2,)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled  # (rot/2,)
        medium = (wavelen >= old_len / hi) & (wavelen <= old_len / lo)  # (rot/2,)
        return torch.where(medium, smoothed, scaled)  # (rot/2,)

    def _yarn(self, inv, rot, s):
        """YaRN's frequencies: original ones for dimensions rotating fast over the original context,
        interpolated (divided by factor) for slow ones, a linear ramp between."""
        old_len, factor = s["original_max_position_embeddings"], s["factor"]

        def dim_of(rotations):  # the dimension that rotates `rotations` times over the original context
            return rot * math.log(old_len / (rotations * 2 * math.pi)) / (2 * math.log(self.theta))

        low, high = dim_of(s.get("beta_fast", 32)), dim_of(s.get("beta_slow", 1))
        if s.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, rot - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(rot // 2, device=inv.device, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)  # (rot/2,)
        keep = 1 - ramp  # (rot/2,) share of the original frequency
        return inv / factor * (1 - keep) + inv * keep  # (rot/2,)

    def attention_factor(self):
        s = self.scaling
        if not s or s["type"] != "yarn":
            return 1.0
        if s.get("attention_factor") is not None:
            return s["attention_factor"]
        return 1.0 if s["factor"] <= 1 else 0.1 * math.log(s["factor"]) + 1.0

    def rotate(self, t, pos):  # t: (B, H, T, D), pos: (T,)
        d = t.shape[-1]
        rot = int(d * self.rotary_fraction) // 2 * 2
        inv = self.inv_freq(rot, t.device)  # (rot/2,)
        ang = pos.to(torch.float32)[:, None] * inv[None, :]  # (T, rot/2)
        cos, sin = ang.cos(), ang.sin()  # (T, rot/2)
        if self.scaling and self.scaling["type"] == "yarn":
            m = self.attention_factor()
            cos, sin = cos * m, sin * m  # (T, rot/2)
        tr = t[..., :rot].float()
        x1, x2 = tr[..., : rot // 2], tr[..., rot // 2:]  # (B, H, T, rot/2) each, half-split layout
        out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(t.dtype)  # (B, H, T, rot)
        return out if rot == d else torch.cat([out, t[..., rot:]], dim=-1)  # (B, H, T, D)


@hookimpl
def register_posenc(register):
    register("rope", RotaryPosEnc, PARAMS, TAGS)
