"""torchrun with 2 CPU processes (gloo): DDP gives the same loss curve as one process with the same
global batch, each rank sees its own share of every global batch, and only rank 0 prints."""
import os
import subprocess
import sys

import pytest
import torch.distributed as dist

from zoo.train.compare import read_run
from zoo.io.checkpoint import load_checkpoint

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


def test_fsdp2_fully_shard_gives_the_ddp_curve_and_a_full_checkpoint(tmp_path, corpus):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    common = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "zoo", "train", "gpt2",
              *ARGS, "--data", str(corpus), "--out", str(tmp_path), "--batch-size", "4"]
    for rid, extra in (("ddp", []), ("fsdp", ["--fsdp"])):
        p = subprocess.run([sys.executable, *common, "--run-id", rid, *extra], env=env, capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0, p.stderr
    a, b = _curve(tmp_path / "gpt2" / "ddp"), _curve(tmp_path / "gpt2" / "fsdp")
    assert len(a) == len(b) == 8 and all(abs(x - y) < 1e-4 for (_, x), (_, y) in zip(a, b))
    # the sharded run's checkpoint holds full tensors: it loads into an ordinary model
    from zoo.io.checkpoint import model_from_checkpoint
    model = model_from_checkpoint(load_checkpoint(tmp_path / "gpt2" / "fsdp"))
    ref = load_checkpoint(tmp_path / "gpt2" / "ddp")["model"]
    for k, v in model.state_dict().items():
        assert (v - ref[k]).abs().max() < 1e-4, k
