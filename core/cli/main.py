"""The ``zoo`` command. Errors a user can cause print one paragraph and exit with code 2.

Each command group lives in its own module with ``add_cli(subparsers)``; they import torch and the
heavy parts of the zoo inside the command functions, so that ``zoo --help`` stays fast."""
from __future__ import annotations

import argparse
import os
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


def main(argv=None) -> int:
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()  # a reader that went away shows here, not as a traceback at exit
    except BrokenPipeError:  # e.g. `zoo plugins | head -1`: the reader has all it wanted
        if not _stdout_is_broken():
            raise
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # what is still buffered goes nowhere, silently
        return 0


def _stdout_is_broken() -> bool:
    """Whether stdout is a pipe whose reader has gone (rather than some other pipe of a command)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    try:
        import select
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError):  # no poll() on this platform: take the error to be stdout's
        return True


def _show_warning(original):
    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, (ZooWarning, PluginWarning)):
            print(f"zoo: warning: {message}", file=sys.stderr)
        else:
            original(message, category, filename, lineno, file, line)
    return show


def _main(argv) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "fn", None):
        parser.print_help()
        return 2
    with warnings.catch_warnings():  # the zoo's own warnings, all through the command, as one line each
        warnings.simplefilter("always", PluginWarning)
        warnings.simplefilter("always", ZooWarning)
        warnings.showwarning = _show_warning(warnings.showwarning)
        try:
            configure(args.manifest)
            get_registry(strict=args.strict)
            return args.fn(args) or 0
        except ZooError as e:
            print(f"zoo: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("zoo: interrupted", file=sys.stderr)
            return 130
