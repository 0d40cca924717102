"""``zoo new-plugin``: write a plugin package to start from (:mod:`zoo.plugin.scaffold`)."""
from __future__ import annotations

from ..plugin.scaffold import TEMPLATE_KINDS, layout, names_for, new_plugin
from ..spec.catalog import get_registry


def cmd_new_plugin(args):
    v = names_for(args.name, args.kind, args.package, args.model)
    root = new_plugin(args.name, args.kind, ".", get_registry(), args.package, args.model)
    if v["kind"] == "command":
        print(f"wrote {root}/ : the command `zoo {v['name']}` ({v['package']}.{v['module']}.run), and its tests")
    else:
        print(f"wrote {root}/ : the {v['kind']} {v['name']!r} ({v['package']}.{v['module']}.{v['cls']}), "
              f"the model {v['model']!r}, and its tests")
    for path in layout(v):
        print(f"  {root / path}")
    listed = f"command `zoo {v['name']}`" if v["kind"] == "command" else f"{v['kind']} {v['name']}"
    print(f"next:\n  cd {root}\n  pip install -e '.[test]'\n  zoo plugins          # lists {listed} "
          f"from {v['dist']} 0.1.0\n  python -m pytest     # its tests" + ("" if v["kind"] == "command" else
                                                                          ", the conformance kit among them"))


def add_cli(sub):
    s = sub.add_parser("new-plugin", help="write a plugin package that registers a new component",
                       description="Write, in the current directory, a pip-installable package (default "
                                   "zoo-NAME) that registers the component NAME, a named model using it, and "
                                   "a test running the conformance kit on it; or, with --kind command, the "
                                   "command `zoo NAME` and its tests. See docs/plugins.md.")
    s.add_argument("name", help="the component's (or command's) name, e.g. relu2")
    s.add_argument("--kind", required=True, choices=TEMPLATE_KINDS, help="which kind of component, or command")
    s.add_argument("--package", metavar="DIST", help="the distribution's name (default zoo-NAME); its import "
                                                     "package is derived from it (zoo-my-stuff: zoo_my_stuff)")
    s.add_argument("--model", metavar="MODEL", help="the named model the package adds (default gpt2-NAME); not "
                                                    "for --kind command")
    s.set_defaults(fn=cmd_new_plugin)
