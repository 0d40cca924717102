"""Checkpoints and run directories: written atomically, loaded with ``weights_only=True``.

A run directory ``runs/<model>/<run-id>/`` holds ``ckpt.pt`` (the latest checkpoint),
``spec.json`` (the resolved spec), ``tokenizer.json`` (the tokenizer's config) and TensorBoard
event files. ``ckpt.pt`` is a dict of plain types and tensors:

    model       state_dict
    spec        the resolved model spec (zoo.resolve)
    tokenizer   the tokenizer config (zoo.tokenizers.Tokenizer.config())
    plugins     {distribution: version} of the plugin distributions the spec's components come from
    providers   [{"kind", "name", "dist", "version"}]: who provided each component the spec names
                (per-layer overrides included); loading refuses a component of the same kind and
                name from another distribution, and warns when the version differs
    step        optimizer steps done
    ... and what the trainer adds (optimizer, schedule, rng, data position, train config)

:func:`load_run` gives the model and tokenizer of a run directory (``zoo.load``).
"""
from __future__ import annotations

import warnings
from pathlib import Path

from ..errors import ZooError, ZooWarning
from ..nn.device import parse_dtype
from ..nn.transformer import build_from_spec
from ..plugin.contract import LAYER_KINDS, MODEL_KINDS
from ..plugin.protocols import parts_of
from ..plugin.registry import _norm
from ..spec.catalog import get_registry
from ..spec.legacy import upgrade_spec
from ..spec.resolve import check_spec_schema, no_ffn, validate_spec
from ..tokenizers import from_config, load_config
from .atomic import write_atomically

CKPT_NAME = "ckpt.pt"
COMPILED_PREFIX = "_orig_mod."  # what torch.compile puts before the names of a compiled model's weights


def plugins_of(spec: dict, reg=None) -> dict:
    """The plugin distributions (and versions) that provide a spec's components, and the parts a
    composite component is made of (a MoE's experts)."""
    reg = reg or get_registry()
    out = {}
    for kind, ref in component_refs(spec):
        comp = reg.components[kind].get(ref["name"])
        if comp is not None:
            out[comp.dist] = comp.version
            for part in parts_of(comp.cls, ref.get("params", {}), reg.components).values():
                out[part.dist] = part.version
    return out


def providers_of(spec: dict, reg=None) -> list[dict]:
    """``[{"kind", "name", "dist", "version"}]``, once per component a spec names (per-layer
    overrides included): the distribution that provides it in the loaded registry."""
    reg = reg or get_registry()
    out, seen = [], set()
    for kind, ref in component_refs(spec):
        comp = reg.components[kind].get(ref["name"])
        if comp is not None and (kind, comp.name) not in seen:
            seen.add((kind, comp.name))
            out.append({"kind": kind, "name": comp.name, "dist": comp.dist, "version": comp.version})
    return out


def component_refs(spec: dict):
    """(kind, {"name", "params"}) of every component a spec names, per-layer overrides and
    transforms included (``ffn: none`` is no component; a spec from before heads names no head)."""
    refs = [(kind, spec[kind]) for kind in MODEL_KINDS if isinstance(spec.get(kind), dict)]
    for extra in spec.get("layers", []) or []:
        refs += [(kind, extra[kind]) for kind in LAYER_KINDS if kind in extra]
    refs += [("transform", ref) for ref in spec.get("transforms", []) or []]
    return [(kind, ref) for kind, ref in refs if not (kind == "ffn" and no_ffn(ref))]


def save_checkpoint(path, payload: dict):
    """Write ``payload`` to ``path`` atomically: a temporary file in the same directory, then rename.
    A payload with a ``spec`` gets its ``plugins`` and ``providers`` (from the loaded registry)
    when it does not hold them, so every writer records who provided its components."""
    import torch
    if "spec" in payload and ("providers" not in payload or "plugins" not in payload):
        try:
            found = {"providers": providers_of(payload["spec"]), "plugins": plugins_of(payload["spec"])}
        except (KeyError, TypeError, AttributeError):  # not a resolved spec: nothing to record
            found = {}
        payload = {**found, **payload}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda f: torch.save(payload, f))


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
    """Load a checkpoint (``weights_only=True``) and check it is a zoo checkpoint whose plugins are
    installed. The weights' names are those of the plain model (a compiled model's prefix removed)."""
    import torch
    p = resolve_checkpoint_path(path)
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ZooError(f"cannot read checkpoint {str(p)!r}: it is corrupt or not a PyTorch file "
                       f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}).") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "spec" not in ckpt:
        raise ZooError(f"{str(p)!r} is not a zoo checkpoint (no 'model' and 'spec' entries).")
    sd = ckpt["model"]
    if not isinstance(sd, dict) or not all(isinstance(k, str) for k in sd):
        raise ZooError(f"{str(p)!r} is not a zoo checkpoint (its 'model' entry is not a state dict).")
    if any(k.startswith(COMPILED_PREFIX) for k in sd):  # saved from a compiled model
        ckpt["model"] = {k.removeprefix(COMPILED_PREFIX): v for k, v in sd.items()}
    ckpt["spec"] = upgrade_spec(ckpt["spec"])  # keys of earlier zoos (a LoRA run's "lora")
    # the spec is validated as a manifest entry is, before anything builds from it
    where = f"the spec of checkpoint {str(p)!r}"
    check_spec_schema(ckpt["spec"], where, "The checkpoint was not written by the zoo, or was altered.")
    check_plugins_available(ckpt, p)
    check_providers(ckpt, p)
    ckpt["spec"] = validate_spec(get_registry(), ckpt["spec"], where, _changed_plugin_hint(ckpt))
    check_weights_fit(ckpt["spec"], ckpt["model"], p)
    return ckpt


def _changed_plugin_hint(ckpt) -> str:
    plugins = ckpt.get("plugins") if isinstance(ckpt.get("plugins"), dict) else {}
    written = ", ".join(f"{d}=={v}" for d, v in plugins.items())
    return (f"It was written with {written}; a plugin whose parameters changed since then needs the version "
            f"the checkpoint was trained with." if written else
            "A plugin whose parameters changed since the checkpoint was written needs the version it was trained with.")


def check_weights_fit(spec: dict, sd: dict, where):
    """The weights have the layers and embedding the spec says, checked before a model of that spec
    is built (a spec claiming a million layers would otherwise take minutes to build, then fail)."""
    layers = {int(k.split(".")[1]) for k in sd if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    wte = sd.get("wte.weight")
    problem = None
    if len(layers) != spec["n_layers"] or (layers and (min(layers), max(layers)) != (0, len(layers) - 1)):
        problem = (f"the spec has n_layers={spec['n_layers']} but the weights hold "
                   f"{len(layers)} layer(s)" + (f" (indices {min(layers)} to {max(layers)})" if layers else ""))
    elif not hasattr(wte, "shape") or tuple(wte.shape) != (spec["vocab_size"], spec["d_model"]):
        problem = (f"the spec has vocab_size={spec['vocab_size']}, d_model={spec['d_model']} but the token embedding "
                   f"wte.weight is {tuple(wte.shape) if hasattr(wte, 'shape') else 'missing'}")
    if problem:
        raise ZooError(f"checkpoint {str(where)!r}: its weights do not fit its spec: {problem}. The checkpoint "
                       f"was not written by the zoo, or was altered.")


def recorded_providers(ckpt: dict, where) -> dict:
    """{(kind, name): {"dist", "version"}} of a checkpoint's ``providers`` ({} when it has none:
    written before the zoo recorded them)."""
    recorded = ckpt.get("providers")
    if recorded is None:
        return {}
    keys = ("kind", "name", "dist", "version")
    if not isinstance(recorded, list) or not all(
            isinstance(r, dict) and all(isinstance(r.get(k), str) for k in keys) for r in recorded):
        raise ZooError(f"checkpoint {str(where)!r} has a malformed 'providers' entry (expected a list of "
                       f"{{kind, name, dist, version}}); it was not written by the zoo, or was altered.")
    return {(r["kind"], r["name"]): {"dist": r["dist"], "version": r["version"]} for r in recorded}


def check_providers(ckpt: dict, where):
    """Refuse a component provided by another distribution than the one the checkpoint was written
    with (same kind and name, someone else's code); warn when only the version differs. Without
    ``providers`` (older checkpoints) the ``plugins`` {distribution: version} stands in: a
    component whose distribution is not among them is refused the same way."""
    reg = get_registry()
    recorded = recorded_providers(ckpt, where)
    raw = ckpt.get("plugins")
    plugins = {_norm(d): (d, str(v)) for d, v in raw.items() if isinstance(d, str)} if isinstance(raw, dict) else {}
    changed = {}  # (dist, old version, new version) -> components
    for kind, ref in component_refs(ckpt["spec"]):
        comp = reg.components[kind].get(ref["name"])
        if comp is None:
            continue  # check_plugins_available has said what is missing
        was = recorded.get((kind, comp.name))
        if was is None and _norm(comp.dist) in plugins:  # an older checkpoint: by distribution only
            was = dict(zip(("dist", "version"), plugins[_norm(comp.dist)]))
        if was is None:
            if plugins or recorded:
                written = ", ".join(f"{d} {v}" for d, v in plugins.values()) or "other distributions"
                raise ZooError(f"checkpoint {str(where)!r} was written with the plugin distributions {written}, "
                               f"but {kind} {comp.name!r} now comes from {comp.dist} {comp.version}, which is not "
                               f"among them: another package's code under the same name. Not loading it; "
                               f"uninstall {comp.dist} (or leave it out of ZOO_PLUGINS) and install the "
                               f"distribution the checkpoint was trained with.")
            continue  # nothing recorded at all
        if _norm(was["dist"]) != _norm(comp.dist):
            raise ZooError(f"checkpoint {str(where)!r} was trained with {kind} {comp.name!r} from {was['dist']} "
                           f"{was['version']}, but here {comp.name!r} comes from {comp.dist} {comp.version}: another "
                           f"package's code under the same name. Not loading it; uninstall {comp.dist} (or leave it "
                           f"out of ZOO_PLUGINS) and install {was['dist']}=={was['version']}.")
        if was["version"] != comp.version:
            changed.setdefault((comp.dist, was["version"], comp.version), []).append(f"{kind} {comp.name!r}")
    for (dist, old, new), comps in changed.items():
        warnings.warn(f"checkpoint {str(where)!r} was written with {dist} {old}, and {', '.join(comps)} now "
                      f"come{'s' if len(comps) == 1 else ''} from {dist} {new}; if its outputs are not what "
                      f"they were, install {dist}=={old}.", ZooWarning, stacklevel=2)


def check_plugins_available(ckpt: dict, where):
    reg = get_registry()
    recorded = recorded_providers(ckpt, where)
    missing, needed = [], {}
    for kind, ref in component_refs(ckpt["spec"]):
        if ref["name"] not in reg.components[kind]:
            was = recorded.get((kind, ref["name"]))
            missing.append(f"{kind} {ref['name']!r}" + (f" (from {was['dist']} {was['version']})" if was else ""))
            if was:
                needed[_norm(was["dist"])] = f"{was['dist']}=={was['version']}"
    if missing:
        plugins = ckpt.get("plugins") if isinstance(ckpt.get("plugins"), dict) else {}
        for d, v in plugins.items():
            needed.setdefault(_norm(str(d)), f"{d}=={v}")
        dists = ", ".join(needed.values())
        failed = "".join(f" {d} is installed but did not load: {r}." for d, r in reg.problems if _norm(d) in needed)
        excluded, likely = reg.excluded_hint(dists=needed)
        if likely:  # installed, but ZOO_PLUGINS left it out
            raise ZooError(f"checkpoint {str(where)!r} uses {', '.join(missing)}, which no loaded plugin provides."
                           f"{excluded}")
        raise ZooError(f"checkpoint {str(where)!r} uses {', '.join(missing)}, which no installed plugin provides."
                       f"{failed}{excluded} Install the plugin distributions it was trained with ({dists or 'unknown'}) "
                       f"and retry.")


def model_from_checkpoint(ckpt: dict):
    """Build the model a checkpoint describes and load its weights."""
    model = build_from_spec(ckpt["spec"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise ZooError(f"checkpoint weights do not fit its spec: {str(e).splitlines()[0]}") from None
    return model


def load_run(path, device=None, dtype=None):
    """(model, tokenizer) from a run directory or a checkpoint file; the model in eval mode.

    ``device``: "cpu", "cuda", ... (default: where the checkpoint is loaded, the CPU); ``dtype``:
    a torch dtype or its name ("float32", "bfloat16", "float16"; default: as saved).
    """
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt)
    tok_cfg = ckpt.get("tokenizer")
    if tok_cfg:
        tok = from_config(tok_cfg)
    else:
        tj = resolve_checkpoint_path(path).parent / "tokenizer.json"
        if not tj.is_file():
            raise ZooError(f"{str(path)!r} has no tokenizer: the checkpoint holds no 'tokenizer' entry and "
                           f"there is no {tj.name} next to it. Copy the run's tokenizer.json there.")
        tok = load_config(tj)
    if tok.vocab_size > model.spec["vocab_size"]:
        raise ZooError(f"the tokenizer has {tok.vocab_size} tokens but the model only {model.spec['vocab_size']}; "
                       f"this tokenizer does not belong to this checkpoint.")
    model = model.to(device=device, dtype=parse_dtype(dtype))
    return model.eval(), tok
