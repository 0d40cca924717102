"""The built wheel works on its own in a fresh virtual environment, and ships no bare `core` or
`plugins` package.

The venv gets the zoo only from the wheel. Its dependencies (torch and friends, gigabytes) are made
visible by a path file pointing at this interpreter's site-packages: path files inside that folder
are not processed, so the editable install of the zoo there stays inactive, and the venv's own
site-packages (holding the wheel) comes first on sys.path.
"""
import os
import shutil
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    shutil.copytree(ROOT, src / "zoo", symlinks=True,
                    ignore=shutil.ignore_patterns(".git", "runs", "build", "dist", "*.egg-info", "__pycache__", ".venv", "examples"))
    out = tmp_path_factory.mktemp("dist")
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(out), str(src / "zoo")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    (whl,) = out.glob("zoo-*.whl")
    return whl


def test_wheel_contents(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert "core" not in tops and "plugins" not in tops
    assert {"zoo", "zoo_plugins"} <= tops
    assert "zoo_plugins/zoo.json" in names and "zoo/spec/schema/manifest.schema.json" in names
    assert "zoo/data/tinyshakespeare.txt.gz" in names  # the main job's corpus, for machines without network
    # every package of the source tree and every template ships (pyproject lists the packages by hand)
    inits = {"/".join(("zoo",) + p.relative_to(ROOT / "core").parts) for p in (ROOT / "core").rglob("__init__.py")}
    assert len(inits) > 10 and inits <= set(names), sorted(inits - set(names))
    templates = {f"zoo/plugin/templates/{p.name}" for p in (ROOT / "core" / "plugin" / "templates").glob("*.tmpl")}
    assert templates and templates <= set(names)
    ep = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(ep).decode()
    assert "[zoo]" in text and "zoo_plugins.attention.gqa" in text and "zoo = zoo.cli:main" in text


def test_wheel_in_a_fresh_venv_lists_models(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    venv_site = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    # install the wheel with this interpreter's pip into the venv's site-packages
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(venv_site), str(wheel)],
                   check=True, capture_output=True)
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (venv_site / "_zoo_test_deps.pth").write_text("\n".join(deps) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ZOO_MANIFEST", "ZOO_PLUGINS")}
    where = subprocess.run([str(py), "-c", "import zoo, zoo_plugins; print(zoo.__file__); print(zoo_plugins.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(venv_site)) for line in where.stdout.split()), where.stdout
    p = subprocess.run([str(py), "-m", "zoo", "list", "--preset", "tiny"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "gpt2-rope-gqa" in p.stdout and "llama" in p.stdout
    assert "warning" not in p.stderr
    # the README's main job, offline: no ZOO_DATA_DIR, an empty cache, the corpus from the wheel
    env = {k: v for k, v in env.items() if k != "ZOO_DATA_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    p = subprocess.run([str(py), "-m", "zoo", "train", "gpt2-rope-gqa", "--preset", "tiny", "--max-iters", "2",
                        "--eval-iters", "1", "--sample-tokens", "0", "--out", str(tmp_path / "runs")],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert str(tmp_path / "cache" / "zoo" / "tinyshakespeare.txt") in p.stderr
