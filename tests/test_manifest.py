"""Manifest validation: each pass, and that every error names the model, the path and the fix."""
import json

import pytest

import zoo
from zoo.errors import ManifestError
from zoo.hookspecs import hookimpl
from zoo.spec.manifest import parse_override
from zoo.spec.resolve import resolve_spec
from zoo.spec.catalog import load_registry


def resolve(name, preset="tiny", **ov):
    return zoo.resolve(name, preset, **ov)


def test_builtin_manifest_is_valid_against_the_schema():
    from jsonschema import Draft202012Validator
    from zoo.spec.manifest import manifest_schema
    from zoo_plugins.models import builtin_manifest
    Draft202012Validator.check_schema(manifest_schema())
    errors = list(Draft202012Validator(manifest_schema()).iter_errors(builtin_manifest()))
    assert errors == []


def test_extends_inherits_and_overrides():
    spec = resolve("gpt2-rope-gqa")
    assert spec["norm"] == "layernorm" and spec["ffn"]["name"] == "mlp"  # from gpt2
    assert spec["attention"] == {"name": "gqa", "params": {"n_kv_heads": 2, "qk_norm": False, "window": None}}
    assert spec["posenc"]["params"]["theta"] == 10000  # from the entry
    assert spec["posenc"]["params"]["rotary_fraction"] == 1.0  # the schema's default, filled in


def test_unknown_model_suggests_the_closest():
    with pytest.raises(ManifestError, match=r"unknown model 'gtp2'.*Did you mean 'gpt2'"):
        resolve("gtp2")


def test_unknown_component_lists_registered_and_closest(tmp_path, fresh_registry):
    f = tmp_path / "m.json"
    f.write_text(json.dumps({"models": {"mine": {"extends": "gpt2", "attention": {"name": "gqaa"}}}}))
    zoo.configure([str(f)])
    with pytest.raises(ManifestError) as e:
        resolve("mine")
    msg = str(e.value)
    assert "model 'mine'" in msg and "attention.name" in msg and "Did you mean 'gqa'" in msg
    registered = ", ".join(sorted(zoo.get_registry().components["attention"]))
    assert f"Registered attention components: {registered}." in msg


def test_bad_params_name_the_json_path(tmp_path, fresh_registry):
    f = tmp_path / "m.json"
    f.write_text(json.dumps({"models": {"mine": {"extends": "gpt2", "posenc": {"name": "rope", "params": {"theta": -1}}}}}))
    zoo.configure([str(f)])
    with pytest.raises(ManifestError, match=r"model 'mine'.*posenc\.params\.theta.*-1"):
        resolve("mine")
    with pytest.raises(ManifestError, match=r"posenc\.params.*'thetta'"):
        resolve("gpt2-rope-gqa", **{"posenc.params.thetta": 5})


def test_heads_must_be_divisible_by_kv_heads():
    with pytest.raises(ManifestError, match=r"gpt2-rope-gqa.*attention\.params.*n_kv_heads=3 does not divide n_heads=4.*\[1, 2, 4\]"):
        resolve("gpt2-rope-gqa", **{"attention.params.n_kv_heads": 3})
    with pytest.raises(ManifestError, match=r"d_model=30 is not divisible by n_heads=4"):
        resolve("gpt2", d_model=30)


def test_learned_posenc_must_cover_the_context():
    with pytest.raises(ManifestError, match=r"max_len=16 is shorter than the context length block_size=32"):
        resolve("gpt2", **{"posenc.params.max_len": 16})
    assert resolve("gpt2", **{"posenc.params.max_len": 64})["posenc"]["params"]["max_len"] == 64


class RotaryOnly:
    """A plugin whose attention accepts only rotary encodings."""

    @hookimpl
    def register_attention(register):
        from zoo_plugins.attention.gqa import GroupedQueryAttention, GQA_PARAMS
        register("rot-only", GroupedQueryAttention, GQA_PARAMS, {"posenc": ["rotary"]})


def test_posenc_kind_must_be_accepted_by_the_attention():
    reg = load_registry(extra_plugins=[(RotaryOnly, "rot-plugin")])
    ok = resolve_spec(reg, "gpt2-rope-gqa", "tiny", {"attention.name": "rot-only"})
    assert ok["attention"]["name"] == "rot-only"
    with pytest.raises(ManifestError, match=r"attention 'rot-only' does not accept absolute encodings like 'learned'; use one of \['rope'\]"):
        resolve_spec(reg, "gpt2", "tiny", {"attention": {"name": "rot-only"}})


def _toy_registry(**tags):
    """The registry plus the toy EMA mixer of tests/plugins/zoo-toys (tags: its tags replaced)."""
    import sys
    import types
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent / "plugins" / "zoo-toys" / "src"))
    from zoo_toys import ema

    @hookimpl
    def register_attention(register):
        register("ema", ema.EMAMixer, ema.PARAMS, dict(ema.TAGS, **tags))
    return load_registry(extra_plugins=[(types.SimpleNamespace(register_attention=register_attention,
                                                                register_models=ema.register_models), "zoo-toys")])


def test_a_posenc_no_layer_uses_is_refused_with_the_choices():
    """rope on a model whose only mixer is the toy EMA (tag posenc ["absolute", "none"]): the valid
    encodings are named; the same when the mixer runs with rope but ignores it (posenc_ignores); a
    layer pattern that gives some layers a mixer using rope makes it valid."""
    reg = _toy_registry()
    with pytest.raises(ManifestError, match=r"at posenc.name: attention 'ema' does not accept rotary encodings like "
                                            r"'rope'; use one of \['learned', 'none', 'sinusoidal'\]"):
        resolve_spec(reg, "gpt2-ema", "tiny", {"posenc": {"name": "rope"}})
    reg = _toy_registry(posenc=["none"], posenc_ignores=["rotary", "bias"])
    with pytest.raises(ManifestError, match=r"posenc 'rope' is a rotary encoding that no layer's mixer uses \(attention "
                                            r"'ema' at all 4 layers: .*Choose a posenc they work with \(e.g. \['none'\]\)"):
        resolve_spec(reg, "gpt2-ema", "tiny", {"posenc": {"name": "rope"}, "n_layers": 4})
    hybrid = resolve_spec(reg, "gpt2-ema", "tiny", {"posenc": {"name": "rope"}, "n_layers": 4,
                                                    "layers": [{"from": 2, "attention": {"name": "mha"}}]})
    assert hybrid["layers"][0]["attention"]["name"] == "mha"
    with pytest.raises(ManifestError, match=r"at posenc.name: attention 'ema' does not accept absolute encodings like "
                                            r"'learned'; use one of \['none'\]"):
        resolve_spec(reg, "gpt2-ema", "tiny", {"posenc": {"name": "learned"}})


def test_a_layer_pattern_names_the_layers_of_an_unknown_or_unfit_mixer():
    reg = _toy_registry()
    with pytest.raises(ManifestError, match=r"at layers\[1\].attention.name \(layers 1, 3, 5\): unknown attention "
                                            r"'mamba9'.*Registered attention components: ema, "):
        resolve_spec(reg, "gpt2-ema", "tiny", {"n_layers": 6, "layers": [
            {"from": 0, "every": 2, "attention": {"name": "mha"}}, {"from": 1, "every": 2, "attention": {"name": "mamba9"}}]})
    with pytest.raises(ManifestError, match=r"at layers\[0\].attention.name \(layers 2 to 9\): attention 'ema' does "
                                            r"not accept rotary encodings like 'rope'; use one of"):
        resolve_spec(reg, "gpt2-rope-gqa", "tiny", {"n_layers": 10, "layers": [{"from": 2, "attention": {"name": "ema"}}]})


def test_extends_cycles_and_unknown_parents(tmp_path, fresh_registry):
    f = tmp_path / "m.json"
    f.write_text(json.dumps({"models": {"a": {"extends": "b"}, "b": {"extends": "a"},
                                        "c": {"extends": "nothere"}}}))
    zoo.configure([str(f)])
    with pytest.raises(ManifestError, match=r"cycle: a -> b -> a"):
        resolve("a")
    with pytest.raises(ManifestError, match=r"model 'c': at extends: unknown model 'nothere'"):
        resolve("c")


def test_schema_errors_in_a_user_manifest_name_file_and_path(tmp_path, fresh_registry):
    f = tmp_path / "m.json"
    f.write_text(json.dumps({"models": {"mine": {"extends": "gpt2", "norm": "batchnorm"}}}))
    zoo.configure([str(f)])
    with pytest.raises(ManifestError, match=r"m\.json.*models\.mine\.norm.*'batchnorm'"):
        zoo.get_registry()
    f.write_text("{not json")
    with pytest.raises(ManifestError, match=r"not valid JSON: line 1"):
        zoo.get_registry()


def test_user_manifest_adds_models_and_clashes_loudly(tmp_path, fresh_registry):
    f = tmp_path / "m.json"
    f.write_text(json.dumps({"models": {"my-llama": {"extends": "llama", "ffn": {"name": "mlp"}}}}))
    zoo.configure([str(f)])
    assert "my-llama" in zoo.list_models("my-*")
    assert zoo.resolve("my-llama", "tiny")["ffn"]["name"] == "mlp"
    f.write_text(json.dumps({"models": {"gpt2": {"attention": {"name": "mqa"}}}}))
    zoo.configure([str(f)])
    with pytest.raises(ManifestError, match=r"'gpt2' is already defined by zoo .*Rename it, or use \"extends\""):
        zoo.get_registry()


def test_zoo_manifest_environment_variable(tmp_path, monkeypatch, fresh_registry):
    f = tmp_path / "m.json"
    f.write_text(json.dumps({"models": {"env-model": {"extends": "gpt2"}}}))
    monkeypatch.setenv("ZOO_MANIFEST", str(f))
    zoo.configure([])
    assert zoo.list_models("env-*") == ["env-model"]


def test_overrides_parse_and_reject_unknown_keys():
    assert parse_override("n_layers=4") == ("n_layers", 4)
    assert parse_override("attention.name=gqa") == ("attention.name", "gqa")
    assert parse_override('ffn={"name": "swiglu"}') == ("ffn", {"name": "swiglu"})
    with pytest.raises(ManifestError, match="malformed override 'n_layers'"):
        parse_override("n_layers")
    with pytest.raises(ManifestError, match=r"unknown override key 'n_layayers'.*Did you mean 'n_layers'"):
        resolve("gpt2", n_layayers=2)
    with pytest.raises(ManifestError, match=r"at n_layers: 'two' is not of type 'integer'"):
        resolve("gpt2", n_layers="two")


def test_unknown_preset():
    with pytest.raises(ManifestError, match=r"unknown preset 'tinyy'.*Did you mean 'tiny'"):
        resolve("gpt2", "tinyy")


def test_models_from_a_package_hook_are_validated():
    class Pkg:
        @hookimpl
        def register_models(register):
            register("pkg-good", {"extends": "gpt2", "ffn": {"name": "swiglu"}})
            register("pkg-bad", {"extends": "gpt2", "colour": "blue"})
            register("gpt2", {"attention": {"name": "mqa"}})

    reg = load_registry(extra_plugins=[(Pkg, "pkg-dist")])
    assert "pkg-good" in reg.models and "pkg-bad" not in reg.models
    assert reg.models["gpt2"].dist == "zoo"  # the built-in keeps its name
    reasons = " ".join(r for d, r in reg.problems if d == "pkg-dist")
    assert "'colour' was unexpected" in reasons and "already registered" in reasons
