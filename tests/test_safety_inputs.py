"""Plausible mistakes (issue 12, "Tracebacks or silent acceptance"): each ends in one paragraph with exit
code 2, or a warning where the work can go on, with no traceback and nothing written.

One table of invocations of ``zoo.cli.main`` (in-process); a few of them again through ``python -m zoo``
to see exactly what a user sees. The files a case needs (a 20 kB corpus, token shards, a run, an HF
directory, adapters, binary files) are made once per module under a temporary directory."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import zoo
from zoo.cli import main

from conftest import needs_data

pytestmark = needs_data()

FIXTURES = Path(__file__).parent / "fixtures" / "runs-aaa45bd"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{name: path} of everything the table refers to as ``{name}``."""
    from zoo.data import find_dataset
    from zoo.io.safetensors import load_file, metadata, save_file
    d = tmp_path_factory.mktemp("inputs")
    f = {"tmp": d}
    f["text"] = d / "small.txt"
    f["text"].write_bytes(find_dataset("tinyshakespeare").read_bytes()[:20_000])
    f["binary"] = d / "binary.json"
    f["binary"].write_bytes(b'{"models": \x80\x81\xfe\xff}')
    f["dir"] = d / "a-directory"
    f["dir"].mkdir()
    f["nan_manifest"] = d / "nan.json"
    f["nan_manifest"].write_text('{"presets": {"p": {"n_layers": 1, "n_heads": 1, "d_model": 8, "block_size": 8, '
                                 '"vocab_size": 8, "dropout": NaN}}}')
    f["not_bench"] = d / "not-bench.json"
    f["not_bench"].write_text(json.dumps({"models": [{"model": "gpt2"}]}))
    # runs (copied: nothing here may change the fixtures)
    f["run"] = d / "plain"
    shutil.copytree(FIXTURES / "gpt2" / "plain", f["run"])
    f["llama"] = d / "hf-llama"
    shutil.copytree(FIXTURES / "hf-llama", f["llama"])
    # adapters of the tiny gpt2 (d_model 64), without the ffn ones: every name exists in hf-llama
    # (d_model 32), only the shapes differ
    src = FIXTURES / "gpt2-lora" / "lora" / "adapter.safetensors"
    f["adapter"] = d / "gpt2-attn-adapter.safetensors"
    save_file({k: v for k, v in load_file(src).items() if ".attn." in k}, f["adapter"], metadata(src))
    # token shards: good, one without "shards", one with an id beyond the vocabulary
    zoo.configure([])
    assert main(["data", "prepare", str(f["text"]), "--out", str(d / "shards"), "--tokenizer", "char"]) == 0
    f["shards"] = d / "shards"
    f["no_shards_key"] = d / "shards-nokey"
    shutil.copytree(f["shards"], f["no_shards_key"])
    meta = json.loads((f["no_shards_key"] / "meta.json").read_text())
    del meta["shards"]
    (f["no_shards_key"] / "meta.json").write_text(json.dumps(meta))
    f["big_ids"] = d / "shards-bigids"
    shutil.copytree(f["shards"], f["big_ids"])
    import numpy as np
    ids = np.memmap(f["big_ids"] / "train_000000.bin", dtype="<u2", mode="r+")
    ids[123] = 60_000
    ids.flush()
    del ids
    # a Hugging Face directory whose config writes sizes as floats (64.0), and one with a fraction
    f["hf_float"] = d / "hf-float"
    assert main(["export", "hf", str(f["run"]), str(f["hf_float"])]) == 0
    cfg = json.loads((f["hf_float"] / "config.json").read_text())
    cfg.update(n_embd=64.0, n_layer=2.0, n_head=4.0, n_positions=32.0, vocab_size=float(cfg["vocab_size"]))
    (f["hf_float"] / "config.json").write_text(json.dumps(cfg))
    f["hf_fraction"] = d / "hf-fraction"
    shutil.copytree(f["hf_float"], f["hf_fraction"])
    (f["hf_fraction"] / "config.json").write_text(json.dumps({**cfg, "n_embd": 64.5}))
    return f


def zoo_cli(capsys, argv, env=None, monkeypatch=None):
    """(exit code, stdout, stderr) of ``zoo ARGV`` run in-process; argparse's SystemExit counts."""
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    zoo.configure([])
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    zoo.configure([])
    return code, out, err


TRAIN = ["train", "gpt2", "--preset", "tiny", "--data", "{text}", "--out", "{tmp}/runs", "--max-iters", "1",
         "--eval-iters", "1", "--batch-size", "2", "--sample-tokens", "0"]
BENCH = ["bench", "gpt2", "--reps", "1", "--warmup", "0"]
BIG = "needs at least"

# (id, argv, environment, exit code, fragment of stderr)
CASES = [
    # whole floats are integers; fractions, NaN and sizes torch cannot describe are errors
    ("set-float-int", ["show", "gpt2", "--preset", "tiny", "--set", "n_layers=64.0", "--json"], {}, 0, ""),
    ("set-fraction", ["show", "gpt2", "--preset", "tiny", "--set", "n_layers=4.5"], {}, 2, "is not of type 'integer'"),
    ("set-nan", ["show", "gpt2", "--preset", "tiny", "--set", "dropout=NaN"], {}, 2, "NaN is not a number"),
    ("set-inf", ["show", "gpt2", "--preset", "tiny", "--set", "dropout=1e999"], {}, 2, "too large to be a number"),
    ("show-huge-d-model", ["show", "gpt2", "--preset", "tiny", "--set", "d_model=1000000000"], {}, 2,
     "too large for torch to describe"),
    ("hf-config-floats", ["import", "hf", "{hf_float}", "--out", "{tmp}/imported",
                          "--tokenizer", "{run}/tokenizer.json"], {}, 0, ""),
    ("hf-config-fraction", ["import", "hf", "{hf_fraction}", "--out", "{tmp}/imported-2",
                            "--tokenizer", "{run}/tokenizer.json"], {}, 2, "n_embd is 64.5, but it must be a whole number"),
    # training options: their ranges, in one place (TrainConfig.fill)
    ("lr-negative", TRAIN + ["--lr", "-1"], {}, 2, "--lr must be a number in [0, 1000]"),
    ("lr-nan", TRAIN + ["--lr", "nan"], {}, 2, "--lr must be a number in [0, 1000], not nan"),
    ("beta2", TRAIN + ["--beta2", "1.5"], {}, 2, "--beta2 must be a number in [0, 1)"),
    ("device-bogus", TRAIN + ["--device", "bogus"], {}, 2, "unknown device 'bogus'"),
    ("device-mps", TRAIN + ["--device", "mps"], {}, 2, "device 'mps' is not supported"),
    ("seed-negative", TRAIN + ["--seed", "-1"], {}, 2, "--seed must be between 0 and 4294967295"),
    ("early-stop", TRAIN + ["--early-stop", "-1"], {}, 2, "--early-stop must be at least 0"),
    ("weight-decay", TRAIN + ["--weight-decay", "-1"], {}, 2, "--weight-decay must be a number in [0, 1000]"),
    ("warmup", TRAIN + ["--warmup", "-5"], {}, 2, "--warmup must be at least 0"),
    ("grad-clip", TRAIN + ["--grad-clip", "-1"], {}, 2, "--grad-clip must be a number in [0, infinity)"),
    ("max-iters-fraction", TRAIN + ["--max-iters", "1.5"], {}, 2, "'1.5' is not a whole number"),
    ("finetune-lr", ["finetune", "{run}", "--data", "{text}", "--out", "{tmp}/runs", "--lr", "-1"], {}, 2,
     "--lr must be a number in [0, 1000]"),
    ("finetune-block-size", ["finetune", "{run}", "--data", "{text}", "--out", "{tmp}/runs", "--block-size", "0"], {},
     2, "--block-size must be at least 1"),
    # models that cannot fit: refused with the figures before the model is built
    ("n-layers-huge", ["train", "gpt2", "--data", "{text}", "--out", "{tmp}/runs", "--set", "n_layers=100000"], {},
     2, BIG),
    ("d-model-huge", ["train", "gpt2", "--data", "{text}", "--out", "{tmp}/runs", "--set", "d_model=1000000000"], {},
     2, BIG),
    ("params-huge", TRAIN + ["--set", "d_model=65536", "--set", "n_heads=1", "--batch-size", "1"], {}, 2,
     "parameters x 16 bytes"),
    ("batch-huge", TRAIN + ["--batch-size", "1000000000"], {}, 2, BIG),
    # zoo bench: options and files checked before measuring
    ("bench-seq", BENCH + ["--seq", "0"], {}, 2, "--seq must be at least 1"),
    ("bench-batch", BENCH + ["--batch", "0"], {}, 2, "--batch must be at least 1"),
    ("bench-reps", BENCH + ["--reps", "0"], {}, 2, "--reps must be at least 1"),
    ("bench-warmup", BENCH + ["--warmup", "-1"], {}, 2, "--warmup must be at least 0"),
    ("bench-decode-batch", BENCH + ["--decode-batch", "0"], {}, 2, "--decode-batch must be at least 1"),
    ("bench-decode-tokens", BENCH + ["--decode-tokens", "-1"], {}, 2, "--decode-tokens must be at least 1"),
    ("bench-json-nodir", BENCH + ["--json", "/nonexistent-dir/x.json"], {}, 2, "does not exist"),
    ("bench-vs-binary", BENCH + ["--vs", "{binary}"], {}, 2, "is not a text file"),
    ("bench-vs-not-bench", BENCH + ["--vs", "{not_bench}"], {}, 2, "is not a zoo bench --json result"),
    ("bench-too-big", BENCH + ["--batch", "1000000000"], {}, 2, BIG),
    # manifests that are directories or binary
    ("validate-dir", ["validate", "{dir}"], {}, 2, "is a directory"),
    ("validate-binary", ["validate", "{binary}"], {}, 2, "is not UTF-8 text"),
    ("env-manifest-dir", ["list"], {"ZOO_MANIFEST": "{dir}"}, 2, "is a directory"),
    ("manifest-binary", ["--manifest", "{binary}", "list"], {}, 2, "is not UTF-8 text"),
    ("manifest-nan", ["--manifest", "{nan_manifest}", "list"], {}, 2, "NaN is not a number"),
    # data
    ("shards-ids-beyond-vocab", TRAIN[:5] + ["{big_ids}"] + TRAIN[6:], {}, 2, "holds token id 60000"),
    ("shards-meta-no-shards", TRAIN[:5] + ["{no_shards_key}"] + TRAIN[6:], {}, 2, 'has no "shards"'),
    ("prepare-val-fraction", ["data", "prepare", "{text}", "--out", "{tmp}/sh-bad", "--tokenizer", "char",
                              "--val-fraction", "1.5"], {}, 2, "--val-fraction must be in [0, 1)"),
    # another model's adapter
    ("lora-merge-other-model", ["lora", "merge", "{llama}", "--adapter", "{adapter}", "--out", "{tmp}/merged"], {}, 2,
     "do not fit the weight (32, 32)"),
    # generation that cannot fit
    ("generate-num-samples", ["generate", "{run}", "--prompt", "A", "--num-samples", "100000000",
                              "--max-new-tokens", "5"], {}, 2, "available"),
    ("generate-seed-overflow", ["generate", "{run}", "--prompt", "A", "--max-new-tokens", "2", "--seed",
                                str(2 ** 70)], {}, 2, "seed must be a whole number"),
]


def _fill(x, files):
    return x.format(**{k: str(v) for k, v in files.items()}) if isinstance(x, str) else x


@pytest.mark.parametrize("argv, env, code, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_plausible_mistake(argv, env, code, fragment, files, capsys, monkeypatch):
    argv = [_fill(a, files) for a in argv]
    env = {k: _fill(v, files) for k, v in env.items()}
    runs = files["tmp"] / "runs"
    before = sorted(p.relative_to(runs) for p in runs.rglob("*")) if runs.exists() else []
    got, out, err = zoo_cli(capsys, argv, env, monkeypatch)
    assert got == code, (got, err[-2000:])
    assert fragment in err, err[-2000:]
    assert "Traceback" not in err
    if code == 2 and got == 2 and "usage:" not in err:
        assert err.count("zoo: error:") == 1 and err.rstrip().endswith((".", ")")), err
        # nothing was written: no run directory, no output directory
        after = sorted(p.relative_to(runs) for p in runs.rglob("*")) if runs.exists() else []
        assert after == before
        for a in argv:
            if a.startswith(str(files["tmp"])) and any(w in a for w in ("merged", "imported-2", "sh-bad")):
                assert not Path(a).exists(), a


def test_whole_floats_become_ints_in_the_spec(files, capsys):
    spec = zoo.resolve("gpt2", "tiny", n_layers=1e3, **{"attention.params.window": 16.0})
    assert spec["n_layers"] == 1000 and type(spec["n_layers"]) is int
    assert spec["attention"]["params"]["window"] == 16 and type(spec["attention"]["params"]["window"]) is int
    code, out, _ = zoo_cli(capsys, ["show", "gpt2", "--preset", "tiny", "--set", "n_layers=64.0", "--json"])
    assert code == 0 and json.loads(out)["spec"]["n_layers"] == 64
    out = files["tmp"] / "imported-ints"
    code, _, err = zoo_cli(capsys, ["import", "hf", files["hf_float"], "--out", out, "--tokenizer",
                                    files["run"] / "tokenizer.json"])
    assert code == 0, err
    spec = json.loads((out / "spec.json").read_text())
    assert (spec["d_model"], spec["n_layers"], spec["block_size"]) == (64, 2, 32)
    assert all(type(spec[k]) is int for k in ("d_model", "n_layers", "n_heads", "block_size", "vocab_size"))


def test_fsdp_without_torchrun_warns_and_trains(files, capsys):
    argv = [_fill(a, files) for a in TRAIN] + ["--fsdp", "--max-iters", "1e0", "--run-id", "fsdp"]
    code, _, err = zoo_cli(capsys, argv)
    assert code == 0, err
    assert "zoo: warning: --fsdp shards the model over the processes of torchrun" in err
    assert (files["tmp"] / "runs" / "gpt2" / "fsdp" / "ckpt.pt").is_file()


def test_a_generation_that_fits_is_not_refused(files, capsys):
    code, out, err = zoo_cli(capsys, ["generate", str(files["run"]), "--prompt", "A", "--num-samples", "3",
                                      "--max-new-tokens", "4", "--seed", "1"])
    assert code == 0 and out.count("--- sample") == 3, err


def test_the_memory_figures(files):
    from zoo.errors import ZooError
    from zoo.nn.memory import available_bytes
    from zoo.perf.memory import check_training_memory, training_bytes
    spec = zoo.resolve("gpt2", "tiny")
    est = training_bytes(spec, batch=2)
    assert est["exact"] and est["params"] == zoo.param_count(spec) and est["state"] == 16 * est["params"]
    assert est["activations"] > 0 and est["total"] == est["state"] + est["activations"]
    assert available_bytes("cpu") > 0
    assert check_training_memory(spec, device="cpu", batch=2)["total"] == est["total"]
    big = zoo.resolve("gpt2", "tiny", d_model=2 ** 16, n_heads=1)
    with pytest.raises(ZooError, match="parameters x 16 bytes"):
        check_training_memory(big, device="cpu", batch=1)


@pytest.mark.parametrize("case", ["lr-nan", "validate-dir", "bench-json-nodir", "n-layers-huge"])
def test_what_the_user_sees(case, files):
    """The same cases through a real process: one paragraph on stderr, exit 2, no traceback."""
    _, argv, env, code, fragment = next(c for c in CASES if c[0] == case)
    p = subprocess.run([sys.executable, "-m", "zoo", *[_fill(a, files) for a in argv]], capture_output=True,
                       text=True, env={**os.environ, **{k: _fill(v, files) for k, v in env.items()}}, timeout=300)
    assert p.returncode == code, p.stderr
    assert fragment in p.stderr and "Traceback" not in p.stderr
    assert p.stderr.count("zoo: error:") == 1


def test_the_python_api_gets_the_same_checks():
    import warnings

    from zoo.errors import ZooError, ZooWarning
    from zoo.train import TrainConfig
    from zoo.train.config import DEFAULT_RECIPE
    c = TrainConfig(max_iters=1e3, warmup=5.0).fill(None)
    assert (c.max_iters, c.warmup) == (1000, 5) and type(c.max_iters) is int
    for bad, fragment in ((dict(lr=-1), "--lr must be"), (dict(beta2=1.0), "--beta2 must be"),
                          (dict(max_iters=2.5), "--max-iters must be a whole number"),
                          (dict(seed=-1), "--seed must be between"), (dict(batch_size="8"), "whole number")):
        with pytest.raises(ZooError, match=fragment.replace("-", r"\-")):
            TrainConfig(**bad).fill(None)
    # a preset recipe that sets some options: the default recipe fills the rest (not None)
    c = TrainConfig().fill({"lr": 5e-4})
    assert c.lr == 5e-4 and c.max_iters == DEFAULT_RECIPE["max_iters"]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        TrainConfig(lr=0.0).fill(None)
    assert [str(x.message) for x in w if issubclass(x.category, ZooWarning)] == [
        "--lr 0: the weights will not change during this run."]
