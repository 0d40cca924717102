"""The Trainer takes a resolved spec and a tokenizer object; a model name is resolved once, at the
edge (zoo.train.start); zoo finetune hands its spec and tokenizer over without touching the global
registry or writing temporary files."""
import dataclasses
import json
import os
import tempfile

import pytest
import torch

import zoo
from zoo.errors import ZooError
from zoo.io.checkpoint import load_checkpoint, plugins_of, save_checkpoint
from zoo.plugin.registry import ModelSource
from zoo.spec.resolve import resolve_spec
from zoo.tokenizers import CharTokenizer
from zoo.train import TrainConfig, Trainer, train

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 40
SMALL = dict(max_iters=2, eval_interval=2, eval_iters=1, batch_size=2, sample_tokens=0, log_interval=1,
             device="cpu")


def _data(tmp_path):
    p = tmp_path / "data.txt"
    p.write_text(TEXT)
    return p


def _spec(name="my-own-model"):
    spec = zoo.resolve("gpt2", "tiny", vocab_size=len(set(TEXT)), block_size=16)
    spec["name"] = name  # a model no registry knows
    return spec


def test_the_trainer_trains_a_spec_no_registry_names(tmp_path, monkeypatch):
    spec, tok = _spec(), CharTokenizer.from_text(TEXT)
    assert spec["name"] not in zoo.get_registry().models
    from zoo.spec import manifest, resolve

    def refuse(reg, name, *a, **k):
        raise AssertionError(f"the model name {name!r} was looked up")
    monkeypatch.setattr(manifest, "resolve_entry", refuse)  # any lookup of a model name fails the test
    monkeypatch.setattr(resolve, "resolve_entry", refuse)
    cfg = TrainConfig(**SMALL, data=str(_data(tmp_path)), out=str(tmp_path / "runs"), run_id="r")
    t = Trainer(spec, tok, cfg)
    assert t.cfg.preset == "tiny" and t.spec["name"] == "my-own-model"
    res = t.fit()
    assert res["steps"] == 2 and res["model"] == "my-own-model"
    run = tmp_path / "runs" / "my-own-model" / "r"
    ckpt = load_checkpoint(run)
    assert ckpt["spec"]["name"] == "my-own-model" and ckpt["tokenizer"] == tok.config()
    # the same through train(spec, cfg, tokenizer=...), and a resume from the run directory alone
    res = train(spec, TrainConfig(**SMALL, data=str(tmp_path / "data.txt"), out=str(tmp_path / "runs"), run_id="s"),
                tokenizer=tok)
    assert res["steps"] == 2
    res = train(resume=str(run), cfg=TrainConfig(max_iters=3, device="cpu"))
    assert [s for s, _ in res["history"]] == [3] and load_checkpoint(run)["step"] == 3


def test_the_trainer_checks_what_it_is_given(tmp_path):
    cfg = dict(**SMALL, data=str(_data(tmp_path)), out=str(tmp_path / "runs"))
    tok = CharTokenizer.from_text(TEXT)
    with pytest.raises(ZooError, match="a resolved spec"):
        Trainer("gpt2", tok, TrainConfig(**cfg))
    with pytest.raises(ZooError, match="vocab_size=8 is smaller than the tokenizer's"):
        Trainer(_spec() | {"vocab_size": 8}, tok, TrainConfig(**cfg))
    bad = _spec()
    bad["attention"] = {"name": "mha", "params": {"n_kv_heads": 2}}  # a spec written by hand is validated
    with pytest.raises(ZooError, match=r"model 'my-own-model'.*attention\.params"):
        Trainer(bad, tok, TrainConfig(**cfg))
    with pytest.raises(ZooError, match="model name"):
        Trainer(_spec("../escape"), tok, TrainConfig(**cfg))
    with pytest.raises(ZooError, match="from its checkpoint"):
        Trainer(_spec(), tok, TrainConfig(**cfg), resume=str(tmp_path))
    assert not (tmp_path / "runs").exists()  # nothing written before the checks pass


def test_a_name_is_resolved_once_with_the_tokenizers_vocabulary(tmp_path, monkeypatch):
    import zoo.train.start as start
    calls = []
    real = start.resolve_spec
    monkeypatch.setattr(start, "resolve_spec", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    cfg = TrainConfig(**SMALL, preset="tiny", data=str(_data(tmp_path)), out=str(tmp_path / "runs"), run_id="r")
    t = zoo.train.trainer_for("gpt2", cfg)
    t.close()
    assert calls == ["gpt2"]
    assert t.spec["vocab_size"] == len(set(TEXT))  # from the tokenizer (under 256 tokens: not padded)
    with pytest.raises(ZooError, match="unknown override key 'n_layer'"):  # before the data is read
        zoo.train.trainer_for("gpt2", TrainConfig(**SMALL, preset="tiny", overrides={"n_layer": 2},
                                                  data=str(tmp_path / "missing.txt")))
    with pytest.raises(ZooError, match="does not exist"):
        zoo.train.trainer_for("gpt2", TrainConfig(**SMALL, preset="tiny", data=str(tmp_path / "missing.txt")))
    with pytest.raises(ZooError, match="a tokenizer goes with a resolved spec"):
        train("gpt2", TrainConfig(**SMALL), tokenizer=CharTokenizer.from_text(TEXT))


@pytest.fixture
def base_run(tmp_path):
    """A tiny run directory with a char tokenizer in its checkpoint and no tokenizer.json beside it
    (which used to make zoo finetune copy the tokenizer to a temporary file)."""
    torch.manual_seed(0)
    chars = "".join(sorted(set(TEXT)))
    spec = zoo.resolve("gpt2", "tiny", vocab_size=len(chars))
    model = zoo.build_from_spec(spec)
    run = tmp_path / "base"
    save_checkpoint(run / "ckpt.pt", {"model": model.state_dict(), "spec": spec,
                                      "tokenizer": {"type": "char", "chars": chars},
                                      "plugins": plugins_of(spec), "step": 0})
    return run, _data(tmp_path)


def test_finetune_leaves_the_registry_alone_and_writes_no_temporary_file(base_run, tmp_path, monkeypatch):
    from zoo.train.finetune import finetune
    base, data = base_run
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    for var in ("TMPDIR", "TEMP", "TMP"):
        monkeypatch.setenv(var, str(tmp))
    reg = zoo.get_registry()
    models, presets = dict(reg.models), dict(reg.presets)
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "runs"), max_iters=2, batch_size=2, eval_interval=2,
                      eval_iters=1, sample_tokens=0, device="cpu")
    res = finetune(base, cfg, lora={"r": 2, "alpha": 4, "targets": ["attention"]}, block_size=16,
                   log=lambda *a: None)
    assert zoo.get_registry() is reg and reg.models == models and reg.presets == presets
    assert "gpt2-lora" not in reg.models
    assert os.listdir(tmp) == []
    ckpt = load_checkpoint(res["run_dir"])
    assert ckpt["spec"]["name"] == ckpt["spec"]["preset"] == "gpt2-lora" and ckpt["step"] == 2
    assert ckpt["train"]["tokenizer"] is None  # no tokenizer file recorded: the object was handed over
    manifest = json.loads((tmp_path / "runs" / "gpt2-lora" / os.path.basename(res["run_dir"]) /
                           "manifest.json").read_text())
    assert set(manifest["models"]) == set(manifest["presets"]) == {"gpt2-lora"}
    # the run's manifest gives the same spec back through the resolver
    view = dataclasses.replace(reg, models=dict(reg.models), presets=dict(reg.presets))
    view.models["gpt2-lora"] = ModelSource(manifest["models"]["gpt2-lora"], "t", "0", "t")
    view.presets["gpt2-lora"] = ModelSource(manifest["presets"]["gpt2-lora"], "t", "0", "t")
    assert resolve_spec(view, "gpt2-lora", "gpt2-lora") == ckpt["spec"]
    # a second fine-tune in the same process under the same name works too (nothing was registered)
    res2 = finetune(base, TrainConfig(data=str(data), out=str(tmp_path / "runs"), max_iters=1, batch_size=2,
                                      eval_interval=1, eval_iters=1, sample_tokens=0, device="cpu"),
                    block_size=16, name="mine", log=lambda *a: None)
    assert load_checkpoint(res2["run_dir"])["spec"]["name"] == "mine" and os.listdir(tmp) == []
    with pytest.raises(ZooError, match="already registered"):
        finetune(base, TrainConfig(data=str(data), out=str(tmp_path / "runs")), name="gpt2", log=lambda *a: None)
