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

from zoo.errors import ZooError
from zoo.hookspecs import hookimpl
from zoo.interop.hf.mapping import Cat, Copy, ExpertsIn, ExpertsOut, Zeros, component_sizes, final_norm_and_head, layer_components, need, refuse
from zoo.spec.resolve import layer_selection
from zoo_plugins.hf.archs import Llama

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
        end, ignored = final_norm_and_head(spec, p + "norm_f.weight")
        return out + end, ignored

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


JAMBA_KEYS = {"hidden_size": "hidden_size", "expand": "mamba_expand", "d_state": "mamba_d_state",
              "d_conv": "mamba_d_conv", "dt_rank": "mamba_dt_rank", "conv_bias": "mamba_conv_bias",
              "proj_bias": "mamba_proj_bias"}
JAMBA_OVERRIDE_KEYS = {"from", "every", "shrink_period", "description"}  # what a jamba layers override may set


class Jamba:
    """JambaForCausalLM: RMSNorm pre-norm blocks of a mixer (Mamba with RMSNorms on dt, B and C, or
    attention without positions at layers i % attn_layer_period == attn_layer_offset) and an ffn (a
    MoE, softmax router with the top-k weights not renormalised, at layers i % expert_layer_period ==
    expert_layer_offset, a SwiGLU MLP elsewhere; experts and MLP share intermediate_size). In the zoo:
    the model's attention and ffn are mamba and swiglu, each pattern one ``layers`` override."""

    model_type = "jamba"
    architecture = "JambaForCausalLM"

    @staticmethod
    def entry(cfg):
        arch = "jamba"
        if cfg.get("hidden_act", "silu") != "silu":
            refuse(arch, f"hidden_act={cfg['hidden_act']!r}", "swiglu and the mamba mixer use silu")
        d, h = need(cfg, "hidden_size", arch), need(cfg, "num_attention_heads", arch)
        if d % h or cfg.get("head_dim") not in (None, d // h):
            refuse(arch, f"head_dim={cfg.get('head_dim')} with hidden_size={d}, num_attention_heads={h}",
                   "gqa derives head_dim from d_model / n_heads")
        n = need(cfg, "num_hidden_layers", arch)
        eps = float(cfg.get("rms_norm_eps", 1e-6))
        hidden = need(cfg, "intermediate_size", arch)
        mixer = {**_mixer_params(cfg, arch, JAMBA_KEYS), "bcdt_norm": True, "norm_eps": eps}
        layers = []
        for what, period, offset, part in (
                ("attention", cfg.get("attn_layer_period", 8), cfg.get("attn_layer_offset", 4),
                 {"name": "gqa", "params": {"n_kv_heads": cfg.get("num_key_value_heads") or h}}),
                ("ffn", cfg.get("expert_layer_period", 2), cfg.get("expert_layer_offset", 1),
                 {"name": "moe", "params": {
                     "n_experts": cfg.get("num_experts", 16), "top_k": cfg.get("num_experts_per_tok", 2), "n_shared": 0,
                     "expert": {"name": "swiglu", "params": {"hidden": hidden}}, "score": "softmax",
                     "norm_topk": False, "balance": "aux_loss",
                     "aux_loss_coef": float(cfg.get("router_aux_loss_coef", 0.001))}})):
            if not 0 <= offset < period:
                refuse(arch, f"{what} layer offset {offset} not below its period {period}")
            if offset < n and not (what == "ffn" and cfg.get("num_experts", 16) <= 1):  # else no such layer
                layers.append({"from": offset, "every": period, what: part})
        entry = {"description": "jamba imported from Hugging Face",
                 "attention": {"name": "mamba", "params": mixer},
                 "posenc": {"name": "none"}, "ffn": {"name": "swiglu", "params": {"hidden": hidden}},
                 "norm": "rmsnorm", "bias": False, "tie_weights": bool(cfg.get("tie_word_embeddings", False)),
                 "norm_eps": eps}
        if layers:
            entry["layers"] = layers
        dims = {"n_layers": n, "n_heads": h, "d_model": d,
                "block_size": int(cfg.get("max_position_embeddings") or 2048), "vocab_size": need(cfg, "vocab_size", arch)}
        return entry, dims

    @staticmethod
    def tensors(spec, names):
        p = _prefix(names, "model.")
        out = [("wte.weight", [p + "embed_tokens.weight"], Copy())]
        for i in range(spec["n_layers"]):
            h, b = f"{p}layers.{i}.", f"blocks.{i}."
            out += [(b + "norm1.weight", [h + "input_layernorm.weight"], Copy()),
                    (b + "norm2.weight", [h + "pre_ff_layernorm.weight"], Copy())]
            comps = layer_components(spec, i)
            if comps["attention"]["name"] == "mamba":
                out += _mixer_plan(h + "mamba.", b + "attn.", spec, i, norms=True)
            else:
                out += Llama.attention_plan(spec, i, h + "self_attn.", b + "attn.")
            f, fb = h + "feed_forward.", b + "ffn."
            if comps["ffn"]["name"] == "moe":
                E = comps["ffn"]["params"]["n_experts"]
                out += [(fb + "router.weight", [f + "router.weight"], Copy()), (fb + "route_bias", [], Zeros((E,))),
                        (fb + "w_in", [f + f"experts.{e}.{w}_proj.weight" for e in range(E) for w in ("gate", "up")],
                         ExpertsIn()),
                        (fb + "w_out", [f + f"experts.{e}.down_proj.weight" for e in range(E)], ExpertsOut())]
            else:
                hidden = component_sizes(spec, "ffn", i)["hidden"]
                out += [(fb + "gate_up.weight", [f + "gate_proj.weight", f + "up_proj.weight"], Cat([hidden, hidden])),
                        (fb + "down.weight", [f + "down_proj.weight"], Copy())]
        end, ignored = final_norm_and_head(spec, p + "final_layernorm.weight")
        return out + end, ignored

    @staticmethod
    def _patterns(spec):
        """{"attention": override or None, "ffn": override or None}, and the reasons the spec's
        ``layers`` are not Jamba's two patterns."""
        found, why = {"attention": None, "ffn": None}, []
        for o in spec.get("layers") or []:
            kinds = [k for k in ("attention", "ffn") if k in o]
            extra = set(o) - JAMBA_OVERRIDE_KEYS - set(kinds)
            if len(kinds) != 1 or found[kinds[0]] is not None or (extra and not (
                    extra == {"to"} and o["to"] >= spec["n_layers"])):
                why.append("its layers overrides are not one attention and one ffn pattern (from, every)")
                break
            found[kinds[0]] = o
        return found, why

    @classmethod
    def matches(cls, spec):
        a, f = spec["attention"], spec["ffn"]
        why = []
        if a["name"] != "mamba":
            why.append("attention is not mamba")
        else:
            why += _mixer_reasons(a["params"], norms=True)
            if a["params"].get("norm_eps", 1e-6) != spec.get("norm_eps", 1e-6):
                why.append("its mamba mixers' norm_eps is not the model's")
        if spec["posenc"]["name"] != "none":
            why.append("posenc is not none")
        if f["name"] != "swiglu":
            why.append("ffn is not swiglu")
        if spec["norm"] != "rmsnorm" or spec["bias"]:
            why.append("norm is not RMSNorm without biases")
        found, bad = cls._patterns(spec)
        why += bad
        att, moe = found["attention"], found["ffn"]
        if att is not None and (att["attention"]["name"] not in ("gqa", "mha", "mqa")
                                or att["attention"]["params"].get("qk_norm") or att["attention"]["params"].get("window")):
            why.append("its attention layers are not gqa/mha/mqa without qk_norm or a window")
        if moe is not None:
            p = moe["ffn"]["params"]
            if moe["ffn"]["name"] != "moe" or (p.get("expert") or {}).get("name") != "swiglu" or p.get("n_shared") \
                    or p.get("score") != "softmax" or (p.get("norm_topk") and p.get("top_k", 2) > 1) \
                    or p.get("capacity_factor"):
                why.append("its expert layers are not Jamba's moe (swiglu experts, softmax, top-k not renormalised, "
                           "no shared experts, dropless)")
            elif not why and component_sizes(spec, "ffn", first_layer(moe, spec))["expert_hidden"] != \
                    component_sizes(spec, "ffn")["hidden"]:
                why.append("its experts are not as wide as its swiglu (Jamba's share intermediate_size)")
        for o in (att, moe):
            if o is not None and not why:
                start, _, every = layer_selection(o, spec["n_layers"])
                if start >= every:
                    why.append(f"a pattern from layer {start} every {every} is not i % {every} == {start} "
                               f"(Jamba's offset is below its period)")
        return why

    @classmethod
    def config(cls, spec, base):
        found, _ = cls._patterns(spec)
        n = spec["n_layers"]
        cfg = {"architectures": ["JambaForCausalLM"], "model_type": "jamba", "vocab_size": spec["vocab_size"],
               "hidden_size": spec["d_model"], "intermediate_size": component_sizes(spec, "ffn")["hidden"],
               "num_hidden_layers": n, "num_attention_heads": spec["n_heads"],
               "num_key_value_heads": spec["n_heads"], "hidden_act": "silu",
               "rms_norm_eps": spec.get("norm_eps", 1e-6), "tie_word_embeddings": spec["tie_weights"],
               "max_position_embeddings": spec["block_size"], "use_mamba_kernels": False, "attention_dropout": 0.0,
               "num_experts": 1, "num_experts_per_tok": 1, "expert_layer_period": n + 1, "expert_layer_offset": n,
               "attn_layer_period": n + 1, "attn_layer_offset": n,  # none, until a pattern says where
               **_mixer_config(spec, 0, JAMBA_KEYS)}
        att, moe = found["attention"], found["ffn"]
        if att is not None:
            start, _, every = layer_selection(att, n)
            cfg.update(attn_layer_period=every, attn_layer_offset=start,
                       num_key_value_heads=component_sizes(spec, "attention", start)["n_kv_heads"])
        if moe is not None:
            start, _, every = layer_selection(moe, n)
            p = moe["ffn"]["params"]
            cfg.update(expert_layer_period=every, expert_layer_offset=start, num_experts=p["n_experts"],
                       num_experts_per_tok=p["top_k"], router_aux_loss_coef=p.get("aux_loss_coef", 0.001))
            if p["n_experts"] < 2:
                raise ZooError("cannot export a moe of one expert as Jamba: transformers builds a plain MLP there, "
                               "without a router; use a swiglu ffn instead.")
        return cfg


def first_layer(override, spec):
    """The first layer a ``layers`` override selects."""
    return layer_selection(override, spec["n_layers"])[0]


@hookimpl
def register_hf_arch(register):
    for a in (Mamba, Jamba):
        register(a.model_type, a.entry, a.tensors, a.matches, a.config)

