"""Third-party plugin distributions, broken in every way the issue lists, installed for real.

Each package is a real distribution as far as discovery goes: a ``NAME-VERSION.dist-info`` folder
(METADATA, entry_points.txt) beside its module, on the PYTHONPATH of a ``python -m zoo``
subprocess, which is what ``pip install --target`` would leave there. importlib.metadata finds
them exactly as it finds pip-installed ones; nothing is injected into the registry.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from zoo import PLUGIN_API_VERSION
from zoo.plugin.registry import DEFAULT_PLUGIN_API, api_problem, declared_api

FFN = """
import torch.nn as nn
from zoo.hookspecs import hookimpl
from zoo_plugins.ffn.mlp import MLP, PARAMS
"""

PACKAGES = {
    # name: (module source, entry points {name: module})
    "zoo-good": (FFN + """
ZOO_API = "1.0"
@hookimpl
def register_ffn(register):
    register("good-ffn", MLP, PARAMS, {"token_wise": True})
@hookimpl
def register_models(register):
    register("gpt2-good", {"extends": "gpt2", "ffn": {"name": "good-ffn"}})
""", {"ffn-good": "zoo_good"}),
    "zoo-broken-import": ("import a_module_that_does_not_exist\n", {"ffn-broken": "zoo_broken_import"}),
    "zoo-raising-hook": (FFN + """
@hookimpl
def register_ffn(register):
    register("raising-ffn", MLP, PARAMS, {})
    raise RuntimeError("the hook fell over")
""", {"ffn-raising": "zoo_raising_hook"}),
    "zoo-bad-schema": (FFN + """
@hookimpl
def register_ffn(register):
    register("bad-schema-ffn", MLP, {"type": "object", "properties": {"width": {"type": "wide"}}}, {})
""", {"ffn-bad-schema": "zoo_bad_schema"}),
    "zoo-clash": (FFN + """
@hookimpl
def register_ffn(register):
    register("mlp", MLP, PARAMS, {})  # the built-in GELU MLP's name
    register("clash-other", MLP, PARAMS, {"token_wise": True})  # fine on its own
""", {"ffn-clash": "zoo_clash"}),
    "zoo-future-api": (FFN + """
ZOO_API = "2.0"
@hookimpl
def register_ffn(register):
    register("future-ffn", MLP, PARAMS, {})
""", {"ffn-future": "zoo_future_api"}),
    "zoo-exits": ("import sys\nsys.exit('I exit at import')\n", {"ffn-exits": "zoo_exits"}),
}
BROKEN = {
    "zoo-broken-import": "No module named 'a_module_that_does_not_exist'",
    "zoo-raising-hook": "raised RuntimeError: the hook fell over",
    "zoo-bad-schema": "invalid params schema",
    "zoo-clash": "name 'mlp' is already registered by 'zoo'",
    "zoo-future-api": f"built for zoo plugin API 2.0, but this zoo provides API {PLUGIN_API_VERSION}",
    "zoo-exits": "SystemExit: I exit at import",
}
NEVER_REGISTERED = {"raising-ffn", "bad-schema-ffn", "future-ffn"}


def write_dist(root, dist, version, module_source, entry_points):
    """A distribution as an installer leaves it: the module and NAME-VERSION.dist-info/."""
    module = dist.replace("-", "_")
    (root / f"{module}.py").write_text(textwrap.dedent(module_source))
    info = root / f"{module}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("[zoo]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    (info / "RECORD").write_text("")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    for dist, (src, eps) in PACKAGES.items():
        write_dist(root, dist, "1.0", src, eps)
    return root


def zoo_cmd(site, *args, plugins=None):
    env = {k: v for k, v in os.environ.items() if k not in ("ZOO_PLUGINS", "ZOO_MANIFEST")}
    env["PYTHONPATH"] = str(site)
    if plugins is not None:
        env["ZOO_PLUGINS"] = plugins
    return subprocess.run([sys.executable, "-m", "zoo", *args], capture_output=True, text=True, env=env, cwd=site)


def warnings_of(stderr):
    return [ln for ln in stderr.splitlines() if ln.startswith("zoo: warning:")]


def test_each_broken_distribution_is_one_warning_and_the_rest_works(site):
    p = zoo_cmd(site, "plugins", "--json")
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    data = json.loads(p.stdout)
    problems = {}
    for pr in data["problems"]:
        problems.setdefault(pr["dist"], []).append(pr["reason"])
    assert set(problems) == set(BROKEN)
    for dist, needle in BROKEN.items():
        assert any(needle in r for r in problems[dist]), (dist, problems[dist])
        warns = [w for w in warnings_of(p.stderr) if f"'{dist}'" in w]
        assert len(warns) == 1 and needle in warns[0], (dist, p.stderr)
    assert len(warnings_of(p.stderr)) == len(BROKEN)
    comps = {(c["kind"], c["name"]): c for c in data["components"]}
    assert comps[("ffn", "good-ffn")]["dist"] == "zoo-good" and comps[("ffn", "good-ffn")]["version"] == "1.0"
    assert comps[("ffn", "mlp")]["dist"] == "zoo"  # the clash is blamed on the newcomer
    assert comps[("ffn", "clash-other")]["dist"] == "zoo-clash"  # its other, valid component still loads
    assert not NEVER_REGISTERED & {n for _, n in comps}
    assert data["models"]["gpt2-good"]["dist"] == "zoo-good" and "llama" in data["models"]
    assert data["api_version"] == PLUGIN_API_VERSION
    assert data["distributions"]["zoo-good"] == {"version": "1.0", "api": "1.0"}
    assert data["distributions"]["zoo-clash"] == {"version": "1.0", "api": "1.0"}  # no ZOO_API: 1.0
    assert "zoo-future-api" not in data["distributions"] and "zoo-broken-import" not in data["distributions"]


def test_version_names_the_plugin_api():
    p = subprocess.run([sys.executable, "-m", "zoo", "--version"], capture_output=True, text=True)
    assert p.stdout.strip().endswith(f"(plugin API {PLUGIN_API_VERSION})"), p.stdout


def test_plugins_table_names_distribution_version_and_failures(site):
    p = zoo_cmd(site, "plugins")
    assert p.returncode == 0, p.stderr
    row = next(ln for ln in p.stdout.splitlines() if " good-ffn " in ln)
    assert row.split()[:4] == ["ffn", "good-ffn", "zoo-good", "1.0"]
    assert "models from zoo-good 1.0: gpt2-good" in p.stdout
    for dist in BROKEN:
        assert f"FAILED {dist}: " in p.stdout


def test_the_good_plugin_passes_the_kit_and_builds_beside_broken_ones(site):
    p = zoo_cmd(site, "check", "ffn", "good-ffn")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "zoo-good" in p.stdout and "ok" in p.stdout
    p = zoo_cmd(site, "show", "gpt2-good", "--preset", "tiny", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["spec"]["ffn"]["name"] == "good-ffn", p.stderr


def test_strict_makes_any_problem_an_error_exit(site):
    p = zoo_cmd(site, "--strict", "list", "--preset", "tiny")
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.startswith("zoo: error: plugin problems (--strict)") and "Traceback" not in p.stderr
    for dist in BROKEN:
        assert f"  {dist}: " in p.stderr
    # with only the good distribution allowed, --strict has nothing to object to
    p = zoo_cmd(site, "--strict", "plugins", plugins="zoo-good")
    assert p.returncode == 0 and " good-ffn " in p.stdout and p.stderr == "", p.stderr


def test_zoo_plugins_allowlist(site):
    # only the named third-party distributions load (names normalised as pip does); built-ins always
    p = zoo_cmd(site, "plugins", "--json", plugins="Zoo_Good , zoo-clash")
    data = json.loads(p.stdout)
    dists = {c["dist"] for c in data["components"]}
    assert dists == {"zoo", "zoo-good", "zoo-clash"}
    assert [pr["dist"] for pr in data["problems"]] == ["zoo-clash"]
    assert len(warnings_of(p.stderr)) == 1
    # empty: no third-party distribution at all
    p = zoo_cmd(site, "plugins", "--json", plugins="")
    data = json.loads(p.stdout)
    assert {c["dist"] for c in data["components"]} == {"zoo"} and data["problems"] == [] and p.stderr == ""
    # a name that is not installed is reported, not silently ignored
    p = zoo_cmd(site, "plugins", "--json", plugins="zoo-good,zoo-goood")
    data = json.loads(p.stdout)
    assert [pr["dist"] for pr in data["problems"]] == ["zoo-goood"]
    assert "no installed distribution" in data["problems"][0]["reason"]
    assert "good-ffn" in {c["name"] for c in data["components"]}


@pytest.mark.parametrize("declared, ok", [("1", True), ("1.0", True), (PLUGIN_API_VERSION, True),
                                          ("1.99", False), ("2.0", False), ("0.9", False), ("one", False)])
def test_api_compatibility_rule(declared, ok):
    # same major, minor not newer than ours (this zoo provides 1.1: 1.0 plus the transform hook)
    assert PLUGIN_API_VERSION == "1.1"
    why = api_problem(declared, "plugin x", "zoo-x")
    assert (why is None) == ok, why
    if not ok:
        assert "zoo-x" in why or "not a version" in why or "upgrade the zoo" in why


def test_api_declaration_is_found_on_the_module_or_its_package():
    import types
    pkg, mod = types.ModuleType("pkg_api_test"), types.ModuleType("pkg_api_test.sub")
    assert declared_api(mod) == DEFAULT_PLUGIN_API  # nothing declared: the first API
    pkg.ZOO_API = "1.0"
    sys.modules["pkg_api_test"] = pkg
    try:
        assert declared_api(mod) == "1.0"
        mod.ZOO_API = "2.1"  # the module's own declaration wins
        assert declared_api(mod) == "2.1"
    finally:
        del sys.modules["pkg_api_test"]


# ---- docs/plugins.md: its examples run, its tutorial files are the example package's files ----

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "plugins.md"
EXAMPLE = ROOT / "examples" / "zoo-relu2"


def _doc_blocks():
    import re
    text = DOC.read_text(encoding="utf-8")
    return [(m.group(1), m.group(2), m.group(3))
            for m in re.finditer(r"(?:<!-- file: (\S+) -->\n)?```(\w*)\n(.*?)```", text, re.S)]


def test_docs_tutorial_files_are_the_example_package():
    files = [(path, body) for path, _, body in _doc_blocks() if path]
    assert {p for p, _ in files} >= {"pyproject.toml", "src/zoo_relu2/__init__.py", "src/zoo_relu2/relu2.py",
                                     "src/zoo_relu2/zoo.json", "src/zoo_relu2/models.py", "tests/test_relu2.py",
                                     ".github/workflows/tests.yml"}
    for path, body in files:
        assert body == (EXAMPLE / path).read_text(encoding="utf-8"), f"docs/plugins.md shows an outdated {path}"


def test_docs_examples_run(capsys):
    blocks = [body for path, lang, body in _doc_blocks() if lang == "python" and not path]
    assert len(blocks) >= 5  # one per hook, and the checks listing
    for i, body in enumerate(blocks):
        try:
            exec(compile(body, f"docs/plugins.md python block {i + 1}", "exec"), {"__name__": f"docs_example_{i}"})
        except Exception as e:
            raise AssertionError(f"docs/plugins.md python block {i + 1} fails:\n{body}") from e
    out = capsys.readouterr().out
    assert "ffn relu-mlp my-plugin" in out and "my-plugin 0" in out


def test_docs_list_every_check_of_the_kit():
    import re
    from zoo.testing import CHECKS
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## The conformance kit")[1].split("\n## ")[0]
    listed = set(re.findall(r"`(check_[a-z_]+)`", section)) - {"check_component"}
    assert listed == {c.name for c in CHECKS}


LOAD_CKPT = """
import sys
from zoo.io.checkpoint import load_checkpoint
from zoo.errors import ZooError
try:
    load_checkpoint(sys.argv[1])
except ZooError as e:
    print(e)
"""


def test_a_checkpoint_whose_plugin_is_refused_says_why(site, tmp_path):
    # trained with zoo-future-api's ffn; that distribution is installed but built for API 2.0
    import zoo
    from zoo.io.checkpoint import save_checkpoint
    spec = zoo.resolve("gpt2", "tiny")
    spec["ffn"] = {"name": "future-ffn", "params": {}}
    save_checkpoint(tmp_path / "ckpt.pt", {"model": {}, "spec": spec, "plugins": {"zoo": "0.1.0", "zoo-future-api": "1.0"}})
    env = {k: v for k, v in os.environ.items() if k not in ("ZOO_PLUGINS", "ZOO_MANIFEST")}
    p = subprocess.run([sys.executable, "-c", LOAD_CKPT, str(tmp_path / "ckpt.pt")], capture_output=True, text=True,
                       env={**env, "PYTHONPATH": str(site)})
    assert "uses ffn 'future-ffn', which no installed plugin provides" in p.stdout, p.stdout + p.stderr
    assert "zoo-future-api is installed but did not load" in p.stdout and "built for zoo plugin API 2.0" in p.stdout
    assert "zoo-future-api==1.0" in p.stdout
    assert "zoo-raising-hook" not in p.stdout  # only the distributions the checkpoint needs


def test_register_a_whole_manifest_and_a_bad_one_is_a_problem_of_its_distribution():
    import types
    from zoo.hookspecs import hookimpl
    from zoo.spec.catalog import load_registry

    @hookimpl
    def good(register):
        register(None, {"version": 1, "presets": {"wide": {"n_layers": 1, "n_heads": 2, "d_model": 64,
                                                            "block_size": 16, "vocab_size": 32}},
                        "models": {"gpt2-wide": {"extends": "gpt2"}}})

    @hookimpl
    def bad(register):
        register(None, {"version": 1, "models": {"oops": {"attention": "mha"}}})  # not {"name": ...}

    reg = load_registry(extra_plugins=[(types.SimpleNamespace(register_models=good), "good-models"),
                                       (types.SimpleNamespace(register_models=bad), "bad-models")])
    assert reg.models["gpt2-wide"].dist == "good-models" and reg.presets["wide"].dist == "good-models"
    (problem,) = reg.problems
    assert problem[0] == "bad-models" and "models.oops.attention" in problem[1], problem
    assert "oops" not in reg.models
