"""Hugging Face mappings as plugins (hook register_hf_arch, plugin API 1.1): the built-in ones come
through the hook, a package adds its own the same way, and mappings ask the components for their
sizes (class method ``sizes``) instead of repeating their formulas. No transformers needed here;
tests/test_hf.py compares against it."""
import types

import pytest
import torch
import zoo
from zoo.errors import ZooError
from zoo.hookspecs import hookimpl
from zoo.interop.hf.archs import arch_for, export_arch
from zoo.interop.hf.convert import convert_from_zoo, convert_to_zoo, spec_from_config
from zoo.interop.hf.mapping import component_sizes
from zoo.plugin.protocols import DeclaresSizes, sizes_of
from zoo.spec import catalog
from zoo.spec.resolve import dims_of, layer_components


def test_the_builtin_mappings_are_registered_through_the_hook():
    reg = catalog.load_registry()
    assert {n: (a.dist, a.matches is not None) for n, a in reg.hf_archs.items()} == {
        "gpt2": ("zoo", True), "llama": ("zoo", True), "mixtral": ("zoo", True), "deepseek_v2": ("zoo", True),
        "mistral": ("zoo", False), "mamba2": ("zoo", True), "mamba": ("zoo", True), "jamba": ("zoo", True)}
    own = {"mamba2": "zoo_plugins.hf.mamba2", "mamba": "zoo_plugins.hf.ssm", "jamba": "zoo_plugins.hf.ssm"}
    assert all(a.from_hf.__module__ == own.get(n, "zoo_plugins.hf.archs")
               for n, a in reg.hf_archs.items())
    # the core holds no table of its own: without entry points there is no mapping
    assert catalog.load_registry(use_entry_points=False).hf_archs == {}


def _mapping_module(module_name, **kw):
    m = types.ModuleType(module_name)

    def register_hf_arch(register):
        register(**kw)
    m.register_hf_arch = hookimpl(register_hf_arch)
    return m


def test_a_package_adds_a_mapping_that_imports_and_round_trips(with_plugins):
    gpt2 = catalog.load_registry().hf_archs["gpt2"]
    seen = []

    def from_hf(cfg):  # a "gpt2-toy" config is GPT-2's under another model_type
        seen.append(cfg["model_type"])
        return gpt2.from_hf(cfg)
    with_plugins((_mapping_module("toy_hf", name="gpt2-toy", from_hf=from_hf, tensors=gpt2.tensors), "zoo-toy-hf"))
    assert zoo.get_registry().problems == []
    cfg = {"model_type": "gpt2-toy", "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64, "vocab_size": 50}
    arch = arch_for(cfg)
    assert (arch.dist, arch.matches) == ("zoo-toy-hf", None)
    spec, _, _ = spec_from_config(cfg, "toy")
    assert seen == ["gpt2-toy"] and spec["attention"]["name"] == "mha" and spec["ffn"]["name"] == "mlp"
    torch.manual_seed(0)
    sd = zoo.build_from_spec(spec).state_dict()
    back = convert_to_zoo(spec, convert_from_zoo(spec, sd, arch), arch)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    assert export_arch(spec).name == "gpt2"  # an import-only mapping is never chosen for export


def test_a_clash_with_a_builtin_mapping_is_the_packages_problem(with_plugins):
    gpt2 = catalog.load_registry().hf_archs["gpt2"]
    with_plugins((_mapping_module("bad_hf", name="llama", from_hf=gpt2.from_hf, tensors=gpt2.tensors), "zoo-bad-hf"))
    with pytest.warns(zoo.plugin.registry.PluginWarning, match="zoo-bad-hf"):
        reg = zoo.get_registry()
    assert reg.hf_archs["llama"].dist == "zoo" and "already mapped by 'zoo'" in reg.problems[0][1]


@pytest.mark.parametrize("kw, why", [
    ({"from_hf": None, "tensors": print}, "must be callables"),
    ({"from_hf": print, "tensors": print, "matches": print}, "matches and to_hf go together"),
    ({"from_hf": print, "tensors": print, "matches": "x", "to_hf": "y"}, "matches and to_hf go together"),
])
def test_a_bad_mapping_is_refused(kw, why):
    reg = catalog.load_registry(extra_plugins=[(_mapping_module("m", name="toy", **kw), "zoo-m")])
    assert "toy" not in reg.hf_archs and why in reg.problems[0][1] and reg.problems[0][0] == "zoo-m"


def test_an_unknown_model_type_names_the_hook():
    with pytest.raises(ZooError, match="register_hf_arch"):
        arch_for({"model_type": "nonesuch"})


# ---- components' sizes -----------------------------------------------------------------------------

def _built_sizes(module):
    """The sizes a built module actually has, read from its weights."""
    name = type(module).__name__
    if name == "SwiGLU":
        return {"hidden": module.down.weight.shape[1]}
    if name == "MLP":
        return {"hidden": module.fc.weight.shape[0]}
    if name == "MoE":
        w_out = getattr(module, "w_out", None)  # stacked experts only
        return {"expert_hidden": None if w_out is None else w_out.shape[1],
                "shared_hidden": module.shared.down.weight.shape[1] if module.shared is not None else 0}
    if name == "MultiHeadLatentAttention":
        return {"kv_lora_rank": module.kv_norm.weight.shape[0],
                "q_lora_rank": module.q_norm.weight.shape[0] if hasattr(module, "q_norm") else None,
                "qk_nope_head_dim": module.nope, "qk_rope_head_dim": module.wkv_a.weight.shape[0] - module.rank,
                "v_head_dim": module.proj.weight.shape[1] // module.n_heads}
    if hasattr(module, "qkv"):  # gqa, mha, mqa: the fused projection holds n_heads + 2 x kv heads
        n_kv = (module.qkv.weight.shape[0] - module.n_heads * module.head_dim) // (2 * module.head_dim)
        return {"n_kv_heads": n_kv, "head_dim": module.head_dim}
    return None


SIZED = {"swiglu", "mlp", "moe", "mla", "gqa", "mha", "mqa"}


@pytest.mark.parametrize("name", zoo.list_models())
def test_declared_sizes_are_the_built_sizes(name):
    """Over every named model (tiny) and each layer: what a component's sizes() says is what it builds."""
    spec = zoo.resolve(name, "tiny")
    with torch.device("meta"):
        model = zoo.build_from_spec(spec)
    reg = zoo.get_registry()
    for i, block in enumerate(model.blocks):
        for kind, attr in (("attention", "attn"), ("ffn", "ffn")):
            ref = layer_components(spec, i)[kind]
            if ref["name"] not in SIZED:
                continue
            cls = reg.get(kind, ref["name"]).cls
            assert isinstance(cls, DeclaresSizes), ref["name"]
            declared = sizes_of(cls, dims_of(spec, i), ref["params"])
            assert declared == _built_sizes(getattr(block, attr)), (name, i, ref)
            assert component_sizes(spec, kind, i) == declared


@pytest.mark.parametrize("kind, comp, want", [
    ("ffn", {"name": "swiglu", "params": {}}, {"hidden": 128}),  # 8/3 x 48 = 128
    ("ffn", {"name": "swiglu", "params": {"multiple_of": 100}}, {"hidden": 200}),
    ("ffn", {"name": "swiglu", "params": {"hidden": 70}}, {"hidden": 70}),
    ("ffn", {"name": "mlp", "params": {"hidden_mult": 2.5}}, {"hidden": 120}),
    ("ffn", {"name": "moe", "params": {"n_shared": 2, "expert_hidden_mult": 0.5}},
     {"expert_hidden": 24, "shared_hidden": 48}),
    ("ffn", {"name": "moe", "params": {"expert": {"name": "mlp", "params": {"hidden_mult": 1}}}},
     {"expert_hidden": 48, "shared_hidden": 0}),
    ("ffn", {"name": "moe", "params": {"expert": {"name": "kan", "params": {}}, "n_shared": 3}},
     {"expert_hidden": None, "shared_hidden": 128}),  # kan experts run as instances; shared: SwiGLU's own
    ("attention", {"name": "gqa", "params": {}}, {"n_kv_heads": 1, "head_dim": 12}),
    ("attention", {"name": "mha", "params": {}}, {"n_kv_heads": 4, "head_dim": 12}),
    ("attention", {"name": "mqa", "params": {}}, {"n_kv_heads": 1, "head_dim": 12}),
    ("attention", {"name": "mla", "params": {"qk_rope_head_dim": 4}},
     {"kv_lora_rank": 48, "q_lora_rank": None, "qk_nope_head_dim": 12, "qk_rope_head_dim": 4, "v_head_dim": 12}),
])
def test_component_sizes(kind, comp, want):
    spec = zoo.resolve("gpt2", "tiny", d_model=48, n_heads=4)
    got = component_sizes(spec, kind, component=comp)
    assert got == want
    with torch.device("meta"):  # and the module built from those params has them
        spec2 = {**spec, kind: comp}
        reg = zoo.get_registry()
        from zoo.spec.resolve import fill_defaults
        c = reg.get(kind, comp["name"])
        module = c.cls(dims_of(spec2), **fill_defaults(c.params_schema, comp["params"]))
    assert _built_sizes(module) == want


def test_a_size_a_component_does_not_declare_is_named():
    spec = zoo.resolve("gpt2-kan", "tiny")
    with pytest.raises(ZooError, match=r"ffn 'kan' does not declare its size 'hidden'"):
        component_sizes(spec, "ffn")["hidden"]
