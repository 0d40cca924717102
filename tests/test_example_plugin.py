"""The example third-party package, examples/zoo-relu2, pip-installed into a virtual environment
beside the zoo: the zoo discovers it with nothing but ``pip install``, runs the conformance kit on
it, ``zoo train`` runs its named model for a few steps and ``zoo generate`` samples from the run,
whose checkpoint records the plugin; after ``pip uninstall`` the component is gone, the zoo still
works, and the checkpoint says what to install.

The venv (see conftest.PluginVenv) sees this interpreter's zoo; the package is installed only in
the venv, so this interpreter not seeing it shows the discovery comes from the installed metadata.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "zoo-relu2"


@pytest.fixture(scope="module")
def installed(plugin_venv):
    before, _ = plugin_venv.plugins()
    if any(c["name"] == "relu2" for c in before["components"]):
        pytest.skip("zoo-relu2 is already installed beside this interpreter's zoo; these tests install and "
                    "uninstall it themselves, so run them where it is not installed")
    copy = plugin_venv.pip_install(EXAMPLE)
    yield copy
    plugin_venv.pip_uninstall("zoo-relu2")  # a no-op answer if the last test already did


def test_zoo_plugins_lists_it_with_its_distribution(plugin_venv, installed):
    data, err = plugin_venv.plugins()
    assert data["problems"] == [] and "warning" not in err
    (relu2,) = [c for c in data["components"] if c["name"] == "relu2"]
    assert (relu2["kind"], relu2["dist"], relu2["version"]) == ("ffn", "zoo-relu2", "0.1.0")
    assert relu2["class"] == "zoo_relu2.relu2.ReLU2"
    assert data["models"]["gpt2-relu2"]["dist"] == "zoo-relu2"
    assert {"mha", "rope", "mlp"} <= {c["name"] for c in data["components"]}  # the built-ins are still there
    text = plugin_venv.zoo("plugins").stdout
    line = next(ln for ln in text.splitlines() if ln.startswith("ffn") and " relu2 " in ln)
    assert "zoo-relu2 0.1.0" in line
    assert "models from zoo-relu2 0.1.0: gpt2-relu2" in text


def test_only_the_venv_sees_it(installed):
    # this interpreter has the same zoo but not the package: discovery is by installed metadata
    p = subprocess.run([sys.executable, "-m", "zoo", "plugins", "--json"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "relu2" not in {c["name"] for c in json.loads(p.stdout)["components"]}


def test_zoo_check_passes_it(plugin_venv, installed):
    p = plugin_venv.zoo("check", "ffn", "relu2", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    (res,) = json.loads(p.stdout)
    assert res["dist"] == "zoo-relu2"
    statuses = {c["check"]: c["status"] for c in res["checks"]}
    assert set(statuses.values()) == {"passed"} and "check_causality" in statuses and "check_gradients" in statuses


def test_its_named_model_resolves_with_the_component(plugin_venv, installed):
    p = plugin_venv.zoo("show", "gpt2-relu2", "--preset", "tiny", "--json")
    assert p.returncode == 0, p.stderr
    spec = json.loads(p.stdout)["spec"]
    assert spec["ffn"] == {"name": "relu2", "params": {"hidden_mult": 4}} and spec["attention"]["name"] == "mha"


def test_its_own_tests_pass(plugin_venv, installed):
    p = plugin_venv.run("-m", "pytest", "-q", "-p", "no:cacheprovider", installed / "tests", cwd=installed)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert " passed" in p.stdout and "failed" not in p.stdout


TEXT = "".join(f"{i} the quick brown fox jumps over the lazy dog; ROMEO: what light through yonder window breaks?\n"
               for i in range(300))


@pytest.fixture(scope="module")
def run_dir(plugin_venv, installed, tmp_path_factory):
    """A few training steps of the package's named model with `zoo train`, on a small text file."""
    work = tmp_path_factory.mktemp("train")
    (work / "text.txt").write_text(TEXT)
    p = plugin_venv.zoo("train", "gpt2-relu2", "--preset", "tiny", "--data", work / "text.txt", "--max-iters", "4",
                        "--batch-size", "4", "--eval-interval", "4", "--eval-iters", "1", "--log-interval", "1",
                        "--sample-tokens", "0", "--device", "cpu", "--out", work / "runs", "--run-id", "r1", cwd=work)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert "step 4/4" in p.stdout + p.stderr, p.stdout + p.stderr  # the trainer logs to stderr
    return work / "runs" / "gpt2-relu2" / "r1"


def test_zoo_train_runs_its_named_model_and_records_the_plugin(run_dir):
    import torch
    ckpt = torch.load(run_dir / "ckpt.pt", map_location="cpu", weights_only=True)
    assert ckpt["spec"]["ffn"]["name"] == "relu2" and ckpt["step"] == 4
    assert ckpt["plugins"] == {"zoo": "0.1.0", "zoo-relu2": "0.1.0"}  # which distributions to install


def test_zoo_generate_samples_from_it(plugin_venv, run_dir):
    p = plugin_venv.zoo("generate", run_dir, "--prompt", "ROMEO:", "--max-new-tokens", "16", "--seed", "0",
                        "--device", "cpu")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("ROMEO:") and len(p.stdout.strip()) >= len("ROMEO:") + 8, p.stdout


def test_uninstall_removes_it_and_its_checkpoint_says_what_to_install(plugin_venv, installed, run_dir):
    plugin_venv.pip_uninstall("zoo-relu2")

    data, err = plugin_venv.plugins()
    assert "relu2" not in {c["name"] for c in data["components"]} and "gpt2-relu2" not in data["models"]
    assert data["problems"] == [] and "warning" not in err
    p = plugin_venv.zoo("list", "--preset", "tiny")  # the zoo still works
    assert p.returncode == 0 and "gpt2-rope-gqa" in p.stdout and "gpt2-relu2" not in p.stdout, p.stderr
    p = plugin_venv.zoo("show", "gpt2-relu2", "--preset", "tiny")
    assert p.returncode == 2 and "unknown model 'gpt2-relu2'" in p.stderr and "Traceback" not in p.stderr
    p = plugin_venv.zoo("generate", run_dir, "--prompt", "ROMEO:", "--max-new-tokens", "4", "--device", "cpu")
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "ffn 'relu2'" in p.stderr and "zoo-relu2==0.1.0" in p.stderr, p.stderr
