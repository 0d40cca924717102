"""Checkpoints: written atomically, loaded with ``weights_only=True``.

A run directory ``runs/<model>/<run-id>/`` holds ``ckpt.pt`` (the latest checkpoint),
``spec.json`` (the resolved spec), ``tokenizer.json`` (the tokenizer's config) and TensorBoard
event files. ``ckpt.pt`` is a dict of plain types and tensors:

    model       state_dict
    spec        the resolved model spec (zoo.resolve)
    tokenizer   the tokenizer config (zoo.tokenizers.Tokenizer.config())
    plugins     {distribution: version} of the plugin distributions the spec's components come from
    step        optimizer steps done
    ... and what the trainer adds (optimizer, schedule, rng, data position, train config)
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import ZooError

CKPT_NAME = "ckpt.pt"


def plugins_of(spec: dict, reg=None) -> dict:
    """The plugin distributions (and versions) that provide a spec's components."""
    import zoo
    reg = reg or zoo.get_registry()
    out = {}
    for kind in ("attention", "posenc", "ffn"):
        comp = reg.components[kind].get(spec[kind]["name"])
        if comp is not None:
            out[comp.dist] = comp.version
    for extra in spec.get("layers", []) or []:  # per-layer component overrides, if any
        for kind in ("attention", "ffn"):
            if kind in extra:
                comp = reg.components[kind].get(extra[kind]["name"])
                if comp is not None:
                    out[comp.dist] = comp.version
    return out


def save_checkpoint(path, payload: dict):
    """Write ``payload`` to ``path`` atomically: a temporary file in the same directory, then rename."""
    import torch
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ckpt-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def resolve_checkpoint_path(path) -> Path:
    """A run directory or a checkpoint file -> the checkpoint file."""
    p = Path(path)
    if p.is_dir():
        p = p / CKPT_NAME
    if not p.is_file():
        raise ZooError(f"no checkpoint at {str(path)!r}: expected a run directory holding {CKPT_NAME} "
                       f"or a checkpoint file. Train one with `zoo train MODEL`, or check the path.")
    return p


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint (``weights_only=True``) and check it is a zoo checkpoint whose plugins are installed."""
    import torch
    p = resolve_checkpoint_path(path)
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ZooError(f"cannot read checkpoint {str(p)!r}: it is corrupt or not a PyTorch file "
                       f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}).") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "spec" not in ckpt:
        raise ZooError(f"{str(p)!r} is not a zoo checkpoint (no 'model' and 'spec' entries).")
    check_plugins_available(ckpt, p)
    return ckpt


def check_plugins_available(ckpt: dict, where):
    import zoo
    reg = zoo.get_registry()
    spec = ckpt["spec"]
    missing = []
    kinds = [("attention", spec["attention"]), ("posenc", spec["posenc"]), ("ffn", spec["ffn"])]
    for extra in spec.get("layers", []) or []:
        kinds += [(k, extra[k]) for k in ("attention", "ffn") if k in extra]
    for kind, ref in kinds:
        if ref["name"] not in reg.components[kind]:
            missing.append(f"{kind} {ref['name']!r}")
    if missing:
        dists = ", ".join(f"{d}=={v}" for d, v in (ckpt.get("plugins") or {}).items())
        # a distribution it needs may be installed but refused (broken, or built for another plugin API)
        from .registry import _norm
        needed = {_norm(d) for d in (ckpt.get("plugins") or {})}
        failed = "".join(f" {d} is installed but did not load: {r}." for d, r in reg.problems if _norm(d) in needed)
        raise ZooError(f"checkpoint {str(where)!r} uses {', '.join(missing)}, which no installed plugin provides."
                       f"{failed} Install the plugin distributions it was trained with ({dists or 'unknown'}) "
                       f"and retry.")


def model_from_checkpoint(ckpt: dict):
    """Build the model a checkpoint describes and load its weights."""
    import zoo
    model = zoo.build_from_spec(ckpt["spec"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise ZooError(f"checkpoint weights do not fit its spec: {str(e).splitlines()[0]}") from None
    return model
