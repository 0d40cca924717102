"""Fault injection: a short training run is killed (SIGKILL) at seeded moments, a checkpoint write
meets a full disk (OSError ENOSPC), a Ctrl-C comes before the first checkpoint; each time the run
is taken up again (resumed, or started again with the same --run-id when it never checkpointed) and
must end with the same weights as a run that was never interrupted.

The moments are the fault points of zoo.io.faults: the start of every step, every evaluation, and
the two ends of every atomic file write (temporary file complete; renamed into place), the run's
own files and its checkpoints included. CI draws six (five after the first checkpoint, one before);
the test marked slow draws twenty over the whole run (its result is in docs/train.md, "Safety").
"""
import errno
import os
import random
import subprocess
import sys

import pytest
import torch

import zoo.io.checkpoint
from zoo.errors import ZooError
from zoo.io.atomic import write_atomically
from zoo.io.checkpoint import load_checkpoint
from zoo.train import TrainConfig, train

from conftest import needs_data

pytestmark = needs_data()

RUN = dict(preset="tiny", max_iters=12, eval_interval=3, eval_iters=1, batch_size=2, sample_tokens=0,
           log_interval=3, overrides={"dropout": 0.1})  # dropout: the RNG state must carry over too
# fault points of RUN, in order: 6 for the run's own files (marker, spec.json, tokenizer.json), then
# per step "step", and every 3 steps "eval" and a checkpoint ("write", "replaced")
POINTS = 6 + 12 + 4 + 4 * 2
FIRST_CHECKPOINT = 6 + 3 + 1 + 2  # the point at which the first checkpoint is in place


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from zoo.data import find_dataset, read_text
    p = tmp_path_factory.mktemp("corpus") / "shakespeare30k.txt"
    p.write_text(read_text(find_dataset("tinyshakespeare"))[:30_000], encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """The weights of the run never interrupted."""
    out = tmp_path_factory.mktemp("ref")
    res = train("gpt2", TrainConfig(**RUN, data=str(corpus), out=str(out), run_id="ref", device="cpu"))
    assert res["steps"] == 12
    return load_checkpoint(out / "gpt2" / "ref")["model"]


def _cli(corpus, out, run_id="r"):
    args = [sys.executable, "-m", "zoo", "train", "gpt2", "--out", str(out), "--run-id", run_id, "--data", str(corpus),
            "--device", "cpu", "--set", "dropout=0.1"]
    for k, v in RUN.items():
        if k != "overrides":
            args += [f"--{k.replace('_', '-')}", str(v)]
    return args


def _same_weights(run_dir, reference):
    got = load_checkpoint(run_dir)
    assert got["step"] == 12
    for k, v in reference.items():
        assert torch.allclose(got["model"][k], v, atol=1e-6, rtol=0), k


def _kill_and_recover(n, corpus, out, reference):
    env = dict(os.environ, ZOO_TEST_SIGKILL_AT=str(n))
    p = subprocess.run(_cli(corpus, out), env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == -9, f"point {n}: exit {p.returncode}\n{p.stderr}"
    run_dir = out / "gpt2" / "r"
    if (run_dir / "ckpt.pt").exists():
        assert n >= FIRST_CHECKPOINT
        train(cfg=TrainConfig(device="cpu"), resume=str(run_dir))
    else:
        assert n < FIRST_CHECKPOINT
        # never checkpointed: the same command again replaces what the killed start left
        p = subprocess.run(_cli(corpus, out), capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
    _same_weights(run_dir, reference)
    assert not [q for q in run_dir.iterdir() if q.name.endswith(".tmp")], "temporary files left behind"


def _moments(seed, before, after):
    rng = random.Random(seed)
    return rng.sample(range(1, FIRST_CHECKPOINT), before) + rng.sample(range(FIRST_CHECKPOINT, POINTS + 1), after)


@pytest.mark.parametrize("n", _moments(2026, 1, 5))
def test_sigkill_at_a_seeded_moment_then_recover(n, corpus, reference, tmp_path):
    _kill_and_recover(n, corpus, tmp_path, reference)


@pytest.mark.slow
def test_sigkill_at_twenty_seeded_moments(corpus, reference, tmp_path):
    moments = sorted(random.Random(7).sample(range(1, POINTS + 1), 20))
    for n in moments:
        _kill_and_recover(n, corpus, tmp_path / f"k{n}", reference)
    print(f"\nSIGKILL at fault points {moments} of {POINTS}: every run recovered to the uninterrupted weights")


def _full_disk_at(k, monkeypatch):
    """The k-th checkpoint write runs out of space half way through its temporary file."""
    calls = {"n": 0}

    def write(path, fn, **kw):
        calls["n"] += 1
        if calls["n"] != k:
            return write_atomically(path, fn, **kw)

        def partial(f):
            f.write(b"\0" * 4096)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write_atomically(path, partial, **kw)
    monkeypatch.setattr(zoo.io.checkpoint, "write_atomically", write)


def test_a_full_disk_keeps_the_last_checkpoint_and_the_run_resumes(corpus, reference, tmp_path, monkeypatch):
    cfg = TrainConfig(**RUN, data=str(corpus), out=str(tmp_path), run_id="r", device="cpu")
    _full_disk_at(3, monkeypatch)  # the checkpoint of step 9
    with pytest.raises(ZooError) as e:
        train("gpt2", cfg)
    msg = str(e.value)
    assert "No space left on device" in msg and "step 9" in msg and "MB" in msg
    assert "last checkpoint (step 6) is kept" in msg and "--resume" in msg
    run_dir = tmp_path / "gpt2" / "r"
    assert load_checkpoint(run_dir)["step"] == 6
    assert not [q for q in run_dir.iterdir() if q.name.endswith(".tmp")]
    monkeypatch.undo()
    train(cfg=TrainConfig(device="cpu"), resume=str(run_dir))
    _same_weights(run_dir, reference)


def test_a_full_disk_at_the_first_checkpoint_leaves_a_run_id_that_starts_again(corpus, reference, tmp_path,
                                                                               monkeypatch):
    cfg = dict(RUN, data=str(corpus), out=str(tmp_path), run_id="r", device="cpu")
    _full_disk_at(1, monkeypatch)
    with pytest.raises(ZooError, match="No checkpoint was written yet"):
        train("gpt2", TrainConfig(**cfg))
    monkeypatch.undo()
    run_dir = tmp_path / "gpt2" / "r"
    with pytest.raises(ZooError, match="before its first checkpoint"):
        train(cfg=TrainConfig(device="cpu"), resume=str(run_dir))
    train("gpt2", TrainConfig(**cfg))  # the same run id: the folder of the failed start is replaced
    _same_weights(run_dir, reference)


def test_ctrl_c_before_the_first_checkpoint_does_not_block_the_run_id(corpus, reference, tmp_path):
    env = dict(os.environ, ZOO_TEST_SIGKILL_AT="step:2", ZOO_TEST_SIGNAL="INT")
    p = subprocess.run(_cli(corpus, tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 130 and "interrupted" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run(_cli(corpus, tmp_path), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "never reached a checkpoint" in p.stderr
    _same_weights(tmp_path / "gpt2" / "r", reference)
