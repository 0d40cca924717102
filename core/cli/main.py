"""The ``zoo`` command. Errors a user can cause print one paragraph and exit with code 2.

Each command group lives in its own module with ``add_cli(subparsers)``; they import torch and the
heavy parts of the zoo inside the command functions, so that ``zoo --help`` stays fast.

Packages add commands through the hook ``register_commands`` (plugin API 1.1). Discovering plugins
imports them (and torch with the built-in ones: seconds), so the parser gets them only when the
command line names a command that is not built in; ``zoo --help`` lists the built-in commands and
points at ``zoo plugins``, which lists the others."""
from __future__ import annotations

import argparse
import os
import sys
import warnings

from ..errors import ZooError, ZooWarning
from ..plugin.registry import BUILTIN_COMMANDS, PluginWarning
from ..spec.catalog import configure, get_registry
from ..version import PLUGIN_API_VERSION, __version__
from . import bench, data, finetune, generate, hf, models, plugin, train

COMMAND_GROUPS = (models, train, data, generate, bench, plugin, hf, finetune)


EPILOG = ("Installed packages may add commands (plugin API 1.1): `zoo plugins` lists them, "
          "`zoo COMMAND --help` describes one.")


def build_parser(plugin_commands=()):
    """The ``zoo`` parser: the built-in commands, and ``plugin_commands``
    (:class:`zoo.plugin.registry.Command`) after them."""
    p = argparse.ArgumentParser(prog="zoo", description="A plugin-based zoo of LLM components.", epilog=EPILOG)
    p.add_argument("--strict", action="store_true", help="treat plugin load failures as errors (exit 2)")
    p.add_argument("--manifest", action="append", default=[], metavar="FILE",
                   help="an extra zoo.json-style manifest of your own models (also: ZOO_MANIFEST)")
    p.add_argument("--version", action="version", version=f"zoo {__version__} (plugin API {PLUGIN_API_VERSION})")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.add_cli(sub)
    for cmd in plugin_commands:
        add_plugin_command(sub, cmd)
    return p


def add_plugin_command(sub, cmd):
    s = sub.add_parser(cmd.name, help=f"{cmd.help} [from {cmd.dist}]", description=cmd.help)
    cmd.add_arguments(s)  # it ran once already, on a scratch parser, when the plugins loaded
    s.set_defaults(fn=lambda args, _run=cmd.run: _run(args))


def _global_options(argv):
    """(the zoo's own options, the first word that names a command or None), read before the parser
    exists: whether a command from a package is asked for decides whether plugins are discovered."""
    g = argparse.ArgumentParser(add_help=False)
    g.add_argument("--strict", action="store_true")
    g.add_argument("--manifest", action="append", default=[])
    opts, rest = g.parse_known_args(argv)
    return opts, next((a for a in rest if not a.startswith("-")), None)


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
    argv = sys.argv[1:] if argv is None else list(argv)
    with warnings.catch_warnings():  # the zoo's own warnings, all through the command, as one line each
        warnings.simplefilter("always", PluginWarning)
        warnings.simplefilter("always", ZooWarning)
        warnings.showwarning = _show_warning(warnings.showwarning)
        try:
            commands = ()
            opts, first = _global_options(argv)
            if first is not None and first not in BUILTIN_COMMANDS:  # perhaps a package's command
                configure(opts.manifest)
                commands = get_registry(strict=opts.strict).commands.values()
            parser = build_parser(commands)
            args = parser.parse_args(argv)
            if not getattr(args, "fn", None):
                parser.print_help()
                return 2
            configure(args.manifest, reload=first is None or first in BUILTIN_COMMANDS)
            get_registry(strict=args.strict)
            return args.fn(args) or 0
        except ZooError as e:
            print(f"zoo: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("zoo: interrupted", file=sys.stderr)
            return 130
