"""The bench harness on the CPU at the tiny preset: the report is complete and sane.
No timing is asserted: only that each figure exists, is positive and is consistent."""
import json

import pytest

import zoo
from zoo.cli.bench import format_report
from zoo.perf.bench import run_bench
from zoo.perf.flops import model_flops_per_token
from zoo.cli import main


@pytest.fixture(scope="module")
def result():
    return run_bench(zoo.list_models(), preset="tiny", device="cpu", reps=1, warmup=1,
                     components=True, decode_batch=2, decode_tokens=4)


def test_every_model_has_every_figure(result):
    assert [r["model"] for r in result["models"]] == zoo.list_models()
    for r in result["models"]:
        for key in ("train_tokens_per_sec", "prefill_tokens_per_sec", "decode_tokens_per_sec_b1",
                    "decode_tokens_per_sec_b2", "train_flops_per_sec", "mfu_vs_measured_peak"):
            assert r[key] is not None and r[key] > 0, (r["model"], key, r.get("decode_errors"))
        assert r["params"] == zoo.param_count(zoo.resolve(r["model"], "tiny"))
        assert r["kv_cache_bytes_per_token"] == zoo.kv_cache_bytes_per_token(zoo.resolve(r["model"], "tiny"), 4)
        assert r["decode_errors"] == {}
        assert r["train_time"]["min"] <= r["train_time"]["median"] <= r["train_time"]["max"]
        assert 0 < r["mfu_vs_measured_peak"] < 1.5  # a FLOP count far off would show here
    env = result["environment"]
    assert env["torch"] and env["date"] and env["device"].startswith("cpu")
    assert result["peak_flops_measured"] > 0 and result["peak_flops_datasheet"] is None


def test_every_model_is_compared_with_gpt2_of_the_same_run(result):
    by = {r["model"]: r for r in result["models"]}
    assert result["reference_model"] == "gpt2" and result["reference"] is None  # gpt2 was among the names
    for r in result["models"]:
        v = r["vs_gpt2"]
        assert v["train"] == pytest.approx(r["train_tokens_per_sec"] / by["gpt2"]["train_tokens_per_sec"])
        assert v["decode_b2"] == pytest.approx(r["decode_tokens_per_sec_b2"] / by["gpt2"]["decode_tokens_per_sec_b2"])
    assert by["gpt2"]["vs_gpt2"] == {"train": 1.0, "decode_b1": 1.0, "decode_b2": 1.0}
    assert "train vs gpt2" in format_report(result)


def test_gpt2_is_measured_alongside_a_state_model(with_plugins):
    """Benchmarking the toy state model alone measures gpt2 too, in the same run, for the ratios; the
    state's cache shows as fixed bytes per sequence."""
    import sys
    import types
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent / "plugins" / "zoo-toys" / "src"))
    from zoo_toys import ema
    with_plugins((types.SimpleNamespace(register_attention=ema.register_attention,
                                        register_models=ema.register_models), "zoo-toys"))
    res = run_bench(["gpt2-ema"], preset="tiny", device="cpu", reps=1, warmup=0, decode_batch=2, decode_tokens=2)
    (r,), ref = res["models"], res["reference"]
    assert ref["model"] == "gpt2" and ref["vs_gpt2"]["train"] == 1.0
    assert r["vs_gpt2"]["decode_b1"] == pytest.approx(r["decode_tokens_per_sec_b1"] / ref["decode_tokens_per_sec_b1"])
    assert r["kv_cache_bytes_per_token"] == 0 and r["cache_bytes_per_sequence"] == 2 * 64 * 4  # 2 layers, fp32
    text = format_report(res)
    assert "gpt2 (reference)" in text and "decode vs gpt2 (b1/bN)" in text


def test_component_ratios_are_reported(result):
    rows = result["components"]["components"]
    names = {(r["kind"], r["name"]) for r in rows}
    assert {(c.kind, c.name) for c in zoo.get_registry().list_components() if c.kind in ("attention", "ffn")} <= names
    for r in rows:
        assert "error" not in r, r
        assert r["ratio_vs_reference"] > 0


def test_flops_follow_the_components_reports():
    model = zoo.build("gpt2", "tiny")
    f = model_flops_per_token(model, 32)
    assert f["train"] == 3 * f["forward"]
    spec = model.spec
    d, L, V, T = spec["d_model"], spec["n_layers"], spec["vocab_size"], 32
    # GPT-2: 2 x (attention and MLP weights) + attention scores (QK and AV: 4 T d) per layer, + head
    expected = L * (2 * (4 * d * d + 8 * d * d) + 4 * T * d) + 2 * d * V
    assert f["forward"] == pytest.approx(expected, rel=0.02)


def test_report_json_and_vs(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", "gpt2", "--preset", "tiny", "--reps", "1", "--warmup", "1", "--device", "cpu",
                 "--decode-batch", "2", "--decode-tokens", "2", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["models"][0]["model"] == "gpt2"
    assert main(["bench", "gpt2", "--preset", "tiny", "--reps", "1", "--warmup", "1", "--device", "cpu",
                 "--decode-batch", "2", "--decode-tokens", "2", "--vs", str(out)]) == 0
    text = capsys.readouterr().out
    assert "train vs old" in text and "x" in text.split("train vs old")[-1]
    assert "gpt2" in format_report(data)
    assert main(["bench", "nosuch", "--preset", "tiny"]) == 2


def test_every_builtin_component_reports_its_flops():
    for name in zoo.list_models():
        f = model_flops_per_token(zoo.build(name, "tiny"), 32)
        assert f["estimated_from_params"] == [], name


def test_moe_flops_count_only_the_experts_a_token_uses():
    top2 = zoo.build("mixtral", "tiny")
    top1 = zoo.build("mixtral", "tiny", **{"ffn.params.top_k": 1})
    more = zoo.build("mixtral", "tiny", **{"ffn.params.n_experts": 16})
    L, C = top2.spec["n_layers"], top2.spec["d_model"]
    moe = top2.blocks[0].ffn
    one_expert = 2 * (moe.w_in[0].numel() + moe.w_out[0].numel())
    f = {k: model_flops_per_token(m, 32)["forward"] for k, m in (("top2", top2), ("top1", top1), ("more", more))}
    assert f["top2"] - f["top1"] == L * one_expert
    assert f["more"] - f["top2"] == L * 2 * C * 8  # eight more experts cost only their router columns


def test_cache_against_recompute_through_the_cli(tmp_path, capsys):
    """`zoo bench --cache` (what was `python -m zoo.generate --bench`): both decoders, the same tokens."""
    import torch
    out = tmp_path / "cache.json"
    threads = torch.get_num_threads()
    try:
        assert main(["bench", "gpt2", "--cache", "--preset", "tiny", "--new-tokens", "8", "--threads", "1",
                     "--json", str(out)]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    res = json.loads(out.read_text())
    assert res["model"] == "gpt2" and res["new_tokens"] == 8 and res["same_tokens"] is True
    assert "speedup" in capsys.readouterr().out
    assert main(["bench", "gpt2", "--cache", "--preset", "tiny", "--new-tokens", "4", "--only", "cache",
                 "--set", "n_layers=1"]) == 0
