"""The zoo command: each command's output, and bad input as a one-paragraph error with exit 2."""
import json
import os
import subprocess
import sys

import pytest

import zoo
from zoo.cli import main


def run(capsys, *argv):
    zoo.configure([])
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list(capsys):
    code, out, _ = run(capsys, "list", "--preset", "tiny")
    assert code == 0
    for name in zoo.list_models():
        assert name in out
    code, out, _ = run(capsys, "list", "gpt2-*", "--json")
    data = json.loads(out)
    assert {d["name"] for d in data} == set(zoo.list_models("gpt2-*"))
    assert all(d["params"] == zoo.param_count(zoo.resolve(d["name"], d["preset"])) for d in data)


def test_show_reports_params_and_kv_cache(capsys):
    code, out, _ = run(capsys, "show", "gpt2-rope-gqa", "--preset", "124m", "--json")
    info = json.loads(out)
    spec = info["spec"]
    assert info["params"] == zoo.param_count(spec)
    # 2 (k and v) x layers x kv heads x head dim x bytes
    assert info["kv_cache_bytes_per_token"]["bf16"] == 2 * 12 * 2 * 64 * 2
    assert info["kv_cache_bytes_per_token"]["fp32"] == 2 * 12 * 2 * 64 * 4
    code, out, _ = run(capsys, "show", "gpt2", "--preset", "tiny", "--set", "n_layers=3")
    assert code == 0 and "n_layers     3" in out and "bytes/token" in out
    assert "plus a fixed 0 bytes per sequence in bf16" in out  # both figures, also for keys and values only


def test_plugins_lists_kind_name_distribution_version_tags(capsys):
    code, out, _ = run(capsys, "plugins", "--json")
    data = json.loads(out)
    rows = {(c["kind"], c["name"]): c for c in data["components"]}
    assert rows[("attention", "gqa")]["dist"] == "zoo"
    assert rows[("attention", "gqa")]["version"] == zoo.__version__
    assert rows[("posenc", "rope")]["tags"]["kind"] == "rotary"
    code, out, _ = run(capsys, "plugins")
    assert code == 0 and "posenc" in out and "sinusoidal" in out and "zoo 0.1.0" in out


def test_validate(capsys, tmp_path):
    code, out, _ = run(capsys, "validate")
    assert code == 0 and "valid" in out
    f = tmp_path / "mine.json"
    f.write_text(json.dumps({"models": {"bad": {"extends": "gpt2-rope-gqa",
                                                "attention": {"name": "gqa", "params": {"n_kv_heads": 5}}}}}))
    code, _, err = run(capsys, "validate", str(f))
    assert code == 2 and "n_kv_heads=5 does not divide" in err


def test_check_one_component(capsys):
    code, out, _ = run(capsys, "check", "posenc", "rope")
    assert code == 0 and "rope" in out and "ok" in out
    code, out, _ = run(capsys, "check", "ffn", "--json")
    assert code == 0 and {r["name"] for r in json.loads(out)} >= {"mlp", "swiglu"}


@pytest.mark.parametrize("argv, needle", [
    (["show", "gpt3"], "unknown model 'gpt3'"),
    (["show", "gpt2", "--set", "n_layers"], "malformed override"),
    (["show", "gpt2", "--set", "colour=blue"], "unknown override key 'colour'"),
    (["show", "gpt2", "--preset", "huge"], "unknown preset 'huge'"),
    (["show", "gpt2", "--set", "attention.name=flash"], "unknown attention 'flash'"),
    (["check", "attention", "nope"], "unknown attention 'nope'"),
    (["--manifest", "/nonexistent/zoo.json", "list"], "does not exist"),
])
def test_bad_input_is_one_paragraph_and_exit_2(argv, needle):
    # through a real process: the user sees no traceback
    p = subprocess.run([sys.executable, "-m", "zoo", *argv], capture_output=True, text=True,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert p.returncode == 2, p.stderr
    assert needle in p.stderr
    assert "Traceback" not in p.stderr and p.stderr.startswith("zoo: error:")


def test_no_command_prints_help():
    p = subprocess.run([sys.executable, "-m", "zoo"], capture_output=True, text=True)
    assert p.returncode == 2 and "usage: zoo" in p.stdout
