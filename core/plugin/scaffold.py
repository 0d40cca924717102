"""``zoo new-plugin NAME --kind attention|posenc|ffn``: write a plugin package to start from.

The package registers a component called NAME through the plugin API (entry points of the group
``zoo``, one hookimpl), declares the API version it was written for (``ZOO_API``), adds a named
model ``gpt2-NAME`` that uses the component, and has a test that runs the conformance kit on it
with ``zoo.testing.parametrize_with_checks``, and a GitHub Actions workflow that runs it (the kit
in the package's CI). It passes its own tests as generated: the component
starts as a standard one of its kind, for the author to change. The files come from
``zoo/plugin/templates`` with ``{{key}}`` placeholders filled in.
"""
from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

from ..errors import ZooError
from ..version import PLUGIN_API_VERSION, __version__
from .contract import KINDS

NAME_RE = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")
CLASS_SUFFIX = {"attention": "Attention", "posenc": "PosEnc", "ffn": "FFN"}
STARTING_POINT = {"attention": "causal multi-head attention with a KV cache",
                  "posenc": "the sinusoidal absolute encoding",
                  "ffn": "the GELU MLP"}
SCAFFOLD_KINDS = tuple(CLASS_SUFFIX)  # the kinds with templates


def names_for(name: str, kind: str) -> dict:
    """The placeholders of the templates for a component NAME of a kind."""
    if not NAME_RE.fullmatch(name or ""):
        raise ZooError(f"invalid plugin name {name!r}: use lower-case letters and digits, starting with a "
                       f"letter, words joined by '-' or '_' (e.g. 'relu2' or 'my-attention').")
    if kind not in SCAFFOLD_KINDS:
        raise ZooError(f"zoo new-plugin writes a package for one of {', '.join(SCAFFOLD_KINDS)}, not {kind!r}"
                       + (" (the kinds are " + ", ".join(KINDS) + "; see docs/plugins.md for the others)."
                          if kind in KINDS else "."))
    words = re.split(r"[-_]", name)
    module = "_".join(words)
    if module == "models":  # the package's models module has that name
        raise ZooError("the plugin name 'models' is taken by the package's own models module; choose another name.")
    cls = "".join(w.capitalize() for w in words)
    if not cls.lower().endswith(CLASS_SUFFIX[kind].lower()):
        cls += CLASS_SUFFIX[kind]
    return {"name": name, "kind": kind, "dist": "zoo-" + "-".join(words), "package": "zoo_" + module,
            "module": module, "cls": cls,
            "model": f"gpt2-{name}", "api": PLUGIN_API_VERSION, "zoo_version": __version__,
            "starting_point": STARTING_POINT[kind]}


def render(template: str, values: dict) -> str:
    text = files("zoo.plugin").joinpath("templates", template).read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", str(value))
    left = re.search(r"\{\{\w+\}\}", text)
    if left:  # a template bug, not a user error
        raise RuntimeError(f"template {template}: placeholder {left.group(0)} has no value")
    return text


def layout(v: dict) -> dict:
    """Relative path -> template name, for the package of a component."""
    return {
        "pyproject.toml": "pyproject.toml.tmpl",
        "README.md": "README.md.tmpl",
        f"src/{v['package']}/__init__.py": "__init__.py.tmpl",
        f"src/{v['package']}/{v['module']}.py": f"{v['kind']}.py.tmpl",
        f"src/{v['package']}/models.py": "models.py.tmpl",
        f"tests/test_{v['module']}.py": "test_component.py.tmpl",
        ".github/workflows/tests.yml": "github-workflow.yml.tmpl",
    }


def new_plugin(name: str, kind: str, parent=".", reg=None) -> Path:
    """Write the package ``zoo-NAME/`` under ``parent``; return its folder."""
    v = names_for(name, kind)
    if reg is not None:
        taken = reg.components[kind].get(name)
        if taken is not None:
            raise ZooError(f"the {kind} name {name!r} is already registered by {taken.dist} {taken.version}; "
                           f"two plugins cannot register the same name. Choose another name.")
        if v["model"] in reg.models:
            raise ZooError(f"the named model {v['model']!r} the package would add is already registered by "
                           f"{reg.models[v['model']].origin}. Choose another name.")
    root = Path(parent) / v["dist"]
    if root.exists():
        raise ZooError(f"{str(root)!r} already exists; remove it, or run `zoo new-plugin` in another folder.")
    rendered = {path: render(tmpl, v) for path, tmpl in layout(v).items()}
    for path, text in rendered.items():
        out = root / path
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    return root
