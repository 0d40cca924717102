"""zoo generate: loading runs, the cached decoder against recomputation, sampling filters, batches,
the context limit, stop strings, the CLI's errors, the KV-cache size report and a compiled step.

Checkpoints are written here with zoo.build + save_checkpoint (no trainer needed), for tiny models
with a char tokenizer over a small built-in text.
"""
import subprocess
import sys

import pytest
import torch

import zoo
from zoo.io.checkpoint import plugins_of, save_checkpoint
from zoo.nn.cache import cache_bytes
from zoo.cli import main as zoo_main
from zoo.errors import ZooError
from zoo.generate import SamplingParams, generate, generate_text, next_token_probs, stream_text
from zoo.perf.bench import bench_cache
from zoo.io.atomic import write_json
from zoo.tokenizers import CharTokenizer

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\nROMEO: O, she doth teach the torches!"
TOK = CharTokenizer.from_text(TEXT)


def _save_run(path, name, tokenizer_in_ckpt=True, **overrides):
    spec = zoo.resolve(name, "tiny", vocab_size=TOK.vocab_size, **overrides)
    torch.manual_seed(0)
    model = zoo.build_from_spec(spec)
    payload = {"model": model.state_dict(), "spec": spec, "plugins": plugins_of(spec), "step": 0}
    if tokenizer_in_ckpt:
        payload["tokenizer"] = TOK.config()
    save_checkpoint(path / "ckpt.pt", payload)
    (path / "spec.json").write_text("{}")
    write_json(path / "tokenizer.json", TOK.config())
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Decoding is many small ops: one thread avoids stalls of an oversubscribed thread pool on CI."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {"learned": _save_run(root / "gpt2", "gpt2"),  # bounded: block_size 32 positions
            "rope": _save_run(root / "rope", "gpt2-rope-gqa")}  # unbounded: slides past 32


def _tiny(name, seed=0, **overrides):
    torch.manual_seed(seed)
    return zoo.build(name, "tiny", **overrides).eval()


def _greedy(model, prompts, n, **kw):
    g = generate(model, prompts, n, top_k=1, **kw)
    for _ in g:
        pass
    return g


# ---- loading ------------------------------------------------------------------------------------

def test_load_gives_model_in_eval_mode_and_its_tokenizer(runs, tmp_path):
    model, tok = zoo.load(runs["learned"])
    assert not model.training and tok.config() == TOK.config()
    model2, _ = zoo.load(runs["learned"] / "ckpt.pt")
    for (k, a), (_, b) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert torch.equal(a, b), k
    # a checkpoint without a tokenizer entry falls back to tokenizer.json beside it, else a clear error
    run = _save_run(tmp_path / "r", "gpt2", tokenizer_in_ckpt=False)
    assert zoo.load(run)[1].config() == TOK.config()
    (run / "tokenizer.json").unlink()
    with pytest.raises(ZooError, match="no tokenizer"):
        zoo.load(run)


# ---- the cache against recomputing the context --------------------------------------------------

@pytest.mark.parametrize("name", zoo.list_models())
def test_cached_decoding_gives_the_tokens_of_full_recomputation(name):
    """Greedy tokens with the KV cache equal those from recomputing the whole context each step,
    for every named model, prompts of different lengths in one batch, within the context."""
    model = _tiny(name)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10]]
    a = _greedy(model, prompts, 20)
    b = _greedy(model, prompts, 20, use_cache=False)
    assert a.tokens == b.tokens and all(len(t) == 20 for t in a.tokens)
    assert a.stop_reason == ["length", "length"]


def test_an_attention_without_a_cache_is_recomputed():
    model = _tiny("gpt2-rope-gqa")
    ref = _greedy(model, [[1, 2]], 8)
    for b in model.blocks:
        b.attn.new_cache = None  # as a third-party attention that offers no cache
    g = _greedy(model, [[1, 2]], 8)
    assert not g.use_cache and g.tokens == ref.tokens


def test_a_batch_gives_what_each_prompt_gives_alone():
    model = _tiny("gpt2-alibi")
    prompts = [[3], [5, 9, 2, 7, 1], [8, 8]]
    batch = _greedy(model, prompts, 12)
    for p, toks in zip(prompts, batch.tokens):
        assert _greedy(model, [p], 12).tokens[0] == toks


def test_past_the_context_an_unbounded_model_slides_its_window():
    """Decoding past block_size through the ring buffer equals full attention with a window of
    block_size (the same weights with the attention's window param), logits at every position."""
    model = _tiny("gpt2-rope-gqa")
    W, L = model.block_size, model.block_size + 20
    windowed = _tiny("gpt2-rope-gqa", **{"attention.params.window": W})
    windowed.load_state_dict(model.state_dict())
    idx = torch.randint(0, model.spec["vocab_size"], (2, L), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = windowed(idx)[0]  # (B, L, V)
        cache = model.new_cache(2, W)
        parts = [model(idx[:, :W], cache=cache)[0]]
        parts += [model(idx[:, t:t + 1], cache=cache)[0] for t in range(W, L)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=0)
    # and generation goes on as long as asked
    g = _greedy(model, [[1, 2]], W + 10)
    assert len(g.tokens[0]) == W + 10 and g.stop_reason == ["length"]


def test_a_learned_posenc_stops_at_its_last_position():
    model = _tiny("gpt2")
    g = _greedy(model, [[1, 2, 3]], 100)
    assert g.stop_reason == ["context"] and 3 + len(g.tokens[0]) == model.block_size
    with pytest.raises(ZooError, match="positions; shorten the prompt"):
        generate(model, [[1] * (model.block_size + 1)], 5)


def test_end_of_text_ends_a_sequence_and_is_not_returned():
    model = _tiny("gpt2-nope")
    first = _greedy(model, [[1, 2]], 1).tokens[0][0]
    g = _greedy(model, [[1, 2], [3, 4]], 10, eot=first)
    assert g.stop_reason[0] == "eot" and g.tokens[0] == []
    assert first not in g.tokens[1]


def test_padded_vocabulary_ids_are_never_drawn():
    model = _tiny("gpt2-nope", vocab_size=80)
    g = generate(model, [[1]], 60, vocab_size=7, seed=0, temperature=5.0)
    for _ in g:
        pass
    assert max(g.tokens[0]) < 7


def test_generation_restores_train_mode_and_ignores_dropout():
    model = _tiny("gpt2-nope", dropout=0.3)
    ref = generate_text(model, TOK, "ROMEO:", max_new_tokens=15, seed=3)
    model.train()
    assert generate_text(model, TOK, "ROMEO:", max_new_tokens=15, seed=3) == ref
    assert model.training and ref.startswith("ROMEO:") and len(ref) == len("ROMEO:") + 15


def test_compiled_decode_step_over_the_static_cache_is_one_graph():
    """torch.compile of the decode step (fullgraph: no graph break, so CUDA graphs can capture it),
    checked with the aot_eager backend to keep the test short; same tokens as eager decoding."""
    model = _tiny("gpt2-rope-gqa")
    torch._dynamo.reset()
    g = _greedy(model, [[1, 2, 3], [4]], 12, compile={"backend": "aot_eager", "fullgraph": True})
    assert g.tokens == _greedy(model, [[1, 2, 3], [4]], 12).tokens


@pytest.mark.parametrize("name", ["mamba2", "retnet"])
def test_compiled_decode_step_of_a_state_model_is_one_graph(name):
    """The same for fixed-size state caches: the compiled decode step is one graph and gives eager
    decoding's tokens, past the context. (The segment caches of infini and xl keep Python ints for
    their fill counts, so a compiled step recompiles per count: not covered here, docs/mixers.md.)"""
    model = _tiny(name)
    torch._dynamo.reset()
    n = model.spec["block_size"] + 8
    g = _greedy(model, [[1, 2, 3], [4]], n, compile={"backend": "aot_eager", "fullgraph": True})
    assert g.tokens == _greedy(model, [[1, 2, 3], [4]], n).tokens


# ---- sampling -----------------------------------------------------------------------------------

def test_sampling_filters():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    nz = lambda p: int((p > 0).sum())
    assert nz(next_token_probs(logits, SamplingParams(top_k=2))) == 2
    p = next_token_probs(logits, SamplingParams())
    assert torch.allclose(p, logits.softmax(-1))
    # top-p: the smallest prefix whose mass reaches p (probabilities ~0.636, 0.234, 0.086, ...)
    assert nz(next_token_probs(logits, SamplingParams(top_p=0.8))) == 2
    assert nz(next_token_probs(logits, SamplingParams(top_p=0.9))) == 3
    assert nz(next_token_probs(logits, SamplingParams(top_p=1.0))) == 5
    assert nz(next_token_probs(logits, SamplingParams(top_p=0.5))) == 1
    # min-p: tokens below min_p * max probability are dropped (e^-1 ~ 0.37, e^-2 ~ 0.14 of the top)
    assert nz(next_token_probs(logits, SamplingParams(min_p=0.2))) == 2
    cold = next_token_probs(logits, SamplingParams(temperature=0.05))
    assert cold[0, 0] > 0.999
    seen = torch.tensor([[True, False, False, False, False]])
    pen = next_token_probs(logits, SamplingParams(repetition_penalty=2.0), seen)
    assert pen[0, 0] < p[0, 0] and pen[0, 1] > p[0, 1]
    for probs in (pen, cold):
        assert torch.allclose(probs.sum(-1), torch.ones(1))


@pytest.mark.parametrize("bad, match", [({"temperature": 0.0}, "temperature"), ({"temperature": -1.0}, "temperature"),
                                        ({"top_p": 0.0}, "top-p"), ({"top_p": 1.5}, "top-p"),
                                        ({"top_k": 0}, "top-k"), ({"min_p": 1.0}, "min-p"),
                                        ({"repetition_penalty": 0.0}, "repetition")])
def test_bad_sampling_params_are_user_errors(bad, match):
    with pytest.raises(ZooError, match=match):
        SamplingParams(**bad).validate()


def test_a_seed_reproduces_a_sample_and_another_seed_does_not():
    model = _tiny("gpt2-nope")
    a = generate_text(model, TOK, "ROMEO:", max_new_tokens=40, seed=7)
    assert generate_text(model, TOK, "ROMEO:", max_new_tokens=40, seed=7) == a
    assert generate_text(model, TOK, "ROMEO:", max_new_tokens=40, seed=8) != a


def test_text_streams_in_pieces_and_stop_strings_end_it():
    model = _tiny("gpt2-nope")
    s = stream_text(model, TOK, "ROMEO:", 40, seed=11)
    events = list(s)
    assert len(events) > 10  # produced piece by piece, not all at the end
    assert "".join(p for _, p, _ in events) == s.texts[0] and events[-1][2]
    full = s.texts[0]
    stop = full[20:23]  # a three-character stop string that occurs in this sample
    first = full.find(stop)
    s2 = stream_text(model, TOK, "ROMEO:", 40, seed=11, stop=[stop])
    pieces = "".join(p for _, p, _ in s2)
    assert pieces == s2.texts[0] == full[:first]
    assert s2.generation.stop_reason == ["stop"]


# ---- KV-cache size ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", zoo.list_models())
def test_kv_cache_bytes_per_token_matches_the_formula_and_the_allocation(name):
    spec = zoo.resolve(name, "tiny")
    reported = zoo.kv_cache_bytes_per_token(spec, 4)
    if reported is None:
        pytest.skip(f"attention {spec['attention']['name']!r} reports no cache size")
    att = spec["attention"]
    if att["name"] in ("mha", "mqa", "gqa"):
        kv_heads = {"mha": spec["n_heads"], "mqa": 1}.get(att["name"], att["params"].get("n_kv_heads"))
        if kv_heads is None:  # gqa's documented default: the largest divisor of n_heads up to n_heads / 4
            kv_heads = max(d for d in range(1, max(1, spec["n_heads"] // 4) + 1) if spec["n_heads"] % d == 0)
        head_dim = spec["d_model"] // spec["n_heads"]
        assert reported == 2 * spec["n_layers"] * kv_heads * head_dim * 4
        assert zoo.kv_cache_bytes_per_token(spec, 2) == 2 * spec["n_layers"] * kv_heads * head_dim * 2
    # what a cache actually holds (its nbytes: keys and values, or a state; slot positions are
    # bookkeeping), per token times the length plus the fixed part per sequence
    model = zoo.build_from_spec(spec)
    n = spec["block_size"]
    cache = model.new_cache(1, n, dtype=torch.float32)
    per_seq = cache_bytes(spec, zoo.get_registry(), 4)[1]
    assert cache.nbytes == reported * n + per_seq


def test_zoo_show_reports_the_kv_cache_figure(capsys):
    assert zoo_main(["show", "gpt2-rope-gqa", "--preset", "124m", "--json"]) in (0, None)
    import json
    info = json.loads(capsys.readouterr().out)
    assert info["kv_cache_bytes_per_token"]["bf16"] == 2 * 12 * 2 * 64 * 2  # layers, kv heads, head dim, bytes


# ---- the command --------------------------------------------------------------------------------

def test_cli_streams_a_reproducible_sample(runs, capsys):
    args = ["generate", str(runs["rope"]), "--prompt", "ROMEO:", "--max-new-tokens", "25", "--seed", "5",
            "--top-k", "10", "--top-p", "0.95", "--min-p", "0.01", "--repetition-penalty", "1.2"]
    assert zoo_main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("ROMEO:") and len(out) == len("ROMEO:") + 25 + 1  # + newline
    assert zoo_main(args) == 0
    assert capsys.readouterr().out == out
    model, tok = zoo.load(runs["rope"])
    assert out[:-1] == generate_text(model, tok, "ROMEO:", 25, top_k=10, seed=5, top_p=0.95, min_p=0.01,
                                     repetition_penalty=1.2)


def test_cli_batches_prompts_and_samples(runs, capsys):
    assert zoo_main(["generate", str(runs["rope"]), "--prompt", "ROMEO:", "--prompt", "First",
                     "--num-samples", "2", "--max-new-tokens", "10", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert [out.count(f"--- sample {i}/4 ---") for i in (1, 2, 3, 4)] == [1, 1, 1, 1]
    assert out.count("\nROMEO:") + out.startswith("ROMEO:") == 2 and out.count("\nFirst") == 2


def test_cli_context_limit_message(runs, capsys):
    assert zoo_main(["generate", str(runs["learned"]), "--prompt", "ROMEO:", "--max-new-tokens", "100"]) == 0
    cap = capsys.readouterr()
    assert "stopped at the context limit" in cap.err and len(cap.out) == 32 + 1
    assert zoo_main(["generate", str(runs["rope"]), "--prompt", "ROMEO:", "--max-new-tokens", "40"]) == 0
    cap = capsys.readouterr()
    assert "sliding window" in cap.err and len(cap.out) == len("ROMEO:") + 40 + 1


@pytest.mark.parametrize("extra, match", [
    (["--prompt", ""], "prompt is empty"),
    (["--prompt", "zebra~"], "never seen"),
    (["--prompt", "a", "--temperature", "0"], "temperature"),
    (["--prompt", "a", "--temperature", "-0.5"], "temperature"),
    (["--prompt", "a", "--top-p", "0"], "top-p"),
    (["--prompt", "a", "--top-p", "1.01"], "top-p"),
])
def test_cli_bad_input_exits_2_with_a_message(runs, capsys, extra, match):
    assert zoo_main(["generate", str(runs["learned"])] + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("zoo: error:") and match in err and "Traceback" not in err


def test_cli_missing_or_corrupt_checkpoint(tmp_path, capsys):
    assert zoo_main(["generate", str(tmp_path / "nope"), "--prompt", "a"]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    bad = tmp_path / "ckpt.pt"
    bad.write_bytes(b"not a checkpoint")
    assert zoo_main(["generate", str(tmp_path), "--prompt", "a"]) == 2
    assert "corrupt" in capsys.readouterr().err


def test_module_entry_point_exit_code(tmp_path):
    r = subprocess.run([sys.executable, "-m", "zoo", "generate", str(tmp_path), "--prompt", "a"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no checkpoint" in r.stderr and "Traceback" not in r.stderr


def test_bench_runs_both_decoders():
    """The benchmark's code path (its figures are recorded in docs/generate.md, not asserted)."""
    res = bench_cache("gpt2", "tiny", new_tokens=40, log=lambda *a: None)
    assert res["block_size"] == 41 and res["same_tokens"] and res["cache_s"] > 0 and res["recompute_s"] > 0


def test_bench_transformers_comparison_code_path():
    """The transformers comparison of the GPU benchmark, run small on the CPU (figures not asserted)."""
    pytest.importorskip("transformers", reason="Hugging Face transformers is not installed (pip install transformers)")
    res = bench_cache("gpt2", "tiny", new_tokens=8, runs=("cache", "hf"), log=lambda *a: None)
    assert res["hf_s"] > 0 and res["vs_hf"] > 0
    with pytest.raises(ZooError, match="GPT-2's components"):
        bench_cache("llama", "tiny", new_tokens=4, runs=("hf",), log=lambda *a: None)


def test_tiktoken_run_samples_unconditionally_from_end_of_text(tmp_path):
    """An empty prompt starts from the end-of-text token; ids of the padded vocabulary (50304 for
    GPT-2's 50257 tokens) are never drawn, so every sample decodes."""
    from zoo.tokenizers import TiktokenTokenizer
    try:
        tok = TiktokenTokenizer("gpt2")
    except ZooError as e:
        pytest.skip(f"GPT-2 tokenizer files unavailable offline: {e}")
    spec = zoo.resolve("gpt2-nope", "tiny", vocab_size=50304)
    torch.manual_seed(0)
    model = zoo.build_from_spec(spec)
    save_checkpoint(tmp_path / "ckpt.pt", {"model": model.state_dict(), "spec": spec, "tokenizer": tok.config(),
                                           "plugins": plugins_of(spec), "step": 0})
    model, tok = zoo.load(tmp_path)
    s = stream_text(model, tok, "", 30, seed=0, temperature=3.0)
    text = "".join(p for _, p, _ in s)
    assert text == s.texts[0] and max(s.generation.tokens[0], default=0) < tok.vocab_size
    assert s.generation.prompts == [[tok.eot]]


@pytest.mark.parametrize("name", ["mamba2", "gpt2-nope"])
def test_a_prompt_longer_than_the_context_is_read_whole_only_by_a_state_model(name):
    """mamba2 caches a fixed-size state at every layer: a prompt of 2.5 contexts is read whole, so
    greedy decoding equals the argmax of the full forward over the whole sequence (with and without
    the cache). gpt2-nope's keys and values slide: it reads the prompt's last block_size tokens."""
    from zoo.generate import generate
    torch.manual_seed(0)
    model = zoo.build(name, "tiny").eval()
    n = model.spec["block_size"]
    prompt = torch.randint(0, model.spec["vocab_size"], (5 * n // 2,)).tolist()
    outs = [[s[0] for s in generate(model, [prompt], max_new_tokens=4, top_k=1, use_cache=c)] for c in (True, False)]
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(4):
            ctx = seq if name == "mamba2" else seq[-n:]
            seq.append(int(model(torch.tensor([ctx]))[0][0, -1].argmax()))
    assert outs[0] == outs[1] == seq[len(prompt):]
