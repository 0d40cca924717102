"""Composite components (zoo.plugin.protocols.Composite) get the components they are made of through
the build, from the registry the spec was resolved with: a MoE's experts and its shared swiglu."""
import dataclasses

import pytest
import torch
import torch.nn as nn

import zoo
import zoo.components
from zoo.errors import ManifestError
from zoo.nn.transformer import build_from_spec, param_count
from zoo.plugin.protocols import Composite
from zoo.plugin.registry import Component
from zoo.spec.resolve import resolve_spec
from zoo_plugins.ffn.moe import MoE
from zoo_plugins.ffn.swiglu import SwiGLU


class ToyExpert(nn.Module):
    """A token-wise ffn no installed plugin registers."""

    def __init__(self, dims, width=3):
        super().__init__()
        self.width = width
        self.up, self.down = nn.Linear(dims.d_model, width), nn.Linear(width, dims.d_model)

    def forward(self, x):  # (B, T, C)
        return self.down(torch.relu(self.up(x)))  # (B, T, C)


class MySwiGLU(SwiGLU):
    pass


TOY_SCHEMA = {"type": "object", "additionalProperties": False,
              "properties": {"width": {"type": "integer", "minimum": 1, "default": 3}}}


def _custom_registry():
    """A copy of the loaded registry with a toy expert and its own swiglu; the global one is unchanged."""
    reg = zoo.get_registry()
    custom = dataclasses.replace(reg, components={k: dict(v) for k, v in reg.components.items()})
    custom.components["ffn"]["toy-expert"] = Component("ffn", "toy-expert", ToyExpert, TOY_SCHEMA, {}, "tests", "0")
    custom.components["ffn"]["swiglu"] = dataclasses.replace(reg.components["ffn"]["swiglu"], cls=MySwiGLU)
    return custom


def test_moe_is_a_composite_of_its_expert_and_shared_swiglu():
    assert isinstance(MoE, Composite)
    assert MoE.composes({"expert": {"name": "kan"}}) == [("ffn", "kan")]
    assert MoE.composes({"n_shared": 1}) == [("ffn", "swiglu"), ("ffn", "swiglu")]  # experts and shared ones


def test_an_expert_registered_only_in_a_test_registry_is_found_through_the_build(monkeypatch):
    custom = _custom_registry()
    assert "toy-expert" not in zoo.get_registry().components["ffn"]
    over = {"ffn.params.expert": {"name": "toy-expert", "params": {"width": 5}}, "ffn.params.n_shared": 1}
    spec = resolve_spec(custom, "mixtral", "tiny", over)

    def refuse(*a, **k):
        raise AssertionError("the build asked the loaded registry for the parts")
    monkeypatch.setattr(zoo.components, "parts_for", refuse)
    torch.manual_seed(0)
    model = build_from_spec(spec, custom)
    moe = model.blocks[0].ffn
    assert type(moe) is MoE and all(type(e) is ToyExpert and e.width == 5 for e in moe.experts)
    assert type(moe.shared) is MySwiGLU  # the shared experts' swiglu comes from the same registry
    assert param_count(spec, custom) == model.num_params()
    from zoo.io.checkpoint import plugins_of
    assert plugins_of(spec, custom) == {"zoo": zoo.__version__, "tests": "0"}  # the expert's distribution too
    idx = torch.randint(0, spec["vocab_size"], (2, 8))
    logits, loss = model(idx, idx)
    assert logits.shape == (2, 8, spec["vocab_size"]) and torch.isfinite(loss)
    # the expert's params are checked against the toy's schema, from the same registry
    with pytest.raises(ManifestError, match=r"at ffn\.params: expert\.params: .*'depth'"):
        resolve_spec(custom, "mixtral", "tiny", {"ffn.params.expert": {"name": "toy-expert", "params": {"depth": 2}}})
    # the global registry does not know the toy: validating there says so
    monkeypatch.undo()
    with pytest.raises(ManifestError, match=r"expert\.name 'toy-expert' is not an ffn plugin"):
        resolve_spec(zoo.get_registry(), "mixtral", "tiny", over)
    # and layers overrides find their parts the same way
    spec = resolve_spec(custom, "llama", "tiny", {"layers": [{"from": 1, "ffn": {"name": "moe", "params": {
        "n_experts": 2, "top_k": 1, "expert": {"name": "toy-expert"}}}}]})
    model = build_from_spec(spec, custom)
    assert type(model.blocks[1].ffn.experts[0]) is ToyExpert and model.blocks[1].ffn.experts[0].width == 3


def test_a_composite_that_says_nothing_of_a_missing_part_gets_the_cores_message():
    class Pair(nn.Module):
        @classmethod
        def composes(cls, params):
            return [("ffn", params.get("inner", "mlp"))]

        def __init__(self, dims, inner="mlp", parts=None):
            super().__init__()
            self.inner = parts[("ffn", inner)].cls(dims)

        def forward(self, x):
            return self.inner(x)

    reg = zoo.get_registry()
    custom = dataclasses.replace(reg, components={k: dict(v) for k, v in reg.components.items()})
    schema = {"type": "object", "additionalProperties": False, "properties": {"inner": {"type": "string"}}}
    custom.components["ffn"]["pair"] = Component("ffn", "pair", Pair, schema, {}, "tests", "0")
    model = build_from_spec(resolve_spec(custom, "gpt2", "tiny", {"ffn": {"name": "pair"}}), custom)
    assert type(model.blocks[0].ffn.inner).__name__ == "MLP"
    with pytest.raises(ManifestError, match=r"at ffn\.params: ffn 'nope', which Pair is made of, is not registered; "
                                            r"registered ffn components: .*mlp"):
        resolve_spec(custom, "gpt2", "tiny", {"ffn": {"name": "pair", "params": {"inner": "nope"}}})


def test_a_moe_built_by_hand_takes_its_parts_from_the_loaded_registry_or_from_parts():
    dims = zoo.components.Dims(d_model=16, n_heads=2)
    moe = MoE(dims, n_experts=2, top_k=1, n_shared=1, expert={"name": "kan", "params": {"grid_size": 3}})
    assert type(moe.experts[0]).__name__ == "KAN" and type(moe.shared) is SwiGLU
    parts = zoo.components.parts_for(MoE, {"expert": {"name": "toy-expert"}, "n_shared": 1}, _custom_registry())
    moe = MoE(dims, n_experts=2, top_k=1, n_shared=1, expert={"name": "toy-expert"}, parts=parts)
    assert type(moe.experts[0]) is ToyExpert and type(moe.shared) is MySwiGLU
