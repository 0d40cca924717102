"""Test settings. The data and tokenizer files come from settings a user can also set
(ZOO_DATA_DIR, TIKTOKEN_CACHE_DIR); when unset and the project's ../shared folder is there (CI and
development machines without internet), they point into it."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

if "ZOO_DATA_DIR" not in os.environ and (SHARED / "data" / "tinyshakespeare.txt").is_file():
    os.environ["ZOO_DATA_DIR"] = str(SHARED / "data")
if "TIKTOKEN_CACHE_DIR" not in os.environ and (SHARED / "tiktoken-cache").is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(SHARED / "tiktoken-cache")


def pytest_configure(config):
    # tests must not be able to see the user's own manifests or plugin selection
    os.environ.pop("ZOO_MANIFEST", None)
    os.environ.pop("ZOO_PLUGINS", None)


def pytest_collection_modifyitems(config, items):
    """Tests marked slow (minutes each) run with ZOO_SLOW_TESTS=1 or when asked for with -m slow."""
    if os.environ.get("ZOO_SLOW_TESTS") == "1" or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow (minutes): run with ZOO_SLOW_TESTS=1, or select it with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def fresh_registry():
    """Reload the registry before and after a test that changes plugins or manifests."""
    import zoo
    zoo.configure([])
    yield
    zoo.configure([])


def needs_data():
    return pytest.mark.skipif(not (Path(os.environ.get("ZOO_DATA_DIR", "/nonexistent")) / "tinyshakespeare.txt").is_file(),
                              reason="Tiny Shakespeare not available: set ZOO_DATA_DIR to a folder holding tinyshakespeare.txt")


class PluginVenv:
    """A virtual environment for installing plugin packages with pip, as a user would.

    It sees this interpreter's packages (zoo, torch, pip: installing those again would take
    minutes), while what a test installs lands in the venv's own site-packages, ahead of them on
    its path, and is invisible to this interpreter: a package is discovered there only through its
    installed metadata. ``--system-site-packages`` alone is not enough when this interpreter is
    itself a virtual environment (it would reach the base Python's packages, not this one's), so a
    ``.pth`` file adds this interpreter's site directories, their own ``.pth`` files (an editable
    install's finder) included. pip is this interpreter's, run as ``venv/bin/python -m pip``.
    """

    def __init__(self, path: Path):
        import site
        import subprocess
        import sys
        self.path = path
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(path)],
                       check=True, capture_output=True)
        self.python = path / "bin" / "python"
        own = subprocess.run([str(self.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
        outer = [d for d in [*site.getsitepackages(), site.getusersitepackages()] if Path(d).is_dir()]
        (Path(own) / "_zoo_test_outer_site.pth").write_text(
            "import site; " + "; ".join(f"site.addsitedir({d!r})" for d in outer) + "\n")
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ZOO_PLUGINS", "ZOO_MANIFEST")}
        self.env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONDONTWRITEBYTECODE="1")

    def run(self, *args, cwd=None, env=None):
        import subprocess
        return subprocess.run([str(self.python), *map(str, args)], capture_output=True, text=True,
                              cwd=cwd or self.path, env={**self.env, **(env or {})})

    def zoo(self, *args, **kw):
        return self.run("-m", "zoo", *args, **kw)

    def plugins(self):
        """(``zoo plugins --json`` parsed, its stderr)."""
        import json
        p = self.zoo("plugins", "--json")
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout), p.stderr

    def pip_install(self, src: Path):
        """``pip install`` a package folder (from a copy: pip builds in the source tree)."""
        import shutil
        import tempfile
        copy = Path(tempfile.mkdtemp(dir=self.path.parent)) / Path(src).name
        shutil.copytree(src, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        p = self.run("-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q", copy)
        assert p.returncode == 0, p.stdout + p.stderr
        return copy

    def pip_uninstall(self, dist: str):
        p = self.run("-m", "pip", "uninstall", "-y", "-q", dist)
        assert p.returncode == 0, p.stdout + p.stderr


@pytest.fixture(scope="session")
def plugin_venv(tmp_path_factory):
    """One venv per test session for the tests that pip-install plugin packages; each test module
    uninstalls what it installed."""
    return PluginVenv(tmp_path_factory.mktemp("plugin-venv") / "venv")


@pytest.fixture
def with_plugins(monkeypatch, fresh_registry):
    """``with_plugins(*(module, dist))``: make the CLI's registry the entry points plus these plugins."""
    import zoo
    from zoo.spec import catalog

    def use(*extra):
        monkeypatch.setattr(catalog, "load_registry", lambda: catalog.discover(
            extra, check_model=catalog.check_registered))
        zoo.configure([])
    return use
