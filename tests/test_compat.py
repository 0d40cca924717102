"""Run directories written by an older zoo (aaa45bd, before the layout of issue 11) still load,
generate and resume: a plain training run, a LoRA fine-tune of it, and a Hugging Face import.
tests/fixtures/make_runs.sh made them and record_expected.py recorded what aaa45bd computed from
them (tests/fixtures/runs-aaa45bd/expected.json)."""
import json
import shutil
from pathlib import Path

import pytest
import torch

import zoo
from zoo.cli import main
from zoo.generate import generate_text
from zoo.train import TrainConfig, train

from conftest import needs_data

FIXTURES = Path(__file__).parent / "fixtures" / "runs-aaa45bd"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
RUNS = sorted(EXPECTED)  # gpt2/plain, gpt2-lora/lora, hf-llama


@pytest.mark.parametrize("rel", RUNS)
def test_old_runs_load_and_generate_as_before(rel):
    model, tok = zoo.load(FIXTURES / rel)
    want = EXPECTED[rel]
    assert model.num_params() == want["params"]
    assert generate_text(model, tok, "\n", max_new_tokens=24, top_k=1, seed=0) == want["greedy"]
    idx = torch.arange(16)[None] % tok.vocab_size
    with torch.no_grad():
        assert float(model(idx)[0].double().sum()) == pytest.approx(want["logits_sum"], abs=1e-4)


@pytest.mark.parametrize("rel", RUNS)
def test_old_runs_generate_through_the_cli(rel, capsys):
    assert main(["generate", str(FIXTURES / rel), "--prompt", "\n", "--max-new-tokens", "24", "--top-k", "1",
                 "--seed", "0"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == EXPECTED[rel]["greedy"].rstrip("\n")


@needs_data()
@pytest.mark.parametrize("rel", [r for r in RUNS if "resume_to_8_val" in EXPECTED[r]])
def test_old_runs_resume_to_the_same_loss(rel, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / rel, run)  # the fixture itself stays as it was
    res = train(cfg=TrainConfig(max_iters=8, device="cpu"), resume=str(run))
    assert res["steps"] == 8
    assert res["final_val_loss"] == pytest.approx(EXPECTED[rel]["resume_to_8_val"], abs=1e-5)
