"""The Hugging Face mapping of Mamba-2 (Dao and Gu 2024, arXiv:2405.21060): transformers'
``Mamba2ForCausalLM`` (``model_type: mamba2``) <-> the zoo's mixer-only blocks of the ``mamba2``
mixer, no positional encoding, RMSNorm, registered through the hook ``register_hf_arch`` as any
package registers one.

The mixer is laid out as transformers' ``Mamba2Mixer``, so every tensor is a copy:
``backbone.layers.i.norm`` is the block's norm, ``backbone.layers.i.mixer.*`` the mixer's tensors
under the same names, ``backbone.embeddings`` (``backbone.embedding`` in older checkpoints) the token
embedding, ``backbone.norm_f`` the final norm. Sizes the mixer derives from its params (its heads,
d_inner) are asked of the component. Config fields that only set the initialisation
(``time_step_min/max/floor``) are kept in the params; ``residual_in_fp32`` changes nothing in the
float32 the zoo imports in; what no component represents (another activation, a config whose
heads do not fill d_inner) is refused by name.

transformers applies ``time_step_limit`` in its chunked path and not in its one-token step; the zoo
applies it in both. The two agree whenever the limit does not bite, as with the default (0, inf)
of the released checkpoints.
"""
from __future__ import annotations

import math

from zoo.hookspecs import hookimpl
from zoo.interop.hf.mapping import Copy, component_sizes, final_norm_and_head, layer_components, need, refuse

ARCH = "mamba2"
MIXER_TENSORS = ("in_proj.weight", "in_proj.bias", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D",
                 "norm.weight", "out_proj.weight", "out_proj.bias")


def _whole(cfg, key, default=None):
    v = cfg.get(key, default)
    if v is None:
        need(cfg, key, ARCH)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        refuse(ARCH, f"{key}={v!r} (not a positive whole number)")
    return v


def _number(x):
    """A number of config.json: transformers 5 writes infinity as {"__float__": "Infinity"}, the json
    module as Infinity; null is no bound."""
    if isinstance(x, dict) and "__float__" in x:
        x = x["__float__"]
    try:
        return math.inf if x is None else float(x)
    except (TypeError, ValueError):
        refuse(ARCH, f"time_step_limit holding {x!r} (not a number)")


def _limit(v):
    """Mamba2Config.time_step_limit -> the mixer's [min, max or None (no bound)]."""
    if v is None:
        return [0.0, None]
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        refuse(ARCH, f"time_step_limit={v!r} (not a pair [min, max])")
    lo, hi = (_number(x) for x in v)
    return [lo, None if math.isinf(hi) else hi]


def entry(cfg):
    act = cfg.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        refuse(ARCH, f"hidden_act={act!r}", "the mamba2 mixer's convolution is followed by SiLU")
    d = _whole(cfg, "hidden_size")
    expand, H, P = _whole(cfg, "expand", 2), _whole(cfg, "num_heads"), _whole(cfg, "head_dim", 64)
    if expand * d != H * P:
        refuse(ARCH, f"num_heads x head_dim = {H} x {P} = {H * P}, not expand x hidden_size = {expand * d}",
               "the mixer's heads fill d_inner")
    eps = float(cfg.get("layer_norm_epsilon", 1e-5))
    params = {"expand": expand, "head_dim": P, "d_state": _whole(cfg, "state_size", 128),
              "n_groups": _whole(cfg, "n_groups", 8), "d_conv": _whole(cfg, "conv_kernel", 4),
              "conv_bias": bool(cfg.get("use_conv_bias", True)), "chunk_size": _whole(cfg, "chunk_size", 256),
              "time_step_limit": _limit(cfg.get("time_step_limit")), "norm_eps": eps}
    for k in ("time_step_min", "time_step_max", "time_step_floor"):
        if cfg.get(k) is not None:
            params[k] = float(cfg[k])
    ent = {"description": "Mamba-2 imported from Hugging Face", "attention": {"name": "mamba2", "params": params},
           "posenc": {"name": "none"}, "ffn": "none", "norm": "rmsnorm", "norm_eps": eps,
           "bias": bool(cfg.get("use_bias", False)), "tie_weights": bool(cfg.get("tie_word_embeddings", False))}
    dims = {"n_layers": _whole(cfg, "num_hidden_layers"),
            "n_heads": H if d % H == 0 else 1,  # the model-wide heads; the mamba2 mixer has its own
            "d_model": d,
            "block_size": int(cfg.get("max_position_embeddings") or 2048),  # a training context; decoding goes past it
            "vocab_size": _whole(cfg, "vocab_size")}
    return ent, dims


def _prefix(names):
    return "backbone." if names is None or any(n.startswith("backbone.") for n in names) else ""


def tensors(spec, names):
    p = _prefix(names)
    emb = p + "embeddings.weight"
    if names is not None and emb not in names and p + "embedding.weight" in names:
        emb = p + "embedding.weight"  # older checkpoints (transformers renames it on load)
    out = [("wte.weight", [emb], Copy())]
    bias = spec["bias"]
    conv_bias = spec["attention"]["params"].get("conv_bias", True)
    for i in range(spec["n_layers"]):
        h, b = f"{p}layers.{i}.", f"blocks.{i}."
        out.append((f"{b}norm1.weight", [f"{h}norm.weight"], Copy()))
        for t in MIXER_TENSORS:
            if (t in ("in_proj.bias", "out_proj.bias") and not bias) or (t == "conv1d.bias" and not conv_bias):
                continue
            out.append((f"{b}attn.{t}", [f"{h}mixer.{t}"], Copy()))
    end, ignored = final_norm_and_head(spec, p + "norm_f.weight")
    return out + end, ignored


def matches(spec):
    why = []
    if spec.get("layers"):
        kinds = {(layer_components(spec, i)["attention"]["name"], layer_components(spec, i)["ffn"]["name"])
                 for i in range(spec["n_layers"])}
        if kinds != {("mamba2", "none")}:
            why.append("it sets per-layer components (layers) other than mamba2 without an ffn")
    if spec["attention"]["name"] != "mamba2":
        why.append("attention is not mamba2")
    if spec["posenc"]["name"] != "none":
        why.append("posenc is not none")
    if spec["ffn"]["name"] != "none":
        why.append("the blocks have an ffn (Mamba2ForCausalLM's blocks are the mixer only)")
    if spec["norm"] != "rmsnorm":
        why.append("norm is not RMSNorm")
    if spec["attention"]["name"] == "mamba2":
        eps = spec.get("norm_eps") or 1e-6
        if eps != spec["attention"]["params"].get("norm_eps", 1e-5):
            why.append(f"the model's norm_eps ({eps:g}) differs from the mixer's gated norm's "
                       f"({spec['attention']['params'].get('norm_eps', 1e-5):g}); Mamba2Config has one "
                       f"layer_norm_epsilon for both")
    return why


def config(spec, base):
    a = spec["attention"]["params"]
    s = component_sizes(spec, "attention")
    lo, hi = a.get("time_step_limit", [0.0, None])
    cfg = {"architectures": ["Mamba2ForCausalLM"], "model_type": ARCH, "vocab_size": spec["vocab_size"],
           "hidden_size": spec["d_model"], "num_hidden_layers": spec["n_layers"], "num_heads": s["n_heads"],
           "head_dim": s["head_dim"], "state_size": s["d_state"], "expand": a.get("expand", 2),
           "conv_kernel": s["d_conv"], "n_groups": s["n_groups"], "use_bias": spec["bias"],
           "use_conv_bias": a.get("conv_bias", True), "hidden_act": "silu",
           "layer_norm_epsilon": a.get("norm_eps", 1e-5), "chunk_size": a.get("chunk_size", 256),
           "time_step_limit": [lo, math.inf if hi is None else hi], "residual_in_fp32": True,
           "tie_word_embeddings": spec["tie_weights"]}
    for k in ("time_step_min", "time_step_max", "time_step_floor"):
        if k in a:
            cfg[k] = a[k]
    return cfg


@hookimpl
def register_hf_arch(register):
    register(ARCH, entry, tensors, matches, config)
