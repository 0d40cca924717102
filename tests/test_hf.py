"""zoo import hf / zoo export hf: parity against Hugging Face transformers, and bad input.

Parity (needs the optional `hf` extra): for each architecture a transformers model is built from a
tiny config with random weights (no download), saved, imported, and compared: logits within 1e-4 in
float32, 32 greedy tokens decoded with the zoo's KV cache equal to transformers' generate, and the
export loaded back by transformers gives the same logits again.

The bad-input tests build Hugging Face directories with the zoo's own safetensors writer, so they run
without transformers.
"""
import json

import pytest
import torch

import zoo
from zoo.errors import ZooError
from zoo.interop.hf.convert import export_hf, import_hf
from zoo.io.safetensors import load_file, save_file

VOCAB = 100
SENTENCES = ["the quick brown fox jumps over the lazy dog", "to be or not to be, that is the question"]


def _tokenizer_json(path):
    """A tiny BPE tokenizer.json (< VOCAB tokens) made with the `tokenizers` package."""
    tk = pytest.importorskip("tokenizers", reason="the hf tokenizer type needs the tokenizers package (zoo[hf])")
    from tokenizers import decoders, models, pre_tokenizers, trainers
    tok = tk.Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    tok.train_from_iterator(SENTENCES * 3, trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<unk>", "</s>"]))
    tok.save(str(path))


def _hf_configs():
    tr = pytest.importorskip("transformers", reason="parity tests need the optional extra: pip install 'zoo[hf]'")
    # no end-of-text id: generate must not stop early or suppress a token the zoo may pick
    common = dict(vocab_size=VOCAB, initializer_range=0.2, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    llama = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
                 num_hidden_layers=2, max_position_embeddings=128, **common)
    dsv2 = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, intermediate_size=128,
                moe_intermediate_size=32, num_hidden_layers=2, n_routed_experts=4, num_experts_per_tok=2,
                kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16,
                max_position_embeddings=128, **common)
    return {
        "gpt2": lambda: tr.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=64, **common),
        # Llama 3.1-style rope scaling with a short original context so it changes the frequencies
        "llama": lambda: tr.LlamaConfig(rms_norm_eps=1e-5, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16}, **llama),
        # tied head, multi-query attention, YaRN rope scaling
        "llama-tied": lambda: tr.LlamaConfig(tie_word_embeddings=True, num_key_value_heads=1, rope_parameters={
            "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16},
            **{k: v for k, v in llama.items() if k != "num_key_value_heads"}),
        # a window shorter than prompt + 32 decoded tokens, so decoding crosses it
        "mistral": lambda: tr.MistralConfig(sliding_window=8, **llama),
        "mixtral": lambda: tr.MixtralConfig(num_local_experts=4, num_experts_per_tok=2, **llama),
        "deepseek_v2": lambda: tr.DeepseekV2Config(n_shared_experts=1, first_k_dense_replace=1, q_lora_rank=None,
                                                   **dsv2),
        # query compression, two shared experts, all layers MoE, and YaRN as the released checkpoints
        # use it: attention_factor from mscale / mscale_all_dim, and a softmax sharpened by mscale_all_dim
        "deepseek_v2-qlora": lambda: tr.DeepseekV2Config(n_shared_experts=2, first_k_dense_replace=0, q_lora_rank=24,
                                                         rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0,
                                                                          "factor": 4.0, "mscale": 1.0,
                                                                          "mscale_all_dim": 0.5,
                                                                          "original_max_position_embeddings": 16},
                                                         **dsv2),
        # two groups of B and C, a chunk shorter than the prompts (padding and states passed between chunks),
        # an untied head and biases everywhere
        "mamba2": lambda: tr.Mamba2Config(hidden_size=32, num_hidden_layers=2, num_heads=8, head_dim=8, expand=2,
                                          state_size=8, n_groups=2, chunk_size=4, use_bias=True,
                                          tie_word_embeddings=False, **common),
        # as the released checkpoints: one group, tied embeddings, no biases in the projections
        "mamba2-tied": lambda: tr.Mamba2Config(hidden_size=32, num_hidden_layers=2, num_heads=4, head_dim=16,
                                               expand=2, state_size=16, n_groups=1, chunk_size=8,
                                               tie_word_embeddings=True, **common),
    }


ARCHS = ["gpt2", "llama", "llama-tied", "mistral", "mixtral", "deepseek_v2", "deepseek_v2-qlora", "mamba2",
         "mamba2-tied"]


@pytest.fixture(scope="module", params=ARCHS)
def imported(request, tmp_path_factory):
    """(transformers model, zoo model, run dir, tmp dir) for one architecture."""
    tr = pytest.importorskip("transformers", reason="parity tests need the optional extra: pip install 'zoo[hf]'")
    from zoo.generate import load
    cfg = _hf_configs()[request.param]()
    tmp = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    hf = tr.AutoModelForCausalLM.from_config(cfg).eval()
    hf.save_pretrained(tmp / "hf")
    _tokenizer_json(tmp / "hf" / "tokenizer.json")
    import_hf(str(tmp / "hf"), tmp / "run")
    model, tok = load(tmp / "run")
    return hf, model, tmp / "run", tmp


def _ids(n=20, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, n), generator=g)  # (B, T)


def test_logits_match_transformers(imported):
    hf, model, _, _ = imported
    idx = _ids()
    with torch.no_grad():
        ref = hf(idx).logits  # (B, T, V)
        got, _ = model(idx)  # (B, T, V)
    assert got.dtype == torch.float32
    assert ref.abs().max() > 1.0  # the comparison is not between two near-zero tensors
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


def test_greedy_decoding_with_kv_cache_matches_generate(imported):
    hf, model, _, _ = imported
    prompt = _ids(5, 1, seed=2)  # (1, 5)
    ref = hf.generate(prompt, max_new_tokens=32, do_sample=False)  # (1, 37)
    cache = model.new_cache(1, prompt.shape[1] + 32)
    out = prompt
    with torch.no_grad():
        logits, _ = model(prompt, cache=cache)  # prefill
        for _ in range(32):
            nxt = logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
            out = torch.cat([out, nxt], dim=1)
            logits, _ = model(nxt, cache=cache)  # one token with the cache
    assert out.shape == ref.shape == (1, 37)
    assert len(set(out[0, 5:].tolist())) > 1  # not a degenerate repetition of one token
    assert out.tolist() == ref.tolist()
    # and through zoo.generate (top-k 1 is greedy), the path zoo generate takes
    from zoo.generate import generate
    gen = generate(model, [prompt[0].tolist()], max_new_tokens=32, top_k=1, seed=0)
    for _ in gen:
        pass
    assert gen.tokens[0] == ref[0, 5:].tolist()


def test_export_round_trip_loads_in_transformers(imported):
    tr = pytest.importorskip("transformers")
    hf, model, run, tmp = imported
    export_hf(run, tmp / "exported", force=True)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (tmp / "exported").iterdir()}
    back = tr.AutoModelForCausalLM.from_pretrained(tmp / "exported").eval()
    idx = _ids(seed=3)
    with torch.no_grad():
        torch.testing.assert_close(back(idx).logits, hf(idx).logits, atol=1e-4, rtol=0)
    tok = tr.AutoTokenizer.from_pretrained(tmp / "exported")
    assert tok(SENTENCES[0], add_special_tokens=False)["input_ids"] == zoo.load(run)[1].encode(SENTENCES[0])


def test_imported_run_directory_contract(imported):
    _, model, run, _ = imported
    names = {p.name for p in run.iterdir()}
    assert {"ckpt.pt", "spec.json", "tokenizer.json", "manifest.json"} <= names
    spec = json.loads((run / "spec.json").read_text())
    assert spec == model.spec
    # the manifest entry resolves to the same spec through the ordinary manifest machinery
    zoo.configure([str(run / "manifest.json")])
    try:
        assert zoo.resolve(spec["name"], spec["preset"]) == spec
    finally:
        zoo.configure([])
    _, tok = zoo.load(run)
    text = SENTENCES[1]
    assert tok.decode(tok.encode(text)).strip() == text


def test_zoo_generate_samples_from_the_imported_run(imported, capsys):
    from zoo.cli import main
    _, _, run, _ = imported
    assert main(["generate", str(run), "--prompt", "the quick", "--max-new-tokens", "8", "--seed", "0",
                 "--top-k", "1"]) == 0
    assert "the quick" in capsys.readouterr().out


# ---- without transformers: zoo -> HF layout -> zoo, and bad input --------------------------------

@pytest.fixture
def gpt2_dir(tmp_path):
    """A Hugging Face GPT-2 directory written by the zoo's exporter from a tiny zoo model."""
    torch.manual_seed(0)
    spec = zoo.resolve("gpt2", "tiny", **{"ffn.params.approximate": "tanh"})
    model = zoo.build_from_spec(spec)
    from zoo.io.checkpoint import plugins_of, save_checkpoint
    save_checkpoint(tmp_path / "zoo" / "ckpt.pt", {"model": model.state_dict(), "spec": spec, "plugins": plugins_of(spec),
                                                   "tokenizer": {"type": "tiktoken", "encoding": "gpt2"}, "step": 0})
    export_hf(tmp_path / "zoo", tmp_path / "hf")
    return tmp_path / "hf", model


def test_zoo_gpt2_round_trip_without_transformers(gpt2_dir, tmp_path):
    src, model = gpt2_dir
    cfg = json.loads((src / "config.json").read_text())
    assert cfg["model_type"] == "gpt2" and cfg["activation_function"] == "gelu_new"
    sd = load_file(src / "model.safetensors")
    assert sd["transformer.h.0.attn.c_attn.weight"].shape == (64, 192)  # Conv1D layout (in, out)
    import_hf(str(src), tmp_path / "run", tokenizer=str(_tiny_tok_config(tmp_path)))
    back, _ = zoo.load(tmp_path / "run")
    idx = torch.randint(0, 96, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(back(idx)[0], model.eval()(idx)[0], atol=0, rtol=0)


def test_hub_gpt2_layout_without_prefix_and_with_mask_buffers(gpt2_dir, tmp_path):
    """openai-community/gpt2's model.safetensors names tensors without 'transformer.' and stores the
    causal-mask buffers h.N.attn.bias; both import."""
    src, model = gpt2_dir
    sd = {k.removeprefix("transformer."): v for k, v in load_file(src / "model.safetensors").items()}
    for i in range(2):
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 32, 32))
    save_file(sd, src / "model.safetensors")
    import_hf(str(src), tmp_path / "run", tokenizer=str(_tiny_tok_config(tmp_path)))
    back, _ = zoo.load(tmp_path / "run")
    idx = torch.randint(0, 96, (1, 8))
    with torch.no_grad():
        assert torch.equal(back(idx)[0], model.eval()(idx)[0])


def test_sharded_safetensors_and_pytorch_bin(gpt2_dir, tmp_path):
    src, model = gpt2_dir
    sd = load_file(src / "model.safetensors")
    names = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    (src / "model.safetensors").unlink()
    for f, keys in shards.items():
        save_file({k: sd[k] for k in keys}, src / f)
    (src / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}))
    import_hf(str(src), tmp_path / "run", tokenizer=str(_tiny_tok_config(tmp_path)))
    idx = torch.randint(0, 96, (1, 8))
    with torch.no_grad():
        assert torch.equal(zoo.load(tmp_path / "run")[0](idx)[0], model.eval()(idx)[0])
    (src / "model-00002-of-00002.safetensors").unlink()  # an incomplete download
    assert "00002" in _import_error(src, tmp_path)
    for f in src.glob("model*"):
        f.unlink()
    torch.save(sd, src / "pytorch_model.bin")  # the older format, read with weights_only=True
    import_hf(str(src), tmp_path / "run2", tokenizer=str(_tiny_tok_config(tmp_path)))
    with torch.no_grad():
        assert torch.equal(zoo.load(tmp_path / "run2")[0](idx)[0], model(idx)[0])


def _tiny_tok_config(tmp_path):
    p = tmp_path / "tok.json"
    p.write_text(json.dumps({"type": "char", "chars": "abcdefghij"}))
    return p


def _no_output(tmp_path, out):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}-")]  # no temp left over


def _import_error(src, tmp_path, **kw):
    out = tmp_path / "out"
    with pytest.raises(ZooError) as e:
        import_hf(str(src), out, tokenizer=str(_tiny_tok_config(tmp_path)), **kw)
    _no_output(tmp_path, out)
    return str(e.value)


def test_directory_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "config.json" in _import_error(tmp_path / "empty", tmp_path)


def test_missing_tensor(gpt2_dir, tmp_path):
    src, _ = gpt2_dir
    sd = load_file(src / "model.safetensors")
    del sd["transformer.h.1.mlp.c_fc.bias"]
    save_file(sd, src / "model.safetensors")
    assert "transformer.h.1.mlp.c_fc.bias" in _import_error(src, tmp_path)


def test_unexpected_tensor(gpt2_dir, tmp_path):
    src, _ = gpt2_dir
    sd = load_file(src / "model.safetensors")
    sd["transformer.h.0.attn.extra_proj.weight"] = torch.zeros(4, 4)
    save_file(sd, src / "model.safetensors")
    assert "extra_proj" in _import_error(src, tmp_path)


def test_shape_that_does_not_fit(gpt2_dir, tmp_path):
    src, _ = gpt2_dir
    cfg = json.loads((src / "config.json").read_text())
    cfg["n_inner"] = 128  # the stored mlp is 256 wide
    (src / "config.json").write_text(json.dumps(cfg))
    msg = _import_error(src, tmp_path)
    assert "mlp.c_fc" in msg and "shape" in msg


def test_integer_dtype(gpt2_dir, tmp_path):
    src, _ = gpt2_dir
    sd = load_file(src / "model.safetensors")
    sd["transformer.ln_f.weight"] = sd["transformer.ln_f.weight"].to(torch.int32)
    save_file(sd, src / "model.safetensors")
    msg = _import_error(src, tmp_path)
    assert "transformer.ln_f.weight" in msg and "dtype" in msg


def test_truncated_safetensors(gpt2_dir, tmp_path):
    src, _ = gpt2_dir
    f = src / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    assert "truncated" in _import_error(src, tmp_path)


def test_unknown_architecture_and_unmappable_option(gpt2_dir, tmp_path):
    src, _ = gpt2_dir
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "model_type": "bert"}))
    msg = _import_error(src, tmp_path)
    assert "bert" in msg and "gpt2" in msg
    (src / "config.json").write_text(json.dumps({**cfg, "activation_function": "relu"}))
    assert "activation_function='relu'" in _import_error(src, tmp_path)


def test_refused_options_of_other_architectures(tmp_path):
    from zoo.interop.hf.convert import spec_from_config
    llama = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
             "intermediate_size": 96, "vocab_size": 100}
    spec, _, _ = spec_from_config(llama, "ok")
    assert spec["attention"]["params"]["n_kv_heads"] == 4 and spec["norm_eps"] == 1e-6
    for bad, word in (({"head_dim": 32}, "head_dim"), ({"attention_bias": True}, "attention_bias"),
                      ({"rope_scaling": {"rope_type": "dynamic", "factor": 4.0}}, "dynamic"),
                      ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "max_position_embeddings"),
                      ({"hidden_act": "gelu"}, "hidden_act")):
        with pytest.raises(ZooError, match=word):
            spec_from_config({**llama, **bad}, "bad")
    dsv2 = {**llama, "model_type": "deepseek_v2", "kv_lora_rank": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 16,
            "v_head_dim": 16, "n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32}
    assert spec_from_config(dsv2, "ok2")[0]["ffn"]["name"] == "moe"
    for bad, word in (({"norm_topk_prob": True}, "norm_topk_prob"), ({"routed_scaling_factor": 16.0}, "routed_scaling"),
                      ({"topk_method": "group_limited_greedy"}, "topk_method"), ({"scoring_func": "sigmoid"}, "scoring_func")):
        with pytest.raises(ZooError, match=word):
            spec_from_config({**dsv2, **bad}, "bad")


def test_hub_id_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # an empty cache
    try:  # huggingface_hub reads the environment once, at import
        from huggingface_hub import constants
    except ImportError:  # without it, the error says how to install it
        pass
    else:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    msg = _import_error("some-org/no-such-model", tmp_path)
    assert "some-org/no-such-model" in msg and "hub" in msg


def test_output_directory_is_not_overwritten(gpt2_dir, tmp_path):
    src, _ = gpt2_dir
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ZooError, match="already exists"):
        import_hf(str(src), tmp_path / "out", tokenizer=str(_tiny_tok_config(tmp_path)))
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_export_refuses_a_spec_without_hf_architecture(tmp_path):
    spec = zoo.resolve("gpt2-alibi", "tiny")
    from zoo.io.checkpoint import save_checkpoint
    save_checkpoint(tmp_path / "run" / "ckpt.pt", {"model": zoo.build_from_spec(spec).state_dict(), "spec": spec,
                                                   "step": 0})
    with pytest.raises(ZooError, match="posenc is not learned"):
        export_hf(tmp_path / "run", tmp_path / "out")
    _no_output(tmp_path, tmp_path / "out")


def test_cli_errors_exit_2_without_traceback(tmp_path, capsys):
    from zoo.cli import main
    (tmp_path / "empty").mkdir()
    assert main(["import", "hf", str(tmp_path / "empty"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "config.json" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
    assert main(["export", "hf", str(tmp_path / "nothing"), str(tmp_path / "x")]) == 2


def test_safetensors_io_agrees_with_the_safetensors_package(tmp_path):
    st = pytest.importorskip("safetensors.torch", reason="cross-check needs the safetensors package (zoo[hf])")
    ts = {"a": torch.randn(3, 4), "b": torch.randn(5).to(torch.bfloat16), "c": torch.arange(6).reshape(2, 3),
          "d": torch.randn(2, 2).half(), "e": torch.empty(0, 3)}
    save_file(ts, tmp_path / "ours.safetensors", {"format": "pt"})
    theirs = st.load_file(str(tmp_path / "ours.safetensors"))
    st.save_file(ts, str(tmp_path / "theirs.safetensors"))
    ours = load_file(tmp_path / "theirs.safetensors")
    for k, v in ts.items():
        assert theirs[k].dtype == ours[k].dtype == v.dtype
        assert torch.equal(theirs[k], v) and torch.equal(ours[k], v)


@pytest.mark.parametrize("name", zoo.list_models())
def test_every_exportable_named_model_matches_transformers(name, tmp_path):
    """Every model of the registry (tiny preset, random weights) that an HF architecture can express is
    exported and run by transformers: the zoo's own components against code nobody here wrote."""
    tr = pytest.importorskip("transformers", reason="parity tests need the optional extra: pip install 'zoo[hf]'")
    from zoo.interop.hf.convert import export_arch
    spec = zoo.resolve(name, "tiny")
    try:
        export_arch(spec)
    except ZooError as e:
        pytest.skip(f"no Hugging Face architecture expresses {name}: {e}")
    torch.manual_seed(0)
    model = zoo.build_from_spec(spec).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm1.weight") or n.endswith("norm2.weight") or n.endswith("norm_f.weight"):
                p.uniform_(0.5, 1.5)  # not all ones, so a misplaced norm weight shows
    save_checkpoint_for(model, spec, tmp_path / "run")
    export_hf(tmp_path / "run", tmp_path / "hf")
    hf = tr.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    idx = _ids(16, 2, seed=4) % spec["vocab_size"]
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx)[0], atol=1e-4, rtol=0)


def save_checkpoint_for(model, spec, run):
    from zoo.io.checkpoint import plugins_of, save_checkpoint
    save_checkpoint(run / "ckpt.pt", {"model": model.state_dict(), "spec": spec, "plugins": plugins_of(spec), "step": 0})


def test_import_without_the_tokenizers_package(tmp_path, monkeypatch):
    """A Llama directory with a tokenizer.json imports without `tokenizers`; encoding then names the package."""
    from zoo.interop.hf.archs import arch_for
    from zoo.interop.hf.convert import spec_from_config, convert_from_zoo
    cfg = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
           "intermediate_size": 96, "vocab_size": 100, "eos_token_id": 1}
    spec, _, _ = spec_from_config(cfg, "x")
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(cfg))
    save_file(convert_from_zoo(spec, zoo.build_from_spec(spec).state_dict(), arch_for(cfg)), src / "model.safetensors")
    (src / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "WordLevel", "vocab": {}}}')
    import sys
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # as if it were not installed
    import_hf(str(src), tmp_path / "run")
    with pytest.raises(ZooError, match="tokenizers"):
        zoo.load(tmp_path / "run")
