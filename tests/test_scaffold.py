"""``zoo new-plugin``: the package it writes installs with pip, is discovered by the zoo, and passes
its own tests (the conformance kit through parametrize_with_checks, and its named model; for a
command, the command run through the CLI) as generated, for every kind with a template; --package
and --model name the distribution and the model apart from the component."""
import ast
import contextlib
import io
import json
import os
from types import SimpleNamespace

import pytest

from zoo.cli import main

KINDS = ("attention", "posenc", "ffn", "head", "transform")  # the component kinds; "command" is tested on its own
SHAPES = {"transform": "# x: (..., in) -> (..., out)"}  # a shape comment each module has (default (B, T, C))


def new_plugin(cwd, *args):
    """`zoo new-plugin ARGS` run in the folder cwd (in this process: the CLI's own main)."""
    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(["new-plugin", *args])
            except SystemExit as e:  # argparse errors
                rc = e.code
    finally:
        os.chdir(here)
    return SimpleNamespace(returncode=rc, stdout=out.getvalue(), stderr=err.getvalue())


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("scaffold")
    for kind in KINDS:
        p = new_plugin(cwd, f"my-{kind}", "--kind", kind)
        assert p.returncode == 0, p.stderr
        assert f"zoo-my-{kind}" in p.stdout
    p = new_plugin(cwd, "my-hello", "--kind", "command")
    assert p.returncode == 0 and "the command `zoo my-hello`" in p.stdout, p.stderr
    p = new_plugin(cwd, "sq-relu", "--kind", "ffn", "--package", "acme.zoo-bits", "--model", "tiny-sq")
    assert p.returncode == 0 and "acme.zoo-bits" in p.stdout, p.stderr
    return cwd


def test_package_and_model_are_named_apart_from_the_component(generated):
    root = generated / "acme.zoo-bits"
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert "src/acme_zoo_bits/sq_relu.py" in files and "tests/test_sq_relu.py" in files
    pyproject = (root / "pyproject.toml").read_text()
    assert 'name = "acme.zoo-bits"' in pyproject
    assert 'ffn-sq-relu = "acme_zoo_bits.sq_relu"' in pyproject and 'models = "acme_zoo_bits.models"' in pyproject
    models = (root / "src/acme_zoo_bits/models.py").read_text()
    assert '"tiny-sq": {' in models and '"ffn": {"name": "sq-relu"}' in models
    test = (root / "tests/test_sq_relu.py").read_text()
    assert 'zoo.resolve("tiny-sq", "tiny")' in test and '.dist == "acme.zoo-bits"' in test
    assert "class SqReluFFN(" in (root / "src/acme_zoo_bits/sq_relu.py").read_text()


def test_a_command_package(generated):
    root = generated / "zoo-my-hello"
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == [".github/workflows/tests.yml", "README.md", "pyproject.toml", "src/zoo_my_hello/__init__.py",
                     "src/zoo_my_hello/my_hello.py", "tests/test_my_hello.py"]  # no models module
    pyproject = (root / "pyproject.toml").read_text()
    assert 'command-my-hello = "zoo_my_hello.my_hello"' in pyproject and "models =" not in pyproject
    src = (root / "src/zoo_my_hello/my_hello.py").read_text()
    assert src.count("@hookimpl") == 1 and "def register_commands(register):" in src and "{{" not in src
    assert "zoo my-hello --help" in (root / "README.md").read_text()


def test_the_generated_command_runs_in_the_cli(generated, monkeypatch, capsys, fresh_registry):
    """Without installing it: its module through discover(extra_plugins=...), as the entry point would."""
    import importlib

    from zoo.spec import catalog
    monkeypatch.syspath_prepend(str(generated / "zoo-my-hello" / "src"))
    mod = importlib.import_module("zoo_my_hello.my_hello")
    monkeypatch.setattr(catalog, "load_registry", lambda: catalog.discover(
        [(mod, "zoo-my-hello")], check_model=catalog.check_registered))
    assert main(["my-hello", "--name", "you"]) == 0 and capsys.readouterr().out == "hello, you\n"
    assert main(["my-hello", "--name", ""]) == 2
    assert capsys.readouterr().err == "zoo: error: --name is empty; give a name to greet, e.g. --name world.\n"
    assert catalog.get_registry().api_versions["zoo-my-hello"] == "1.1"


def test_layout_and_contents(generated):
    root = generated / "zoo-my-ffn"
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == [".github/workflows/tests.yml", "README.md", "pyproject.toml", "src/zoo_my_ffn/__init__.py", "src/zoo_my_ffn/models.py",
                     "src/zoo_my_ffn/my_ffn.py", "tests/test_my_ffn.py"]
    pyproject = (root / "pyproject.toml").read_text()
    assert 'name = "zoo-my-ffn"' in pyproject and '[project.entry-points.zoo]' in pyproject
    assert 'ffn-my-ffn = "zoo_my_ffn.my_ffn"' in pyproject and 'models = "zoo_my_ffn.models"' in pyproject
    from zoo import PLUGIN_API_VERSION
    assert f'ZOO_API = "{PLUGIN_API_VERSION}"' in (root / "src/zoo_my_ffn/__init__.py").read_text()
    assert "parametrize_with_checks(kind=\"ffn\", names=[\"my-ffn\"])" in (root / "tests/test_my_ffn.py").read_text()
    ci = (root / ".github/workflows/tests.yml").read_text()
    assert 'pip install -e ".[test]"' in ci and "python -m pytest" in ci  # the kit runs in their CI
    for kind in KINDS:  # every generated module is Python, cites a paper and has one hookimpl
        src = (generated / f"zoo-my-{kind}" / f"src/zoo_my_{kind}/my_{kind}.py").read_text()
        tree = ast.parse(src)
        assert "arXiv:" in ast.get_docstring(tree)
        assert src.count("@hookimpl") == 1 and f"def register_{kind}(register):" in src
        assert SHAPES.get(kind, "# (B, T, C)") in src or "# x: (B, T, C)" in src
        assert "{{" not in src


def test_a_head_and_a_transform_package(generated):
    """The named model extends gpt2 with the head in its "head" slot, the transform in "transforms"."""
    head, transform = generated / "zoo-my-head", generated / "zoo-my-transform"
    models = (head / "src/zoo_my_head/models.py").read_text()
    assert '"extends": "gpt2"' in models and '"head": {"name": "my-head"}' in models
    models = (transform / "src/zoo_my_transform/models.py").read_text()
    assert '"extends": "gpt2"' in models and '"transforms": [{"name": "my-transform"}]' in models
    assert 'head-my-head = "zoo_my_head.my_head"' in (head / "pyproject.toml").read_text()
    assert 'transform-my-transform = "zoo_my_transform.my_transform"' in (transform / "pyproject.toml").read_text()
    src = (head / "src/zoo_my_head/my_head.py").read_text()
    assert "class MyHead(nn.Module):" in src and "def forward(self, h, targets, model):" in src
    src = (transform / "src/zoo_my_transform/my_transform.py").read_text()
    assert "class MyTransform:" in src and "class MyTransformLinear(nn.Linear):" in src
    assert "def effective_weight(self):" in src and "def merge(self, state_dict):" in src
    test = (head / "tests/test_my_head.py").read_text()
    assert 'assert spec["head"]["name"] == "my-head"' in test
    test = (transform / "tests/test_my_transform.py").read_text()
    assert 'assert [t["name"] for t in spec["transforms"]] == ["my-transform"]' in test


PACKAGES = {"zoo-my-attention", "zoo-my-posenc", "zoo-my-ffn", "zoo-my-head", "zoo-my-transform", "zoo-my-hello",
            "acme.zoo-bits"}
# the fewest tests each package's run has: the kit's checks for its kind, and the package's own 3
MIN_TESTS = {"zoo-my-hello": 3, "zoo-my-head": 8, "zoo-my-transform": 5}


def test_installed_it_is_discovered_and_passes_its_own_tests(plugin_venv, generated):
    for dist in sorted(PACKAGES):
        plugin_venv.pip_install(generated / dist)
    try:
        p = plugin_venv.zoo("plugins", "--json")
        assert p.returncode == 0, p.stderr
        data = json.loads(p.stdout)
        assert data["problems"] == []
        found = {(c["kind"], c["name"]): (c["dist"], c["version"]) for c in data["components"]}
        for kind in KINDS:
            assert found[(kind, f"my-{kind}")] == (f"zoo-my-{kind}", "0.1.0")
            assert data["models"][f"gpt2-my-{kind}"]["dist"] == f"zoo-my-{kind}"
        assert found[("ffn", "sq-relu")] == ("acme.zoo-bits", "0.1.0") and data["models"]["tiny-sq"]["dist"] == "acme.zoo-bits"
        assert {"name": "my-hello", "help": "print a greeting (a command of zoo-my-hello)", "dist": "zoo-my-hello",
                "version": "0.1.0"} in data["commands"]
        p = plugin_venv.zoo("my-hello", "--name", "pip")
        assert p.returncode == 0 and p.stdout == "hello, pip\n", p.stderr
        for dist in sorted(PACKAGES):  # each package's own tests, run the way its author would
            pkg = generated / dist
            p = plugin_venv.run("-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=pkg)
            assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
            assert "passed" in p.stdout and "failed" not in p.stdout and "xfail" not in p.stdout
            n = int(p.stdout.strip().splitlines()[-1].split()[0])
            assert n >= MIN_TESTS.get(dist, 10), p.stdout  # the kit's checks and the package's tests
    finally:
        for dist in sorted(PACKAGES):
            plugin_venv.pip_uninstall(dist)
    p = plugin_venv.zoo("plugins", "--json")
    assert not {c["name"] for c in json.loads(p.stdout)["components"]} & {f"my-{k}" for k in KINDS}
    assert json.loads(p.stdout)["commands"] == []


@pytest.mark.parametrize("args, needle", [
    (["Bad!", "--kind", "ffn"], "invalid plugin name 'Bad!'"),
    (["mlp", "--kind", "ffn"], "the ffn name 'mlp' is already registered by zoo"),
    (["rope", "--kind", "posenc"], "the posenc name 'rope' is already registered by zoo"),
    (["next_token", "--kind", "head"], "the head name 'next_token' is already registered by zoo"),
    (["lora", "--kind", "transform"], "the transform name 'lora' is already registered by zoo"),
    (["models", "--kind", "ffn"], "the plugin name 'models' is taken"),
    (["mine", "--kind", "ffn", "--model", "gpt2"], "the named model 'gpt2' the package would add is already"),
    (["mine", "--kind", "ffn", "--model", "Bad Model"], "invalid model name 'Bad Model'"),
    (["mine", "--kind", "ffn", "--package", "bad name!"], "invalid distribution name 'bad name!'"),
    (["mine", "--kind", "ffn", "--package", "zoo"], "which is the zoo's own"),
    (["train", "--kind", "command"], "it is one of the zoo's own commands"),
    (["my_cmd", "--kind", "command"], "a command's words are joined by '-'"),
    (["my-cmd", "--kind", "command", "--model", "m"], "a command package adds none"),
])
def test_user_errors_exit_2_without_writing(tmp_path, args, needle):
    p = new_plugin(tmp_path, *args)
    assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_is_not_overwritten(tmp_path):
    (tmp_path / "zoo-mine").mkdir()
    (tmp_path / "zoo-mine" / "keep.txt").write_text("mine")
    p = new_plugin(tmp_path, "mine", "--kind", "attention")
    assert p.returncode == 2 and "already exists" in p.stderr
    assert [f.name for f in (tmp_path / "zoo-mine").iterdir()] == ["keep.txt"]


def test_kind_is_required_and_checked(tmp_path):
    p = new_plugin(tmp_path, "mine")
    assert p.returncode == 2 and "--kind" in p.stderr
    p = new_plugin(tmp_path, "mine", "--kind", "norm")
    assert p.returncode == 2 and "invalid choice" in p.stderr
