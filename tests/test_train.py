"""The trainer: exact resume after SIGKILL, a non-finite loss, bad input, the schedule, weight decay
groups, and what a run writes (TensorBoard scalars, hparams, text samples) as `zoo compare` reads it."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import zoo
from zoo.io.checkpoint import load_checkpoint
from zoo.cli import main
from zoo.train.compare import read_run
from zoo.train import TrainConfig, lr_at, param_groups, train, trainer_for

from conftest import needs_data

pytestmark = needs_data()

SMALL = dict(preset="tiny", max_iters=20, eval_interval=10, eval_iters=2, batch_size=4, sample_tokens=0,
             log_interval=5)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The first 60k characters of Tiny Shakespeare: quick to encode, long enough to train on."""
    from zoo.data import find_dataset, read_text
    p = tmp_path_factory.mktemp("corpus") / "shakespeare60k.txt"
    p.write_text(read_text(find_dataset("tinyshakespeare"))[:60_000], encoding="utf-8")
    return p


def _cli_args(cfg: dict):
    out = []
    for k, v in cfg.items():
        if k == "overrides":
            for kk, vv in v.items():
                out += ["--set", f"{kk}={vv}"]
        else:
            out += [f"--{k.replace('_', '-')}", str(v)]
    return out


def _params(run_dir):
    return load_checkpoint(run_dir)["model"]


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, corpus):
    cfg = dict(SMALL, overrides={"dropout": 0.1}, data=str(corpus))  # dropout: the RNG state must carry over
    full = train("gpt2", TrainConfig(**cfg, out=str(tmp_path / "a"), run_id="full"))
    assert [s for s, _ in full["history"]] == list(range(1, 21))

    # the same run in a process killed with SIGKILL at step 15; its last checkpoint is step 10
    env = dict(os.environ, ZOO_TEST_SIGKILL_AT="step:16")  # at the start of the 16th step
    cmd = [sys.executable, "-m", "zoo", "train", "gpt2", *_cli_args(cfg), "--out", str(tmp_path / "b"), "--run-id", "r"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    run = tmp_path / "b" / "gpt2" / "r"
    assert load_checkpoint(run)["step"] == 10
    assert "step 15/20" in proc.stderr  # it trained past the checkpoint before it died

    resumed = train(resume=str(run))
    assert [s for s, _ in resumed["history"]] == list(range(11, 21))
    for (s1, l1), (s2, l2) in zip(full["history"][10:], resumed["history"]):
        assert s1 == s2 and abs(l1 - l2) <= 1e-6, (s1, l1, l2)
    a, b = _params(tmp_path / "a" / "gpt2" / "full"), _params(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=1e-6), k
    assert abs(full["final_val_loss"] - resumed["final_val_loss"]) <= 1e-6
    # TensorBoard shows one curve: the steps logged after the checkpoint by the killed process are purged
    r = read_run(run)
    assert [s for s, _ in r["val_curve"]] == [0, 10, 20]
    assert abs(r["final_val_loss"] - full["final_val_loss"]) <= 1e-6


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, corpus):
    t = trainer_for("gpt2", TrainConfig(**dict(SMALL, ckpt_interval=5), data=str(corpus), out=str(tmp_path), run_id="r"))
    real, calls = t.forward, []

    def poisoned(x, y):  # the loss of step 8 onwards is NaN, as after a blow-up
        calls.append(1)
        logits, loss = real(x, y)
        return logits, loss * float("nan") if t.step >= 7 and t.model.training else loss

    t.forward = poisoned
    with pytest.raises(zoo.ZooError, match=r"loss became nan at step 8.*last good checkpoint \(step 5\)"):
        t.fit()
    assert load_checkpoint(tmp_path / "gpt2" / "r")["step"] == 5


def _no_runs(out: Path):
    return not out.exists() or not any(p for p in out.rglob("*") if p.is_file())


@pytest.mark.parametrize("case", ["missing", "empty", "short", "unwritable", "unknown_key", "bad_preset"])
def test_bad_input_is_a_clear_error_with_exit_2_and_no_run_dir(tmp_path, corpus, capsys, case):
    out = tmp_path / "runs"
    data = str(corpus)
    extra = []
    expect = {"missing": "does not exist", "empty": "is empty", "short": "shorter than the context",
              "unwritable": "cannot create the runs directory", "unknown_key": "unknown override key 'n_layer'",
              "bad_preset": "unknown preset"}[case]
    if case == "missing":
        data = str(tmp_path / "nope.txt")
    elif case == "empty":
        (tmp_path / "empty.txt").write_text("")
        data = str(tmp_path / "empty.txt")
    elif case == "short":
        (tmp_path / "short.txt").write_text("To be, or not to be.\n" * 2)  # 42 chars: 90% train < 33
        data = str(tmp_path / "short.txt")
    elif case == "unwritable":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "runs"  # a path under a regular file cannot be created
    elif case == "unknown_key":
        extra = ["--set", "n_layer=2"]
    rc = main(["train", "gpt2", "--preset", "bad" if case == "bad_preset" else "tiny", "--data", data,
               "--out", str(out), "--max-iters", "2", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and expect in err and "Traceback" not in err, err
    if case != "unwritable":
        assert _no_runs(out)


def test_corrupt_foreign_and_plugin_missing_checkpoints(tmp_path, corpus, capsys):
    bad = tmp_path / "corrupt"
    bad.mkdir()
    (bad / "ckpt.pt").write_bytes(b"this is not a checkpoint")
    assert main(["train", "--resume", str(bad)]) == 2
    assert "corrupt or not a PyTorch file" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    torch.save({"state": {"w": torch.zeros(2)}}, foreign / "ckpt.pt")
    assert main(["train", "--resume", str(foreign)]) == 2
    assert "not a zoo checkpoint" in capsys.readouterr().err
    # a real run whose attention comes from a plugin that is not installed
    train("gpt2", TrainConfig(**dict(SMALL, max_iters=2, eval_interval=2), data=str(corpus), out=str(tmp_path / "r"),
                              run_id="x"))
    run = tmp_path / "r" / "gpt2" / "x"
    ck = torch.load(run / "ckpt.pt", weights_only=True)
    ck["spec"]["attention"]["name"] = "flash-linear"
    ck["plugins"] = {"zoo-flash-linear": "0.3"}
    torch.save(ck, run / "ckpt.pt")
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "attention 'flash-linear'" in err and "zoo-flash-linear==0.3" in err


def test_schedule_warmup_cosine_to_floor_and_wsd():
    c = TrainConfig(lr=1e-3, min_lr=1e-4, warmup=10, max_iters=100)
    lrs = [lr_at(s, c) for s in range(100)]
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))  # warmup rises
    assert lrs[10] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then decays monotonically
    assert lr_at(100, c) == pytest.approx(1e-4)
    w = TrainConfig(lr=1e-3, min_lr=0.0, warmup=10, max_iters=100, schedule="wsd", decay_frac=0.2)
    assert lr_at(50, w) == lr_at(79, w) == pytest.approx(1e-3)  # stable
    assert lr_at(90, w) == pytest.approx(5e-4) and lr_at(100, w) == pytest.approx(0.0)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_no_weight_decay_on_norms_biases_and_embeddings(name):
    model = zoo.build(name, "tiny")
    decay, other = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decayed and all(n.endswith("weight") and "norm" not in n and "wte" not in n and "wpe" not in n
                           for n in decayed), decayed
    assert other["weight_decay"] == 0.0 and any("wte" in names[id(p)] for p in other["params"])
    assert len(decay["params"]) + len(other["params"]) == len(list(model.parameters()))


def test_run_directory_tensorboard_and_compare(tmp_path, corpus, capsys):
    import json
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    rc = main(["train", "gpt2", "gpt2-rope-gqa", "--preset", "tiny", "--data", str(corpus), "--out", str(tmp_path),
               "--max-iters", "6", "--eval-interval", "3", "--eval-iters", "2", "--batch-size", "4",
               "--sample-tokens", "8", "--log-interval", "2"])
    assert rc == 0
    runs = sorted(tmp_path.glob("*/*"))
    assert [r.parent.name for r in runs] == ["gpt2", "gpt2-rope-gqa"]
    run = runs[0]
    assert {p.name for p in run.iterdir()} >= {"ckpt.pt", "spec.json", "tokenizer.json"}
    acc = EventAccumulator(str(run))
    acc.Reload()
    tags = acc.Tags()
    assert {"train/loss", "val/loss", "train/lr", "train/grad_norm", "train/tokens_per_sec", "memory/peak_mb",
            "model/params"} <= set(tags["scalars"])
    assert any(t.startswith("sample") for t in tags["tensors"])  # text samples at each evaluation
    from tensorboard.plugins.hparams import plugin_data_pb2
    content = acc.PluginTagToContent("hparams")
    hp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info.hparams
    assert hp["spec.attention.name"].string_value == "mha" and hp["spec.n_layers"].number_value == 2
    assert "manifest_hash" in hp and "plugin.zoo" in hp
    # zoo compare: model names mean their latest run
    capsys.readouterr()
    assert main(["compare", "gpt2", "gpt2-rope-gqa", "--out", str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == ["gpt2", "gpt2-rope-gqa"]
    for r in rows:
        assert {"best_val_loss", "final_val_loss", "tokens_per_sec", "params", "wall_time_s"} <= set(r)
        assert r["best_val_loss"] <= r["final_val_loss"] and r["params"] > 0 and r["tokens_per_sec"] > 0
    assert rows[0]["params"] == zoo.build_from_spec(json.loads((run / "spec.json").read_text())).num_params()
    assert main(["compare", str(runs[0]), str(runs[1])]) == 0
    table = capsys.readouterr().out
    assert "best val" in table and "gpt2-rope-gqa" in table
    png = tmp_path / "curves.png"
    rc = main(["compare", str(runs[0]), str(runs[1]), "--plot", str(png)])
    if importlib.util.find_spec("matplotlib"):
        assert rc == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:  # matplotlib is optional: the error says how to get it
        assert rc == 2 and "pip install matplotlib" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["compare", "llama", "--out", str(tmp_path)]) == 2
    assert "zoo train llama" in capsys.readouterr().err


def test_moe_component_stats_and_aux_loss_are_logged(tmp_path, corpus):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ffns = {n: zoo.resolve(n, "tiny")["ffn"] for n in zoo.list_models()}
    name = next((n for n, f in ffns.items() if f["name"] == "moe" and f["params"].get("balance") == "aux_loss"), None)
    if name is None:
        pytest.skip("no model with the moe ffn balanced by an auxiliary loss is registered")
    res = train(name, TrainConfig(**dict(SMALL, max_iters=2, eval_interval=2, log_interval=1), data=str(corpus),
                                  out=str(tmp_path)))
    acc = EventAccumulator(res["run_dir"])
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert any(t.startswith("components/") for t in tags), tags
    assert "train/aux_loss" in tags


def test_gradient_accumulation_matches_the_larger_batch(tmp_path, corpus):
    common = dict(SMALL, max_iters=4, eval_interval=4, data=str(corpus), out=str(tmp_path))
    big = train("gpt2", TrainConfig(**dict(common, batch_size=8), run_id="big"))
    acc = train("gpt2", TrainConfig(**dict(common, batch_size=4, grad_accum=2), run_id="acc"))
    for (_, a), (_, b) in zip(big["history"], acc["history"]):
        assert abs(a - b) < 1e-5
    pa, pb = _params(tmp_path / "gpt2" / "big"), _params(tmp_path / "gpt2" / "acc")
    assert all(torch.allclose(pa[k], pb[k], atol=1e-5) for k in pa)


def test_early_stop_after_evaluations_without_improvement(tmp_path, corpus):
    # with a learning rate of zero nothing changes, so the first evaluation after step 0 does not improve
    res = train("gpt2", TrainConfig(**dict(SMALL, lr=0.0, min_lr=0.0, eval_interval=5, early_stop=1),
                                    data=str(corpus), out=str(tmp_path)))
    assert res["steps"] == 5 and [s for s, _ in res["val_history"]] == [0, 5]
    assert load_checkpoint(res["run_dir"])["step"] == 5


def test_without_a_preset_the_cpu_gets_the_baby_recipe_and_is_told_so(tmp_path, corpus, capsys):
    assert main(["train", "gpt2", "--data", str(corpus), "--out", str(tmp_path), "--max-iters", "1",
                 "--eval-iters", "1", "--sample-tokens", "0", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "no --preset given: using 'baby'" in err
    ck = load_checkpoint(next(tmp_path.glob("gpt2/*")))
    assert ck["spec"]["preset"] == "baby" and ck["spec"]["n_layers"] == 4 and ck["train"]["batch_size"] == 12


def test_mfu_uses_the_components_flops_counted_by_hand(tmp_path, corpus):
    """The trainer's MFU: 3 x the forward FLOPs that the components report (zoo.perf.flops), counted
    here by hand for gpt2 at tiny (the char vocabulary of the corpus), over a peak set for the test."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    t = trainer_for("gpt2", TrainConfig(**dict(SMALL, max_iters=4, eval_interval=4), data=str(corpus),
                                    out=str(tmp_path), run_id="mfu"))
    L, C, T, V = 2, 64, 32, t.spec["vocab_size"]
    attention = 2 * (C * 3 * C + C * C) + 4 * T * C  # qkv and output projections; QK^T and AV over T keys
    mlp = 2 * (C * 4 * C + 4 * C * C)
    head = 2 * V * C
    assert t.flops_tok == 3 * (L * (attention + mlp) + head)
    t.peak = 1e9  # no datasheet peak on a CPU: give it one, so the MFU is logged
    t.fit()
    acc = EventAccumulator(str(tmp_path / "gpt2" / "mfu"))
    acc.Reload()
    tps = {e.step: e.value for e in acc.Scalars("train/tokens_per_sec")}
    mfu = {e.step: e.value for e in acc.Scalars("train/mfu")}
    assert mfu and set(mfu) == set(tps)
    for step, v in mfu.items():
        assert v == pytest.approx(tps[step] * t.flops_tok / 1e9, rel=1e-5)


def test_a_presets_training_recipe_comes_from_the_manifest(tmp_path, corpus, fresh_registry):
    """Each preset carries its recipe as data (zoo.json "train"); a user's preset brings its own, and
    what the user sets wins over it."""
    from zoo.spec.manifest import manifest_schema
    from zoo.train.config import config_fields
    recipe_keys = set(manifest_schema()["$defs"]["recipe"]["properties"])
    assert recipe_keys <= config_fields()
    assert all("train" in zoo.get_registry().presets[p].entry for p in ("tiny", "baby", "char", "124m"))
    m = tmp_path / "m.json"
    m.write_text(json.dumps({"version": 1, "presets": {"mine": {
        "n_layers": 1, "n_heads": 2, "d_model": 32, "block_size": 16, "vocab_size": 65,
        "train": {"max_iters": 3, "batch_size": 2, "lr": 5e-4, "min_lr": 5e-5, "warmup": 1, "beta2": 0.9,
                  "eval_interval": 3, "eval_iters": 1, "weight_decay": 0.05, "sample_tokens": 0}}}}))
    zoo.configure([str(m)])
    t = trainer_for("gpt2", TrainConfig(preset="mine", data=str(corpus), out=str(tmp_path), lr=7e-4))
    c = t.cfg
    assert (c.max_iters, c.batch_size, c.min_lr, c.warmup, c.beta2, c.weight_decay) == (3, 2, 5e-5, 1, 0.9, 0.05)
    assert c.lr == 7e-4  # the user's flag wins over the recipe
    assert c.grad_clip == 1.0 and c.schedule == "cosine"  # what no recipe sets
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"version": 1, "presets": {"bad": {
        "n_layers": 1, "n_heads": 2, "d_model": 32, "block_size": 16, "vocab_size": 65, "train": {"lr": -1}}}}))
    assert main(["--manifest", str(bad), "list"]) == 2


def test_target_loss_stops_at_the_first_evaluation_that_reaches_it(tmp_path, corpus, capsys):
    # the same seeded run twice: the second stops where the first's val loss first fell to the target
    cfg = dict(SMALL, max_iters=12, eval_interval=3, data=str(corpus))
    full = train("gpt2", TrainConfig(**cfg, out=str(tmp_path / "a")))
    vals = dict(full["val_history"])
    assert vals[3] > vals[6] > vals[12]  # it learns, so the target below is first met at step 6
    goal = (vals[6] + vals[3]) / 2 if vals[6] < min(vals[0], vals[3]) else vals[6]
    res = train("gpt2", TrainConfig(**cfg, out=str(tmp_path / "b"), target_loss=goal))
    assert res["steps"] == 6 and res["target"]["step"] == 6
    assert res["target"]["val_loss"] == pytest.approx(vals[6], abs=1e-6)
    assert res["target"]["wall_time_s"] >= res["target"]["train_time_s"] > 0
    assert load_checkpoint(res["run_dir"])["step"] == 6  # what it reached is saved
    assert f"target loss {goal:g} reached at step 6" in capsys.readouterr().err
    assert full["target"] is None


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "inf"])
def test_target_loss_must_be_a_positive_loss(tmp_path, corpus, bad, capsys):
    assert main(["train", "gpt2", "--preset", "tiny", "--data", str(corpus), "--out", str(tmp_path),
                 "--target-loss", bad]) == 2
    assert "--target-loss must be a positive number" in capsys.readouterr().err


def test_evaluation_in_larger_chunks_gives_the_same_loss(tmp_path, corpus, monkeypatch):
    # the fixed validation batches are concatenated into fewer forwards: the same windows, the same mean
    import zoo.train.trainer as T
    t = trainer_for("gpt2", TrainConfig(**dict(SMALL, eval_iters=6), data=str(corpus), out=str(tmp_path)))
    try:
        chunked = t.evaluate()
        assert len(t._chunks) < 6 and sum(x.shape[0] for x, _ in t._chunks) == 6 * SMALL["batch_size"]
        monkeypatch.setattr(T, "EVAL_TOKENS", 1)
        t._chunks = None
        single = t.evaluate()
        assert len(t._chunks) == 6
    finally:
        t.close()
    assert chunked == pytest.approx(single, abs=1e-5)
