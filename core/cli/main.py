"""The ``zoo`` command. Errors a user can cause print one paragraph and exit with code 2.

Each command group lives in its own module with ``add_cli(subparsers)``; they import torch and the
heavy parts of the zoo inside the command functions, so that ``zoo --help`` stays fast."""
from __future__ import annotations

import argparse
import sys
import warnings

from ..errors import ZooError, ZooWarning
from ..plugin.registry import PluginWarning
from ..spec.catalog import configure, get_registry
from ..version import PLUGIN_API_VERSION, __version__
from . import bench, data, finetune, generate, hf, models, plugin, train

COMMAND_GROUPS = (models, train, data, generate, bench, plugin, hf, finetune)


def build_parser():
    p = argparse.ArgumentParser(prog="zoo", description="A plugin-based zoo of LLM components.")
    p.add_argument("--strict", action="store_true", help="treat plugin load failures as errors (exit 2)")
    p.add_argument("--manifest", action="append", default=[], metavar="FILE",
                   help="an extra zoo.json-style manifest of your own models (also: ZOO_MANIFEST)")
    p.add_argument("--version", action="version", version=f"zoo {__version__} (plugin API {PLUGIN_API_VERSION})")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.add_cli(sub)
    return p


def _show_warning(other):
    """The zoo's own warnings as one line, ``zoo: warning: ...``; anything else as Python shows it."""
    def show(message, category, *args, **kwargs):
        if issubclass(category, (PluginWarning, ZooWarning)):
            print(f"zoo: warning: {message}", file=sys.stderr)
        else:
            other(message, category, *args, **kwargs)
    return show


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "fn", None):
        parser.print_help()
        return 2
    try:
        configure(args.manifest)
        with warnings.catch_warnings():
            warnings.simplefilter("always", PluginWarning)
            warnings.simplefilter("always", ZooWarning)
            warnings.showwarning = _show_warning(warnings.showwarning)
            get_registry(strict=args.strict)
            return args.fn(args) or 0
    except ZooError as e:
        print(f"zoo: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zoo: interrupted", file=sys.stderr)
        return 130
