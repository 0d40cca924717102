"""``zoo new-plugin``: write a plugin package to start from (:mod:`zoo.plugin.scaffold`)."""
from __future__ import annotations

from ..plugin.scaffold import SCAFFOLD_KINDS, layout, names_for, new_plugin
from ..spec.catalog import get_registry


def cmd_new_plugin(args):
    v = names_for(args.name, args.kind)
    root = new_plugin(args.name, args.kind, ".", get_registry())
    print(f"wrote {root}/ : the {v['kind']} {v['name']!r} ({v['package']}.{v['module']}.{v['cls']}), "
          f"the model {v['model']!r}, and its tests")
    for path in layout(v):
        print(f"  {root / path}")
    print(f"next:\n  cd {root}\n  pip install -e '.[test]'\n  zoo plugins          # lists {v['kind']} "
          f"{v['name']} from {v['dist']} 0.1.0\n  python -m pytest     # the conformance kit on it")


def add_cli(sub):
    s = sub.add_parser("new-plugin", help="write a plugin package that registers a new component",
                       description="Write, in the current directory, a pip-installable package zoo-NAME "
                                   "that registers the component NAME, a named model using it, and a "
                                   "test running the conformance kit on it. See docs/plugins.md.")
    s.add_argument("name", help="the component's name, e.g. relu2 (the package is zoo-NAME)")
    s.add_argument("--kind", required=True, choices=SCAFFOLD_KINDS, help="which kind of component")
    s.set_defaults(fn=cmd_new_plugin)
