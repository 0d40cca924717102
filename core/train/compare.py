"""Reading runs back (``zoo compare``): a table of runs read from their TensorBoard event files with TensorBoard's own
reader (``EventAccumulator``): model, parameters, best and final validation loss, training tokens
per second, wall time; ``--json`` for the same as JSON, ``--plot FILE`` for a PNG of the
validation curves (needs matplotlib)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import ZooError
from ..io.atomic import write_atomically

PLOT_SOFTWARE = "zoo compare"  # in the PNG's metadata: a plot this command may overwrite


def _is_run(p: Path) -> bool:
    return p.is_dir() and any(p.glob("events.out.tfevents.*"))


def _looks_like_a_path(t: str) -> bool:
    """A path rather than a model name: it has a separator, or starts with '.' or '~'."""
    return "/" in t or os.sep in t or bool(os.altsep and os.altsep in t) or t.startswith((".", "~"))


def find_runs(targets, out="runs") -> list[Path]:
    """Run directories from paths, or model names meaning their latest run under ``out``."""
    runs = []
    for t in targets:
        p = Path(t)
        if _is_run(p):
            runs.append(p)
            continue
        if p.is_dir():  # a model directory or a whole runs directory
            inner = sorted(q for q in p.rglob("*") if _is_run(q))
            if inner:
                runs += inner
                continue
        model_dir = Path(out) / t
        cands = sorted((q for q in model_dir.iterdir() if _is_run(q)), key=lambda q: (q.stat().st_mtime, q.name)) \
            if model_dir.is_dir() else []
        if not cands:
            if p.is_file():
                raise ZooError(f"{t!r} is a file, not a run directory; give a run directory (OUT/MODEL/RUN_ID, "
                               f"holding TensorBoard event files) or a model name.")
            if p.is_dir():
                raise ZooError(f"{t!r} holds no runs: no TensorBoard event files in it or below it. Give a run "
                               f"directory (OUT/MODEL/RUN_ID) or a model name.")
            if _looks_like_a_path(t):
                raise ZooError(f"{t!r} does not exist. Give a run directory (OUT/MODEL/RUN_ID), or a model name "
                               f"for its latest run under {str(Path(out))!r}.")
            raise ZooError(f"{t!r} is neither a run directory (with TensorBoard event files) nor a model with "
                           f"runs under {str(Path(out))!r}. Train it with `zoo train {t}` or pass --out.")
        runs.append(cands[-1])
    if not runs:
        raise ZooError("name run directories or models to compare, e.g. `zoo compare gpt2 llama`.")
    return runs


def _scalars(acc, tag):
    try:
        return [(e.step, e.value, e.wall_time) for e in acc.Scalars(tag)]
    except KeyError:
        return []


def read_run(run: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    val = _scalars(acc, "val/loss")
    tps = _scalars(acc, "train/tokens_per_sec")
    params = _scalars(acc, "model/params")
    elapsed = _scalars(acc, "time/elapsed_s")
    spec_file = run / "spec.json"
    model = run.parent.name
    if spec_file.is_file():
        try:
            model = json.loads(spec_file.read_text(encoding="utf-8")).get("name", model)
        except (OSError, json.JSONDecodeError):
            pass
    steady = [v for s, v, _ in tps[1:]] or [v for s, v, _ in tps]  # the first logged step includes warm-up
    return {
        "run": str(run), "model": model,
        "params": int(params[-1][1]) if params else None,
        "best_val_loss": min(v for _, v, _ in val) if val else None,
        "final_val_loss": val[-1][1] if val else None,
        "steps": max((s for s, _, _ in _scalars(acc, "train/loss")), default=0),
        "tokens_per_sec": sum(steady) / len(steady) if steady else None,
        "wall_time_s": elapsed[-1][1] if elapsed else None,
        "val_curve": [(s, v) for s, v, _ in val],
    }


def is_our_plot(path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.startswith(b"\x89PNG") and PLOT_SOFTWARE.encode() in head


def plot(rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ZooError("--plot needs matplotlib: pip install matplotlib") from None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        if r["val_curve"]:
            s, v = zip(*r["val_curve"])
            ax.plot(s, v, marker=".", label=f"{r['model']} ({Path(r['run']).name})")
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=120, metadata={"Software": PLOT_SOFTWARE}))
    except OSError as e:
        raise ZooError(f"cannot write {path!r}: {e.strerror}.") from None
    plt.close(fig)
