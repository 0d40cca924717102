"""The built-in Hugging Face architecture mappings: GPT-2 (Radford et al. 2019), Llama (Touvron et
al. 2023, arXiv:2302.13971), Mistral (Jiang et al. 2023, arXiv:2310.06825), Mixtral (Jiang et al.
2024, arXiv:2401.04088) and DeepSeek-V2 (DeepSeek-AI 2024, arXiv:2405.04434), registered through the
hook ``register_hf_arch`` exactly as a package registers its own.

Each class has ``entry(config) -> (manifest entry, dims)`` (from_hf), which refuses by name what no
component represents; ``tensors(spec, names) -> ([(zoo name, [HF names], op)], ignored names)``, with
``names`` None on export (the names transformers writes); ``matches(spec) -> [reasons it does not
fit]`` and ``config(spec, base) -> config.json`` (to_hf) for export. A tensor op has ``fwd`` (HF
tensors -> the zoo tensor) and its exact inverse ``inv``, so export undoes import. Sizes a component
derives from its params (SwiGLU's and the experts' hidden width, MLA's ranks and head sizes, GQA's
key/value heads) are asked of the component (:func:`zoo.interop.hf.mapping.component_sizes`).
"""
from __future__ import annotations

import math
import re

from zoo.errors import ZooError
from zoo.hookspecs import hookimpl
from zoo.interop.hf.mapping import (
    Cat,
    Copy,
    ExpertsIn,
    ExpertsOut,
    RopeRows,
    T,
    Zeros,
    component_sizes,
    final_norm_and_head,
    get_mscale,
    layer_components,
    need,
    refuse,
    yarn,
)


def _prefix(names, prefix):
    """The prefix of the checkpoint's names: ``prefix`` if they have it (or on export, names None)."""
    return prefix if names is None or any(n.startswith(prefix) for n in names) else ""


def _per_layer_reason(spec):
    return ["it sets per-layer components (layers)"] if spec.get("layers") else []


def swiglu_hidden(spec, layer=None, ffn=None):
    """The hidden width of a swiglu ffn (the model's, a layer's, or ``ffn``), asked of swiglu."""
    return component_sizes(spec, "ffn", layer, ffn)["hidden"]


def expert_hidden(spec, layer=None):
    """The hidden width of the moe's experts, asked of the moe."""
    return component_sizes(spec, "ffn", layer)["expert_hidden"]


class GPT2:
    """GPT-2 (Radford et al. 2019): Conv1D weights stored (in, out), transposed to nn.Linear's (out, in)."""

    model_type = "gpt2"
    architecture = "GPT2LMHeadModel"

    @staticmethod
    def entry(cfg):
        act = cfg.get("activation_function", "gelu_new")
        approx = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}.get(act)
        if approx is None:
            refuse("gpt2", f"activation_function={act!r}", "the mlp ffn has exact and tanh GELU only")
        if not cfg.get("scale_attn_weights", True):
            refuse("gpt2", "scale_attn_weights=false (unscaled attention)")
        if cfg.get("scale_attn_by_inverse_layer_idx"):
            refuse("gpt2", "scale_attn_by_inverse_layer_idx=true")
        if cfg.get("add_cross_attention"):
            refuse("gpt2", "add_cross_attention=true (an encoder-decoder layer)")
        d = need(cfg, "n_embd", "gpt2")
        hidden = cfg.get("n_inner") or 4 * d
        mult = hidden / d
        if int(mult * d) != hidden:
            refuse("gpt2", f"n_inner={hidden}, which is not a multiple of n_embd={d} the mlp can express")
        n_pos = need(cfg, "n_positions", "gpt2")
        entry = {"description": "GPT-2 imported from Hugging Face",
                 "attention": {"name": "mha"},
                 "posenc": {"name": "learned", "params": {"max_len": n_pos}},
                 "ffn": {"name": "mlp", "params": {"hidden_mult": int(mult) if mult == int(mult) else mult,
                                                   "approximate": approx}},
                 "norm": "layernorm", "bias": True, "tie_weights": bool(cfg.get("tie_word_embeddings", True)),
                 "norm_eps": float(cfg.get("layer_norm_epsilon", 1e-5))}
        dims = {"n_layers": need(cfg, "n_layer", "gpt2"), "n_heads": need(cfg, "n_head", "gpt2"), "d_model": d,
                "block_size": n_pos, "vocab_size": need(cfg, "vocab_size", "gpt2")}
        return entry, dims

    @staticmethod
    def tensors(spec, names):
        """([(zoo name, [hf names], op)], HF names to ignore); op: a Copy (forward and inverse)."""
        p = _prefix(names, "transformer.")
        out = [("wte.weight", [p + "wte.weight"], Copy()), ("posenc.wpe.weight", [p + "wpe.weight"], Copy())]
        for i in range(spec["n_layers"]):
            h, b = f"{p}h.{i}.", f"blocks.{i}."
            for z, n, op in (("norm1", "ln_1", Copy()), ("attn.qkv", "attn.c_attn", T()), ("attn.proj", "attn.c_proj", T()),
                             ("norm2", "ln_2", Copy()), ("ffn.fc", "mlp.c_fc", T()), ("ffn.proj", "mlp.c_proj", T())):
                out.append((f"{b}{z}.weight", [f"{h}{n}.weight"], op))
                out.append((f"{b}{z}.bias", [f"{h}{n}.bias"], Copy()))
        out += [("norm_f.weight", [p + "ln_f.weight"], Copy()), ("norm_f.bias", [p + "ln_f.bias"], Copy())]
        if not spec["tie_weights"]:
            out.append(("lm_head.weight", ["lm_head.weight"], Copy()))
        ignored = {n for n in names or () if re.fullmatch(re.escape(p) + r"h\.\d+\.attn\.(masked_)?bias", n)}
        if spec["tie_weights"]:
            ignored.add("lm_head.weight")  # transformers ties it to wte and ignores a stored copy
        return out, ignored

    @staticmethod
    def matches(spec):
        a, pe, f = spec["attention"], spec["posenc"], spec["ffn"]
        why = []
        if not (a["name"] == "mha" or (a["name"] == "gqa" and a["params"].get("n_kv_heads") == spec["n_heads"])):
            why.append("attention is not multi-head (mha)")
        if a["params"].get("qk_norm") or a["params"].get("window"):
            why.append("attention has qk_norm or a window")
        if pe["name"] != "learned":
            why.append("posenc is not learned")
        if f["name"] != "mlp":
            why.append("ffn is not the GELU mlp")
        if spec["norm"] != "layernorm" or not spec["bias"]:
            why.append("norm is not LayerNorm with biases")
        return why + _per_layer_reason(spec)

    @staticmethod
    def config(spec, base):
        pe, f = spec["posenc"]["params"], spec["ffn"]["params"]
        cfg = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": spec["vocab_size"],
               "n_positions": pe.get("max_len") or spec["block_size"], "n_embd": spec["d_model"],
               "n_layer": spec["n_layers"], "n_head": spec["n_heads"],
               "n_inner": component_sizes(spec, "ffn")["hidden"],
               "activation_function": "gelu_new" if f.get("approximate") == "tanh" else "gelu",
               "layer_norm_epsilon": spec.get("norm_eps", 1e-5), "tie_word_embeddings": spec["tie_weights"],
               "resid_pdrop": spec["dropout"], "embd_pdrop": spec["dropout"], "attn_pdrop": spec["dropout"],
               "scale_attn_weights": True}
        return cfg


class Llama:
    """Llama (Touvron et al. 2023), and Mistral (Jiang et al. 2023) with its sliding window.

    q/k/v projections are concatenated into gqa's fused qkv, gate/up into swiglu's gate_up. The
    Hugging Face checkpoints already hold q and k in the half-split rotary layout the rope
    component uses, so no permutation is needed.
    """

    model_type = "llama"
    architecture = "LlamaForCausalLM"
    ROPE_TYPES = ("default", "linear", "llama3", "yarn")

    @classmethod
    def entry(cls, cfg):
        arch = cfg.get("model_type", cls.model_type)
        if cfg.get("hidden_act", "silu") != "silu":
            refuse(arch, f"hidden_act={cfg['hidden_act']!r}", "swiglu uses silu")
        for key in ("attention_bias", "mlp_bias"):
            if cfg.get(key):
                refuse(arch, f"{key}=true", "the llama mapping has no biases")
        d, h = need(cfg, "hidden_size", arch), need(cfg, "num_attention_heads", arch)
        if d % h:
            refuse(arch, f"hidden_size={d} not divisible by num_attention_heads={h}")
        if cfg.get("head_dim") not in (None, d // h):
            refuse(arch, f"head_dim={cfg['head_dim']} != hidden_size / num_attention_heads = {d // h}",
                    "gqa derives head_dim from d_model / n_heads")
        if cfg.get("partial_rotary_factor", 1.0) != 1.0:
            refuse(arch, f"partial_rotary_factor={cfg['partial_rotary_factor']}")
        rp = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        theta = rp.get("rope_theta", cfg.get("rope_theta", 10000.0))
        rtype = rp.get("rope_type", rp.get("type", "default"))
        if rtype not in cls.ROPE_TYPES:
            refuse(arch, f"rope scaling type {rtype!r}", f"the rope component knows {', '.join(cls.ROPE_TYPES)}")
        scaling = None
        if rtype == "linear":
            scaling = {"type": "linear", "factor": float(rp["factor"])}
        elif rtype == "llama3":
            scaling = {"type": "llama3", "factor": float(rp["factor"]), "low_freq_factor": float(rp["low_freq_factor"]),
                       "high_freq_factor": float(rp["high_freq_factor"]),
                       "original_max_position_embeddings": int(rp["original_max_position_embeddings"])}
        elif rtype == "yarn":
            scaling = yarn(rp, cfg)
        kv = cfg.get("num_key_value_heads") or h
        att = {"n_kv_heads": kv}
        window = cfg.get("sliding_window") if cfg.get("use_sliding_window", True) else None
        if window is not None:
            if arch == "llama":
                refuse(arch, "sliding_window in a llama config")
            att["window"] = int(window)
        posenc = {"theta": float(theta)}
        if scaling:
            posenc["scaling"] = scaling
        entry = {"description": f"{arch} imported from Hugging Face",
                 "attention": {"name": "gqa", "params": att},
                 "posenc": {"name": "rope", "params": posenc},
                 "ffn": {"name": "swiglu", "params": {"hidden": need(cfg, "intermediate_size", arch)}},
                 "norm": "rmsnorm", "bias": False, "tie_weights": bool(cfg.get("tie_word_embeddings", False)),
                 "norm_eps": float(cfg.get("rms_norm_eps", 1e-6))}
        dims = {"n_layers": need(cfg, "num_hidden_layers", arch), "n_heads": h, "d_model": d,
                "block_size": int(cfg.get("max_position_embeddings") or 2048),
                "vocab_size": need(cfg, "vocab_size", arch)}
        return entry, dims

    @classmethod
    def tensors(cls, spec, names):
        p = _prefix(names, "model.")
        out = [("wte.weight", [p + "embed_tokens.weight"], Copy())]
        for i in range(spec["n_layers"]):
            h, b = f"{p}layers.{i}.", f"blocks.{i}."
            out += [(b + "norm1.weight", [h + "input_layernorm.weight"], Copy()),
                    (b + "norm2.weight", [h + "post_attention_layernorm.weight"], Copy())]
            out += cls.attention_plan(spec, i, h + "self_attn.", b + "attn.")
            out += cls.ffn_plan(spec, i, h, b + "ffn.")
        end, ignored = final_norm_and_head(spec, p + "norm.weight",
                                           (n for n in names or () if n.endswith("rotary_emb.inv_freq")))
        return out + end, ignored

    @staticmethod
    def attention_plan(spec, i, h, b):
        s = component_sizes(spec, "attention", i)
        kv, hd = s["n_kv_heads"], s["head_dim"]
        return [(b + "qkv.weight", [h + f"{x}_proj.weight" for x in "qkv"], Cat([spec["n_heads"] * hd, kv * hd, kv * hd])),
                (b + "proj.weight", [h + "o_proj.weight"], Copy())]

    @staticmethod
    def ffn_plan(spec, i, h, b):
        hidden = swiglu_hidden(spec, i)
        return [(b + "gate_up.weight", [h + "mlp.gate_proj.weight", h + "mlp.up_proj.weight"], Cat([hidden, hidden])),
                (b + "down.weight", [h + "mlp.down_proj.weight"], Copy())]

    @staticmethod
    def matches(spec):
        a, pe, f = spec["attention"], spec["posenc"], spec["ffn"]
        why = []
        if a["name"] not in ("gqa", "mha", "mqa") or a["params"].get("qk_norm"):
            why.append("attention is not gqa/mha/mqa without qk_norm")
        if pe["name"] != "rope" or pe["params"].get("rotary_fraction", 1.0) != 1.0:
            why.append("posenc is not full rope")
        if f["name"] != "swiglu":
            why.append("ffn is not swiglu")
        if spec["norm"] != "rmsnorm" or spec["bias"]:
            why.append("norm is not RMSNorm without biases")
        return why + _per_layer_reason(spec)

    @staticmethod
    def config(spec, base):
        a, pe = spec["attention"], spec["posenc"]["params"]
        s = component_sizes(spec, "attention")
        kv = s["n_kv_heads"]
        window = a["params"].get("window")
        mt = "mistral" if window else "llama"
        if window and pe.get("scaling"):
            raise ZooError("cannot export: a sliding window (mistral) together with rope scaling has no Hugging "
                           "Face architecture here.")
        cfg = {"architectures": ["MistralForCausalLM" if window else "LlamaForCausalLM"], "model_type": mt,
               "vocab_size": spec["vocab_size"], "hidden_size": spec["d_model"],
               "intermediate_size": swiglu_hidden(spec), "num_hidden_layers": spec["n_layers"],
               "num_attention_heads": spec["n_heads"], "num_key_value_heads": kv,
               "head_dim": s["head_dim"], "hidden_act": "silu",
               "max_position_embeddings": spec["block_size"], "rms_norm_eps": spec.get("norm_eps", 1e-6),
               "tie_word_embeddings": spec["tie_weights"], "rope_theta": pe.get("theta", 10000.0),
               "attention_dropout": 0.0}
        if mt == "llama":
            cfg.update(attention_bias=False, mlp_bias=False)
            s = pe.get("scaling")
            if s:
                cfg["rope_scaling"] = {"rope_type": s["type"], **{k: v for k, v in s.items() if k != "type"}}
        else:
            cfg["sliding_window"] = window
        return cfg


class Mistral(Llama):
    model_type = "mistral"
    architecture = "MistralForCausalLM"


class Mixtral(Llama):
    """Mixtral (Jiang et al. 2024): Mistral's attention, a sparse MoE of SwiGLU experts in every layer
    (softmax router, top-k renormalised), no shared experts."""

    model_type = "mixtral"
    architecture = "MixtralForCausalLM"

    @classmethod
    def entry(cls, cfg):
        entry, dims = super().entry(cfg)
        E, k = need(cfg, "num_local_experts", "mixtral"), need(cfg, "num_experts_per_tok", "mixtral")
        entry["ffn"] = {"name": "moe", "params": {
            "n_experts": E, "top_k": k, "n_shared": 0,
            "expert": {"name": "swiglu", "params": {"hidden": need(cfg, "intermediate_size", "mixtral")}},
            "score": "softmax", "norm_topk": True, "balance": "aux_loss",
            "aux_loss_coef": float(cfg.get("router_aux_loss_coef", 0.001))}}
        return entry, dims

    @staticmethod
    def ffn_plan(spec, i, h, b):
        p = spec["ffn"]["params"]
        E, m = p["n_experts"], h + "block_sparse_moe."
        return [(b + "router.weight", [m + "gate.weight"], Copy()),
                (b + "route_bias", [], Zeros((E,))),
                (b + "w_in", [m + f"experts.{e}.{w}.weight" for e in range(E) for w in ("w1", "w3")], ExpertsIn()),
                (b + "w_out", [m + f"experts.{e}.w2.weight" for e in range(E)], ExpertsOut())]

    @staticmethod
    def matches(spec):
        f = spec["ffn"]
        why = [w for w in Llama.matches({**spec, "ffn": {"name": "swiglu", "params": {}}})]
        p = f["params"]
        if f["name"] != "moe":
            why.append("ffn is not moe")
        elif ((p.get("expert") or {}).get("name") != "swiglu" or p.get("n_shared") or p.get("score") != "softmax"
              or not p.get("norm_topk") or p.get("capacity_factor")):
            why.append("moe is not Mixtral's (swiglu experts, softmax, renormalised top-k, no shared experts, dropless)")
        return why

    @staticmethod
    def config(spec, base):
        cfg = Llama.config({**spec, "ffn": {"name": "swiglu", "params": {}}}, base)
        p = spec["ffn"]["params"]
        cfg.update(architectures=["MixtralForCausalLM"], model_type="mixtral", num_local_experts=p["n_experts"],
                   num_experts_per_tok=p["top_k"], intermediate_size=expert_hidden(spec),
                   router_aux_loss_coef=p.get("aux_loss_coef", 0.001), router_jitter_noise=0.0,
                   sliding_window=spec["attention"]["params"].get("window"))
        cfg.pop("attention_bias", None), cfg.pop("mlp_bias", None)
        if "rope_scaling" in cfg:
            raise ZooError("cannot export: rope scaling on a Mixtral-shaped model has no Hugging Face counterpart here.")
        return cfg


class DeepseekV2(Llama):
    """DeepSeek-V2 (DeepSeek-AI 2024): multi-head latent attention, and a MoE with shared experts in
    every layer from ``first_k_dense_replace`` on (the first layers dense SwiGLU, a ``layers``
    override). Its rope rotates interleaved pairs; the rotary rows of the query and key projections
    are permuted into the rope component's half-split layout."""

    model_type = "deepseek_v2"
    architecture = "DeepseekV2ForCausalLM"

    @classmethod
    def entry(cls, cfg):
        arch = "deepseek_v2"
        rp = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        rtype = rp.get("rope_type", rp.get("type", "default"))
        if rtype not in ("default", "yarn"):
            refuse(arch, f"rope scaling type {rtype!r}", "DeepSeek-V2 is mapped with default or yarn rope")
        if cfg.get("scoring_func", "softmax") != "softmax":
            refuse(arch, f"scoring_func={cfg['scoring_func']!r}", "DeepSeek-V2 is mapped with softmax routing")
        if cfg.get("topk_method", "greedy") != "greedy":
            refuse(arch, f"topk_method={cfg['topk_method']!r}", "the moe ffn routes greedily, without device groups")
        if float(cfg.get("routed_scaling_factor", 1.0)) != 1.0:
            refuse(arch, f"routed_scaling_factor={cfg['routed_scaling_factor']}", "the moe ffn does not scale its output")
        if cfg.get("moe_layer_freq", 1) != 1:
            refuse(arch, f"moe_layer_freq={cfg['moe_layer_freq']}")
        if cfg.get("norm_topk_prob"):
            refuse(arch, "norm_topk_prob=true", "DeepSeek's reference code renormalises the top-k weights but "
                    "transformers ignores the flag, so the two disagree and the zoo does not guess")
        if float(cfg.get("rms_norm_eps", 1e-6)) != 1e-6:
            refuse(arch, f"rms_norm_eps={cfg['rms_norm_eps']}", "the mla attention's latent norms use 1e-6")
        for key in ("attention_bias", "mlp_bias"):
            if cfg.get(key):
                refuse(arch, f"{key}=true")
        if cfg.get("hidden_act", "silu") != "silu":
            refuse(arch, f"hidden_act={cfg['hidden_act']!r}")
        d, h = need(cfg, "hidden_size", arch), need(cfg, "num_attention_heads", arch)
        att = {"kv_lora_rank": need(cfg, "kv_lora_rank", arch), "q_lora_rank": cfg.get("q_lora_rank"),
               "qk_nope_head_dim": need(cfg, "qk_nope_head_dim", arch),
               "qk_rope_head_dim": need(cfg, "qk_rope_head_dim", arch), "v_head_dim": need(cfg, "v_head_dim", arch)}
        posenc = {"theta": float(rp.get("rope_theta", cfg.get("rope_theta", 10000.0)))}
        if rtype == "yarn":
            posenc["scaling"] = yarn(rp, cfg)
            if rp.get("mscale_all_dim"):  # DeepSeek also sharpens the softmax by mscale^2
                qk = att["qk_nope_head_dim"] + att["qk_rope_head_dim"]
                att["softmax_scale"] = qk ** -0.5 * get_mscale(float(rp["factor"]), rp["mscale_all_dim"]) ** 2
        dense = {"name": "swiglu", "params": {"hidden": need(cfg, "intermediate_size", arch)}}
        E = cfg.get("n_routed_experts")
        entry = {"description": "deepseek_v2 imported from Hugging Face",
                 "attention": {"name": "mla", "params": att},
                 "posenc": {"name": "rope", "params": posenc},
                 "ffn": dense, "norm": "rmsnorm", "bias": False,
                 "tie_weights": bool(cfg.get("tie_word_embeddings", False)), "norm_eps": 1e-6}
        n_layers = need(cfg, "num_hidden_layers", arch)
        k_dense = int(cfg.get("first_k_dense_replace") or 0)
        if E and k_dense < n_layers:
            entry["ffn"] = {"name": "moe", "params": {
                "n_experts": E, "top_k": need(cfg, "num_experts_per_tok", arch),
                "n_shared": int(cfg.get("n_shared_experts") or 0),
                "expert": {"name": "swiglu", "params": {"hidden": need(cfg, "moe_intermediate_size", arch)}},
                "score": "softmax", "norm_topk": False, "balance": "aux_loss",
                "aux_loss_coef": float(cfg.get("aux_loss_alpha", 0.001))}}
            if k_dense:
                entry["layers"] = [{"to": k_dense, "ffn": dense}]
        dims = {"n_layers": n_layers, "n_heads": h, "d_model": d,
                "block_size": int(cfg.get("max_position_embeddings") or 2048), "vocab_size": need(cfg, "vocab_size", arch)}
        return entry, dims

    @staticmethod
    def sizes(spec):
        """(kv_lora_rank, q_lora_rank, nope, rope, v_head_dim) as the mla component resolves its defaults."""
        s = component_sizes(spec, "attention")
        return tuple(s[k] for k in ("kv_lora_rank", "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"))

    @classmethod
    def attention_plan(cls, spec, i, h, b):
        r, q_rank, nope, rope, _ = cls.sizes(spec)
        q_rows = RopeRows(nope + rope, nope, rope)
        if q_rank:
            q = [(b + "wq_a.weight", [h + "q_a_proj.weight"], Copy()),
                 (b + "q_norm.weight", [h + "q_a_layernorm.weight"], Copy()),
                 (b + "wq_b.weight", [h + "q_b_proj.weight"], q_rows)]
        else:
            q = [(b + "wq.weight", [h + "q_proj.weight"], q_rows)]
        return q + [(b + "wkv_a.weight", [h + "kv_a_proj_with_mqa.weight"], RopeRows(r + rope, r, rope)),
                    (b + "kv_norm.weight", [h + "kv_a_layernorm.weight"], Copy()),
                    (b + "wkv_b.weight", [h + "kv_b_proj.weight"], Copy()),
                    (b + "proj.weight", [h + "o_proj.weight"], Copy())]

    @classmethod
    def ffn_plan(cls, spec, i, h, b):
        f = layer_components(spec, i)["ffn"]
        if f["name"] == "swiglu":
            return Llama.ffn_plan(spec, i, h, b)
        p, m = f["params"], h + "mlp."
        E = p["n_experts"]
        out = [(b + "router.weight", [m + "gate.weight"], Copy()),
               (b + "route_bias", [], Zeros((E,))),
               (b + "w_in", [m + f"experts.{e}.{w}_proj.weight" for e in range(E) for w in ("gate", "up")], ExpertsIn()),
               (b + "w_out", [m + f"experts.{e}.down_proj.weight" for e in range(E)], ExpertsOut())]
        if p.get("n_shared"):
            hs = component_sizes(spec, "ffn", i)["shared_hidden"]
            out += [(b + "shared.gate_up.weight", [m + "shared_experts.gate_proj.weight", m + "shared_experts.up_proj.weight"],
                     Cat([hs, hs])),
                    (b + "shared.down.weight", [m + "shared_experts.down_proj.weight"], Copy())]
        return out

    @classmethod
    def matches(cls, spec):
        a, pe, f = spec["attention"], spec["posenc"], spec["ffn"]
        why = []
        if a["name"] != "mla":
            why.append("attention is not mla")
        if pe["name"] != "rope" or pe["params"].get("rotary_fraction", 1.0) != 1.0 or \
                (pe["params"].get("scaling") or {"type": "yarn"})["type"] != "yarn":
            why.append("posenc is not full rope, unscaled or with yarn")
        p = f["params"]
        if f["name"] != "moe" or (p.get("expert") or {}).get("name") != "swiglu" or p.get("score") != "softmax" \
                or (p.get("norm_topk") and p.get("top_k", 2) > 1) or p.get("capacity_factor"):
            why.append("ffn is not DeepSeek's moe (swiglu experts, softmax, top-k not renormalised, dropless)")
        layers = spec.get("layers") or []
        if layers and not (len(layers) == 1 and set(layers[0]) - {"description"} == {"to", "ffn"}
                           and layers[0]["ffn"]["name"] == "swiglu"):
            why.append("layers is not one dense swiglu override of the first layers")
        if spec["norm"] != "rmsnorm" or spec["bias"] or spec.get("norm_eps", 1e-6) != 1e-6:
            why.append("norm is not RMSNorm (eps 1e-6) without biases")
        return why

    @classmethod
    def config(cls, spec, base):
        r, q_rank, nope, rope, v = cls.sizes(spec)
        p = spec["ffn"]["params"]
        layers = spec.get("layers") or []
        k = layers[0]["to"] if layers else 0
        dense = layers[0]["ffn"] if layers else {"name": "swiglu", "params": {}}
        return {"architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
                "vocab_size": spec["vocab_size"], "hidden_size": spec["d_model"],
                "intermediate_size": swiglu_hidden(spec, ffn=dense),
                "moe_intermediate_size": expert_hidden(spec), "num_hidden_layers": spec["n_layers"],
                "num_attention_heads": spec["n_heads"], "num_key_value_heads": spec["n_heads"],
                "n_routed_experts": p["n_experts"], "n_shared_experts": p.get("n_shared", 0),
                "num_experts_per_tok": p["top_k"], "first_k_dense_replace": k, "moe_layer_freq": 1,
                "kv_lora_rank": r, "q_lora_rank": q_rank, "qk_nope_head_dim": nope, "qk_rope_head_dim": rope,
                "v_head_dim": v, "max_position_embeddings": spec["block_size"], "rms_norm_eps": 1e-6,
                "rope_theta": spec["posenc"]["params"].get("theta", 10000.0),
                "tie_word_embeddings": spec["tie_weights"], "topk_method": "greedy", "routed_scaling_factor": 1.0,
                "norm_topk_prob": False, "aux_loss_alpha": p.get("aux_loss_coef", 0.001), "attention_bias": False,
                "hidden_act": "silu", "attention_dropout": 0.0, **cls.rope_config(spec, nope + rope)}

    @staticmethod
    def rope_config(spec, qk):
        """rope_scaling for a yarn-scaled spec, with the mscale_all_dim that gives mla's softmax_scale."""
        sc = spec["posenc"]["params"].get("scaling")
        softmax_scale = spec["attention"]["params"].get("softmax_scale")
        if not sc:
            if softmax_scale and abs(softmax_scale * math.sqrt(qk) - 1) > 1e-12:
                raise ZooError("cannot export: mla's softmax_scale without yarn rope scaling has no DeepSeek-V2 "
                               "config counterpart.")
            return {}
        out = {"rope_scaling": {"rope_type": "yarn", **{k: v for k, v in sc.items() if k != "type"}}}
        if softmax_scale:
            m = math.sqrt(softmax_scale * math.sqrt(qk))  # softmax_scale = qk^-0.5 * mscale(factor, all_dim)^2
            if sc["factor"] <= 1:
                raise ZooError("cannot export: a softmax_scale with yarn factor <= 1 has no DeepSeek-V2 counterpart.")
            out["rope_scaling"]["mscale_all_dim"] = (m - 1) / (0.1 * math.log(sc["factor"]))
        return out


@hookimpl
def register_hf_arch(register):
    for a in (GPT2, Llama, Mixtral, DeepseekV2):
        register(a.model_type, a.entry, a.tensors, a.matches, a.config)
    # mistral is imported here and exported by llama's mapping (a llama with a sliding window)
    register(Mistral.model_type, Mistral.entry, Mistral.tensors)
