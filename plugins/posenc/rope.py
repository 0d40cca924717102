"""Rotary position embedding, RoPE (Su et al. 2021, "RoFormer", arXiv:2104.09864).

Rotates pairs of query/key features by position-dependent angles, so that their dot product
depends on relative position. ``rotary_fraction`` < 1 rotates only the first part of each head
(GPT-NeoX / Pythia style "partial rotary"); ``rotate`` accepts any last-dimension size, so MLA's
decoupled rope part works with it too. Angles are computed from the positions on the fly.
"""
import torch

from zoo.components import PosEnc
from zoo.hookspecs import hookimpl

PARAMS = {"type": "object", "additionalProperties": False,
          "properties": {
              "theta": {"type": "number", "exclusiveMinimum": 0, "default": 10000.0,
                        "description": "base of the rotation frequencies"},
              "rotary_fraction": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 1.0,
                                  "description": "fraction of each head's features that are rotated"}}}
TAGS = {"kind": "rotary", "bounded": False}


class RotaryPosEnc(PosEnc):
    def __init__(self, dims, theta=10000.0, rotary_fraction=1.0):
        super().__init__(dims)
        self.theta = theta
        self.rotary_fraction = rotary_fraction

    @classmethod
    def validate_spec(cls, dims, params):
        rot = int(dims.head_dim * params.get("rotary_fraction", 1.0))
        if rot < 2:
            return [f"rotary_fraction={params.get('rotary_fraction')} rotates {rot} of head_dim={dims.head_dim} "
                    f"features; rotate at least 2 (raise rotary_fraction)"]
        return []

    def rotate(self, t, pos):  # t: (B, H, T, D), pos: (T,)
        d = t.shape[-1]
        rot = int(d * self.rotary_fraction) // 2 * 2
        inv = self.theta ** (-torch.arange(0, rot, 2, device=t.device, dtype=torch.float32) / rot)  # (rot/2,)
        ang = pos.to(torch.float32)[:, None] * inv[None, :]  # (T, rot/2)
        cos, sin = ang.cos(), ang.sin()  # (T, rot/2)
        tr = t[..., :rot].float()
        x1, x2 = tr[..., : rot // 2], tr[..., rot // 2:]  # (B, H, T, rot/2) each, half-split layout
        out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(t.dtype)  # (B, H, T, rot)
        return out if rot == d else torch.cat([out, t[..., rot:]], dim=-1)  # (B, H, T, D)


@hookimpl
def register_posenc(register):
    register("rope", RotaryPosEnc, PARAMS, TAGS)
