"""Spec keys of earlier zoos, turned into today's when a spec, a manifest or an adapter file is read.

The one conversion so far: the special ``lora`` key (``{"r", "alpha", "targets", "dropout"}``, zoo
finetune --lora before LoRA became a transform plugin) becomes the first entry of ``transforms``,
``{"name": "lora", "params": {..., "stacked": "skip"}}``: those runs left a MoE's stacked expert
weights without adapters, which the transform does only when asked (its default refuses them by
name). The weights' names did not change (``blocks.0.attn.qkv.lora_A``), so such a run loads,
resumes and generates as before.
"""
from __future__ import annotations

LEGACY_LORA = "lora"


def lora_transform(cfg: dict) -> dict:
    """The ``transforms`` entry of an old ``lora`` config."""
    return {"name": "lora", "params": {**cfg, "stacked": "skip"}}


def upgrade_spec(spec):
    """A model entry or resolved spec with old keys converted (a copy when something changed; the
    same object otherwise). A malformed old key is left for the schema to name."""
    if not isinstance(spec, dict) or not isinstance(spec.get(LEGACY_LORA), dict):
        return spec
    out = {k: v for k, v in spec.items() if k != LEGACY_LORA}
    rest = spec.get("transforms") if isinstance(spec.get("transforms"), list) else []
    out["transforms"] = [lora_transform(spec[LEGACY_LORA]), *rest]
    return out


def upgrade_manifest(data):
    """A manifest (zoo.json-style) with each model entry upgraded by :func:`upgrade_spec`."""
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        return data
    models = {name: upgrade_spec(entry) for name, entry in data["models"].items()}
    return {**data, "models": models}
