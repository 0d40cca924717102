"""``zoo new-plugin``: the package it writes installs with pip, is discovered by the zoo, and passes
its own tests (the conformance kit through parametrize_with_checks, and its named model) as
generated, for every kind."""
import ast
import contextlib
import io
import json
import os
from types import SimpleNamespace

import pytest

from zoo.cli import main

KINDS = ("attention", "posenc", "ffn")


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
    return cwd


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
        assert "# (B, T, C)" in src or "# x: (B, T, C)" in src
        assert "{{" not in src


def test_installed_it_is_discovered_and_passes_its_own_tests(plugin_venv, generated):
    for kind in KINDS:
        plugin_venv.pip_install(generated / f"zoo-my-{kind}")
    try:
        p = plugin_venv.zoo("plugins", "--json")
        assert p.returncode == 0, p.stderr
        data = json.loads(p.stdout)
        assert data["problems"] == []
        found = {(c["kind"], c["name"]): (c["dist"], c["version"]) for c in data["components"]}
        for kind in KINDS:
            assert found[(kind, f"my-{kind}")] == (f"zoo-my-{kind}", "0.1.0")
            assert data["models"][f"gpt2-my-{kind}"]["dist"] == f"zoo-my-{kind}"
        for kind in KINDS:  # each package's own tests, run the way its author would
            pkg = generated / f"zoo-my-{kind}"
            p = plugin_venv.run("-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=pkg)
            assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
            assert "passed" in p.stdout and "failed" not in p.stdout and "xfail" not in p.stdout
            n = int(p.stdout.strip().splitlines()[-1].split()[0])
            assert n >= 10, p.stdout  # the conformance checks and the package's own tests all ran
    finally:
        for kind in KINDS:
            plugin_venv.pip_uninstall(f"zoo-my-{kind}")
    p = plugin_venv.zoo("plugins", "--json")
    assert not {c["name"] for c in json.loads(p.stdout)["components"]} & {f"my-{k}" for k in KINDS}


@pytest.mark.parametrize("args, needle", [
    (["Bad!", "--kind", "ffn"], "invalid plugin name 'Bad!'"),
    (["mlp", "--kind", "ffn"], "the ffn name 'mlp' is already registered by zoo"),
    (["rope", "--kind", "posenc"], "the posenc name 'rope' is already registered by zoo"),
    (["models", "--kind", "ffn"], "the plugin name 'models' is taken"),
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
