"""torchrun with 2 CPU processes (gloo): DDP gives the same loss curve as one process with the same
global batch, each rank sees its own share of every global batch, and only rank 0 prints."""
import os
import subprocess
import sys

import pytest
import torch.distributed as dist

from zoo.compare import read_run
from zoo.checkpoint import load_checkpoint

from conftest import needs_data

pytestmark = [needs_data(), pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                               reason="this PyTorch build has no gloo backend")]

ARGS = ["--preset", "tiny", "--max-iters", "8", "--eval-interval", "4", "--eval-iters", "2", "--log-interval", "1",
        "--sample-tokens", "0"]


def _curve(run, tag="train/loss"):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from zoo.data import find_dataset, read_text
    p = tmp_path_factory.mktemp("corpus") / "c.txt"
    p.write_text(read_text(find_dataset("tinyshakespeare"))[:40_000], encoding="utf-8")
    return p


def test_ddp_two_processes_match_one_process_with_the_same_global_batch(tmp_path, corpus):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    common = ["-m", "zoo", "train", "gpt2", *ARGS, "--data", str(corpus), "--out", str(tmp_path)]
    one = subprocess.run([sys.executable, *common, "--batch-size", "8", "--run-id", "one"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--standalone", *common, "--batch-size", "4", "--run-id", "two"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr
    assert two.stderr.count("done: gpt2") == 1  # only rank 0 prints
    a, b = _curve(tmp_path / "gpt2" / "one"), _curve(tmp_path / "gpt2" / "two")
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, 9))
    for (s, la), (_, lb) in zip(a, b):
        assert abs(la - lb) < 1e-4, (s, la, lb)
    va, vb = _curve(tmp_path / "gpt2" / "one", "val/loss"), _curve(tmp_path / "gpt2" / "two", "val/loss")
    assert [s for s, _ in va] == [s for s, _ in vb] and all(abs(x - y) < 1e-4 for (_, x), (_, y) in zip(va, vb))
    ck = load_checkpoint(tmp_path / "gpt2" / "two")
    assert ck["world_size"] == 2 and len(ck["rng"]["torch"]) == 2
    assert read_run(tmp_path / "gpt2" / "two")["tokens_per_sec"] > 0
