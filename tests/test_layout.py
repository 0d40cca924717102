"""The shape of core/: packages in layers, imports in one direction, no cycles, and the facade
(``import zoo``) used by nobody inside the zoo.

Every import in core/ is parsed, those inside functions included. Layers, highest first:

    facade     zoo (core/__init__.py), zoo.components, zoo.hookspecs, zoo.__main__
    cli        zoo.cli
    testing    zoo.testing (the kit builds, trains and generates)
    top        zoo.train, zoo.generate, zoo.perf, zoo.interop
    middle     zoo.nn, zoo.spec, zoo.io, zoo.tokenizers, zoo.data
    plugin     zoo.plugin
    base       zoo.errors, zoo.version

A module imports only from lower layers, or from its own layer without a cycle between packages.
Third-party imports are not looked at (optional ones are imported where they are used).
"""
import ast
import sys
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "core"

LAYERS = [  # lowest first
    {"errors", "version"},
    {"plugin"},
    {"nn", "spec", "io", "tokenizers", "data"},
    {"train", "generate", "perf", "interop"},
    {"testing"},
    {"cli"},
    {"", "components", "hookspecs", "__main__"},  # the facade and the public modules of the plugin API
]
FACADE = "zoo"


def module_name(path: Path) -> str:
    parts = ("zoo",) + path.relative_to(CORE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict:
    return {module_name(p): p for p in sorted(CORE.rglob("*.py"))}


def is_package(name: str, mods: dict) -> bool:
    return mods[name].name == "__init__.py"


def imports(name: str, mods: dict):
    """(imported zoo module, line, inside a function) for every import of a zoo module in ``name``."""
    tree = ast.parse(mods[name].read_text(encoding="utf-8"))
    package = name if is_package(name, mods) else name.rpartition(".")[0]
    out = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            fn = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, fn) for a in child.names if a.name.split(".")[0] == "zoo")
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[:len(base) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.split(".")[0] != "zoo":
                    continue
                for a in child.names:  # `from . import x` may name a submodule
                    sub = f"{target}.{a.name}"
                    out.append((sub if sub in mods else target, child.lineno, fn))
            visit(child, fn)

    visit(tree, False)
    return out


def layer_of(name: str) -> int:
    top = name.split(".")[1] if "." in name else ""
    for i, layer in enumerate(LAYERS):
        if top in layer:
            return i
    raise AssertionError(f"{name}: core/{top} is in no layer; add it to LAYERS in {Path(__file__).name}")


def package_of(name: str) -> str:
    return ".".join(name.split(".")[:2])


def graph():
    mods = modules()
    return mods, {m: imports(m, mods) for m in mods}


def test_every_module_is_in_a_layer():
    for m in modules():
        layer_of(m)


def test_imports_go_down_the_layers():
    mods, g = graph()
    bad = [f"{m}:{line} imports {t} ({'/'.join(sorted(LAYERS[layer_of(t)]))} is above "
           f"{'/'.join(sorted(LAYERS[layer_of(m)]))})"
           for m, edges in g.items() for t, line, _ in edges if t in mods and layer_of(t) > layer_of(m)]
    assert not bad, "\n".join(bad)


def test_nothing_inside_imports_the_facade():
    mods, g = graph()
    bad = [f"{m}:{line} imports the facade `zoo`{' inside a function' if fn else ''}"
           for m, edges in g.items() for t, line, fn in edges if t == FACADE and m != "zoo.__main__"]
    assert not bad, "\n".join(bad)
    inside = [f"{m}:{line} imports zoo.{t.split('.')[1]}, a public module for plugins; import what it re-exports "
              f"from its home" for m, edges in g.items() for t, line, _ in edges
              if t in ("zoo.components", "zoo.hookspecs")]
    assert not inside, "\n".join(inside)


def _cycles(nodes, edges):
    """The strongly connected components with more than one node, or a self-loop (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges.get(v, ()):
                out.append(sorted(comp))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(nodes) + 100))
    try:
        for v in nodes:
            if v not in index:
                strong(v)
    finally:
        sys.setrecursionlimit(limit)
    return out


def test_no_import_cycle_between_modules():
    mods, g = graph()
    # a package's __init__ importing its own submodules is how it re-exports them, not a cycle: the
    # submodule importing its package back would be, and that edge is kept
    edges = {m: {t for t, _, _ in es if t in mods and not (is_package(m, mods) and t.startswith(m + "."))}
             for m, es in g.items()}
    assert not _cycles(list(mods), edges)


def test_no_import_cycle_between_packages_of_a_layer():
    mods, g = graph()
    edges = {}
    for m, es in g.items():
        for t, _, _ in es:
            a, b = package_of(m), package_of(t)
            if t in mods and a != b and layer_of(m) == layer_of(t):
                edges.setdefault(a, set()).add(b)
    cycles = _cycles(sorted({package_of(m) for m in mods}), edges)
    assert not cycles, f"packages of one layer import each other: {cycles}"


def test_core_never_imports_a_plugin_module():
    mods, _ = graph()
    bad = []
    for m, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            bad += [f"{m}: {n}" for n in names if n.split(".")[0] == "zoo_plugins"]
    assert not bad, bad


@pytest.mark.parametrize("case", ["upward", "cycle", "facade"])
def test_the_checks_catch_what_they_look_for(case, tmp_path, monkeypatch):
    """The rules above fail on a tree that breaks them (so they cannot pass by looking at nothing)."""
    (tmp_path / "plugin").mkdir()
    (tmp_path / "nn").mkdir()
    for d in ("", "plugin", "nn"):
        (tmp_path / d / "__init__.py").write_text("")
    if case == "upward":
        (tmp_path / "plugin" / "a.py").write_text("def f():\n    from ..nn import b\n")
        (tmp_path / "nn" / "b.py").write_text("")
        check = test_imports_go_down_the_layers
    elif case == "cycle":
        (tmp_path / "nn" / "a.py").write_text("from . import b\n")
        (tmp_path / "nn" / "b.py").write_text("def f():\n    from .a import x\n")
        check = test_no_import_cycle_between_modules
    else:
        (tmp_path / "nn" / "a.py").write_text("def f():\n    import zoo\n    return zoo\n")
        check = test_nothing_inside_imports_the_facade
    monkeypatch.setattr(sys.modules[__name__], "CORE", tmp_path)
    with pytest.raises(AssertionError):
        check()
