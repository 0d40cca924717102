"""Heads as a component kind, auxiliary losses from any module, ``ffn: none`` and the positional
encodings a mixer uses or ignores (issue #13)."""
import importlib
import json
import sys
import types
from pathlib import Path

import pytest
import torch

import zoo
from zoo.errors import ManifestError, ZooError
from zoo.hookspecs import hookimpl
from zoo.nn.transformer import build_from_spec, param_count
from zoo.perf.flops import model_flops_per_token
from zoo.spec.catalog import load_registry
from zoo.spec.resolve import resolve_spec
from zoo.testing import run_checks
from zoo.train.schedule import param_groups
from zoo_plugins.attention.gqa import MHA_PARAMS, MultiHeadAttention

TOYS = Path(__file__).parent / "plugins" / "zoo-toys" / "src"


def _toy_head_module():
    sys.path.insert(0, str(TOYS))
    try:
        return importlib.import_module("zoo_toys.head")
    finally:
        sys.path.remove(str(TOYS))


@pytest.fixture(scope="module")
def toy_reg():
    """The registry with the toy head of tests/plugins/zoo-toys registered in-process, as zoo-toys."""
    return load_registry(extra_plugins=[(_toy_head_module(), "zoo-toys")])


def _train(model, steps=4, lr=3e-3, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=lr)
    data = torch.randint(0, model.spec["vocab_size"], (4, model.spec["block_size"] + 1),
                         generator=torch.Generator().manual_seed(seed))
    model.train()
    losses = []
    for _ in range(steps):
        _, loss = model(data[:, :-1], data[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


# ---- the head kind -----------------------------------------------------------------------------

def test_default_head_is_next_token_and_changes_no_state_dict_key():
    spec = zoo.resolve("gpt2", "tiny")
    assert spec["head"] == {"name": "next_token", "params": {}}
    old = {k: v for k, v in spec.items() if k != "head"}  # a spec written before heads
    model = build_from_spec(old)
    assert not [k for k in model.state_dict() if k.startswith("head.")]
    assert set(model.state_dict()) == set(build_from_spec(spec).state_dict())
    idx = torch.randint(0, spec["vocab_size"], (2, 8))
    logits, loss = model(idx, idx)
    ref = torch.nn.functional.cross_entropy(model.lm_head(model.norm_f(
        _hidden(model, idx))).view(-1, spec["vocab_size"]), idx.view(-1))
    torch.testing.assert_close(loss, ref)
    assert logits.shape == (2, 8, spec["vocab_size"])


def _hidden(model, idx):
    pos = torch.arange(idx.shape[1])
    x = model.drop(model.posenc.embed(model.wte(idx), pos))
    for b in model.blocks:
        x = b(x, model.posenc, pos)
    return x


def test_toy_head_passes_the_kit(toy_reg):
    comp = toy_reg.get("head", "smooth_next_token")
    assert comp.dist == "zoo-toys"
    results = run_checks(comp)
    assert {s for _, s, _ in results} == {"passed"}, results
    assert {"check_head_logits_and_loss", "check_head_cached_decoding", "check_gradients"} <= {n for n, _, _ in results}


def test_toy_head_trains_with_its_parameter_and_aux_loss(toy_reg):
    spec = resolve_spec(toy_reg, "gpt2", "tiny", {"head.name": "smooth_next_token",
                                                  "head.params": {"label_smoothing": 0.2, "z_loss": 0.01}})
    assert spec["head"] == {"name": "smooth_next_token", "params": {"label_smoothing": 0.2, "z_loss": 0.01}}
    model = build_from_spec(spec, toy_reg)
    assert "head.log_temp" in model.state_dict()
    assert model.head in model._aux_modules  # found at the build, not by walking attn and ffn
    losses = _train(model)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert model.head.log_temp.item() != 0.0  # its own parameter trained
    aux = model.aux_loss()
    assert aux is not None and aux.item() > 0  # the z-loss, collected from the head
    model.eval()
    with torch.no_grad():
        idx = torch.randint(0, spec["vocab_size"], (2, 8))
        logits, _ = model(idx)
    torch.testing.assert_close(logits * model.head.log_temp.exp(), model.lm_head(model.norm_f(_hidden(model, idx))))
    # flops: the head reports its own (projection + temperature), in place of the lm_head estimate
    base = model_flops_per_token(build_from_spec(zoo.resolve("gpt2", "tiny")), 32)["forward"]
    assert model_flops_per_token(model, 32)["forward"] == base + spec["vocab_size"]
    # generation goes through the head (model.forward), cached decoding included
    from zoo.generate import generate
    out = list(generate(model, [[1, 2, 3]], max_new_tokens=4, seed=0))
    assert len(out) == 4


def test_unknown_head_names_the_fix():
    with pytest.raises(ManifestError, match=r"at head.name: unknown head 'mtp'.*Registered head components: next_token"):
        zoo.resolve("gpt2", "tiny", **{"head.name": "mtp"})


# ---- aux losses through the protocol -------------------------------------------------------------

def test_aux_loss_from_any_module_and_from_api_1_0_components():
    class Legacy(MultiHeadAttention):  # plugin API 1.0: sets aux_loss during forward only
        def forward(self, x, posenc, pos, cache=None):
            self.aux_loss = x.pow(2).mean() * 0 + 1.0
            return super().forward(x, posenc, pos, cache)

    @hookimpl
    def register_attention(register):
        register("legacy", Legacy, MHA_PARAMS, {"kv_cache": True})

    reg = load_registry(extra_plugins=[(types.SimpleNamespace(register_attention=register_attention), "legacy")])
    spec = resolve_spec(reg, "gpt2", "tiny", {"attention.name": "legacy"})
    model = build_from_spec(spec, reg)
    idx = torch.randint(0, spec["vocab_size"], (2, 8))
    _, with_aux = model(idx, idx)
    assert model.aux_loss().item() == spec["n_layers"]  # 1.0 from each layer's attention
    ce = torch.nn.functional.cross_entropy(model(idx)[0].view(-1, spec["vocab_size"]), idx.view(-1))
    torch.testing.assert_close(with_aux, ce + spec["n_layers"])


# ---- ffn: none -------------------------------------------------------------------------------------

def test_ffn_none_trains_and_has_no_ffn_or_norm2(tmp_path):
    spec = zoo.resolve("gpt2", "tiny", **{"ffn.name": "none"})
    assert spec["ffn"] == {"name": "none", "params": {}}
    model = build_from_spec(spec)
    keys = list(model.state_dict())
    assert not [k for k in keys if ".norm2." in k or ".ffn." in k], keys
    assert param_count(spec) == model.num_params()
    losses = _train(model, steps=6)
    assert losses[-1] < losses[0]
    flops = model_flops_per_token(model, 32)
    assert flops["estimated_from_params"] == []
    # a checkpoint of it loads (ffn none is no component to look up)
    from zoo.io.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
    save_checkpoint(tmp_path / "ckpt.pt", {"model": model.state_dict(), "spec": spec, "step": 6})
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")
    assert ckpt["spec"]["ffn"]["name"] == "none" and ckpt["providers"]
    again = model_from_checkpoint(ckpt)
    idx = torch.randint(0, spec["vocab_size"], (2, 8))
    model.eval()
    torch.testing.assert_close(again.eval()(idx)[0], model(idx)[0])


def test_ffn_none_in_a_manifest_and_a_layers_override(fresh_registry, tmp_path):
    f = tmp_path / "mine.json"
    f.write_text(json.dumps({"models": {
        "attn-only": {"extends": "gpt2", "ffn": "none"},
        "attn-only-long": {"extends": "gpt2", "ffn": {"name": "none"}},
        "sparse-ffn": {"extends": "llama", "layers": [{"every": 2, "ffn": "none"}]}}}))
    zoo.configure([str(f)])
    assert zoo.resolve("attn-only", "tiny")["ffn"] == zoo.resolve("attn-only-long", "tiny")["ffn"] == {"name": "none", "params": {}}
    spec = zoo.resolve("sparse-ffn", "tiny")
    model = zoo.build_from_spec(spec)
    assert model.blocks[0].ffn is None and model.blocks[0].norm2 is None and model.blocks[1].ffn is not None
    assert param_count(spec) == model.num_params()
    # --set ffn.name=none on a model whose ffn has params drops them with the ffn
    assert zoo.resolve("deepseek", "tiny", **{"ffn.name": "none"})["ffn"] == {"name": "none", "params": {}}
    with pytest.raises(ManifestError, match=r"at ffn.params: ffn 'none' \(no feed-forward layer\) takes no params"):
        zoo.resolve("gpt2", "tiny", ffn={"name": "none", "params": {"hidden_mult": 2}})


def test_zoo_show_and_hf_export_with_ffn_none(capsys, tmp_path):
    from zoo.cli import main
    assert main(["show", "gpt2", "--preset", "tiny", "--set", "ffn=none"]) == 0
    out = capsys.readouterr().out
    assert "ffn          none {}" in out and "ffn params   0 (0.0K) in all layers, 0 per layer (none)" in out
    spec = zoo.resolve("gpt2", "tiny", ffn="none")
    from zoo.interop.hf.convert import export_hf
    from zoo.io.checkpoint import save_checkpoint
    save_checkpoint(tmp_path / "run" / "ckpt.pt", {"model": build_from_spec(spec).state_dict(), "spec": spec, "step": 0})
    with pytest.raises(ZooError, match="ffn is not the GELU mlp"):
        export_hf(tmp_path / "run", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_ffn_cannot_register_as_none():
    @hookimpl
    def register_ffn(register):
        register("none", torch.nn.Identity, {"type": "object"}, {})

    reg = load_registry(extra_plugins=[(types.SimpleNamespace(register_ffn=register_ffn), "squatter")])
    assert any(d == "squatter" and "reserved" in r for d, r in reg.problems)


# ---- positional encodings: used or ignored ---------------------------------------------------------

class NoPositions(MultiHeadAttention):
    """Stands in for a mixer that gets order from its recurrence, not from rotate or bias."""


@hookimpl
def register_attention(register):
    register("nopos", NoPositions, MHA_PARAMS,
             {"kv_cache": True, "posenc": ["absolute", "none"], "posenc_ignores": ["rotary"]})


@pytest.fixture(scope="module")
def nopos_reg():
    return load_registry(extra_plugins=[(types.SimpleNamespace(register_attention=register_attention), "nopos")])


def test_an_encoding_no_layer_uses_is_an_error_naming_the_layers(nopos_reg):
    with pytest.raises(ManifestError, match=r"posenc 'rope' is a rotary encoding that no layer's mixer uses "
                                            r"\(attention 'nopos' at all 2 layers: each ignores rotary"):
        resolve_spec(nopos_reg, "gpt2-rope-gqa", "tiny", {"attention.name": "nopos", "attention.params": {}})
    # a hybrid: one layer's attention uses rope, the others ignore it
    spec = resolve_spec(nopos_reg, "gpt2-rope-gqa", "tiny", {
        "attention.name": "nopos", "attention.params": {}, "layers": [{"to": 1, "attention": {"name": "mha"}}]})
    assert build_from_spec(spec, nopos_reg)(torch.randint(0, 10, (1, 4)))[0].isfinite().all()


def test_an_encoding_a_layer_neither_uses_nor_ignores_is_an_error_for_that_layer(nopos_reg):
    with pytest.raises(ManifestError, match=r"at layers\[0\].attention.name \(layer 0\): attention 'nopos' does not accept bias "
                                            r"encodings like 'alibi'"):
        resolve_spec(nopos_reg, "gpt2-alibi", "tiny", {"layers": [{"to": 1, "attention": {"name": "nopos"}}]})
    with pytest.raises(ManifestError, match=r"at posenc.name: attention 'nopos' does not accept bias encodings"):
        resolve_spec(nopos_reg, "gpt2-alibi", "tiny", {"attention.name": "nopos"})
    # absolute encodings are applied at the embedding: a mixer that accepts them uses them
    assert resolve_spec(nopos_reg, "gpt2", "tiny", {"attention.name": "nopos"})["attention"]["name"] == "nopos"
