"""``zoo new-plugin NAME --kind K [--package DIST] [--model MODEL]``: write a plugin package to start from.

NAME is the component's name (or, for ``--kind command``, the command's). The distribution is
``--package`` (default ``zoo-NAME``) and its import package is derived from it (``zoo-my-stuff`` ->
``zoo_my_stuff``); the component's module is named after NAME. A component package registers the
component through the plugin API (entry points of the group ``zoo``, one hookimpl), declares the API
version it was written for (``ZOO_API``), adds a named model ``--model`` (default ``gpt2-NAME``) that
extends gpt2 and uses it (in the slot of its kind; a transform in the list ``transforms``), and has a test that runs the conformance kit on it with
``zoo.testing.parametrize_with_checks``, and a GitHub Actions workflow that runs it (the kit in the
package's CI). A command package registers ``zoo NAME`` (hook ``register_commands``) and tests it
in-process. Either passes its own tests as generated: it starts as a standard one of its kind, for
the author to change. The files come from ``zoo/plugin/templates`` with ``{{key}}`` placeholders
filled in; :data:`TEMPLATE_KINDS` are the kinds with templates.
"""
from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

from ..errors import ZooError
from ..version import PLUGIN_API_VERSION, __version__
from .registry import BUILTIN_COMMANDS

NAME_RE = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")
DIST_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_.][A-Za-z0-9]+)*")
MODEL_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")
CLASS_SUFFIX = {"attention": "Attention", "posenc": "PosEnc", "ffn": "FFN", "head": "Head", "transform": "",
                "command": ""}
STARTING_POINT = {"attention": "causal multi-head attention with a KV cache",
                  "posenc": "the sinusoidal absolute encoding",
                  "ffn": "the GELU MLP",
                  "head": "next-token prediction with a learned logit scale",
                  "transform": "a learned gain per output feature on the declared Linear layers",
                  "command": "a command that prints a line"}
TEMPLATE_KINDS = tuple(STARTING_POINT)  # the kinds `zoo new-plugin --kind` writes a package for


def names_for(name: str, kind: str, package: str | None = None, model: str | None = None) -> dict:
    """The placeholders of the templates for a component (or command) NAME of a kind, in the
    distribution ``package`` (default zoo-NAME) with the named model ``model`` (default gpt2-NAME)."""
    if not NAME_RE.fullmatch(name or ""):
        raise ZooError(f"invalid plugin name {name!r}: use lower-case letters and digits, starting with a "
                       f"letter, words joined by '-' or '_' (e.g. 'relu2' or 'my-attention').")
    if kind not in TEMPLATE_KINDS:
        raise ZooError(f"unknown kind {kind!r}; `zoo new-plugin` writes packages for {', '.join(TEMPLATE_KINDS)}.")
    words = re.split(r"[-_]", name)
    module = "_".join(words)
    if module == "models":  # the package's models module has that name
        raise ZooError("the plugin name 'models' is taken by the package's own models module; choose another name.")
    dist = package or "zoo-" + "-".join(words)
    if not DIST_RE.fullmatch(dist):
        raise ZooError(f"invalid distribution name {dist!r} (--package): use letters and digits, starting with a "
                       f"letter, words joined by '-', '_' or '.' (e.g. 'zoo-my-stuff').")
    import_name = re.sub(r"[-.]+", "_", dist).lower()
    if import_name in ("zoo", "zoo_plugins"):
        raise ZooError(f"the distribution {dist!r} (--package) would be imported as {import_name!r}, which is the "
                       f"zoo's own; choose another name, e.g. 'zoo-{name}'.")
    if kind == "command":
        if name.replace("_", "-") != name or name in BUILTIN_COMMANDS:
            raise ZooError(f"invalid command name {name!r}: " + ("it is one of the zoo's own commands"
                           if name in BUILTIN_COMMANDS else "a command's words are joined by '-'")
                           + "; choose another name.")
        if model is not None:
            raise ZooError("--model names the model a component package adds; a command package adds none. "
                           "Leave --model out.")
    model = None if kind == "command" else (model or f"gpt2-{name}")
    if model is not None and not MODEL_RE.fullmatch(model):
        raise ZooError(f"invalid model name {model!r} (--model): use lower-case letters, digits, '-', '_' and '.' "
                       f"(e.g. 'gpt2-{name}').")
    cls = "".join(w.capitalize() for w in words)
    if not cls.lower().endswith(CLASS_SUFFIX[kind].lower()):
        cls += CLASS_SUFFIX[kind]
    entry_points = f'{kind}-{name} = "{import_name}.{module}"'
    if model is not None:
        entry_points += f'\nmodels = "{import_name}.models"'
    # how the named model uses the component: a slot of its own, or (a transform) the list of transforms
    model_use = (f'"transforms": [{{"name": "{name}"}}]' if kind == "transform"
                 else f'"{kind}": {{"name": "{name}"}}')
    spec_uses = (f'[t["name"] for t in spec["transforms"]] == ["{name}"]' if kind == "transform"
                 else f'spec["{kind}"]["name"] == "{name}"')
    what = (f"the command `zoo {name}`" if kind == "command"
            else f"the {kind} '{name}' for the zoo, and the named model '{model}'")
    return {"name": name, "kind": kind, "dist": dist, "package": import_name, "module": module, "cls": cls,
            "model": model or "", "model_use": model_use, "spec_uses": spec_uses, "api": PLUGIN_API_VERSION, "zoo_version": __version__,
            "starting_point": STARTING_POINT[kind], "entry_points": entry_points, "what": what}


def render(template: str, values: dict) -> str:
    text = files("zoo.plugin").joinpath("templates", template).read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", str(value))
    left = re.search(r"\{\{\w+\}\}", text)
    if left:  # a template bug, not a user error
        raise RuntimeError(f"template {template}: placeholder {left.group(0)} has no value")
    return text


def layout(v: dict) -> dict:
    """Relative path -> template name, for the package of a component or command."""
    command = v["kind"] == "command"
    out = {
        "pyproject.toml": "pyproject.toml.tmpl",
        "README.md": "README-command.md.tmpl" if command else "README.md.tmpl",
        f"src/{v['package']}/__init__.py": "__init__.py.tmpl",
        f"src/{v['package']}/{v['module']}.py": f"{v['kind']}.py.tmpl",
        f"src/{v['package']}/models.py": "models.py.tmpl",
        f"tests/test_{v['module']}.py": "test_command.py.tmpl" if command else "test_component.py.tmpl",
        ".github/workflows/tests.yml": "github-workflow.yml.tmpl",
    }
    if command:
        del out[f"src/{v['package']}/models.py"]
    return out


def new_plugin(name: str, kind: str, parent=".", reg=None, package: str | None = None,
               model: str | None = None) -> Path:
    """Write the package (folder named after its distribution) under ``parent``; return its folder."""
    v = names_for(name, kind, package, model)
    if reg is not None:
        taken = reg.commands.get(name) if kind == "command" else reg.components[kind].get(name)
        if taken is not None:
            raise ZooError(f"the {kind} name {name!r} is already registered by {taken.dist} {taken.version}; "
                           f"two plugins cannot register the same name. Choose another name.")
        if v["model"] and v["model"] in reg.models:
            raise ZooError(f"the named model {v['model']!r} the package would add is already registered by "
                           f"{reg.models[v['model']].origin}. Choose another name (--model).")
    root = Path(parent) / v["dist"]
    if root.exists():
        raise ZooError(f"{str(root)!r} already exists; remove it, or run `zoo new-plugin` in another folder.")
    rendered = {path: render(tmpl, v) for path, tmpl in layout(v).items()}
    for path, text in rendered.items():
        out = root / path
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    return root
