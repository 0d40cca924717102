"""Issue 12, "Trust" and smaller items: checkpoints name the provider of each component, plugin
isolation covers SystemExit and KeyboardInterrupt, names cannot escape the runs directory, a
checkpoint's spec is validated on load, and a few plausible mistakes that gave tracebacks or
misleading advice.

Most cases are rows of tables run through the CLI in-process (``zoo.cli.main(argv)``): the
expected exit code, a fragment of the message, no traceback, and the files that must be left as
they were. Plugins are extra objects registered through ``load_registry(extra_plugins=...)``; a
few cases need a real process (a closed pipe, entry points) and run ``python -m zoo``.
"""
import json
import random

import pytest
import torch

import zoo
from zoo.cli import main
from zoo.nn.transformer import Block, build_from_spec, param_count
from zoo.spec.resolve import layer_components, layer_groups


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err
    return code, out, err


# ---- zoo show counts parameters once per distinct layer ------------------------------------------

def _brute_groups(spec):
    groups = {}
    for i in range(spec["n_layers"]):
        key = json.dumps(layer_components(spec, i), sort_keys=True)
        groups.setdefault(key, [i, 0])[1] += 1
    return sorted(tuple(g) for g in groups.values())


def test_layer_groups_equal_grouping_layer_by_layer():
    rng = random.Random(12)
    base = zoo.resolve("gpt2", "tiny")
    for _ in range(200):
        n = rng.randint(1, 40)
        overrides = []
        for _ in range(rng.randint(0, 4)):
            o = {rng.choice(["attention", "ffn"]): {"name": rng.choice(["a", "b", "c"]), "params": {}}}
            if rng.random() < 0.7:
                o["from"] = rng.randint(0, n + 2)
            if rng.random() < 0.7:
                o["to"] = rng.randint(1, n + 3)
            if rng.random() < 0.7:
                o["every"] = rng.randint(1, 7)
            overrides.append(o)
        spec = {**base, "n_layers": n, "layers": overrides}
        assert layer_groups(spec) == _brute_groups(spec), overrides


@pytest.mark.parametrize("changes", [
    {"n_layers": 13, "layers": [{"from": 1, "every": 3, "ffn": {"name": "swiglu"}},
                                {"to": 5, "attention": {"name": "gqa", "params": {"n_kv_heads": 2}}},
                                {"from": 2, "to": 9, "every": 2, "ffn": {"name": "moe", "params": {"n_experts": 4}}}]},
    {"tie_weights": False, "bias": False, "norm": "rmsnorm"},
    {"lora": {"r": 3, "alpha": 6, "targets": ["attention", "ffn"], "dropout": 0.0}},
    {"n_layers": 7, "lora": {"r": 2, "alpha": 2, "targets": ["ffn"], "dropout": 0.0},
     "layers": [{"every": 2, "ffn": {"name": "moe", "params": {"n_experts": 4}}}]},
])
def test_counting_once_per_distinct_layer_equals_building_every_layer(changes):
    spec = zoo.resolve("gpt2", "tiny", **{k: v for k, v in changes.items() if k != "lora"})
    if "lora" in changes:
        spec["lora"] = changes["lora"]
    with torch.device("meta"):
        full = build_from_spec(spec).num_params()
    assert param_count(spec) == full


def test_show_with_100000_layers_builds_one_block(capsys, monkeypatch):
    built = []
    init = Block.__init__
    monkeypatch.setattr(Block, "__init__", lambda self, *a, **k: (built.append(1), init(self, *a, **k))[1])
    code, out, _ = run(capsys, "show", "gpt2", "--set", "n_layers=100000", "--json")
    assert code == 0
    assert len(built) <= 2  # one for the parameter count, one for the per-component figures
    one, two = (param_count(zoo.resolve("gpt2", "char", n_layers=k)) for k in (1, 2))
    assert json.loads(out)["params"] == one + 99_999 * (two - one)
