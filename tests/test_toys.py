"""The plugin contract, open to every kind: tests/plugins/zoo-toys, a package written against the
documented contract only, pip-installed into a virtual environment as a user installs one. It
brings a token mixer with a fixed-size recurrent state (``ema``), a transform (``scale``), a head
(``smooth_next_token``), a command (``zoo toys-hello``) and a named model using the first three
(``toys-all``). With no change to core/, each passes the conformance kit, the model trains with
``zoo train`` (contiguous segments, its state carried), resumes exactly and generates, and the
command runs.

The venv (conftest.PluginVenv) sees this interpreter's zoo; the package is only in the venv.
"""
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOYS = ROOT / "tests" / "plugins" / "zoo-toys"
TEXT = "".join(f"{i} the quick brown fox jumps over the lazy dog; ROMEO: what light through yonder window breaks?\n"
               for i in range(300))
COMPONENTS = {("attention", "ema"), ("transform", "scale"), ("head", "smooth_next_token")}


@pytest.fixture(scope="module")
def installed(plugin_venv):
    before, _ = plugin_venv.plugins()
    if any(c["name"] == "ema" for c in before["components"]):
        pytest.skip("zoo-toys is already installed beside this interpreter's zoo; these tests install and "
                    "uninstall it themselves, so run them where it is not installed")
    copy = plugin_venv.pip_install(TOYS)
    yield copy
    plugin_venv.pip_uninstall("zoo-toys")


def test_zoo_plugins_lists_every_toy_with_its_distribution(plugin_venv, installed):
    data, err = plugin_venv.plugins()
    assert data["problems"] == [] and "warning" not in err, (data["problems"], err)
    found = {(c["kind"], c["name"]): c for c in data["components"]}
    for key in COMPONENTS:
        assert key in found and found[key]["dist"] == "zoo-toys", key
    assert data["models"]["toys-all"]["dist"] == "zoo-toys"
    assert any(c["name"] == "toys-hello" and c["dist"] == "zoo-toys" for c in data["commands"]), data["commands"]


@pytest.mark.parametrize("kind,name", sorted(COMPONENTS))
def test_zoo_check_passes_each_toy(plugin_venv, installed, kind, name):
    p = plugin_venv.zoo("check", kind, name, "--json")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (res,) = json.loads(p.stdout)
    statuses = {c["check"]: c["status"] for c in res["checks"]}
    assert statuses and set(statuses.values()) == {"passed"}, statuses
    expected = {"attention": {"check_kv_cache_matches_full", "check_cache_rewinds", "check_causality"},
                "transform": {"check_transform_applies", "check_transform_cache_matches_full"},
                "head": {"check_head_logits_and_loss", "check_head_cached_decoding"}}[kind]
    assert expected <= statuses.keys(), statuses


def test_its_command_runs_and_fails_cleanly(plugin_venv, installed):
    p = plugin_venv.zoo("toys-hello", "--name", "world", "--times", "2")
    assert p.returncode == 0 and p.stdout.splitlines() == ["hello, world, from zoo-toys"] * 2, p.stdout + p.stderr
    p = plugin_venv.zoo("toys-hello", "--name", " ")
    assert p.returncode == 2 and "--name is empty" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert "toys-hello" in plugin_venv.zoo("plugins").stdout


def _train(venv, work, run_id, max_iters, *extra):
    # a constant learning rate: a run stopped at step 2 has the schedule of the run to step 4
    p = venv.zoo("train", "toys-all", "--preset", "tiny", "--data", work / "text.txt", "--max-iters", str(max_iters),
                 "--batch-size", "2", "--eval-interval", "2", "--eval-iters", "1", "--log-interval", "1",
                 "--lr", "1e-3", "--min-lr", "1e-3", "--warmup", "0", "--sample-tokens", "0", "--device", "cpu",
                 "--out", work / "runs", "--run-id", run_id, *extra, cwd=work)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    return work / "runs" / "toys-all" / run_id


@pytest.fixture(scope="module")
def runs(plugin_venv, installed, tmp_path_factory):
    """toys-all trained 4 steps straight, and 2 steps then resumed to 4."""
    work = tmp_path_factory.mktemp("toys")
    (work / "text.txt").write_text(TEXT)
    straight = _train(plugin_venv, work, "straight", 4)
    half = _train(plugin_venv, work, "half", 2)
    p = plugin_venv.zoo("train", "--resume", half, "--max-iters", "4", "--device", "cpu", cwd=work)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    return straight, half


def test_zoo_train_uses_every_toy_and_records_the_package(runs):
    import torch
    ckpt = torch.load(runs[0] / "ckpt.pt", map_location="cpu", weights_only=True)
    spec = ckpt["spec"]
    assert (spec["attention"]["name"], spec["head"]["name"]) == ("ema", "smooth_next_token")
    assert [t["name"] for t in spec["transforms"]] == ["scale"]
    assert ckpt["plugins"]["zoo-toys"] == "0.1.0"
    sd = ckpt["model"]
    assert "head.log_temp" in sd and any(k.endswith(".gain") for k in sd)
    assert ckpt["sampler"]["mode"] == "segments" and ckpt["carried_state"]["layers"] == [0, 1]
    assert float(sd["head.log_temp"]) != 0.0  # the head's own parameter trained


def test_resume_is_exact(runs):
    import torch
    a = torch.load(runs[0] / "ckpt.pt", map_location="cpu", weights_only=True)
    b = torch.load(runs[1] / "ckpt.pt", map_location="cpu", weights_only=True)
    assert a["step"] == b["step"] == 4
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.allclose(a["model"][k].float(), b["model"][k].float(), atol=1e-6, rtol=0), k
    assert abs(a["best_val"] - b["best_val"]) <= 1e-6


def test_zoo_generate_samples_from_it(plugin_venv, runs):
    p = plugin_venv.zoo("generate", runs[1], "--prompt", "ROMEO:", "--max-new-tokens", "12", "--seed", "0",
                        "--device", "cpu")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("ROMEO:") and len(p.stdout.strip()) >= len("ROMEO:") + 6, p.stdout
