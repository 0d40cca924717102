"""Commands from packages (hook register_commands, plugin API 1.1): collected in isolation like the
other hooks, added to `zoo`'s parser when the command line names one, their ZooErrors one paragraph
and exit 2; and the plugin API version: 1.1 now, 1.0 and undeclared still load, 1.2 is refused."""
import argparse
import importlib
import sys
import types
from pathlib import Path

import pytest
import zoo
from zoo.cli import main
from zoo.cli.main import build_parser
from zoo.hookspecs import hookimpl
from zoo.plugin.registry import BUILTIN_COMMANDS, PluginWarning
from zoo.spec import catalog

TOYS = Path(__file__).parent / "plugins" / "zoo-toys" / "src"


@pytest.fixture
def toy_command(monkeypatch):
    monkeypatch.syspath_prepend(str(TOYS))
    return importlib.import_module("zoo_toys.command")


def _module(name, api=None, **hooks):
    m = types.ModuleType(name)
    if api is not None:
        m.ZOO_API = api
    for k, v in hooks.items():
        setattr(m, k, hookimpl(v))
    return m


def _commands(*specs):
    """A plugin module registering commands (name, help, add_arguments, run)."""
    def register_commands(register):
        for s in specs:
            register(*s)
    return _module("cmds", register_commands=register_commands)


def _noop_args(parser):
    pass


def cli(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse: --help, or a usage error
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


# ---- the registry --------------------------------------------------------------------------------

def test_the_toy_command_is_collected_with_its_distribution(toy_command):
    reg = catalog.load_registry(extra_plugins=[(toy_command, "zoo-toys")])
    assert reg.problems == []
    c = reg.commands["toys-hello"]
    assert (c.dist, c.help) == ("zoo-toys", "print a greeting (a toy command of zoo-toys)")
    assert reg.api_versions["zoo-toys"] == "1.1"


@pytest.mark.parametrize("spec, why", [
    (("train", "mine", _noop_args, print), "one of the zoo's own commands"),
    (("Bad Name", "mine", _noop_args, print), "is not lower-case words"),
    (("ok-name", "mine", "not callable", print), "must be callables"),
    (("ok-name", "mine", lambda p: p.add_argument("--x", nonsense=1), print), "add_arguments(parser) raised TypeError"),
    (("ok-name", "mine", lambda p: sys.exit(3), print), "add_arguments(parser) raised SystemExit"),
])
def test_a_bad_command_is_its_distributions_problem(spec, why):
    good = ("fine-cmd", "fine", _noop_args, lambda a: 0)
    reg = catalog.load_registry(extra_plugins=[(_commands(spec), "zoo-bad"), (_commands(good), "zoo-good")])
    with pytest.warns(PluginWarning, match=r"'zoo-bad'"):
        reg.warn_problems()
    assert [d for d, _ in reg.problems] == ["zoo-bad"] and why in reg.problems[0][1], reg.problems
    assert list(reg.commands) == ["fine-cmd"] and reg.components["attention"]  # the rest works


def test_a_clash_between_packages_is_the_newcomers_problem():
    first, second = ("same", "first", _noop_args, lambda a: 0), ("same", "second", _noop_args, lambda a: 0)
    reg = catalog.load_registry(extra_plugins=[(_commands(first), "zoo-a"), (_commands(second), "zoo-b")])
    assert reg.commands["same"].dist == "zoo-a"
    assert reg.problems == [("zoo-b", "register_commands: command 'same' is already registered by 'zoo-a'")]


def test_a_raising_hook_is_isolated():
    def register_commands(register):
        register("half", "registered before the error", _noop_args, lambda a: 0)
        raise RuntimeError("boom")
    reg = catalog.load_registry(extra_plugins=[(_module("m", register_commands=register_commands), "zoo-x")])
    assert "half" not in reg.commands and "boom" in reg.problems[0][1]


def test_builtin_commands_are_the_clis():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == BUILTIN_COMMANDS


# ---- the CLI -------------------------------------------------------------------------------------

def test_the_toy_command_runs(with_plugins, toy_command, capsys):
    with_plugins((toy_command, "zoo-toys"))
    code, out, err = cli(capsys, "toys-hello", "--name", "world", "--times", "2")
    assert code == 0 and out == "hello, world, from zoo-toys\n" * 2, err
    code, out, err = cli(capsys, "--strict", "toys-hello")
    assert code == 0 and out == "hello, zoo, from zoo-toys\n"


def test_its_zoo_error_is_one_paragraph_and_exit_2(with_plugins, toy_command, capsys):
    with_plugins((toy_command, "zoo-toys"))
    code, _, err = cli(capsys, "toys-hello", "--name", " ")
    assert code == 2 and err == "zoo: error: --name is empty; give a name to greet, e.g. --name world.\n"


def test_its_help_and_usage_errors(with_plugins, toy_command, capsys):
    with_plugins((toy_command, "zoo-toys"))
    code, out, _ = cli(capsys, "toys-hello", "--help")
    assert code == 0 and "--name NAME" in out and "print a greeting" in out
    code, _, err = cli(capsys, "toys-hello", "--times", "many")
    assert code == 2 and "invalid int value" in err
    code, _, err = cli(capsys, "no-such-command")
    assert code == 2 and "invalid choice: 'no-such-command'" in err


def test_plugins_lists_commands_with_their_distribution(with_plugins, toy_command, capsys):
    import json
    with_plugins((toy_command, "zoo-toys"))
    code, out, _ = cli(capsys, "plugins")
    assert code == 0 and "command `zoo toys-hello` from zoo-toys 0: print a greeting" in out
    code, out, _ = cli(capsys, "plugins", "--json")
    data = json.loads(out)
    assert {"name": "toys-hello", "help": "print a greeting (a toy command of zoo-toys)", "dist": "zoo-toys",
            "version": "0"} in data["commands"]


def test_a_broken_command_does_not_take_the_cli_down(with_plugins, capsys):
    with_plugins((_commands(("train", "hijack", _noop_args, lambda a: 0)), "zoo-bad"))
    code, _, err = cli(capsys, "something-else")
    assert code == 2 and "zoo-bad" in err and "one of the zoo's own commands" in err
    code, _, err = cli(capsys, "--strict", "something-else")
    assert code == 2 and "plugin problems (--strict)" in err and "Traceback" not in err


def test_builtin_commands_and_help_do_not_discover_plugins(monkeypatch, capsys, fresh_registry):
    """Discovery imports every plugin (and torch): only a command from a package needs it before parsing."""
    def refuse():
        raise AssertionError("plugins were discovered")
    monkeypatch.setattr(catalog, "load_registry", refuse)
    for argv in (["--help"], ["-h"], ["train", "--help"], ["--manifest", "x.json", "new-plugin", "--help"], []):
        code, out, _ = cli(capsys, *argv)
        assert code in (0, 2) and "usage: zoo" in out, argv
    code, out, _ = cli(capsys, "--help")
    assert "zoo plugins" in out  # where the commands of packages are listed


# ---- the plugin API version ----------------------------------------------------------------------

@pytest.mark.parametrize("api, loads", [(None, True), ("1.0", True), ("1.1", True), ("1.2", False), ("2.0", False)])
def test_api_versions(api, loads):
    from zoo_plugins.ffn.mlp import MLP, PARAMS

    def register_ffn(register):
        register("versioned", MLP, PARAMS, {})
    reg = catalog.load_registry(extra_plugins=[(_module("v", api, register_ffn=register_ffn), "zoo-v")])
    assert ("versioned" in reg.components["ffn"]) is loads
    if not loads:
        assert "this zoo provides API 1.1" in reg.problems[0][1]
    assert zoo.PLUGIN_API_VERSION == "1.1"
