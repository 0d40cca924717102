"""Transforms as a plugin kind: the spec's ``transforms``, the old ``lora`` key, what components
declare (replaceable Linears, stacked weights), which parameters train, and the toy transform of
tests/plugins/zoo-toys (``scale``) registered in-process as its package would register it."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import zoo
from zoo.components import linear_weight, replaceable_linears, stacked_params
from zoo.errors import ManifestError, ZooError
from zoo.io.checkpoint import load_checkpoint, save_checkpoint
from zoo.nn.transforms import apply_all, merge_transforms
from zoo.spec.legacy import upgrade_spec
from zoo.testing import check_transform_decoding, run_checks
from zoo_plugins.transform.lora import LoRA, LoRALinear

ROOT = Path(__file__).parent
TOYS = ROOT / "plugins" / "zoo-toys" / "src"
FIXTURES = ROOT / "fixtures" / "runs-aaa45bd"


@pytest.fixture
def toys(monkeypatch, fresh_registry):
    """The registry (zoo.get_registry()) with the toy transform of zoo-toys, as its entry point adds it."""
    monkeypatch.syspath_prepend(str(TOYS))
    import zoo_toys.scale
    from zoo.spec import catalog
    real = catalog.load_registry
    monkeypatch.setattr(catalog, "load_registry", lambda extra_plugins=(), use_entry_points=True: real(
        extra_plugins=[*extra_plugins, (zoo_toys.scale, "zoo-toys")], use_entry_points=use_entry_points))
    zoo.configure([])
    return zoo_toys.scale


def _with(name, *transforms, preset="tiny"):
    spec = zoo.resolve(name, preset)
    spec["transforms"] = [{"name": n, "params": p} for n, p in transforms]
    return spec


# ---- the toy, in-process ---------------------------------------------------------------------------

def test_the_toy_transform_registers_and_passes_the_kit(toys):
    reg = zoo.get_registry()
    comp = reg.get("transform", "scale")
    assert comp.dist == "zoo-toys" and not [p for p in reg.problems if p[0] == "zoo-toys"]
    results = run_checks(comp)
    assert {n for n, _, _ in results} == {"check_params_schema_valid", "check_transform_applies",
                                          "check_transform_cache_matches_full"}
    assert all(s == "passed" for _, s, _ in results), results


def test_a_spec_with_the_toy_builds_starts_as_the_plain_model_and_names_its_provider(toys, tmp_path):
    spec = zoo.spec.resolve.validate_spec(zoo.get_registry(), _with("llama", ("scale", {})), "test")
    assert spec["transforms"] == [{"name": "scale", "params": {"targets": ["attention", "ffn"]}}]
    torch.manual_seed(0)
    model = zoo.build_from_spec(spec).eval()
    plain = zoo.build_from_spec({k: v for k, v in spec.items() if k != "transforms"}).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.endswith(".gain")})
    idx = torch.randint(0, 96, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], plain(idx)[0], atol=0, rtol=0)  # gains start at 1
    assert all(p.requires_grad for p in model.parameters())  # the toy freezes nothing
    save_checkpoint(tmp_path / "ckpt.pt", {"model": model.state_dict(), "spec": spec, "tokenizer": None})
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert {"kind": "transform", "name": "scale", "dist": "zoo-toys", "version": "0"} in saved["providers"]
    assert saved["plugins"]["zoo-toys"] == "0"
    assert load_checkpoint(tmp_path / "ckpt.pt")["spec"]["transforms"][0]["name"] == "scale"


def test_transforms_apply_in_order_and_true_wins_for_trainable(toys):
    """LoRA then scale: LoRA freezes the base, the toy has no say on it, its gains train."""
    spec = _with("gpt2", ("lora", {"r": 2, "targets": ["attention"]}), ("scale", {"targets": ["ffn"]}))
    model = zoo.build_from_spec(zoo.spec.resolve.validate_spec(zoo.get_registry(), spec, "test"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".lora_A", ".lora_B")) for n in trainable)  # scale says nothing
    assert type(model.blocks[0].attn.qkv).__name__ == "LoRALinear"
    assert type(model.blocks[0].ffn.fc).__name__ == "ScaledLinear"
    # scale on top of LoRA's layers is refused by LoRA in the other order, naming the layer
    other = _with("gpt2", ("scale", {"targets": ["attention"]}), ("lora", {"r": 2, "targets": ["attention"]}))
    with pytest.raises(ZooError, match=r"blocks\.0\.attn\.qkv: it is a ScaledLinear"):
        zoo.build_from_spec(zoo.spec.resolve.validate_spec(zoo.get_registry(), other, "test"))


# ---- the kit fails what it should ------------------------------------------------------------------

class Nothing:
    """A transform that changes nothing, though it says it changes layers."""

    def __init__(self):
        pass

    def apply(self, model):
        pass


def test_the_kit_fails_a_transform_that_changes_nothing():
    from zoo.plugin.registry import Component
    comp = Component("transform", "nothing", Nothing, {"type": "object"}, {}, "test", "0")
    st = {n: (s, m) for n, s, m in run_checks(comp)}
    assert st["check_transform_cache_matches_full"][0] == "failed"
    assert "changed the logits of none" in st["check_transform_cache_matches_full"][1]


def test_the_kit_catches_a_component_that_bypasses_the_transform(monkeypatch):
    """MLA's absorbed decoding as it was: reading wkv_b.weight itself misses LoRA's update."""
    from zoo_plugins.attention import mla
    lora = zoo.get_registry().get("transform", "lora")
    assert check_transform_decoding(lora, "gpt2-mla") is True
    monkeypatch.setattr(mla, "linear_weight", lambda m: m.weight)
    with pytest.raises(AssertionError, match=r"model 'gpt2-mla' \(tiny\) with transform 'lora'.*vs full forward"):
        check_transform_decoding(lora, "gpt2-mla")


# ---- declarations: Linear layers and stacked weights -------------------------------------------------

def test_moe_declares_its_stacked_experts_and_lora_refuses_them_by_name():
    spec = zoo.resolve("mixtral", "tiny")
    model = zoo.build_from_spec(spec)
    assert stacked_params(model.blocks[0].ffn) == ("w_in", "w_out")  # no biases in mixtral
    assert [n for n, _ in replaceable_linears(model.blocks[0].ffn)] == ["router"]
    with pytest.raises(ZooError) as e:
        zoo.build_from_spec({**spec, "transforms": [{"name": "lora", "params": {"r": 2, "targets": ["ffn"]}}]})
    msg = str(e.value)
    assert "ffn 'blocks.0.ffn'" in msg and "w_in, w_out" in msg and '"stacked": "skip"' in msg
    # skip: the router (and shared experts) get adapters, the stacked weights none
    m = zoo.build_from_spec({**spec, "transforms": [{"name": "lora", "params": {
        "r": 2, "targets": ["ffn"], "stacked": "skip"}}]})
    assert isinstance(m.blocks[0].ffn.router, LoRALinear) and m.blocks[0].ffn.w_in.requires_grad is False


def test_a_component_declaring_its_linears_limits_what_a_transform_replaces():
    class Declared(nn.Module):
        zoo_linears = ("b",)

        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            block = nn.Module()
            block.attn, block.ffn = Declared(), nn.Sequential(nn.Linear(4, 4))
            self.blocks = nn.ModuleList([block])

    h = Holder()
    apply_all(h, [LoRA(r=1, targets=["attention", "ffn"])])
    assert type(h.blocks[0].attn.a) is nn.Linear and isinstance(h.blocks[0].attn.b, LoRALinear)
    assert isinstance(h.blocks[0].ffn[0], LoRALinear)
    with torch.no_grad():
        h.blocks[0].attn.b.lora_B.normal_()
    lin = h.blocks[0].attn.b
    x = torch.randn(3, 4)
    torch.testing.assert_close(lin(x), x @ linear_weight(lin).t() + lin.bias)
    assert linear_weight(h.blocks[0].attn.a) is h.blocks[0].attn.a.weight


# ---- the spec: validation and the old "lora" key ------------------------------------------------------

def test_transforms_are_validated_with_their_params_schema():
    reg = zoo.get_registry()
    with pytest.raises(ManifestError, match=r"at transforms\[0\]\.name: unknown transform 'lorra'.*'lora'"):
        zoo.spec.resolve.validate_spec(reg, _with("gpt2", ("lorra", {"r": 2})), "test")
    with pytest.raises(ManifestError, match=r"at transforms\[0\]\.params\.r: 0 is less than the minimum of 1"):
        zoo.spec.resolve.validate_spec(reg, _with("gpt2", ("lora", {"r": 0})), "test")
    with pytest.raises(ManifestError, match=r"at transforms.\[0\]: 'name' is a required property"):
        zoo.spec.resolve.check_spec_schema({**zoo.resolve("gpt2", "tiny"), "transforms": [{"params": {}}]}, "test")
    spec = zoo.spec.resolve.validate_spec(reg, _with("gpt2", ("lora", {"r": 2.0})), "test")
    assert spec["transforms"][0]["params"] == {"r": 2, "alpha": 16, "targets": ["attention"], "dropout": 0.0,
                                               "stacked": "refuse"}


def test_a_manifest_entry_may_list_transforms(tmp_path, fresh_registry):
    f = tmp_path / "m.json"
    f.write_text(json.dumps({"models": {"gpt2-adapted": {"extends": "gpt2", "transforms": [
        {"name": "lora", "params": {"r": 2, "targets": ["attention", "ffn"]}}]}}}))
    zoo.configure([f])
    model = zoo.build("gpt2-adapted", "tiny")
    assert isinstance(model.blocks[1].ffn.proj, LoRALinear)
    from zoo.nn.transformer import param_count
    assert param_count(model.spec) == model.num_params()  # counted on the meta device, adapters included


def test_the_old_lora_key_becomes_a_transforms_entry_in_one_place(tmp_path, fresh_registry, capsys):
    old = {"name": "x", "lora": {"r": 2, "alpha": 4.0, "targets": ["attention"], "dropout": 0.0}}
    assert upgrade_spec(old) == {"name": "x", "transforms": [{"name": "lora", "params": {
        "r": 2, "alpha": 4.0, "targets": ["attention"], "dropout": 0.0, "stacked": "skip"}}]}
    assert upgrade_spec({"name": "x"}) == {"name": "x"} and upgrade_spec({"lora": 3}) == {"lora": 3}
    # an old LoRA run: its checkpoint, its manifest.json and its adapter file
    run = FIXTURES / "gpt2-lora" / "lora"
    ckpt = load_checkpoint(run)
    assert "lora" not in ckpt["spec"] and ckpt["spec"]["transforms"][0]["params"]["r"] == 2
    from zoo.cli import main
    assert main(["--manifest", str(run / "manifest.json"), "show", "gpt2-lora"]) == 0
    out = capsys.readouterr().out
    assert "transforms[0] lora" in out and '"stacked": "skip"' in out
    from zoo.train.finetune import load_adapter
    transforms, tensors = load_adapter(run / "adapter.safetensors")
    assert transforms == ckpt["spec"]["transforms"] and tensors and all("lora_" in k for k in tensors)
    # a malformed old key is named by the schema, not converted
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"models": {"y": {"extends": "gpt2", "lora": 3}}}))
    with pytest.raises(ManifestError, match="'lora' was unexpected"):
        zoo.spec.manifest.load_manifest_file(bad)


def test_merging_a_transform_without_merge_is_refused_by_name():
    class Plain:
        def apply(self, model):
            pass

    class Reg:
        def get(self, kind, name):
            return type("C", (), {"cls": Plain})

    spec = {"name": "m", "transforms": [{"name": "plain", "params": {}}]}
    with pytest.raises(ZooError, match="transform 'plain' of 'm' cannot be folded"):
        merge_transforms(spec, {}, Reg())


def test_the_toy_module_is_importable_without_the_zoo_internals():
    """The toy imports only the public plugin API (zoo.components, zoo.hookspecs)."""
    import ast
    tree = ast.parse((TOYS / "zoo_toys" / "scale.py").read_text())
    mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert {m for m in mods if m.startswith("zoo")} <= {"zoo.components", "zoo.hookspecs", "zoo.errors"}
