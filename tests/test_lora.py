"""LoRA adapters (the ``lora`` transform plugin, zoo.train.finetune) and zoo finetune on the trainer of
zoo train."""
import json

import pytest
import torch

import zoo
from zoo.io.checkpoint import load_checkpoint, plugins_of, save_checkpoint
from zoo.errors import ZooError
from zoo.train.finetune import load_adapter
from zoo_plugins.transform.lora import LoRA, is_adapter_key, parse_lora


def merge_state_dict(sd, cfg):
    return LoRA(**cfg).merge(sd)

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n") * 40


def test_parse_lora():
    assert parse_lora("r=8,alpha=16,targets=attention,ffn") == {"r": 8, "alpha": 16.0, "targets": ["attention", "ffn"],
                                                                "dropout": 0.0, "stacked": "refuse"}
    assert parse_lora("r=4")["targets"] == ["attention"]
    assert parse_lora("r=4,targets=ffn,stacked=skip")["stacked"] == "skip"
    for bad in ("alpha=16", "r=8,rank=2", "r=x", "r=8,targets=heads", "r=8,foo", "r=2,stacked=maybe"):
        with pytest.raises(ZooError):
            parse_lora(bad)


def _spec(name="llama", lora=None):
    spec = zoo.resolve(name, "tiny")
    if lora:
        spec["transforms"] = [{"name": "lora", "params": lora}]
    return spec


@pytest.mark.parametrize("name", ["gpt2", "llama", "deepseek"])
def test_fresh_adapters_change_nothing_and_only_they_train(name):
    torch.manual_seed(0)
    base = zoo.build_from_spec(_spec(name)).eval()
    lora = zoo.build_from_spec(_spec(name, {"r": 4, "targets": ["attention", "ffn"], "stacked": "skip"})).eval()
    missing, unexpected = lora.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and missing and all(is_adapter_key(k) for k in missing)
    idx = torch.randint(0, 96, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(lora(idx)[0], base(idx)[0], atol=0, rtol=0)  # B = 0
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert trainable and all(is_adapter_key(n) for n in trainable)
    # rank 4 on every nn.Linear of the targets: r * (in + out) numbers each
    expect = sum(4 * (m.in_features + m.out_features) for n, m in lora.named_modules()
                 if isinstance(m, torch.nn.Linear) and hasattr(m, "lora_A"))
    assert sum(p.numel() for p in lora.parameters() if p.requires_grad) == expect


def test_merged_weights_give_the_logits_of_base_plus_adapters():
    torch.manual_seed(0)
    cfg = {"r": 4, "alpha": 8, "targets": ["attention", "ffn"]}
    model = zoo.build_from_spec(_spec("gpt2", cfg)).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("lora_B"):
                p.normal_(0, 0.05)  # as after training
    merged = zoo.build_from_spec(_spec("gpt2")).eval()
    merged.load_state_dict(merge_state_dict(model.state_dict(), cfg))
    idx = torch.randint(0, 96, (2, 16))
    with torch.no_grad():
        a, b = model(idx)[0], merged(idx)[0]
        plain = zoo.build_from_spec(_spec("gpt2")).eval()
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if not is_adapter_key(k)})
        assert (plain(idx)[0] - a).abs().max() > 1e-3  # the adapters do change the function
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    assert merged.lm_head.weight is merged.wte.weight  # tying survives the merge


@pytest.fixture
def base_run(tmp_path):
    """A tiny trained-from-scratch run directory with a char tokenizer, and a text file."""
    torch.manual_seed(0)
    chars = "".join(sorted(set(TEXT)))
    spec = zoo.resolve("gpt2", "tiny", vocab_size=len(chars))
    model = zoo.build_from_spec(spec)
    tok = {"type": "char", "chars": chars}
    run = tmp_path / "base"
    save_checkpoint(run / "ckpt.pt", {"model": model.state_dict(), "spec": spec, "tokenizer": tok,
                                      "plugins": plugins_of(spec), "step": 0})
    (run / "tokenizer.json").write_text(json.dumps(tok))
    (tmp_path / "data.txt").write_text(TEXT)
    return run, tmp_path / "data.txt"


def _finetune(base, data, out, lora, **kw):
    from zoo.train.finetune import finetune
    from zoo.train import TrainConfig
    cfg = TrainConfig(data=str(data), out=str(out), max_iters=6, batch_size=2, eval_interval=3, eval_iters=1,
                      log_interval=3, sample_tokens=0, device="cpu", **kw)
    return finetune(base, cfg, lora=lora, block_size=16, log=lambda *a: None)


def test_finetune_with_lora_trains_only_adapters_saves_them_and_merges(base_run, tmp_path, capsys):
    base, data = base_run
    res = _finetune(base, data, tmp_path / "runs", parse_lora("r=4,alpha=8,targets=attention,ffn"), lr=1e-2)
    run = res["run_dir"]
    ckpt, base_ckpt = load_checkpoint(run), load_checkpoint(base)
    assert ckpt["spec"]["transforms"][0]["name"] == "lora" and ckpt["spec"]["transforms"][0]["params"]["r"] == 4
    assert ckpt["step"] == 6 and ckpt["spec"]["block_size"] == 16 and "lora" not in ckpt["spec"]
    for k, v in base_ckpt["model"].items():
        assert torch.equal(ckpt["model"][k], v), k  # the base stayed frozen
    transforms, ad = load_adapter(res["adapter"])
    assert transforms == ckpt["spec"]["transforms"] and set(ad) == {k for k in ckpt["model"] if is_adapter_key(k)}
    assert any(k.endswith("lora_B") and v.abs().max() > 0 for k, v in ad.items())  # it learned something
    assert res["final_val_loss"] is not None
    # the checkpoint is an ordinary zoo checkpoint: zoo.load builds the adapters from the spec
    model, tok = zoo.load(run)
    idx = torch.tensor([tok.encode("First Citizen:\nSpeak")])
    # merged from the LoRA run, and from the adapter file onto the base run: the same logits
    from zoo.cli import main
    assert main(["lora", "merge", run, "--out", str(tmp_path / "m1")]) == 0
    assert main(["lora", "merge", str(base), "--adapter", res["adapter"], "--out", str(tmp_path / "m2")]) == 0
    with torch.no_grad():
        ref = model(idx)[0]
        for m in ("m1", "m2"):
            merged, _ = zoo.load(tmp_path / m)
            assert "lora" not in merged.spec and "transforms" not in merged.spec
            torch.testing.assert_close(merged(idx)[0], ref, atol=1e-5, rtol=1e-5)
    # and zoo train --resume continues it
    assert main(["train", "--resume", run, "--max-iters", "8", "--device", "cpu"]) == 0
    assert load_checkpoint(run)["step"] == 8


def test_full_finetune_changes_the_weights(base_run, tmp_path):
    base, data = base_run
    res = _finetune(base, data, tmp_path / "runs", None, lr=1e-3)
    ckpt = load_checkpoint(res["run_dir"])
    assert "lora" not in ckpt["spec"] and "transforms" not in ckpt["spec"]
    assert not torch.equal(ckpt["model"]["blocks.0.attn.qkv.weight"], load_checkpoint(base)["model"]["blocks.0.attn.qkv.weight"])


def test_finetune_errors(base_run, tmp_path, capsys):
    from zoo.cli import main
    base, data = base_run
    assert main(["finetune", str(base), "--data", str(data), "--lora", "r=8,targets=heads"]) == 2
    assert "heads" in capsys.readouterr().err
    assert main(["finetune", str(tmp_path / "nothing"), "--data", str(data)]) == 2
    assert main(["lora", "merge", str(base), "--out", str(tmp_path / "x")]) == 2
    assert "no LoRA adapters" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
