"""Hugging Face mappings of state space models: Mamba (Gu and Dao 2023, arXiv:2312.00752;
``MambaForCausalLM``) and Jamba (Lieber et al. 2024, arXiv:2403.19887; ``JambaForCausalLM``),
registered through the hook ``register_hf_arch`` as any package's mappings are (see
zoo_plugins.hf.archs for the contract: ``entry``, ``tensors``, ``matches``, ``config``).

    mamba   posenc none + mamba mixers, no ffn, RMSNorm, tied head
    jamba   posenc none + mamba mixers with RMSNorms on dt, B and C, gqa at layers i % P == O
            (attn_layer_period, attn_layer_offset), a moe of swiglu experts (softmax, top-k not
            renormalised) at layers i % P' == O' (expert_layer_period, expert_layer_offset), swiglu
            elsewhere, RMSNorm

Sizes the mamba mixer derives from its params (D, R, N, K) are asked of it
(:func:`zoo.interop.hf.mapping.component_sizes`).
"""
from __future__ import annotations

from zoo.hookspecs import hookimpl
from zoo.interop.hf.mapping import Copy, component_sizes, layer_components, need, refuse

MIXER = ("A_log", "D", "conv1d.weight", "in_proj.weight", "x_proj.weight", "dt_proj.weight", "dt_proj.bias",
         "out_proj.weight")


def _prefix(names, prefix):
    """The prefix of the checkpoint's names: ``prefix`` if they have it (or on export, names None)."""
    return prefix if names is None or any(n.startswith(prefix) for n in names) else ""


def _mixer_params(cfg, arch, keys):
    """The mamba mixer's params from a config, ``keys`` naming its config keys (Mamba's or Jamba's)."""
    d = need(cfg, keys["hidden_size"], arch)
    expand = cfg.get(keys["expand"], 2)
    inner = cfg.get("intermediate_size") if arch == "mamba" else None
    if inner is not None and inner != int(expand * d):
        refuse(arch, f"intermediate_size={inner} with expand={expand} x hidden_size={d}",
               "the mamba mixer has int(expand x d_model) channels")
    rank = cfg.get(keys["dt_rank"], "auto")
    p = {"d_state": int(cfg.get(keys["d_state"], 16)), "d_conv": int(cfg.get(keys["d_conv"], 4)), "expand": expand,
         "dt_rank": rank if rank == "auto" else int(rank), "conv_bias": bool(cfg.get(keys["conv_bias"], True)),
         "proj_bias": bool(cfg.get(keys["proj_bias"], False))}
    for zk, hk in (("dt_min", "time_step_min"), ("dt_max", "time_step_max"), ("dt_init_floor", "time_step_floor"),
                   ("dt_scale", "time_step_scale")):  # initialisation only; kept so a re-export says the same
        if cfg.get(hk) is not None:
            p[zk] = float(cfg[hk])
    if cfg.get("time_step_init_scheme") in ("random", "constant"):
        p["dt_init"] = cfg["time_step_init_scheme"]
    return p


def _mixer_plan(h, b, spec, i, norms):
    """The mixer's tensors of layer i: HF prefix h, zoo prefix b."""
    out = [(b + n, [h + n], Copy()) for n in MIXER]
    p = layer_components(spec, i)["attention"]["params"]
    if p.get("conv_bias", True):
        out.append((b + "conv1d.bias", [h + "conv1d.bias"], Copy()))
    if p.get("proj_bias"):
        out += [(b + "in_proj.bias", [h + "in_proj.bias"], Copy()), (b + "out_proj.bias", [h + "out_proj.bias"], Copy())]
    if norms:
        out += [(b + f"{z}.weight", [h + f"{n}.weight"], Copy())
                for z, n in (("dt_norm", "dt_layernorm"), ("b_norm", "b_layernorm"), ("c_norm", "c_layernorm"))]
    return out


def _mixer_reasons(p, norms):
    why = []
    if bool(p.get("bcdt_norm")) != norms:
        why.append("its mamba mixers " + ("lack" if norms else "have") + " the RMSNorms on dt, B and C (bcdt_norm)")
    if float(p.get("expand", 2)) != int(p.get("expand", 2)):
        why.append(f"mamba's expand={p['expand']} is not a whole number")
    return why


def _mixer_config(spec, layer, keys):
    """The config keys of the mamba mixer of ``layer``, named by ``keys``."""
    p = layer_components(spec, layer)["attention"]["params"]
    s = component_sizes(spec, "attention", layer)
    return {keys["d_state"]: s["d_state"], keys["d_conv"]: s["d_conv"], keys["expand"]: int(p.get("expand", 2)),
            keys["dt_rank"]: s["dt_rank"], keys["conv_bias"]: bool(p.get("conv_bias", True)),
            keys["proj_bias"]: bool(p.get("proj_bias", False))}


MAMBA_KEYS = {"hidden_size": "hidden_size", "expand": "expand", "d_state": "state_size", "d_conv": "conv_kernel",
              "dt_rank": "time_step_rank", "conv_bias": "use_conv_bias", "proj_bias": "use_bias"}


class Mamba:
    """MambaForCausalLM: embeddings, blocks of RMSNorm + mixer (no ffn), final RMSNorm, tied head."""

    model_type = "mamba"
    architecture = "MambaForCausalLM"

    @staticmethod
    def entry(cfg):
        if cfg.get("hidden_act", "silu") != "silu":
            refuse("mamba", f"hidden_act={cfg['hidden_act']!r}", "the mamba mixer uses silu")
        params = _mixer_params(cfg, "mamba", MAMBA_KEYS)
        entry = {"description": "mamba imported from Hugging Face",
                 "attention": {"name": "mamba", "params": params},
                 "posenc": {"name": "none"}, "ffn": {"name": "none"},
                 "norm": "rmsnorm", "bias": False, "tie_weights": bool(cfg.get("tie_word_embeddings", True)),
                 "norm_eps": float(cfg.get("layer_norm_epsilon", 1e-5))}
        # no heads and no positions: one "head" (d_model divides by it), and a training context of 2048
        dims = {"n_layers": need(cfg, "num_hidden_layers", "mamba"), "n_heads": 1,
                "d_model": need(cfg, "hidden_size", "mamba"), "block_size": 2048,
                "vocab_size": need(cfg, "vocab_size", "mamba")}
        return entry, dims

    @staticmethod
    def tensors(spec, names):
        p = _prefix(names, "backbone.")
        out = [("wte.weight", [p + "embeddings.weight"], Copy())]
        for i in range(spec["n_layers"]):
            h, b = f"{p}layers.{i}.", f"blocks.{i}."
            out.append((b + "norm1.weight", [h + "norm.weight"], Copy()))
            out += _mixer_plan(h + "mixer.", b + "attn.", spec, i, norms=False)
        out.append(("norm_f.weight", [p + "norm_f.weight"], Copy()))
        ignored = set()
        if spec["tie_weights"]:
            ignored.add("lm_head.weight")
        else:
            out.append(("lm_head.weight", ["lm_head.weight"], Copy()))
        return out, ignored

    @staticmethod
    def matches(spec):
        why = []
        if spec["attention"]["name"] != "mamba":
            why.append("attention is not mamba")
        else:
            why += _mixer_reasons(spec["attention"]["params"], norms=False)
        if spec["posenc"]["name"] != "none":
            why.append("posenc is not none")
        if spec["ffn"]["name"] != "none":
            why.append("it has an ffn")
        if spec["norm"] != "rmsnorm":
            why.append("norm is not RMSNorm")
        if spec.get("layers"):
            why.append("it sets per-layer components (layers)")
        return why

    @staticmethod
    def config(spec, base):
        p = spec["attention"]["params"]
        cfg = {"architectures": ["MambaForCausalLM"], "model_type": "mamba", "vocab_size": spec["vocab_size"],
               "hidden_size": spec["d_model"], "num_hidden_layers": spec["n_layers"],
               "intermediate_size": component_sizes(spec, "attention")["d_inner"],
               "layer_norm_epsilon": spec.get("norm_eps", 1e-6), "hidden_act": "silu",
               "tie_word_embeddings": spec["tie_weights"], "residual_in_fp32": False,
               "time_step_min": p.get("dt_min", 0.001), "time_step_max": p.get("dt_max", 0.1),
               "time_step_floor": p.get("dt_init_floor", 1e-4), "time_step_scale": p.get("dt_scale", 1.0),
               "time_step_init_scheme": p.get("dt_init", "random"),
               **_mixer_config(spec, 0, MAMBA_KEYS)}
        return cfg


@hookimpl
def register_hf_arch(register):
    for a in (Mamba,):
        register(a.model_type, a.entry, a.tensors, a.matches, a.config)

