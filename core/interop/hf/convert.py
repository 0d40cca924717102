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

    architecture   zoo components (the built-in mappings, zoo_plugins.hf.archs)
    gpt2           learned + mha + mlp (GELU, tanh or exact) + LayerNorm, tied head
    llama          rope (+ linear / llama3 / yarn scaling) + gqa + swiglu + RMSNorm
    mistral        as llama, + the sliding window of gqa
    mixtral        as mistral, with a moe of swiglu experts
    deepseek_v2    rope (+ yarn) + mla + moe with shared experts, dense first layers + RMSNorm

Export writes the layout back (config.json, model.safetensors, the tokenizer where it is a Hugging
Face one) for specs one of these architectures can express, so ``transformers`` loads it. The
mappings are plugins (hook ``register_hf_arch``, plugin API 1.1), looked up in the registry by
:mod:`zoo.interop.hf.archs`; a package adds its own the same way. Safetensors are read and written by
:mod:`zoo.io.safetensors`; ``transformers`` is needed only for
hub downloads and the parity tests.
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
from pathlib import Path

from ...errors import ZooError
from ...io.atomic import check_output_dir, replace_dir, write_json, write_text
from ...io.checkpoint import CKPT_NAME, load_checkpoint, plugins_of, resolve_checkpoint_path, save_checkpoint
from ...io.rundir import check_name
from ...io.safetensors import load_file, save_file
from ...nn.device import dtype_name, parse_dtype
from ...nn.transforms import merge_transforms
from ...nn.transformer import build_from_spec
from ...plugin.registry import ModelSource
from ...spec.catalog import get_registry
from ...spec.manifest import check_entry
from ...spec.resolve import resolve_spec
from ...tokenizers import from_config, get_tokenizer
from ...version import __version__
from .archs import arch_for, export_arch

CONFIG = "config.json"
INSTALL_HINT = "pip install 'zoo[hf]'"


# ---- the tokenizer of an imported model ---------------------------------------------------------

def _first_id(v):
    if isinstance(v, list):
        return v[0] if v else None
    return v


def tokenizer_config_for(src: Path, cfg: dict, choice: str | None):
    """The zoo tokenizer config of an imported model: ``choice`` (a name or file that
    ``zoo.tokenizers.get_tokenizer`` takes) if given, else GPT-2's BPE through tiktoken for GPT-2's
    vocabulary, else the directory's tokenizer.json."""
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


def _has_tokenizers() -> bool:
    try:
        return __import__("tokenizers") is not None
    except ImportError:
        return False


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
        raise ZooError(f"there is no local directory {source!r}, and downloading it from the Hugging Face hub "
                       f"failed ({type(e).__name__}: {first}). "
                       f"Offline? Download it on a connected machine (huggingface-cli download {source} "
                       f"--local-dir DIR) and pass DIR; for a gated model, log in first.") from None
    return Path(path)


# config.json keys that hold whole numbers (sizes, counts, token ids), at the top level or in
# rope_scaling / rope_parameters; a config may write them as floats (64.0)
INT_KEYS = {"vocab_size", "n_embd", "n_layer", "n_head", "n_positions", "n_inner", "n_ctx", "hidden_size",
            "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "max_position_embeddings", "head_dim", "sliding_window", "num_local_experts", "num_experts_per_tok",
            "n_routed_experts", "n_shared_experts", "moe_intermediate_size", "first_k_dense_replace",
            "moe_layer_freq", "kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim",
            "n_group", "topk_group", "original_max_position_embeddings", "bos_token_id", "eos_token_id",
            "pad_token_id"}


def _whole_numbers(cfg: dict, where: str) -> dict:
    """``64.0`` -> ``64`` for the keys in :data:`INT_KEYS`; a fraction there is an error."""
    for k, v in cfg.items():
        if isinstance(v, dict) and k in ("rope_scaling", "rope_parameters"):
            _whole_numbers(v, f"{where}: {k}")
        elif k in INT_KEYS and isinstance(v, float):
            if not (math.isfinite(v) and v.is_integer()):
                raise ZooError(f"{where}: {k} is {v}, but it must be a whole number. Fix the config.")
            cfg[k] = int(v)
        elif k in INT_KEYS and isinstance(v, list):
            cfg[k] = [int(x) if isinstance(x, float) and math.isfinite(x) and x.is_integer() else x for x in v]
    return cfg


def read_config(src: Path) -> dict:
    try:
        cfg = json.loads((src / CONFIG).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ZooError(f"{str(src / CONFIG)!r} is not valid JSON (line {e.lineno}: {e.msg}).") from None
    except UnicodeDecodeError as e:
        raise ZooError(f"{str(src / CONFIG)!r} is not UTF-8 text ({e.reason} at byte {e.start}).") from None
    except OSError as e:
        raise ZooError(f"cannot read {str(src / CONFIG)!r}: {e.strerror or e}.") from None
    if not isinstance(cfg, dict):
        raise ZooError(f"{str(src / CONFIG)!r} is not a JSON object.")
    return _whole_numbers(cfg, repr(str(src / CONFIG)))


def read_weights(src: Path) -> dict:
    """{name: tensor} of every weight file in a Hugging Face directory (lazy, memory-mapped)."""
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


# ---- import -------------------------------------------------------------------------------------

def _safe_name(text: str) -> str:
    return re.sub(r"\.{2,}", ".", re.sub(r"[^a-z0-9.-]+", "-", text.lower())).strip("-.") or "model"


def spec_from_config(cfg: dict, name: str, block_size: int | None = None):
    """(spec, entry, preset) of a Hugging Face config, validated as any manifest entry is."""
    entry, dims = arch_for(cfg).from_hf(cfg)
    if block_size:
        dims["block_size"] = block_size
    preset = {**dims, "dropout": 0.0, "description": f"sizes of {name} (imported)"}
    check_entry(entry, "model", name, "zoo import hf")
    check_entry(preset, "preset", name, "zoo import hf")
    reg = copy.copy(get_registry())
    reg.models = {**reg.models, name: ModelSource(entry, "<import>", "0", "zoo import hf")}
    reg.presets = {**reg.presets, name: ModelSource(preset, "<import>", "0", "zoo import hf")}
    return resolve_spec(reg, name, name), entry, preset


def convert_to_zoo(spec: dict, hf: dict, arch, dtype=None) -> dict:
    """The zoo state dict of HF tensors ``hf``: every model tensor filled, every HF tensor used."""
    import torch
    with torch.device("meta"):
        want = {k: v for k, v in build_from_spec(spec).state_dict().items()}
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


def import_hf(source: str, out, name: str | None = None, tokenizer: str | None = None, dtype: str = "float32",
              block_size: int | None = None, revision: str | None = None, force: bool = False) -> dict:
    """Import a Hugging Face checkpoint into run directory ``out``; returns its spec."""
    import torch
    if name is not None:  # before a download: the name becomes the model's name in the run's manifest
        check_name(name, "model name (--name)")
    src = resolve_source(source, revision)
    check_output_dir(out, force, inputs=[src])  # before reading anything: a refusal costs nothing
    cfg = read_config(src)
    arch = arch_for(cfg)
    name = name or "hf-" + _safe_name(Path(source.rstrip("/")).name)
    spec, entry, preset = spec_from_config(cfg, name, block_size)
    tdtype = parse_dtype(dtype, default=torch.float32, allowed=(torch.float32, torch.bfloat16, torch.float16))
    tok_cfg = tokenizer_config_for(src, cfg, tokenizer)
    try:
        tok_size = from_config(tok_cfg).vocab_size
    except ZooError:
        if tok_cfg.get("type") != "hf" or _has_tokenizers():
            raise
        # the weights need no extra package; only encoding text will (zoo.load names it then)
        import sys
        print("zoo: note: this model's tokenizer.json is kept with the run, but encoding text with it needs "
              "the `tokenizers` package (pip install 'zoo[hf]'); its vocabulary size was not checked.",
              file=sys.stderr)
        tok_size = None
    if tok_cfg.get("type") == "hf":  # ids the config names but the vocabulary lacks (e.g. a default 50256)
        for k in ("eot", "bos"):
            if tok_cfg.get(k) is not None and not 0 <= tok_cfg[k] < min(tok_size or spec["vocab_size"],
                                                                         spec["vocab_size"]):
                tok_cfg[k] = None
    if tok_size and tok_size > spec["vocab_size"]:
        raise ZooError(f"the tokenizer has {tok_size} tokens but the model's vocabulary only "
                       f"{spec['vocab_size']}; they do not belong together. Nothing was written.")
    sd = convert_to_zoo(spec, read_weights(src), arch, tdtype)
    manifest = {"version": 1, "presets": {name: preset}, "models": {name: entry}}

    def fill(d: Path):
        save_checkpoint(d / CKPT_NAME, {"model": sd, "spec": spec, "tokenizer": tok_cfg, "plugins": plugins_of(spec),
                                        "step": 0, "hf": {"source": str(source), "config": cfg},
                                        "zoo_version": __version__})
        write_json(d / "spec.json", spec)
        write_json(d / "tokenizer.json", tok_cfg, indent=None)
        write_json(d / "manifest.json", manifest)
        write_json(d / "hf_config.json", cfg)

    replace_dir(Path(out), fill, force, command="zoo import hf", inputs=[src])
    return spec


# ---- export -------------------------------------------------------------------------------------

def convert_from_zoo(spec: dict, sd: dict, arch) -> dict:
    """The Hugging Face tensors of a zoo state dict: the inverse of :func:`convert_to_zoo`."""
    plan, _ = arch.tensors(spec, None)  # the names as transformers saves them (with the prefix)
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
    run_dir = resolve_checkpoint_path(run).parent
    check_output_dir(out, force, inputs=[run_dir])
    ckpt = load_checkpoint(run)
    spec, sd = ckpt["spec"], ckpt["model"]
    if spec.get("transforms"):  # a LoRA run: its adapters folded into the weights on the fly
        spec, sd = merge_transforms(spec, sd, get_registry())
    arch = export_arch(spec)
    cfg = arch.to_hf(spec, ckpt.get("hf", {}).get("config"))
    dtype = next(iter(sd.values())).dtype
    cfg["torch_dtype"] = dtype_name(dtype)
    base = (ckpt.get("hf") or {}).get("config") or {}
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if k in base:
            cfg[k] = base[k]
    tok = ckpt.get("tokenizer") or {}
    if tok.get("type") == "hf":
        cfg.setdefault("eos_token_id", tok.get("eot"))
        cfg.setdefault("bos_token_id", tok.get("bos"))
    elif tok == {"type": "tiktoken", "encoding": "gpt2"} and spec["vocab_size"] > 50256:
        cfg.setdefault("eos_token_id", 50256)  # GPT-2's <|endoftext|>, its bos and eos
        cfg.setdefault("bos_token_id", 50256)
    tensors = convert_from_zoo(spec, sd, arch)

    def fill(d: Path):
        save_file(tensors, d / "model.safetensors", {"format": "pt"})
        write_json(d / CONFIG, cfg)
        if tok.get("type") == "hf":
            write_text(d / "tokenizer.json", tok["json"])
            write_json(d / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast"}, indent=None)

    replace_dir(Path(out), fill, force, command="zoo export hf", inputs=[run_dir])
    return Path(out)
