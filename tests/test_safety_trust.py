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
import os
import random
import subprocess
import sys
import textwrap
import types

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
                o["every"] = rng.randint(1, 12)
            if rng.random() < 0.3:  # a period longer than the model shrinks to its depth
                o["shrink_period"] = True
            overrides.append(o)
        spec = {**base, "n_layers": n, "layers": overrides}
        assert layer_groups(spec) == _brute_groups(spec), overrides


@pytest.mark.parametrize("changes", [
    {"n_layers": 13, "layers": [{"from": 1, "every": 3, "ffn": {"name": "swiglu"}},
                                {"to": 5, "attention": {"name": "gqa", "params": {"n_kv_heads": 2}}},
                                {"from": 2, "to": 9, "every": 2, "ffn": {"name": "moe", "params": {"n_experts": 4}}}]},
    {"tie_weights": False, "bias": False, "norm": "rmsnorm"},
    {"transforms": [{"name": "lora", "params": {"r": 3, "alpha": 6, "targets": ["attention", "ffn"], "dropout": 0.0}}]},
    {"n_layers": 7, "transforms": [{"name": "lora", "params": {"r": 2, "alpha": 2, "targets": ["ffn"], "dropout": 0.0,
                                                               "stacked": "skip"}}],
     "layers": [{"every": 2, "ffn": {"name": "moe", "params": {"n_experts": 4}}}]},
])
def test_counting_once_per_distinct_layer_equals_building_every_layer(changes):
    spec = zoo.resolve("gpt2", "tiny", **{k: v for k, v in changes.items() if k != "transforms"})
    if "transforms" in changes:
        spec["transforms"] = changes["transforms"]
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


# ---- plugin isolation: SystemExit and KeyboardInterrupt ------------------------------------------

def _ffn_plugin(name, hook=None):
    """A plugin object registering ffn ``name`` (the GELU MLP's class), after running ``hook()``."""
    from zoo.hookspecs import hookimpl
    from zoo_plugins.ffn.mlp import MLP, PARAMS

    @hookimpl
    def register_ffn(register):
        register(name, MLP, PARAMS, {"token_wise": True})
        if hook:
            hook()
    return types.SimpleNamespace(register_ffn=register_ffn)


def _raise(e):
    def hook():
        raise e
    return hook


@pytest.fixture
def plugins(monkeypatch, fresh_registry):
    """``plugins((obj, dist), ..., edit=None)``: the registry of every following command (and of
    ``zoo.get_registry()``) also holds these plugins, and is then changed by ``edit(reg)``."""
    from zoo.spec import catalog
    real = catalog.load_registry

    def use(*extra, edit=None):
        def load(extra_plugins=(), use_entry_points=True):
            reg = real(extra_plugins=[*extra_plugins, *extra], use_entry_points=use_entry_points)
            if edit:
                edit(reg)
            return reg
        monkeypatch.setattr(catalog, "load_registry", load)
        zoo.configure([])
    return use


ESCAPES = [(SystemExit(0), "SystemExit: 0"), (SystemExit(3), "SystemExit: 3"), (SystemExit(None), "SystemExit"),
           (KeyboardInterrupt(), "KeyboardInterrupt without a Ctrl-C")]


@pytest.mark.parametrize("exc, needle", ESCAPES)
def test_a_hook_that_exits_or_interrupts_is_its_plugins_failure(exc, needle, plugins, capsys):
    plugins((_ffn_plugin("escaping-ffn", _raise(exc)), "zoo-escaping"), (_ffn_plugin("fine-ffn"), "zoo-fine"))
    code, out, err = run(capsys, "plugins")
    assert code == 0
    warns = [ln for ln in err.splitlines() if ln.startswith("zoo: warning:")]
    assert len(warns) == 1 and "'zoo-escaping'" in warns[0] and needle in warns[0], err
    assert " fine-ffn " in out and "escaping-ffn" not in out.split("FAILED")[0]
    code, out, err = run(capsys, "--strict", "plugins")
    assert code == 2 and out == "" and "zoo-escaping" in err and needle in err


def _ctrl_c():
    import signal
    import time
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)  # the signal arrives here
    raise AssertionError("SIGINT was not delivered")


def _ctrl_c_swallowed():
    try:
        _ctrl_c()
    except KeyboardInterrupt:
        raise RuntimeError("a plugin that turns Ctrl-C into an error") from None


@pytest.mark.parametrize("hook", [_ctrl_c, _ctrl_c_swallowed])
def test_a_real_ctrl_c_while_plugins_load_still_interrupts(hook, plugins, capsys):
    import signal
    before = signal.getsignal(signal.SIGINT)
    plugins((_ffn_plugin("slow-ffn", hook), "zoo-slow"))
    code, out, err = run(capsys, "plugins")
    assert code == 130 and err.strip() == "zoo: interrupted" and out == ""
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back


def _write_dist(root, dist, source, entry_points):
    """A distribution as an installer leaves it: its module and NAME-VERSION.dist-info/."""
    module = dist.replace("-", "_")
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[zoo]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    (info / "RECORD").write_text("")


HOOK_EXIT = """
import sys
from zoo.hookspecs import hookimpl
from zoo_plugins.ffn.mlp import MLP, PARAMS

@hookimpl
def register_ffn(register):
    register("exiting-ffn", MLP, PARAMS, {})
    sys.exit(0)
"""
ESCAPING_DISTS = {  # dist: (module source, what its warning says)
    "zoo-import-exit0": ("import sys\nsys.exit(0)\n", "cannot import 'zoo_import_exit0': SystemExit: 0"),
    "zoo-import-ctrl-c": ("raise KeyboardInterrupt\n", "cannot import 'zoo_import_ctrl_c': KeyboardInterrupt without"),
    "zoo-hook-exit0": (HOOK_EXIT, "hook register_ffn in zoo-hook-exit0:ffn raised SystemExit: 0"),
}


def zoo_process(*args, site=None, env=None, **kw):
    e = {k: v for k, v in os.environ.items() if k not in ("ZOO_PLUGINS", "ZOO_MANIFEST", "PYTHONPATH")}
    if site is not None:
        e["PYTHONPATH"] = str(site)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "zoo", *map(str, args)], capture_output=True, text=True, env=e, **kw)


def test_entry_points_that_exit_or_interrupt_are_their_distributions_failures(tmp_path):
    for dist, (source, _) in ESCAPING_DISTS.items():
        _write_dist(tmp_path, dist, source, {"ffn": dist.replace("-", "_")})
    p = zoo_process("plugins", site=tmp_path, cwd=tmp_path)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert " mlp " in p.stdout  # the command did its work
    warns = [ln for ln in p.stderr.splitlines() if ln.startswith("zoo: warning:")]
    assert len(warns) == len(ESCAPING_DISTS), p.stderr
    for dist, (_, needle) in ESCAPING_DISTS.items():
        assert sum(f"'{dist}'" in w and needle in w for w in warns) == 1, (dist, p.stderr)
    p = zoo_process("--strict", "plugins", site=tmp_path, cwd=tmp_path)
    assert p.returncode == 2 and p.stdout == "" and "Traceback" not in p.stderr
    assert all(f"  {dist}: " in p.stderr for dist in ESCAPING_DISTS), p.stderr


# ---- a closed stdout ------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["plugins"], ["list", "--json"], ["--help"]])
def test_a_reader_that_goes_away_ends_the_command_silently_with_0(args):
    # as in `zoo plugins | head -1`, with the reader gone before anything is written
    env = {k: v for k, v in os.environ.items() if k not in ("ZOO_PLUGINS", "ZOO_MANIFEST")}
    p = subprocess.Popen([sys.executable, "-m", "zoo", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=env)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait() == 0 and err == "", err


def test_a_broken_pipe_that_is_not_stdout_is_not_hidden(monkeypatch):
    from zoo.cli import models

    def broken(args):
        raise BrokenPipeError("a pipe to some other process")
    monkeypatch.setattr(models, "cmd_plugins", broken)
    with pytest.raises(BrokenPipeError):
        main(["plugins"])


# ---- names and run ids stay inside the runs directory ---------------------------------------------

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "runs-aaa45bd")
TRAIN = ["--preset", "tiny", "--max-iters", "1", "--eval-iters", "1", "--sample-tokens", "0", "--device", "cpu"]


def snapshot(root):
    """{relative path: content} of every file under root (directories as None)."""
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs:
            out[os.path.relpath(os.path.join(d, n), root)] = None
        for n in files:
            with open(os.path.join(d, n), "rb") as f:
                out[os.path.relpath(os.path.join(d, n), root)] = f.read()
    return out


NAME_CASES = [  # argv ({t}: a scratch folder, {f}: the fixture runs), exit code, fragment of the message
    (["train", "gpt2", "--run-id", "../../escaped", "--out", "{t}/runs", "--data", "{t}/corpus.txt", *TRAIN], 2,
     "run id (--run-id) '../../escaped' contains a path separator"),
    (["train", "gpt2", "--run-id", "..", "--out", "{t}/runs", "--data", "{t}/corpus.txt", *TRAIN], 2,
     "run id (--run-id) '..' contains '..'"),
    (["train", "gpt2", "--run-id", "{t}/abs", "--out", "{t}/runs", "--data", "{t}/corpus.txt", *TRAIN], 2,
     "is an absolute path"),
    (["train", "gpt2", "--run-id", "", "--out", "{t}/runs", "--data", "{t}/corpus.txt", *TRAIN], 2,
     "run id (--run-id) '' is empty"),
    (["--manifest", "{t}/evil.json", "train", "../evil", "--out", "{t}/runs", "--data", "{t}/corpus.txt", *TRAIN], 2,
     "at models: '../evil' is not allowed: a model or preset name"),
    (["show", "gpt2", "--set", "name=../../x"], 2, "at name: '../../x' is not allowed"),
    (["import", "hf", "{t}/no-such-source", "--out", "{t}/imported", "--name", "../hf"], 2,
     "model name (--name) '../hf' contains a path separator"),
    (["import", "hf", "{t}/no-such-source", "--out", "{t}/imported", "--name", ""], 2, "model name (--name) '' is empty"),
    (["finetune", "{f}/gpt2/plain", "--name", "..", "--out", "{t}/runs", "--data", "{t}/corpus.txt"], 2,
     "model name (--name) '..' contains '..'"),
    (["finetune", "{f}/gpt2/plain", "--run-id", "../up", "--out", "{t}/runs", "--data", "{t}/corpus.txt",
      "--max-iters", "1", "--eval-iters", "1", "--sample-tokens", "0", "--device", "cpu"], 2,
     "run id (--run-id) '../up' contains a path separator"),
]


@pytest.mark.parametrize("argv, code, needle", NAME_CASES, ids=[f"{c[0][0]}-{i}" for i, c in enumerate(NAME_CASES)])
def test_names_that_would_leave_the_runs_directory_are_refused(argv, code, needle, tmp_path, capsys, fresh_registry):
    work = tmp_path / "work"
    work.mkdir()
    (work / "corpus.txt").write_text("To be, or not to be, that is the question.\n" * 40)
    (work / "evil.json").write_text(json.dumps({"models": {"../evil": {"extends": "gpt2"}}}))
    before, fixtures = snapshot(tmp_path), snapshot(FIXTURES)
    got, out, err = run(capsys, *[a.replace("{t}", str(work)).replace("{f}", FIXTURES) for a in argv])
    assert got == code and needle in err, err
    assert err.startswith("zoo: error: ") and err.count("\n") == 1  # one paragraph
    assert snapshot(tmp_path) == before and snapshot(FIXTURES) == fixtures  # nothing written anywhere


def test_a_package_cannot_register_a_model_name_that_is_a_path():
    from zoo.hookspecs import hookimpl
    from zoo.spec.catalog import load_registry

    @hookimpl
    def register_models(register):
        register("../evil", {"extends": "gpt2"})
        register("fine-model", {"extends": "gpt2"})
    reg = load_registry(extra_plugins=[(types.SimpleNamespace(register_models=register_models), "zoo-paths")])
    assert "fine-model" in reg.models and "../evil" not in reg.models
    (problem,) = [p for p in reg.problems if p[0] == "zoo-paths"]
    assert "'../evil' is not allowed" in problem[1]


@pytest.mark.parametrize("name", ["gpt2", "gpt2-rope-gqa", "hf-llama", "a.b", "x_1", "..", ".", "", "a..b", "a/b",
                                  "/abs", "a\\b", "C:\\x", "tab\there", "nl\n", "nul\0", ".hidden", "-dash", "ünï"])
def test_the_schemas_name_pattern_states_the_same_rule_as_check_name(name):
    from jsonschema import Draft202012Validator
    from zoo.io.rundir import name_problem
    from zoo.spec.manifest import manifest_schema
    ok = Draft202012Validator(manifest_schema()["$defs"]["name"]).is_valid(name)
    assert ok == (name_problem(name) is None), name_problem(name)


def test_every_built_in_name_passes():
    from zoo.io.rundir import name_problem
    reg = zoo.get_registry()
    assert not [n for n in [*reg.models, *reg.presets] if name_problem(n)]


# ---- checkpoints record the provider of each component ----------------------------------------------

def _relu2_checkpoint(path, layers=False):
    """A tiny checkpoint whose model uses ffn 'relu2' (model-wide, or in a per-layer override)."""
    from zoo.io.checkpoint import save_checkpoint
    if layers:
        spec = zoo.resolve("gpt2", "tiny", layers=[{"from": 1, "ffn": {"name": "relu2"}}])
    else:
        spec = zoo.resolve("gpt2", "tiny", **{"ffn.name": "relu2"})
    model = build_from_spec(spec)
    tok = {"type": "char", "chars": "\n" + "".join(chr(i) for i in range(32, 32 + 64))}
    save_checkpoint(path, {"model": model.state_dict(), "spec": spec, "tokenizer": tok, "step": 0})
    return path


def _versioned(dist, version):
    """An edit of the registry: the components of ``dist`` report ``version``."""
    import dataclasses

    def edit(reg):
        for comps in reg.components.values():
            for name, c in list(comps.items()):
                if c.dist == dist:
                    comps[name] = dataclasses.replace(c, version=version)
    return edit


def _move(kind, name, dist=None, version=None):
    """An edit of the registry: component (kind, name) comes from ``dist`` and/or ``version``."""
    import dataclasses

    def edit(reg):
        c = reg.components[kind][name]
        reg.components[kind][name] = dataclasses.replace(c, dist=dist or c.dist, version=version or c.version)
    return edit


@pytest.mark.parametrize("layers", [False, True], ids=["model-wide", "per-layer"])
def test_a_component_of_the_same_name_from_another_distribution_is_refused(layers, plugins, tmp_path, capsys):
    plugins((_ffn_plugin("relu2"), "zoo-relu2"))
    ckpt = _relu2_checkpoint(tmp_path / "run" / "ckpt.pt", layers=layers)
    saved = torch.load(ckpt, weights_only=True)
    assert {"kind": "ffn", "name": "relu2", "dist": "zoo-relu2", "version": "0"} in saved["providers"]
    assert {(p["kind"], p["name"]) for p in saved["providers"]} == {("attention", "mha"), ("posenc", "learned"),
                                                                     ("ffn", "relu2"), ("head", "next_token")} | ({("ffn", "mlp")} if layers else set())
    assert saved["plugins"] == {"zoo": zoo.__version__, "zoo-relu2": "0"}
    before = snapshot(tmp_path)
    code, _, _ = run(capsys, "generate", ckpt, "--prompt", "\n", "--max-new-tokens", "2")
    assert code == 0
    plugins((_ffn_plugin("relu2"), "evil-relu2"))  # another package took the name
    for argv in (["generate", ckpt, "--prompt", "\n", "--max-new-tokens", "2"], ["train", "--resume", ckpt.parent],
                 ["finetune", ckpt.parent, "--out", tmp_path / "ft"], ["lora", "merge", ckpt.parent, "--out", tmp_path / "m"]):
        code, out, err = run(capsys, *argv)
        assert code == 2 and out == "", err
        assert "trained with ffn 'relu2' from zoo-relu2 0" in err and "comes from evil-relu2 0" in err, err
    with pytest.raises(zoo.ZooError, match="another package's code under the same name"):
        zoo.load(ckpt)
    assert snapshot(tmp_path) == before


def test_a_new_version_of_the_same_distribution_is_a_warning(plugins, tmp_path, capsys):
    plugins((_ffn_plugin("relu2"), "zoo-relu2"), edit=_versioned("zoo-relu2", "0.1.0"))
    ckpt = _relu2_checkpoint(tmp_path / "ckpt.pt")
    plugins((_ffn_plugin("relu2"), "zoo-relu2"), edit=_versioned("zoo-relu2", "0.2.0"))
    code, out, err = run(capsys, "generate", ckpt, "--prompt", "\n", "--max-new-tokens", "2", "--seed", "0")
    assert code == 0 and out
    warns = [ln for ln in err.splitlines() if ln.startswith("zoo: warning:")]
    assert len(warns) == 1, err
    assert "written with zoo-relu2 0.1.0, and ffn 'relu2' now comes from zoo-relu2 0.2.0" in warns[0]
    with pytest.warns(zoo.errors.ZooWarning, match="install zoo-relu2==0.1.0"):
        zoo.load(ckpt)


def test_a_trained_run_records_providers_and_resume_checks_them(plugins, tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text("To be, or not to be, that is the question.\n" * 40)
    plugins((_ffn_plugin("relu2"), "zoo-relu2"))
    code, _, err = run(capsys, "train", "gpt2", "--set", "ffn.name=relu2", "--out", tmp_path / "runs", "--run-id", "r",
                       "--data", tmp_path / "corpus.txt", *TRAIN)
    assert code == 0, err
    run_dir = tmp_path / "runs" / "gpt2" / "r"
    saved = torch.load(run_dir / "ckpt.pt", weights_only=True)
    assert {"kind": "ffn", "name": "relu2", "dist": "zoo-relu2", "version": "0"} in saved["providers"]
    plugins((_ffn_plugin("relu2"), "evil-relu2"))
    before = snapshot(tmp_path)
    code, _, err = run(capsys, "train", "--resume", run_dir, "--max-iters", "2")
    assert code == 2 and "from zoo-relu2 0" in err and "evil-relu2" in err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("edit, code, needle", [
    (_versioned("zoo", "0.1.0"), 0, None),
    (_move("attention", "mha", dist="evil-attention", version="0.1.0"), 2,
     "written with the plugin distributions zoo 0.1.0, but attention 'mha' now comes from evil-attention"),
    (_versioned("zoo", "0.2.0"), 0,
     "written with zoo 0.1.0, and attention 'mha', posenc 'learned', ffn 'mlp' now come from zoo 0.2.0"),
], ids=["as-written", "other-distribution", "other-version"])
def test_older_checkpoints_without_providers_are_compared_by_distribution(edit, code, needle, plugins, capsys):
    # runs of aaa45bd hold plugins {"zoo": "0.1.0"} and no providers
    plugins(edit=edit)
    ckpt = os.path.join(FIXTURES, "gpt2", "plain")
    before = snapshot(FIXTURES)
    got, out, err = run(capsys, "generate", ckpt, "--prompt", "\n", "--max-new-tokens", "2")
    assert got == code, err
    if needle:
        assert needle in err
    else:
        assert err == ""
    assert snapshot(FIXTURES) == before


def test_lora_merge_and_hf_import_record_providers(tmp_path, capsys, fresh_registry):
    plain = os.path.join(FIXTURES, "gpt2", "plain")
    for argv, out in ((["lora", "merge", os.path.join(FIXTURES, "gpt2-lora", "lora"), "--out"], "merged"),
                      (["export", "hf", plain], "hf"),
                      (["import", "hf", tmp_path / "hf", "--tokenizer", os.path.join(plain, "tokenizer.json"), "--out"],
                       "imported")):
        code, _, err = run(capsys, *argv, tmp_path / out)
        assert code == 0, err
    for out in ("merged", "imported"):
        saved = torch.load(tmp_path / out / "ckpt.pt", weights_only=True)
        assert saved["providers"] == [{"kind": k, "name": n, "dist": "zoo", "version": zoo.__version__}
                                      for k, n in (("attention", "mha"), ("posenc", "learned"), ("ffn", "mlp"), ("head", "next_token"))]


def test_a_malformed_providers_entry_is_refused(tmp_path, fresh_registry):
    from zoo.io.checkpoint import load_checkpoint, save_checkpoint
    spec = zoo.resolve("gpt2", "tiny")
    save_checkpoint(tmp_path / "ckpt.pt", {"model": {}, "spec": spec, "providers": [{"kind": "ffn"}]})
    with pytest.raises(zoo.ZooError, match="malformed 'providers'"):
        load_checkpoint(tmp_path / "ckpt.pt")


# ---- a checkpoint's spec is validated on load ----------------------------------------------------------

def _crafted(change):
    def edit(ck):
        change(ck)
        return ck
    return edit


def _set(path, value):
    def change(ck):
        node = ck
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = value
    return _crafted(change)


def _drop(*path):
    def change(ck):
        node = ck
        for p in path[:-1]:
            node = node[p]
        del node[path[-1]]
    return _crafted(change)


CRAFTED = [  # (id, edit of the fixture checkpoint gpt2/plain, fragment of the message)
    ("no-norm", _drop("spec", "norm"), "at (top level): 'norm' is a required property"),
    ("ffn-a-string", _set(("spec", "ffn"), "mlp"), "at ffn: 'mlp' is not of type 'object'"),
    ("spec-a-list", _set(("spec",), [1, 2]), "is not of type 'object'"),
    ("unknown-key", _set(("spec", "evil"), True), "Additional properties are not allowed ('evil' was unexpected)"),
    ("zero-width", _set(("spec", "d_model"), 0), "at d_model: 0 is less than the minimum of 1"),
    ("name-a-path", _set(("spec", "name"), "../../x"), "at name: '../../x' is not allowed"),
    ("bad-params", _set(("spec", "ffn", "params", "hidden_mult"), "wide"), "at ffn.params.hidden_mult: 'wide' is not of type 'number'"),
    ("bad-override", _set(("spec", "layers"), [{"every": 0, "ffn": {"name": "mlp"}}]), "at layers.[0].every"),
    ("cross-field", _set(("spec", "n_heads"), 3), "d_model=64 is not divisible by n_heads=3"),
    ("a-billion-layers", _set(("spec", "n_layers"), 10**9), "n_layers=1000000000 but the weights hold 2 layer(s)"),
    ("other-vocab", _set(("spec", "vocab_size"), 100), "wte.weight is (65, 64)"),
    ("weights-a-list", _set(("model",), [1, 2]), "its 'model' entry is not a state dict"),
]


@pytest.mark.parametrize("edit, needle", [c[1:] for c in CRAFTED], ids=[c[0] for c in CRAFTED])
def test_a_crafted_or_outdated_spec_is_refused_on_load(edit, needle, tmp_path, capsys, fresh_registry):
    ck = edit(torch.load(os.path.join(FIXTURES, "gpt2", "plain", "ckpt.pt"), weights_only=True))
    torch.save(ck, tmp_path / "ckpt.pt")
    before = snapshot(tmp_path)
    for argv in (["generate", tmp_path / "ckpt.pt", "--prompt", "\n", "--max-new-tokens", "2"],
                 ["train", "--resume", tmp_path]):
        code, out, err = run(capsys, *argv)
        assert code == 2 and out == "" and needle in err, err
        assert err.startswith("zoo: error: ") and "ckpt.pt" in err and err.count("\n") == 1
    assert snapshot(tmp_path) == before


def test_a_renamed_plugin_parameter_is_an_error_naming_it(plugins, tmp_path, capsys):
    from zoo.hookspecs import hookimpl
    from zoo_plugins.ffn.mlp import MLP, PARAMS
    plugins((_ffn_plugin("relu2"), "zoo-relu2"))
    ckpt = _relu2_checkpoint(tmp_path / "ckpt.pt")  # params {"hidden_mult": 4, "approximate": "none"}

    class Renamed(MLP):  # version 2 calls hidden_mult "expansion"
        def __init__(self, dims, expansion=4, approximate="none"):
            super().__init__(dims, hidden_mult=expansion, approximate=approximate)

    v2 = {**PARAMS, "properties": {"expansion": PARAMS["properties"]["hidden_mult"],
                                   "approximate": PARAMS["properties"]["approximate"]}}

    @hookimpl
    def register_ffn(register):
        register("relu2", Renamed, v2, {"token_wise": True})
    plugins((types.SimpleNamespace(register_ffn=register_ffn), "zoo-relu2"), edit=_versioned("zoo-relu2", "2.0"))
    code, out, err = run(capsys, "generate", ckpt, "--prompt", "\n", "--max-new-tokens", "2")
    assert code == 2 and out == ""
    assert "the spec of checkpoint" in err and "at ffn.params: Additional properties are not allowed ('hidden_mult'" in err
    assert f"written with zoo=={zoo.__version__}, zoo-relu2==0" in err, err


# ---- a component left out by ZOO_PLUGINS says so ------------------------------------------------------

@pytest.fixture
def relu2_installed(monkeypatch, fresh_registry):
    """zoo-relu2 installed: an entry point ``ffn-relu2`` of the distribution zoo-relu2 1.0 (and
    zoo-misc 1.0, whose entry point names nothing in particular)."""
    from zoo.plugin import registry
    real = registry._entry_points

    def ep(dist, name, obj):
        return types.SimpleNamespace(name=name, value=f"{dist.replace('-', '_')}:plugin", load=lambda: obj,
                                     dist=types.SimpleNamespace(name=dist, version="1.0"))
    monkeypatch.setattr(registry, "_entry_points", lambda: [*real(), ep("zoo-relu2", "ffn-relu2", _ffn_plugin("relu2")),
                                                            ep("zoo-misc", "extras", _ffn_plugin("misc-ffn"))])
    zoo.configure([])


@pytest.mark.parametrize("allow, argv, needle", [
    ("", ["show", "gpt2", "--set", "ffn.name=relu2"],
     "zoo-relu2 is installed but left out by ZOO_PLUGINS=''; add it (ZOO_PLUGINS=zoo-relu2) or unset ZOO_PLUGINS."),
    ("zoo-misc", ["show", "gpt2", "--set", "ffn.name=relu2"],
     "left out by ZOO_PLUGINS='zoo-misc'; add it (ZOO_PLUGINS=zoo-misc,zoo-relu2)"),
    ("zoo-relu2", ["show", "gpt2", "--set", "ffn.name=misc2"],
     "ZOO_PLUGINS='zoo-relu2' leaves out the installed distribution(s) zoo-misc; if one of them provides it"),
    ("", ["generate", "{ckpt}", "--prompt", "\n"],
     "uses ffn 'relu2' (from zoo-relu2 1.0), which no loaded plugin provides. zoo-relu2 is installed but left out"),
], ids=["manifest", "manifest-with-others", "unknown-provider", "checkpoint"])
def test_a_component_left_out_by_zoo_plugins_names_the_allowlist(allow, argv, needle, relu2_installed, monkeypatch,
                                                                  tmp_path, capsys):
    ckpt = _relu2_checkpoint(tmp_path / "ckpt.pt")  # with everything installed loaded
    assert {"kind": "ffn", "name": "relu2", "dist": "zoo-relu2", "version": "1.0"} in torch.load(ckpt)["providers"]
    monkeypatch.setenv("ZOO_PLUGINS", allow)
    code, out, err = run(capsys, *[a.replace("{ckpt}", str(ckpt)) for a in argv])
    assert code == 2 and needle in err, err
    assert "no installed plugin provides" not in err and "Install the plugin that provides it" not in err
    monkeypatch.delenv("ZOO_PLUGINS")
    code, out, err = run(capsys, *[a.replace("{ckpt}", str(ckpt)) for a in argv])
    assert "ZOO_PLUGINS" not in err


# ---- zoo validate of the built-in file ----------------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _builtin_manifest(**changes):
    with open(os.path.join(ROOT, "zoo.json"), encoding="utf-8") as f:
        data = json.load(f)
    for model, entry in changes.items():
        data["models"][model].update(entry)
    return data


N_MODELS = len(_builtin_manifest()["models"])  # every named model of zoo.json
VALIDATE = [  # (id, manifest or None for zoo.json itself, exit code, fragments, errors printed)
    ("zoo.json", None, 0, [f"{N_MODELS} model(s) valid at presets tiny, baby, char, 124m"], 0),
    ("edited-zoo.json", _builtin_manifest(**{"gpt2-rope-gqa": {"attention": {"name": "gqa", "params": {"n_kv_heads": "two"}}}}),
     2, ["at attention.params.n_kv_heads: 'two' is not of type 'integer'",
         "(at every preset: 'tiny', 'baby', 'char', '124m')", f"1 problem(s) in {N_MODELS} model(s)"], 1),
    ("some-presets", {"models": {"mine": {"extends": "gpt2-rope-gqa", "attention": {"name": "gqa", "params": {"n_kv_heads": 3}}}}},
     2, ["model 'mine' (at presets 'tiny', 'baby'):", "1 problem(s) in 1 model(s)"], 1),
    ("clash", {"models": {"gpt2": {"extends": "llama"}}}, 2, ["the model name 'gpt2' is already defined by zoo"], 0),
]


@pytest.mark.parametrize("manifest, code, needles, n_errors", [c[1:] for c in VALIDATE], ids=[c[0] for c in VALIDATE])
def test_validate(manifest, code, needles, n_errors, tmp_path, capsys, fresh_registry):
    path = os.path.join(ROOT, "zoo.json")
    if manifest is not None:
        path = tmp_path / "zoo.json"
        path.write_text(json.dumps(manifest))
    with open(path, "rb") as f:
        before = f.read()
    got, out, err = run(capsys, "validate", path)
    assert got == code, err
    assert all(n in out + err for n in needles), out + err
    assert len([ln for ln in err.splitlines() if ln.startswith("error: ")]) == n_errors, err
    with open(path, "rb") as f:
        assert f.read() == before


# ---- zoo compare of a path that is not there ----------------------------------------------------------

COMPARE = [  # (target, fragment)
    ("runs/nope", "'runs/nope' does not exist. Give a run directory"),
    ("./nope", "'./nope' does not exist"),
    ("afile.txt", "'afile.txt' is a file, not a run directory"),
    ("empty", "'empty' holds no runs: no TensorBoard event files"),
    ("nope", "Train it with `zoo train nope`"),
]


@pytest.mark.parametrize("target, needle", COMPARE)
def test_compare_of_something_that_is_not_a_run(target, needle, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    code, out, err = run(capsys, "compare", target)
    assert code == 2 and needle in err, err
    assert ("zoo train" in err) == (target == "nope")
