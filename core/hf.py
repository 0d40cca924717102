"""Hugging Face checkpoints in and out: ``zoo import hf`` and ``zoo export hf``.

Import reads a directory in the Hugging Face layout (``config.json`` + ``model.safetensors``, sharded
``model-0000x-of-0000y.safetensors`` with their index, or ``pytorch_model.bin``), or downloads one
from the hub when given a hub id (through ``huggingface_hub``, the optional ``hf`` extra). It maps
the config onto zoo components, refusing by name any option it cannot represent, and renames (and
where needed transposes or concatenates) every tensor; a tensor missing, left over, of the wrong
shape or of a non-float dtype is an error, and nothing is written until everything fits. The run
directory it writes is a finished run like ``zoo train`` leaves behind: ``ckpt.pt``, ``spec.json``,
``tokenizer.json`` and a ``manifest.json`` holding the model as a named entry and its sizes as a
preset, so ``zoo --manifest RUN/manifest.json show NAME`` works too.

    architecture   zoo components
    gpt2           learned + mha + mlp (GELU, tanh or exact) + LayerNorm, tied head
    llama          rope (+ linear / llama3 scaling) + gqa + swiglu + RMSNorm
    mistral        as llama, + the sliding window of gqa

Export writes the layout back (config.json, model.safetensors, the tokenizer where it is a Hugging
Face one) for specs one of these architectures can express, so ``transformers`` loads it.
Safetensors are read and written by :mod:`zoo.safetensors_io`; ``transformers`` is needed only for
hub downloads and the parity tests.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

from .errors import ZooError

CONFIG = "config.json"
INSTALL_HINT = "pip install 'zoo[hf]'"


# ---- the tokenizer of an imported model ---------------------------------------------------------

class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` (fast tokenizer), run by the ``tokenizers`` package.

    The file's text is kept in the config itself, so a run directory and its checkpoint are
    self-contained. ``encode`` adds no special tokens (like tiktoken's ``encode_ordinary``); ``eot``
    is the model's end-of-text id from its config.
    """

    kind = "hf"

    def __init__(self, cfg: dict):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ZooError(f"this model's tokenizer is a Hugging Face tokenizer.json, which needs the "
                           f"`tokenizers` package: {INSTALL_HINT} (or pip install tokenizers).") from None
        self.cfg = {"type": "hf", "json": cfg["json"], "eot": cfg.get("eot"), "bos": cfg.get("bos")}
        try:
            self.tok = Tokenizer.from_str(cfg["json"])
        except Exception as e:
            raise ZooError(f"the Hugging Face tokenizer.json cannot be read ({type(e).__name__}: {e}).") from None
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        self.eot = cfg.get("eot")

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def config(self) -> dict:
        return dict(self.cfg)


def _first_id(v):
    if isinstance(v, list):
        return v[0] if v else None
    return v


def tokenizer_config_for(src: Path, cfg: dict, choice: str | None):
    """The zoo tokenizer config of an imported model: ``choice`` (a name or file that
    ``zoo.tokenizers.get_tokenizer`` takes) if given, else GPT-2's BPE through tiktoken for GPT-2's
    vocabulary, else the directory's tokenizer.json."""
    from .tokenizers import get_tokenizer
    if choice:
        return get_tokenizer(choice, corpus="").config() if choice != "char" else _no_char()
    if cfg.get("model_type") == "gpt2" and cfg.get("vocab_size") == 50257:
        return {"type": "tiktoken", "encoding": "gpt2"}  # every GPT-2 checkpoint uses this BPE
    tj = src / "tokenizer.json"
    if tj.is_file():
        return {"type": "hf", "json": tj.read_text(encoding="utf-8"), "eot": _first_id(cfg.get("eos_token_id")),
                "bos": _first_id(cfg.get("bos_token_id"))}
    raise ZooError(f"{str(src)!r} has no tokenizer.json, and the zoo cannot tell which tokenizer this model "
                   f"uses. Put the model's tokenizer.json in the directory, or pass --tokenizer (gpt2, another "
                   f"tiktoken encoding, or a tokenizer file).")


def _no_char():
    raise ZooError("--tokenizer char needs a corpus and cannot describe a pretrained model's vocabulary; "
                   "pass gpt2, another tiktoken encoding, or a tokenizer file.")


# ---- reading a Hugging Face directory -----------------------------------------------------------

def resolve_source(source: str, revision: str | None = None) -> Path:
    """A local directory, or a hub id downloaded (or found in the local hub cache)."""
    p = Path(source).expanduser()
    if p.is_dir():
        if not (p / CONFIG).is_file():
            raise ZooError(f"{source!r} is a directory without {CONFIG}: not a Hugging Face model directory. "
                           f"Point at the directory holding config.json and the *.safetensors files.")
        return p
    if p.exists():
        raise ZooError(f"{source!r} is a file; give the directory holding config.json and the weights.")
    looks_local = source.startswith((".", "/", "~")) or os.sep in source.strip("/").replace("/", "", 1) \
        or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", source)
    if looks_local:
        raise ZooError(f"no directory {source!r}, and it is not a Hugging Face hub id (owner/name).")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ZooError(f"{source!r} is not a local directory; downloading it from the Hugging Face hub needs "
                       f"huggingface_hub: {INSTALL_HINT}. Or download it elsewhere and pass the directory.") from None
    try:
        path = snapshot_download(repo_id=source, revision=revision,
                                 allow_patterns=["*.json", "*.safetensors", "tokenizer.model", "*.txt"])
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ZooError(f"cannot download {source!r} from the Hugging Face hub ({type(e).__name__}: {first}). "
                       f"Offline? Download it on a connected machine (huggingface-cli download {source} "
                       f"--local-dir DIR) and pass DIR; for a gated model, log in first.") from None
    return Path(path)


def read_config(src: Path) -> dict:
    try:
        cfg = json.loads((src / CONFIG).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ZooError(f"{str(src / CONFIG)!r} is not valid JSON (line {e.lineno}: {e.msg}).") from None
    if not isinstance(cfg, dict):
        raise ZooError(f"{str(src / CONFIG)!r} is not a JSON object.")
    return cfg


def read_weights(src: Path) -> dict:
    """{name: tensor} of every weight file in a Hugging Face directory (lazy, memory-mapped)."""
    from .safetensors_io import load_file
    index = src / "model.safetensors.index.json"
    if index.is_file():
        try:
            wmap = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ZooError(f"{str(index)!r} is not a safetensors index (no weight_map).") from None
        out = {}
        for shard in sorted(set(wmap.values())):
            if not (src / shard).is_file():
                raise ZooError(f"{str(index)!r} names the shard {shard!r}, which is not in {str(src)!r}; "
                               f"the download is incomplete.")
            tensors = load_file(src / shard)
            missing = [n for n, s in wmap.items() if s == shard and n not in tensors]
            if missing:
                raise ZooError(f"shard {shard!r} lacks tensors its index lists, e.g. {missing[0]!r}.")
            out.update(tensors)
        return out
    files = sorted(src.glob("*.safetensors"))
    if files:
        out = {}
        for f in files:
            out.update(load_file(f))
        return out
    if (src / "pytorch_model.bin").is_file():
        import torch
        try:
            return torch.load(src / "pytorch_model.bin", map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:
            raise ZooError(f"cannot read {str(src / 'pytorch_model.bin')!r} ({type(e).__name__}).") from None
    raise ZooError(f"{str(src)!r} has {CONFIG} but no weights: expected model.safetensors (or shards with "
                   f"model.safetensors.index.json, or pytorch_model.bin).")


# ---- tensor operations of a mapping: forward (HF tensors -> zoo tensor) and inverse ---------------

class Copy:
    def fwd(self, parts):
        return parts[0]

    def inv(self, t):
        return [t]


class T(Copy):
    """Conv1D (in, out) <-> nn.Linear (out, in)."""

    def fwd(self, parts):
        if parts[0].dim() != 2:
            raise ValueError(f"expected a matrix, got shape {tuple(parts[0].shape)}")
        return parts[0].t()

    def inv(self, t):
        return [t.t()]


class Cat(Copy):
    """Separate projections <-> one fused projection (rows concatenated)."""

    def __init__(self, sizes):
        self.sizes = list(sizes)

    def fwd(self, parts):
        if [p.shape[0] for p in parts] != self.sizes or len({p.shape[1:] for p in parts}) != 1:
            raise ValueError(f"shapes {[tuple(p.shape) for p in parts]} do not stack into rows {self.sizes}")
        return torch_cat(parts)

    def inv(self, t):
        return list(t.split(self.sizes, dim=0))


class Zeros(Copy):
    """A zoo buffer with no Hugging Face counterpart that starts at zero (MoE routing bias)."""

    def __init__(self, shape):
        self.shape = tuple(shape)

    def fwd(self, parts):
        import torch
        return torch.zeros(self.shape)

    def inv(self, t):
        if t.abs().max() != 0:
            raise ValueError("is not zero, and the Hugging Face architecture has no place for it")
        return []


class ExpertsIn(Copy):
    """Per-expert gate and up (H, C) each, listed g0, u0, g1, u1, ... <-> stacked (E, C, 2H)."""

    def fwd(self, parts):
        import torch
        return torch.stack([torch_cat(parts[i:i + 2]).t() for i in range(0, len(parts), 2)])  # (E, C, 2H)

    def inv(self, t):
        out = []
        for w in t:  # (C, 2H)
            out += list(w.t().chunk(2, dim=0))  # gate (H, C), up (H, C)
        return out


class ExpertsOut(Copy):
    """Per-expert down (C, H) <-> stacked (E, H, C)."""

    def fwd(self, parts):
        import torch
        return torch.stack([p.t() for p in parts])  # (E, H, C)

    def inv(self, t):
        return [w.t() for w in t]


class RopeRows(Copy):
    """Rows of a projection whose rotary part is laid out in interleaved pairs (x0, x1), (x2, x3), ...
    (DeepSeek's complex-number rope) <-> the half-split layout of the rope component (x0..x_{r/2-1},
    then their partners). Rows form groups of ``group`` (a head); in each, rows offset..offset+rope
    are the rotary part. Permuting the rows of both q and k leaves every dot product unchanged."""

    def __init__(self, group, offset, rope):
        import torch
        self.group, self.offset = group, offset
        self.perm = torch.cat([torch.arange(0, rope, 2), torch.arange(1, rope, 2)])  # half-split <- interleaved
        self.back = self.perm.argsort()

    def _apply(self, t, perm):
        g = t.reshape(-1, self.group, *t.shape[1:]).clone()  # (n_groups, group, ...)
        r = g[:, self.offset:self.offset + len(perm)]
        g[:, self.offset:self.offset + len(perm)] = r[:, perm]
        return g.reshape(t.shape)

    def fwd(self, parts):
        if parts[0].shape[0] % self.group:
            raise ValueError(f"shape {tuple(parts[0].shape)} does not split into groups of {self.group} rows")
        return self._apply(parts[0], self.perm)

    def inv(self, t):
        return [self._apply(t, self.back)]


def swiglu_hidden(params, d_model):
    """The hidden width of a swiglu ffn (its own default when ``hidden`` is not set)."""
    if params.get("hidden"):
        return params["hidden"]
    m = params.get("multiple_of", 64)
    return -(-int(8 * d_model / 3) // m) * m


def torch_cat(parts):
    import torch
    return torch.cat(parts, dim=0)


# ---- architectures ------------------------------------------------------------------------------

def _need(cfg, key, arch):
    if cfg.get(key) is None:
        raise ZooError(f"{arch} config.json has no {key!r}; the file is incomplete.")
    return cfg[key]


def _get_mscale(scale, mscale=1.0):
    """YaRN's attention temperature, as transformers computes it."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(rp: dict, cfg: dict) -> dict:
    """The rope component's yarn scaling of a config's rope parameters."""
    factor = float(rp["factor"])
    old = int(rp.get("original_max_position_embeddings") or _need(cfg, "max_position_embeddings", "yarn rope"))
    att = rp.get("attention_factor")
    if att is None:
        m, m_all = rp.get("mscale"), rp.get("mscale_all_dim")
        att = _get_mscale(factor, m) / _get_mscale(factor, m_all) if m and m_all else _get_mscale(factor)
    return {"type": "yarn", "factor": factor, "original_max_position_embeddings": old,
            "beta_fast": float(rp.get("beta_fast") or 32), "beta_slow": float(rp.get("beta_slow") or 1),
            "attention_factor": float(att), "truncate": bool(rp.get("truncate", True))}


def _refuse(arch, what, fix=""):
    raise ZooError(f"cannot import this {arch} checkpoint: {what}, which no zoo component represents"
                   + (f"; {fix}" if fix else "") + ". Nothing was written.")


class GPT2:
    """GPT-2 (Radford et al. 2019): Conv1D weights stored (in, out), transposed to nn.Linear's (out, in)."""

    model_type = "gpt2"
    architecture = "GPT2LMHeadModel"
    probe = "transformer.wte.weight"

    @staticmethod
    def entry(cfg):
        act = cfg.get("activation_function", "gelu_new")
        approx = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}.get(act)
        if approx is None:
            _refuse("gpt2", f"activation_function={act!r}", "the mlp ffn has exact and tanh GELU only")
        if not cfg.get("scale_attn_weights", True):
            _refuse("gpt2", "scale_attn_weights=false (unscaled attention)")
        if cfg.get("scale_attn_by_inverse_layer_idx"):
            _refuse("gpt2", "scale_attn_by_inverse_layer_idx=true")
        if cfg.get("add_cross_attention"):
            _refuse("gpt2", "add_cross_attention=true (an encoder-decoder layer)")
        d = _need(cfg, "n_embd", "gpt2")
        hidden = cfg.get("n_inner") or 4 * d
        mult = hidden / d
        if int(mult * d) != hidden:
            _refuse("gpt2", f"n_inner={hidden}, which is not a multiple of n_embd={d} the mlp can express")
        n_pos = _need(cfg, "n_positions", "gpt2")
        entry = {"description": "GPT-2 imported from Hugging Face",
                 "attention": {"name": "mha"},
                 "posenc": {"name": "learned", "params": {"max_len": n_pos}},
                 "ffn": {"name": "mlp", "params": {"hidden_mult": int(mult) if mult == int(mult) else mult,
                                                   "approximate": approx}},
                 "norm": "layernorm", "bias": True, "tie_weights": bool(cfg.get("tie_word_embeddings", True)),
                 "norm_eps": float(cfg.get("layer_norm_epsilon", 1e-5))}
        dims = {"n_layers": _need(cfg, "n_layer", "gpt2"), "n_heads": _need(cfg, "n_head", "gpt2"), "d_model": d,
                "block_size": n_pos, "vocab_size": _need(cfg, "vocab_size", "gpt2")}
        return entry, dims

    @staticmethod
    def tensors(spec, names):
        """([(zoo name, [hf names], op)], HF names to ignore); op: a Copy (forward and inverse)."""
        p = "transformer." if any(n.startswith("transformer.") for n in names) else ""
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
        ignored = {n for n in names if re.fullmatch(re.escape(p) + r"h\.\d+\.attn\.(masked_)?bias", n)}
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
        if f["name"] != "mlp" or int(f["params"].get("hidden_mult", 4) * spec["d_model"]) <= 0:
            why.append("ffn is not the GELU mlp")
        if spec["norm"] != "layernorm" or not spec["bias"]:
            why.append("norm is not LayerNorm with biases")
        return why

    @staticmethod
    def config(spec, base):
        pe, f = spec["posenc"]["params"], spec["ffn"]["params"]
        cfg = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": spec["vocab_size"],
               "n_positions": pe.get("max_len") or spec["block_size"], "n_embd": spec["d_model"],
               "n_layer": spec["n_layers"], "n_head": spec["n_heads"],
               "n_inner": int(f.get("hidden_mult", 4) * spec["d_model"]),
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
    probe = "model.embed_tokens.weight"
    ROPE_TYPES = ("default", "linear", "llama3", "yarn")

    @classmethod
    def entry(cls, cfg):
        arch = cfg.get("model_type", cls.model_type)
        if cfg.get("hidden_act", "silu") != "silu":
            _refuse(arch, f"hidden_act={cfg['hidden_act']!r}", "swiglu uses silu")
        for key in ("attention_bias", "mlp_bias"):
            if cfg.get(key):
                _refuse(arch, f"{key}=true", "the llama mapping has no biases")
        d, h = _need(cfg, "hidden_size", arch), _need(cfg, "num_attention_heads", arch)
        if d % h:
            _refuse(arch, f"hidden_size={d} not divisible by num_attention_heads={h}")
        if cfg.get("head_dim") not in (None, d // h):
            _refuse(arch, f"head_dim={cfg['head_dim']} != hidden_size / num_attention_heads = {d // h}",
                    "gqa derives head_dim from d_model / n_heads")
        if cfg.get("partial_rotary_factor", 1.0) != 1.0:
            _refuse(arch, f"partial_rotary_factor={cfg['partial_rotary_factor']}")
        rp = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        theta = rp.get("rope_theta", cfg.get("rope_theta", 10000.0))
        rtype = rp.get("rope_type", rp.get("type", "default"))
        if rtype not in cls.ROPE_TYPES:
            _refuse(arch, f"rope scaling type {rtype!r}", f"the rope component knows {', '.join(cls.ROPE_TYPES)}")
        scaling = None
        if rtype == "linear":
            scaling = {"type": "linear", "factor": float(rp["factor"])}
        elif rtype == "llama3":
            scaling = {"type": "llama3", "factor": float(rp["factor"]), "low_freq_factor": float(rp["low_freq_factor"]),
                       "high_freq_factor": float(rp["high_freq_factor"]),
                       "original_max_position_embeddings": int(rp["original_max_position_embeddings"])}
        elif rtype == "yarn":
            scaling = _yarn(rp, cfg)
        kv = cfg.get("num_key_value_heads") or h
        att = {"n_kv_heads": kv}
        window = cfg.get("sliding_window") if cfg.get("use_sliding_window", True) else None
        if window is not None:
            if arch == "llama":
                _refuse(arch, "sliding_window in a llama config")
            att["window"] = int(window)
        posenc = {"theta": float(theta)}
        if scaling:
            posenc["scaling"] = scaling
        entry = {"description": f"{arch} imported from Hugging Face",
                 "attention": {"name": "gqa", "params": att},
                 "posenc": {"name": "rope", "params": posenc},
                 "ffn": {"name": "swiglu", "params": {"hidden": _need(cfg, "intermediate_size", arch)}},
                 "norm": "rmsnorm", "bias": False, "tie_weights": bool(cfg.get("tie_word_embeddings", False)),
                 "norm_eps": float(cfg.get("rms_norm_eps", 1e-6))}
        dims = {"n_layers": _need(cfg, "num_hidden_layers", arch), "n_heads": h, "d_model": d,
                "block_size": int(cfg.get("max_position_embeddings") or 2048),
                "vocab_size": _need(cfg, "vocab_size", arch)}
        return entry, dims

    @classmethod
    def tensors(cls, spec, names):
        p = "model." if any(n.startswith("model.") for n in names) else ""
        out = [("wte.weight", [p + "embed_tokens.weight"], Copy())]
        for i in range(spec["n_layers"]):
            h, b = f"{p}layers.{i}.", f"blocks.{i}."
            out += [(b + "norm1.weight", [h + "input_layernorm.weight"], Copy()),
                    (b + "norm2.weight", [h + "post_attention_layernorm.weight"], Copy())]
            out += cls.attention_plan(spec, i, h + "self_attn.", b + "attn.")
            out += cls.ffn_plan(spec, i, h, b + "ffn.")
        out.append(("norm_f.weight", [p + "norm.weight"], Copy()))
        ignored = {n for n in names if n.endswith("rotary_emb.inv_freq")}
        if spec["tie_weights"]:
            ignored.add("lm_head.weight")
        else:
            out.append(("lm_head.weight", ["lm_head.weight"], Copy()))
        return out, ignored

    @staticmethod
    def attention_plan(spec, i, h, b):
        from .manifest import dims_of
        import zoo
        a = spec["attention"]
        kv = zoo.get_registry().get("attention", a["name"]).cls.kv_heads(dims_of(spec), a["params"])
        hd = spec["d_model"] // spec["n_heads"]
        return [(b + "qkv.weight", [h + f"{x}_proj.weight" for x in "qkv"], Cat([spec["n_heads"] * hd, kv * hd, kv * hd])),
                (b + "proj.weight", [h + "o_proj.weight"], Copy())]

    @staticmethod
    def ffn_plan(spec, i, h, b):
        hidden = swiglu_hidden(spec["ffn"]["params"], spec["d_model"])
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
        return why

    @staticmethod
    def config(spec, base):
        from .manifest import dims_of
        import zoo
        a, pe = spec["attention"], spec["posenc"]["params"]
        att = zoo.get_registry().get("attention", a["name"]).cls
        kv = att.kv_heads(dims_of(spec), a["params"])
        window = a["params"].get("window")
        mt = "mistral" if window else "llama"
        if window and pe.get("scaling"):
            raise ZooError("cannot export: a sliding window (mistral) together with rope scaling has no Hugging "
                           "Face architecture here.")
        cfg = {"architectures": ["MistralForCausalLM" if window else "LlamaForCausalLM"], "model_type": mt,
               "vocab_size": spec["vocab_size"], "hidden_size": spec["d_model"],
               "intermediate_size": swiglu_hidden(spec["ffn"]["params"], spec["d_model"]), "num_hidden_layers": spec["n_layers"],
               "num_attention_heads": spec["n_heads"], "num_key_value_heads": kv,
               "head_dim": spec["d_model"] // spec["n_heads"], "hidden_act": "silu",
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
        E, k = _need(cfg, "num_local_experts", "mixtral"), _need(cfg, "num_experts_per_tok", "mixtral")
        entry["ffn"] = {"name": "moe", "params": {
            "n_experts": E, "top_k": k, "n_shared": 0,
            "expert": {"name": "swiglu", "params": {"hidden": _need(cfg, "intermediate_size", "mixtral")}},
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
              or not p.get("norm_topk") or p.get("capacity_factor") or p.get("expert_hidden_mult")):
            why.append("moe is not Mixtral's (swiglu experts, softmax, renormalised top-k, no shared experts, dropless)")
        return why

    @staticmethod
    def config(spec, base):
        cfg = Llama.config({**spec, "ffn": {"name": "swiglu", "params": {}}}, base)
        p = spec["ffn"]["params"]
        cfg.update(architectures=["MixtralForCausalLM"], model_type="mixtral", num_local_experts=p["n_experts"],
                   num_experts_per_tok=p["top_k"], intermediate_size=p["expert"]["params"]["hidden"],
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
    probe = "model.embed_tokens.weight"

    @classmethod
    def entry(cls, cfg):
        arch = "deepseek_v2"
        rp = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        rtype = rp.get("rope_type", rp.get("type", "default"))
        if rtype not in ("default", "yarn"):
            _refuse(arch, f"rope scaling type {rtype!r}", "DeepSeek-V2 is mapped with default or yarn rope")
        if cfg.get("scoring_func", "softmax") != "softmax":
            _refuse(arch, f"scoring_func={cfg['scoring_func']!r}", "DeepSeek-V2 is mapped with softmax routing")
        if cfg.get("topk_method", "greedy") != "greedy":
            _refuse(arch, f"topk_method={cfg['topk_method']!r}", "the moe ffn routes greedily, without device groups")
        if float(cfg.get("routed_scaling_factor", 1.0)) != 1.0:
            _refuse(arch, f"routed_scaling_factor={cfg['routed_scaling_factor']}", "the moe ffn does not scale its output")
        if cfg.get("moe_layer_freq", 1) != 1:
            _refuse(arch, f"moe_layer_freq={cfg['moe_layer_freq']}")
        if cfg.get("norm_topk_prob"):
            _refuse(arch, "norm_topk_prob=true", "DeepSeek's reference code renormalises the top-k weights but "
                    "transformers ignores the flag, so the two disagree and the zoo does not guess")
        if float(cfg.get("rms_norm_eps", 1e-6)) != 1e-6:
            _refuse(arch, f"rms_norm_eps={cfg['rms_norm_eps']}", "the mla attention's latent norms use 1e-6")
        for key in ("attention_bias", "mlp_bias"):
            if cfg.get(key):
                _refuse(arch, f"{key}=true")
        if cfg.get("hidden_act", "silu") != "silu":
            _refuse(arch, f"hidden_act={cfg['hidden_act']!r}")
        d, h = _need(cfg, "hidden_size", arch), _need(cfg, "num_attention_heads", arch)
        att = {"kv_lora_rank": _need(cfg, "kv_lora_rank", arch), "q_lora_rank": cfg.get("q_lora_rank"),
               "qk_nope_head_dim": _need(cfg, "qk_nope_head_dim", arch),
               "qk_rope_head_dim": _need(cfg, "qk_rope_head_dim", arch), "v_head_dim": _need(cfg, "v_head_dim", arch)}
        posenc = {"theta": float(rp.get("rope_theta", cfg.get("rope_theta", 10000.0)))}
        if rtype == "yarn":
            posenc["scaling"] = _yarn(rp, cfg)
            if rp.get("mscale_all_dim"):  # DeepSeek also sharpens the softmax by mscale^2
                qk = att["qk_nope_head_dim"] + att["qk_rope_head_dim"]
                att["softmax_scale"] = qk ** -0.5 * _get_mscale(float(rp["factor"]), rp["mscale_all_dim"]) ** 2
        dense = {"name": "swiglu", "params": {"hidden": _need(cfg, "intermediate_size", arch)}}
        E = cfg.get("n_routed_experts")
        entry = {"description": "deepseek_v2 imported from Hugging Face",
                 "attention": {"name": "mla", "params": att},
                 "posenc": {"name": "rope", "params": posenc},
                 "ffn": dense, "norm": "rmsnorm", "bias": False,
                 "tie_weights": bool(cfg.get("tie_word_embeddings", False)), "norm_eps": 1e-6}
        n_layers = _need(cfg, "num_hidden_layers", arch)
        k_dense = int(cfg.get("first_k_dense_replace") or 0)
        if E and k_dense < n_layers:
            entry["ffn"] = {"name": "moe", "params": {
                "n_experts": E, "top_k": _need(cfg, "num_experts_per_tok", arch),
                "n_shared": int(cfg.get("n_shared_experts") or 0),
                "expert": {"name": "swiglu", "params": {"hidden": _need(cfg, "moe_intermediate_size", arch)}},
                "score": "softmax", "norm_topk": False, "balance": "aux_loss",
                "aux_loss_coef": float(cfg.get("aux_loss_alpha", 0.001))}}
            if k_dense:
                entry["layers"] = [{"to": k_dense, "ffn": dense}]
        dims = {"n_layers": n_layers, "n_heads": h, "d_model": d,
                "block_size": int(cfg.get("max_position_embeddings") or 2048), "vocab_size": _need(cfg, "vocab_size", arch)}
        return entry, dims

    @staticmethod
    def sizes(spec):
        """(kv_lora_rank, q_lora_rank, nope, rope, v_head_dim) as the mla component resolves its defaults."""
        import torch
        import zoo
        from .manifest import dims_of
        a = spec["attention"]
        with torch.device("meta"):
            m = zoo.get_registry().get("attention", a["name"]).cls(dims_of(spec), **a["params"])
        return m.rank, m.q_rank, m.nope, m.rope, m.v_dim

    @staticmethod
    def expert_hidden(spec, p):
        if p.get("expert_hidden_mult"):
            return -(-int(p["expert_hidden_mult"] * spec["d_model"]) // 8) * 8
        return swiglu_hidden(p["expert"].get("params", {}), spec["d_model"])

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
        from .manifest import layer_components
        f = layer_components(spec, i)["ffn"]
        if f["name"] == "swiglu":
            return Llama.ffn_plan({**spec, "ffn": f}, i, h, b)
        p, m = f["params"], h + "mlp."
        E = p["n_experts"]
        out = [(b + "router.weight", [m + "gate.weight"], Copy()),
               (b + "route_bias", [], Zeros((E,))),
               (b + "w_in", [m + f"experts.{e}.{w}_proj.weight" for e in range(E) for w in ("gate", "up")], ExpertsIn()),
               (b + "w_out", [m + f"experts.{e}.down_proj.weight" for e in range(E)], ExpertsOut())]
        if p.get("n_shared"):
            hs = p["n_shared"] * cls.expert_hidden(spec, p)
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
        dense = layers[0]["ffn"]["params"] if layers else {}
        return {"architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
                "vocab_size": spec["vocab_size"], "hidden_size": spec["d_model"],
                "intermediate_size": swiglu_hidden(dense, spec["d_model"]),
                "moe_intermediate_size": cls.expert_hidden(spec, p), "num_hidden_layers": spec["n_layers"],
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


ARCHS = {a.model_type: a for a in (GPT2, Llama, Mistral, Mixtral, DeepseekV2)}
EXPORTABLE = (GPT2, Mixtral, DeepseekV2, Llama)


def arch_for(cfg: dict):
    mt = cfg.get("model_type")
    if mt not in ARCHS:
        raise ZooError(f"unknown architecture model_type={mt!r} (architectures: {cfg.get('architectures')}); "
                       f"the zoo imports {', '.join(sorted(ARCHS))}. Nothing was written.")
    return ARCHS[mt]


# ---- import -------------------------------------------------------------------------------------

def _safe_name(text: str) -> str:
    return re.sub(r"[^a-z0-9.-]+", "-", text.lower()).strip("-.") or "model"


def spec_from_config(cfg: dict, name: str, block_size: int | None = None):
    """(spec, entry, preset) of a Hugging Face config, validated as any manifest entry is."""
    from .manifest import check_entry, resolve_spec
    from .registry import ModelSource
    import copy
    import zoo
    entry, dims = arch_for(cfg).entry(cfg)
    if block_size:
        dims["block_size"] = block_size
    preset = {**dims, "dropout": 0.0, "description": f"sizes of {name} (imported)"}
    check_entry(entry, "model", name, "zoo import hf")
    check_entry(preset, "preset", name, "zoo import hf")
    reg = copy.copy(zoo.get_registry())
    reg.models = {**reg.models, name: ModelSource(entry, "<import>", "0", "zoo import hf")}
    reg.presets = {**reg.presets, name: ModelSource(preset, "<import>", "0", "zoo import hf")}
    return resolve_spec(reg, name, name), entry, preset


def convert_to_zoo(spec: dict, hf: dict, arch, dtype=None) -> dict:
    """The zoo state dict of HF tensors ``hf``: every model tensor filled, every HF tensor used."""
    import torch
    import zoo
    with torch.device("meta"):
        want = {k: v for k, v in zoo.build_from_spec(spec).state_dict().items()}
    plan, ignored = arch.tensors(spec, set(hf))
    sd, used, problems = {}, set(), []
    for zname, hnames, op in plan:
        missing = [h for h in hnames if h not in hf]
        if missing:
            problems.append(f"missing tensor {missing[0]!r}")
            continue
        used.update(hnames)
        bad = [h for h in hnames if not hf[h].is_floating_point()]
        if bad:
            problems.append(f"tensor {bad[0]!r} has dtype {hf[bad[0]].dtype}, not a float dtype")
            continue
        src = "(none)" if not hnames else hnames[0] if len(hnames) == 1 else f"{hnames[0]} (+{len(hnames) - 1})"
        try:
            t = op.fwd([hf[h] for h in hnames])
        except ValueError as e:
            problems.append(f"tensor {src!r}: {e}")
            continue
        if zname not in want:
            problems.append(f"the zoo model has no tensor {zname!r} (mapped from {src!r})")
            continue
        if tuple(t.shape) != tuple(want[zname].shape):
            problems.append(f"tensor {src!r} has shape {tuple(hf[hnames[0]].shape) if hnames else ()}, which does not give the "
                            f"{tuple(want[zname].shape)} that the config implies for {zname!r}")
            continue
        sd[zname] = t.to(dtype or torch.float32).contiguous().clone()
    leftover = sorted(set(hf) - used - ignored)
    if leftover:
        problems.append(f"{len(leftover)} tensor(s) that the config does not account for, e.g. {leftover[0]!r}")
    absent = sorted(k for k in want if k not in sd and not (k == "lm_head.weight" and spec["tie_weights"]))
    if absent and not problems:
        problems.append(f"no source for zoo tensor(s) {absent[:3]}")
    if problems:
        raise ZooError("the checkpoint's tensors do not match its config: " + "; ".join(problems[:5])
                       + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "") + ". Nothing was written.")
    if spec["tie_weights"]:
        sd["lm_head.weight"] = sd["wte.weight"]
    return sd


def _write_atomically(out: Path, fill, force: bool = False):
    """Create directory ``out`` by filling a temporary sibling, then renaming it into place."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not force:
            raise ZooError(f"{str(out)!r} already exists and is not empty; choose another output directory "
                           f"or pass --force to replace it.")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    except OSError as e:
        raise ZooError(f"cannot write to {str(out.parent)!r}: {e.strerror}.") from None
    try:
        fill(tmp)
        from .safetensors_io import _umask
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; give it a normal directory's mode
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-old-"))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def import_hf(source: str, out, name: str | None = None, tokenizer: str | None = None, dtype: str = "float32",
              block_size: int | None = None, revision: str | None = None, force: bool = False) -> dict:
    """Import a Hugging Face checkpoint into run directory ``out``; returns its spec."""
    import torch
    from .checkpoint import CKPT_NAME, plugins_of, save_checkpoint
    src = resolve_source(source, revision)
    cfg = read_config(src)
    arch = arch_for(cfg)
    name = name or "hf-" + _safe_name(Path(source.rstrip("/")).name)
    spec, entry, preset = spec_from_config(cfg, name, block_size)
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if tdtype is None:
        raise ZooError(f"unknown --dtype {dtype!r}; choose float32, bfloat16 or float16.")
    tok_cfg = tokenizer_config_for(src, cfg, tokenizer)
    from .tokenizers import from_config
    tok = from_config(tok_cfg)
    if tok_cfg.get("type") == "hf":  # ids the config names but the vocabulary lacks (e.g. a default 50256)
        for k in ("eot", "bos"):
            if tok_cfg.get(k) is not None and not 0 <= tok_cfg[k] < min(tok.vocab_size, spec["vocab_size"]):
                tok_cfg[k] = None
        tok = from_config(tok_cfg)
    if tok.vocab_size > spec["vocab_size"]:
        raise ZooError(f"the tokenizer has {tok.vocab_size} tokens but the model's vocabulary only "
                       f"{spec['vocab_size']}; they do not belong together. Nothing was written.")
    sd = convert_to_zoo(spec, read_weights(src), arch, tdtype)
    manifest = {"version": 1, "presets": {name: preset}, "models": {name: entry}}

    def fill(d: Path):
        save_checkpoint(d / CKPT_NAME, {"model": sd, "spec": spec, "tokenizer": tok_cfg, "plugins": plugins_of(spec),
                                        "step": 0, "hf": {"source": str(source), "config": cfg},
                                        "zoo_version": __import__("zoo").__version__})
        (d / "spec.json").write_text(json.dumps(spec, indent=2), encoding="utf-8")
        (d / "tokenizer.json").write_text(json.dumps(tok_cfg), encoding="utf-8")
        (d / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        (d / "hf_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")

    _write_atomically(Path(out), fill, force)
    return spec


# ---- export -------------------------------------------------------------------------------------

def export_arch(spec: dict):
    reasons = {}
    for a in EXPORTABLE:
        why = a.matches(spec)
        if spec.get("layers") and a is not DeepseekV2:
            why = why + ["it sets per-layer components (layers)"]
        if not why:
            return a
        reasons[a.model_type] = why
    detail = "; ".join(f"not {k}: {', '.join(v)}" for k, v in reasons.items())
    raise ZooError(f"cannot export {spec['name']!r} to Hugging Face: its components match no architecture the "
                   f"zoo exports ({detail}).")


def convert_from_zoo(spec: dict, sd: dict, arch) -> dict:
    """The Hugging Face tensors of a zoo state dict: the inverse of :func:`convert_to_zoo`."""
    plan, _ = arch.tensors(spec, {arch.probe})  # the names as transformers saves them (with the prefix)
    out = {}
    for zname, hnames, op in plan:
        try:
            parts = op.inv(sd[zname])
        except ValueError as e:
            raise ZooError(f"cannot export {zname!r}: it {e}.") from None
        for h, t in zip(hnames, parts):
            out[h] = t.contiguous()
    return out


def export_hf(run, out, force: bool = False) -> Path:
    """Write the Hugging Face layout of a zoo checkpoint to directory ``out``."""
    from .checkpoint import load_checkpoint
    from .safetensors_io import save_file
    ckpt = load_checkpoint(run)
    spec, sd = ckpt["spec"], ckpt["model"]
    sd = {k.removeprefix("_orig_mod."): v for k, v in sd.items()}
    if spec.get("lora"):
        from .lora import merged_state_dict
        spec, sd = merged_state_dict(ckpt)
    arch = export_arch(spec)
    cfg = arch.config(spec, ckpt.get("hf", {}).get("config"))
    dtype = next(iter(sd.values())).dtype
    cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
    base = (ckpt.get("hf") or {}).get("config") or {}
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if k in base:
            cfg[k] = base[k]
    tok = ckpt.get("tokenizer") or {}
    if tok.get("type") == "hf":
        cfg.setdefault("eos_token_id", tok.get("eot"))
        cfg.setdefault("bos_token_id", tok.get("bos"))
    tensors = convert_from_zoo(spec, sd, arch)

    def fill(d: Path):
        save_file(tensors, d / "model.safetensors", {"format": "pt"})
        (d / CONFIG).write_text(json.dumps(cfg, indent=2), encoding="utf-8")
        if tok.get("type") == "hf":
            (d / "tokenizer.json").write_text(tok["json"], encoding="utf-8")
            (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}),
                                                     encoding="utf-8")

    _write_atomically(Path(out), fill, force)
    return Path(out)


# ---- CLI ----------------------------------------------------------------------------------------

def cmd_import(args):
    spec = import_hf(args.source, args.out, name=args.name, tokenizer=args.tokenizer, dtype=args.dtype,
                     block_size=args.block_size, revision=args.revision, force=args.force)
    import zoo
    n = zoo.param_count(spec)
    print(f"imported {args.source} as {spec['name']!r} ({n:,} parameters): "
          f"{spec['attention']['name']} + {spec['posenc']['name']} + {spec['ffn']['name']} + {spec['norm']}")
    print(f"run directory: {args.out} (ckpt.pt, spec.json, tokenizer.json, manifest.json)")
    print(f"try: zoo generate {args.out}   or   zoo finetune {args.out} --data FILE")


def cmd_export(args):
    out = export_hf(args.run, args.out, force=args.force)
    print(f"exported {args.run} to {out} (config.json, model.safetensors); load it with "
          f"transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")


def add_cli(sub):
    s = sub.add_parser("import", help="import pretrained weights (Hugging Face) as a zoo run directory")
    isub = s.add_subparsers(dest="import_format", metavar="FORMAT")
    p = isub.add_parser("hf", help="a Hugging Face model directory or hub id -> a zoo run directory",
                        description="Map a Hugging Face checkpoint (gpt2, llama, mistral) onto zoo components "
                                    "and write a run directory that zoo generate, zoo finetune and zoo.load use.")
    p.add_argument("source", help="a local directory (config.json + *.safetensors) or a hub id such as "
                                  "openai-community/gpt2 (needs network and `pip install 'zoo[hf]'`)")
    p.add_argument("--out", required=True, help="the run directory to create")
    p.add_argument("--name", help="model name in the spec and manifest (default: hf-<source name>)")
    p.add_argument("--tokenizer", help="override the tokenizer (gpt2, a tiktoken encoding, or a tokenizer file)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the stored weights (default float32)")
    p.add_argument("--block-size", type=int, help="context length of the spec (default: the config's maximum)")
    p.add_argument("--revision", help="hub revision (branch, tag or commit)")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    p.set_defaults(fn=cmd_import)
    s.set_defaults(fn=lambda a: (s.print_help(), 2)[1])

    s = sub.add_parser("export", help="export a zoo run directory (Hugging Face layout)")
    esub = s.add_subparsers(dest="export_format", metavar="FORMAT")
    p = esub.add_parser("hf", help="a zoo run directory -> a Hugging Face model directory",
                        description="Write config.json and model.safetensors (and tokenizer.json for imported "
                                    "Hugging Face tokenizers) for gpt2-, llama- and mistral-shaped models.")
    p.add_argument("run", help="a run directory or checkpoint file")
    p.add_argument("out", help="the directory to create")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    p.set_defaults(fn=cmd_export)
    s.set_defaults(fn=lambda a: (s.print_help(), 2)[1])

    from .lora import add_cli as lora_cli  # zoo finetune and zoo lora, which import and export feed
    lora_cli(sub)
