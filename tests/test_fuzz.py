"""Fuzzing the command line (issue 12): random and malformed ``--set`` overrides, manifests, options
and sampling options, fed in-process to ``zoo.cli.main`` with fixed seeds. Every invocation must end
with exit code 0 (it worked) or 2 (a mistake, one paragraph) and no traceback; argparse's own
SystemExit counts as exit 2. Each family of inputs has a time budget and a case count, about a
minute in all on a 2-core CPU; the seed is fixed, so the cases are the same on every run up to the
budget. What the fuzzer finds is fixed in the zoo, not excluded here.

Limits that keep the cases cheap, not safe: training runs are one step with one validation batch at
the small presets (a big model is refused by the memory estimate, which the train cases exercise
with huge sizes; the 124m preset fits and would train for minutes); `zoo show` and `zoo list` get
depths of at most 64 layers (they count parameters by building every layer on the meta device,
about 5 ms a layer, while `zoo train` refuses huge depths before counting); ``--compile`` is left
out (compiling takes longer than the whole budget).

To search longer or elsewhere: ``ZOO_FUZZ_SCALE=10`` multiplies every budget and case count, and
``ZOO_FUZZ_SEED=N`` changes the seed.
"""
import json
import os
import random
import shutil
import time
import traceback
from pathlib import Path

import pytest

import zoo
from zoo.cli import main

from conftest import needs_data

pytestmark = needs_data()

SEED = int(os.environ.get("ZOO_FUZZ_SEED", "20261123"))
SCALE = float(os.environ.get("ZOO_FUZZ_SCALE", "1"))
FIXTURE_RUN = Path(__file__).parent / "fixtures" / "runs-aaa45bd" / "gpt2" / "plain"
DIMS = ("n_layers", "n_heads", "d_model", "block_size", "vocab_size", "dropout")


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    from zoo.data import find_dataset
    d = tmp_path_factory.mktemp("fuzz")
    corpus = d / "small.txt"
    corpus.write_bytes(find_dataset("tinyshakespeare").read_bytes()[:20_000])
    run = d / "run"
    shutil.copytree(FIXTURE_RUN, run)
    zoo.configure([])
    reg = zoo.get_registry()
    params = sorted({f"{c.kind}.params.{p}" for c in reg.list_components() for p in c.params_schema.get("properties", {})})
    uses = {m: {k: zoo.resolve(m, "tiny")[k]["name"] for k in ("attention", "posenc", "ffn")} for m in reg.list_models()}
    schemas = {(c.kind, c.name): c.params_schema for c in reg.list_components()}
    return {"tmp": d, "corpus": corpus, "run": run, "models": reg.list_models(), "presets": list(reg.presets),
            "params": params, "components": {k: sorted(v) for k, v in reg.components.items()}, "n": 0,
            "uses": uses, "schemas": schemas}


def fresh(ctx, what="out"):
    ctx["n"] += 1
    return ctx["tmp"] / f"{what}-{ctx['n']}"


# ---- values ---------------------------------------------------------------------------------------

SMALL = [0, 1, 2, 3, 4, 7, 8, 16, 64]
HUGE = [10 ** 6, 10 ** 9, 10 ** 12, 2 ** 63, 10 ** 30, "1e308", "1e30"]
FLOATS = ["0.5", "64.0", "1e3", "-1e-3", "2.5", "1e-300", "4.0", "-0.0"]
WORDS = ["abc", "", "null", "true", "false", "NaN", "Infinity", "-Infinity", "1e999", '"4"', "=", "None", " 4 "]
JSONS = ["[]", "[1, 2]", "{}", '{"a": 1}', '[{"to": 1, "ffn": {"name": "swiglu"}}]', '{"name": "mlp"}',
         '[{"from": 5, "attention": {"name": "mqa"}}]', '{"r": 0}', '{"r": 2, "targets": ["ffn"]}',
         '{"name": "gqa", "params": {"n_kv_heads": 3}}', '[{"every": 0, "ffn": {"name": "mlp"}}]',
         '{"name": "nope", "params": {}}', '{"type": "yarn", "factor": 4}', '[[]]', '{"name": 3}']


def value(rng, huge=True):
    floats = FLOATS if huge else [f for f in FLOATS if f != "1e3"]
    pools = [lambda: str(rng.choice(SMALL)), lambda: str(-rng.choice([1, 2, 100])), lambda: rng.choice(floats),
             lambda: rng.choice(WORDS), lambda: rng.choice(JSONS)]
    if huge:
        pools.append(lambda: str(rng.choice(HUGE)))
    return rng.choice(pools)()


def override(rng, ctx, huge=True):
    keys = [*DIMS, "norm", "bias", "tie_weights", "norm_eps", "description", "name", "preset", "layers", "lora",
            "attention", "attention.name", "posenc.name", "ffn.name", "attention.params", "colour", "a.b.c",
            "n_layers.x", " n_layers", "", *ctx["params"]]
    key = rng.choice(keys)
    deep = huge and key.strip() != "n_layers"  # see the module docstring
    if key.endswith(".name") and rng.random() < 0.5:
        return f"{key}={rng.choice([n for v in ctx['components'].values() for n in v])}"
    if rng.random() < 0.05:
        return rng.choice(["n_layers", "=4", "==", "n_layers==4", "n_layers=4=5"])
    return f"{key}={value(rng, deep)}"


def schema_value(rng, schema):
    """A value the schema allows, often at the edge of what it allows (or just past it)."""
    if "enum" in schema:
        return rng.choice(schema["enum"])
    if "const" in schema:
        return schema["const"]
    if "anyOf" in schema:
        return schema_value(rng, rng.choice(schema["anyOf"]))
    t = schema.get("type", "number")
    t = rng.choice(t) if isinstance(t, list) else t
    lo = schema.get("minimum", schema.get("exclusiveMinimum"))
    if t == "integer":
        return rng.choice([v for v in (lo, (lo or 0) + 1, 2, 3, 8, 64, 1e1, 4.0) if v is not None])
    if t == "number":
        hi = schema.get("maximum", schema.get("exclusiveMaximum"))
        return rng.choice([v for v in (lo, 1e-30, 1e-3, 0.5, 1, 3.7, 1e6, 1e30, hi) if v is not None])
    if t == "boolean":
        return rng.choice([True, False])
    if t == "null":
        return None
    if t == "array":
        return rng.choice([[-2.0, 2.0], [2.0, -2.0], [0, 0], [-1e30, 1e30], [1, 2]])
    if t == "object":
        props = schema.get("properties", {})
        keys = set(schema.get("required", [])) | set(rng.sample(sorted(props), rng.randint(0, len(props))))
        return {k: schema_value(rng, props[k]) if k in props else {} for k in sorted(keys)}
    return None


def plausible_override(rng, ctx, model):
    """An override a user might try on ``model``: a size or one of its components' own params, at the
    edge of its range."""
    if rng.random() < 0.4:
        k = rng.choice(DIMS)
        v = rng.choice({"n_layers": [1, 2, 3, 2.0], "n_heads": [1, 2, 4], "d_model": [4, 8, 12, 16, 64],
                        "block_size": [1, 2, 5, 32, 1e2], "vocab_size": [1, 58, 64, 100],
                        "dropout": [0, 0.5, 0.9, 0.999]}[k])
        return f"{k}={json.dumps(v)}"
    kind = rng.choice(["attention", "posenc", "ffn"])
    # a kind the model leaves out (ffn none) has no schema: its params are unknown keys
    props = ctx["schemas"].get((kind, ctx["uses"][model][kind]), {}).get("properties", {})
    if not props:
        return f"{kind}.params.x=1"
    key = rng.choice(sorted(props))
    return f"{kind}.params.{key}={json.dumps(schema_value(rng, props[key]))}"


def sets(rng, ctx, k, huge=True, model=None):
    out = []
    for _ in range(k):
        if model in ctx["uses"] and rng.random() < 0.5:
            out += ["--set", plausible_override(rng, ctx, model)]
        else:
            out += ["--set", override(rng, ctx, huge)]
    return out


# ---- running ---------------------------------------------------------------------------------------

def run_case(argv, capsys, failures, env=None, monkeypatch=None):
    argv = [str(a) for a in argv]
    if env:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
    zoo.configure([])
    tb = ""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse: usage and exit 2
        code = e.code
    except BaseException:  # noqa: BLE001 -- anything else is what the fuzzer looks for
        code, tb = None, traceback.format_exc()
    finally:
        if env:
            for k in env:
                monkeypatch.delenv(k, raising=False)
        zoo.configure([])
    out, err = capsys.readouterr()
    if code not in (0, 2) or "Traceback" in err or tb:
        failures.append(f"zoo {' '.join(map(repr, argv))}{' with ' + str(env) if env else ''}\n"
                        f"  exit {code}\n{(tb or err)[-3000:]}")
    return code


def fuzz(make_case, ctx, capsys, seed, budget_s, max_cases, monkeypatch=None):
    rng = random.Random(seed)
    failures, n, codes = [], 0, {}
    deadline = time.monotonic() + budget_s * SCALE
    max_cases = int(max_cases * SCALE)
    while n < max_cases and time.monotonic() < deadline:
        argv, env = make_case(rng, ctx)
        code = run_case(argv, capsys, failures, env, monkeypatch)
        codes[code] = codes.get(code, 0) + 1
        n += 1
    assert not failures, f"{len(failures)} of {n} cases failed; the first:\n\n" + "\n\n".join(failures[:5])
    return n, codes


# ---- the families -----------------------------------------------------------------------------------

def case_overrides(rng, ctx):
    """zoo show / list / validate with random --set overrides (show and validate take them)."""
    name = rng.choice(ctx["models"] + ["gpt3", ""])
    preset = rng.choice(ctx["presets"] + ["huge"])
    argv = ["show", name, "--preset", preset, *sets(rng, ctx, rng.randint(1, 3), model=name)]
    if rng.random() < 0.3:
        argv.append("--json")
    return argv, None


def _dims(rng, huge):
    out = {k: rng.choice([1, 2, 4, 8, 16, 32]) for k in DIMS[:5]}
    out["n_heads"], out["d_model"] = 2, 16
    if rng.random() < 0.3:
        k = rng.choice(DIMS)
        out[k] = rng.choice([0, -1, 2.5, 4.0, "x", None, [], True, float("nan")]
                            + ([10 ** 12, 2 ** 63] if huge and k != "n_layers" else []))
    if rng.random() < 0.1:
        del out[rng.choice(DIMS[:5])]
    return out


def _component(rng, ctx, kind):
    r = rng.random()
    if r < 0.6:
        return {"name": rng.choice(ctx["components"][kind])}
    if r < 0.8:
        key = rng.choice([p.split(".")[-1] for p in ctx["params"] if p.startswith(kind)] or ["x"])
        return {"name": rng.choice(ctx["components"][kind]), "params": {key: json.loads(rng.choice(
            ["1", "0", "-1", "2.0", "1e3", "null", "true", '"x"', "[]", "{}"]))}}
    return rng.choice([{}, {"name": ""}, {"name": "nope"}, "mha", None, {"name": "mha", "colour": 1}])


def manifest(rng, ctx, huge):
    """A manifest, often broken: wrong types, unknown keys, cycles in extends, clashes, bad JSON."""
    models = {}
    for i in range(rng.randint(1, 3)):
        r = rng.random()
        entry = {"extends": rng.choice(ctx["models"]) if r < 0.7 else f"m{rng.randrange(3)}" if r < 0.93 else "nope"}
        for kind in ("attention", "posenc", "ffn"):
            if rng.random() < 0.3:
                entry[kind] = _component(rng, ctx, kind)
        if rng.random() < 0.2:
            entry[rng.choice(["norm", "bias", "tie_weights", "colour", "layers", "lora", "dropout", "norm_eps"])] = \
                json.loads(rng.choice(["1", "-1", "0.5", '"rmsnorm"', "true", "[]", "{}", '[{"to": 1}]', '{"r": 2}']))
        if rng.random() < 0.1:
            del entry["extends"]
        models[f"m{i}" if rng.random() < 0.9 else rng.choice(["gpt2", "m0"])] = entry  # gpt2: a clash
    data = {"version": 1, "presets": {"p": _dims(rng, huge)}, "models": models}
    if rng.random() < 0.3:
        data["presets"]["p"]["train"] = {rng.choice(["lr", "max_iters", "warmup", "beta2", "batch_size", "colour"]):
                                         json.loads(rng.choice(["1", "-1", "0", "1e3", "0.5", '"x"', "null"]))}
    if rng.random() < 0.2:
        data["default_preset"] = rng.choice(["p", "nope", 3])
    r = rng.random()
    if r < 0.1:
        data = rng.choice([[], 3, "x", None, {"models": []}, {"models": {"m": []}}, {"colour": 1}])
    text = json.dumps(data, allow_nan=True)
    if r > 0.93:
        text = text[: rng.randint(0, len(text))]  # truncated
    elif r > 0.88:
        text = text.replace("16", "NaN", 1)
    return text


def case_manifests(rng, ctx):
    """zoo validate FILE, and list / show / a one-step train with --manifest FILE."""
    cmd = rng.choice(["validate", "list", "show", "show", "train", "env"])
    f = fresh(ctx, "manifest") .with_suffix(".json")
    f.write_text(manifest(rng, ctx, huge=cmd == "validate"))
    name = rng.choice(["m0", "m1", "m2", "gpt2"])
    if cmd == "validate":
        return ["validate", f], None
    if cmd == "list":
        return ["--manifest", f, "list", "--preset", rng.choice(["p", "tiny"])], None
    if cmd == "show":
        return ["--manifest", f, "show", name, "--preset", rng.choice(["p", "tiny"])], None
    if cmd == "env":
        return ["show", name, "--preset", "p"], {"ZOO_MANIFEST": str(f)}
    return ["--manifest", f, "train", name, "--preset", "p", "--data", ctx["corpus"], "--out", fresh(ctx, "runs"),
            "--max-iters", "1", "--eval-iters", "1", "--batch-size", "1", "--sample-tokens", "0"], None


TRAIN_FLAGS = {
    "--lr": ["-1", "0", "nan", "inf", "1e-3", "abc", "1e308"], "--min-lr": ["-1", "0", "1", "nan"],
    "--warmup": ["-5", "0", "1", "1e3", "2.5", "x"], "--beta2": ["1.5", "0", "0.99", "1", "nan", "-0.1"],
    "--grad-clip": ["-1", "0", "1", "inf", "nan"], "--weight-decay": ["-1", "0", "0.1", "nan", "1e9"],
    "--seed": ["-1", "0", "7", str(2 ** 32), str(2 ** 70), "1e3"], "--early-stop": ["-1", "0", "1", "x"],
    "--eval-interval": ["0", "1", "-1", "1e9"], "--log-interval": ["0", "1", "-3"], "--ckpt-interval": ["0", "1", "-1"],
    "--grad-accum": ["0", "1", "2", "-1"], "--schedule": ["cosine", "wsd", "constant", "linear"],
    "--dtype": ["auto", "float32", "bfloat16", "fp8"], "--device": ["cpu", "auto", "bogus", "mps", "cuda", "cuda:7", ""],
    "--tokenizer": ["char", "gpt2", "nope", "missing.json"], "--dataset": ["tinyshakespeare", "nope"],
    "--sample-tokens": ["-1", "0", "2"], "--eval-iters": ["0", "1", "-1"], "--batch-size": ["0", "1", "-2", "1e9"],
    "--max-iters": ["0", "1", "1.0", "-1", "x"], "--run-id": ["r", "", "x y"], "--resume": ["/nonexistent/run"],
}


def case_train(rng, ctx):
    """zoo train with junk option values and overrides (huge sizes included), 0 or 1 step."""
    model = rng.choice(ctx["models"])
    argv = ["train", model, "--preset", rng.choice(["tiny"] * 4 + [p for p in ctx["presets"] if p != "124m"]),
            "--data", rng.choice([ctx["corpus"]] * 6 + [ctx["tmp"], ctx["tmp"] / "missing.txt", ctx["run"] / "ckpt.pt"]),
            "--out", fresh(ctx, "runs"), "--max-iters", "1", "--eval-iters", "1", "--batch-size", "1",
            "--sample-tokens", "0"]
    for flag in rng.sample(sorted(TRAIN_FLAGS), rng.choice([0, 0, 1, 2, 3])):
        argv += [flag, rng.choice(TRAIN_FLAGS[flag])]
    if rng.random() < 0.1:
        argv.append("--fsdp")
    return argv + sets(rng, ctx, rng.choice([0, 1, 1, 2]), model=model), None


SAMPLING = {  # flag: (values that should work, values that should not)
    "--max-new-tokens": (["0", "1", "5", "1e1", str(10 ** 12)], ["-1", "x", "2.5"]),
    "--temperature": (["1e-9", "1e9", "0.8", "1e30"], ["0", "-1", "nan", "inf"]),
    "--top-k": (["1", "2", str(10 ** 9), "3.0"], ["-1", "0", "2.5"]),
    "--top-p": (["1e-9", "0.5", "1"], ["-0.1", "0", "1.5", "nan"]),
    "--min-p": (["0", "0.5", "0.999"], ["-0.1", "1", "nan"]),
    "--repetition-penalty": (["1", "1.2", "1e-30", "1e30"], ["0", "-1", "nan"]),
    "--num-samples": (["1", "3", "2.0"], ["0", "-1", str(10 ** 9)]),
    "--seed": (["-1", "0", "5", str(2 ** 64 - 1)], [str(2 ** 64), str(2 ** 70)]),
    "--stop": (["", "A", "\n", "e", "é"], []), "--device": (["cpu", "auto"], ["bogus", "cuda", "mps"]),
    "--dtype": (["auto", "bf16", "fp16", "float32"], ["int8", "x"]),
}


def case_generate(rng, ctx):
    """zoo generate on a tiny run with random sampling options and prompts."""
    argv = ["generate", rng.choice([ctx["run"]] * 8 + [ctx["run"] / "ckpt.pt", ctx["tmp"], ctx["corpus"]])]
    for _ in range(rng.choice([0, 1, 1, 2])):
        argv += ["--prompt", rng.choice(["A", "ROMEO:", "", "\n", "é€😀", "x" * 100, "First Citizen", "A" * 40])]
    for flag in rng.sample(sorted(SAMPLING), rng.randint(1, 5)):
        ok, bad = SAMPLING[flag]
        argv += [flag, rng.choice(bad if bad and rng.random() < 0.25 else ok)]
    if rng.random() < 0.2:
        argv.append("--no-cache")
    if "--max-new-tokens" not in argv:
        argv += ["--max-new-tokens", "4"]
    return argv, None


def case_misc(rng, ctx):
    """The other commands with junk arguments."""
    c = rng.randrange(10)
    if c == 0:
        return ["list", rng.choice(["*", "gpt2*", "[", "", "nope"]), "--preset", rng.choice(ctx["presets"] + ["x"])]
    if c == 1:
        return [rng.choice(["plugins", "validate", "list"]), *rng.choice([[], ["--json"]])]
    if c == 2:
        return ["check", *rng.choice([["attention", "nope"], ["posenc", "none"], ["ffn", ""]])]
    if c == 3:
        return ["data", "prepare", rng.choice([ctx["corpus"], ctx["tmp"], ctx["tmp"] / "missing.txt"]), "--out",
                fresh(ctx, "shards"), "--tokenizer", rng.choice(["char", "gpt2", "nope"]),
                rng.choice(["--val-fraction", "--shard-tokens", "--max-tokens", "--val-tokens"]),
                rng.choice(["-1", "0", "0.5", "1", "1.5", "nan", "1e3", "100"])]
    if c == 4:
        return ["compare", rng.choice([ctx["run"], ctx["tmp"], "nope", ctx["corpus"]]),
                *rng.choice([[], ["--json"]])]
    if c == 5:
        return ["lora", "merge", rng.choice([ctx["run"], ctx["tmp"], ctx["corpus"]]), "--out", fresh(ctx, "merged"),
                *rng.choice([[], ["--adapter", ctx["corpus"]], ["--adapter", ctx["run"] / "ckpt.pt"]])]
    if c == 6:
        return ["export", "hf", rng.choice([ctx["run"], ctx["tmp"], ctx["corpus"]]), fresh(ctx, "hf")]
    if c == 7:
        flags = rng.sample(["--lr", "--warmup", "--batch-size", "--block-size", "--lora", "--seed", "--eval-iters"],
                           rng.randint(1, 3))
        vals = {"--lora": ["r=0", "r=2", "r=x", "alpha=nan", "r=2,alpha=nan", "r=2,dropout=1.5", "r=2,targets=heads"]}
        argv = ["finetune", ctx["run"], "--data", ctx["corpus"], "--out", fresh(ctx, "runs"), "--max-iters", "1",
                "--eval-iters", "1", "--sample-tokens", "0"]
        for f in flags:
            argv += [f, rng.choice(vals.get(f, ["-1", "0", "1", "2", "1e1", "nan", "x"]))]
        return argv
    if c == 8:
        return ["tokenizer", "train", "--data", rng.choice([ctx["corpus"], ctx["tmp"], ctx["tmp"] / "missing.txt"]),
                "--max-chars", rng.choice(["2000", "0", "-1", "x"]), "--vocab-size",
                rng.choice(["256", "300", "0", "-1", "1e9", "x"]), "--out", fresh(ctx, "tok").with_suffix(".json")]
    return [rng.choice(["show", "train", "generate", "bench", "nope", "--strict"]),
            *rng.choice([[], ["--help-me"], ["gpt2", "--colour"], ["--preset"]])]


# ---- the tests -------------------------------------------------------------------------------------------

def test_fuzz_overrides(ctx, capsys):
    n, codes = fuzz(case_overrides, ctx, capsys, SEED, budget_s=10, max_cases=300)
    assert n >= 20 and codes.get(2) and codes.get(0), codes  # it did reach both outcomes


def test_fuzz_manifests(ctx, capsys, monkeypatch):
    n, codes = fuzz(case_manifests, ctx, capsys, SEED + 1, budget_s=12, max_cases=300, monkeypatch=monkeypatch)
    assert n >= 20 and codes.get(2), codes


def test_fuzz_train_options(ctx, capsys):
    n, codes = fuzz(case_train, ctx, capsys, SEED + 2, budget_s=12, max_cases=200)
    assert n >= 10 and codes.get(2), codes


def test_fuzz_sampling_options(ctx, capsys):
    n, codes = fuzz(case_generate, ctx, capsys, SEED + 3, budget_s=8, max_cases=200)
    assert n >= 20 and codes.get(2) and codes.get(0), codes


def test_fuzz_other_commands(ctx, capsys):
    n, codes = fuzz(lambda rng, c: (case_misc(rng, c), None), ctx, capsys, SEED + 4, budget_s=10, max_cases=200)
    assert n >= 10 and codes.get(2), codes
