"""Plugin discovery: built-ins come through entry points; failures are isolated per distribution."""
import importlib.metadata as md
import sys
import warnings

import pytest

import zoo
from zoo.errors import PluginError
from zoo.hookspecs import hookimpl
from zoo.plugin.registry import PluginWarning
from zoo.spec.catalog import load_registry
from zoo_plugins.ffn.mlp import MLP, PARAMS as MLP_PARAMS


def test_builtins_are_entry_points_of_the_zoo_group():
    eps = [ep for ep in md.entry_points(group="zoo") if ep.dist.name == "zoo"]
    assert {ep.value for ep in eps} >= {"zoo_plugins.attention.gqa", "zoo_plugins.posenc.rope", "zoo_plugins.models"}
    reg = load_registry()
    assert reg.problems == []
    for comp in reg.list_components():
        assert comp.dist == "zoo" and comp.version == zoo.__version__


def test_without_entry_points_nothing_is_registered():
    # the core knows no component by name: everything arrives through the hooks
    reg = load_registry(use_entry_points=False)
    assert all(not v for v in reg.components.values()) and not reg.models


def test_required_components_are_registered():
    reg = zoo.get_registry()
    names = {(c.kind, c.name) for c in reg.list_components()}
    assert {("attention", n) for n in ("mha", "mqa", "gqa")} <= names
    assert {("posenc", n) for n in ("learned", "sinusoidal", "rope", "alibi", "none")} <= names
    assert {("ffn", n) for n in ("mlp", "swiglu")} <= names
    for comp in reg.list_components():
        if comp.dist == "zoo":  # each built-in module cites its paper
            assert "arXiv:" in (sys.modules[comp.cls.__module__].__doc__ or ""), comp.name


class Raising:
    @hookimpl
    def register_ffn(register):
        register("never-seen", MLP, MLP_PARAMS, {})
        raise RuntimeError("boom")


class BadSchema:
    @hookimpl
    def register_ffn(register):
        register("bad-schema", MLP, {"type": "object", "properties": {"x": {"type": "nonsense"}}}, {})
        register("fine", MLP, MLP_PARAMS, {"token_wise": True})


class Clashing:
    @hookimpl
    def register_attention(register):
        from zoo_plugins.attention.gqa import GroupedQueryAttention, GQA_PARAMS
        register("gqa", GroupedQueryAttention, GQA_PARAMS, {})


class WrongHookArgs:
    @hookimpl
    def register_ffn(reg, extra):  # not the hook's signature
        pass


def test_failing_plugins_are_isolated_and_named():
    reg = load_registry(extra_plugins=[(Raising, "raising-dist"), (BadSchema, "schema-dist"),
                                       (Clashing, "clash-dist"), (WrongHookArgs, "args-dist")])
    problems = dict(reg.problems)
    assert "raised RuntimeError: boom" in problems["raising-dist"]
    assert "never-seen" not in reg.components["ffn"]  # a raising hook registers nothing
    assert "invalid params schema" in problems["schema-dist"]
    assert "fine" in reg.components["ffn"] and "bad-schema" not in reg.components["ffn"]
    assert "already registered by 'zoo'" in problems["clash-dist"]
    assert reg.components["attention"]["gqa"].dist == "zoo"
    assert "args-dist" in problems
    # everything else keeps working
    assert {"mha", "gqa", "mqa"} <= set(reg.components["attention"]) and "gpt2" in reg.models


def test_problems_become_one_warning_per_distribution_or_an_error_when_strict():
    reg = load_registry(extra_plugins=[(BadSchema, "schema-dist"), (Clashing, "clash-dist")])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        reg.warn_problems()
    msgs = [str(x.message) for x in w if issubclass(x.category, PluginWarning)]
    assert len(msgs) == 2 and any("'schema-dist'" in m for m in msgs)
    with pytest.raises(PluginError, match="clash-dist"):
        reg.warn_problems(strict=True)


def test_list_models_pattern():
    assert zoo.list_models("gpt2-*") == sorted(n for n in zoo.list_models() if n.startswith("gpt2-"))
    assert zoo.list_models("nothing*") == []
