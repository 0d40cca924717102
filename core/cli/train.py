"""``zoo train``, ``zoo compare`` and ``zoo tensorboard``: training runs, and looking at them."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from ..errors import ZooError
from .util import fmt_params, overrides, table, whole_number


def f_(x, fmt):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def cmd_train(args):
    from ..train.config import TrainConfig
    from ..train.dist import Dist
    from ..train.start import train
    if not args.names and not args.resume:
        raise ZooError("name a model to train (see `zoo list`), or --resume RUN_DIR.")
    if args.names and args.resume:
        raise ZooError("--resume continues one run as it was configured; do not name models with it.")
    base = dict(preset=args.preset, overrides=overrides(args.set), out=args.out, run_id=args.run_id,
                dataset=args.dataset, data=args.data, tokenizer=args.tokenizer, max_iters=args.max_iters,
                batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr, min_lr=args.min_lr,
                warmup=args.warmup, schedule=args.schedule, weight_decay=args.weight_decay, beta2=args.beta2,
                grad_clip=args.grad_clip, eval_interval=args.eval_interval, eval_iters=args.eval_iters,
                log_interval=args.log_interval, ckpt_interval=args.ckpt_interval, early_stop=args.early_stop,
                device=args.device, dtype=args.dtype, compile=args.compile, seed=args.seed, fsdp=args.fsdp,
                sample_tokens=args.sample_tokens, target_loss=args.target_loss)
    base = {k: v for k, v in base.items() if v is not None}
    dist = Dist(args.device)
    try:
        if args.resume:
            train(cfg=TrainConfig(**base), resume=args.resume, dist=dist)
            return 0
        if len(args.names) > 1 and args.run_id:
            raise ZooError("--run-id names one run; drop it when training several models.")
        results = []
        for name in args.names:
            results.append(train(name, TrainConfig(**base), dist=dist))
        if len(results) > 1 and dist.main:
            print("compare them with: zoo compare " + " ".join(r["run_dir"] for r in results), file=sys.stderr)
    finally:
        dist.close()
    return 0


def add_cli(sub):
    s = sub.add_parser("train", help="train one or more models on Tiny Shakespeare or your own data",
                       description="Train named models one after another. Without --preset: 'baby' on a CPU "
                                   "(minutes), 'char' on a GPU. Runs go to OUT/<model>/<run-id>/. Several GPUs: "
                                   "torchrun --nproc_per_node N -m zoo train NAME.")
    s.add_argument("names", nargs="*", metavar="NAME")
    s.add_argument("--preset", help="size preset (tiny, baby, char, 124m, ...)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="model override, e.g. n_layers=2")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its checkpoint")
    s.add_argument("--out", help="runs directory (default: runs)")
    s.add_argument("--run-id")
    s.add_argument("--dataset", help="built-in dataset (default: tinyshakespeare)")
    s.add_argument("--data", help="a text file, a directory holding tinyshakespeare.txt, or shards from `zoo data prepare`")
    s.add_argument("--tokenizer", help="char (default for text), gpt2, or a file from `zoo tokenizer train`")
    s.add_argument("--max-iters", type=whole_number)
    s.add_argument("--batch-size", type=whole_number, help="sequences per rank per micro-step")
    s.add_argument("--grad-accum", type=whole_number, help="micro-steps per optimizer step")
    s.add_argument("--lr", type=float)
    s.add_argument("--min-lr", type=float)
    s.add_argument("--warmup", type=whole_number)
    s.add_argument("--schedule", choices=["cosine", "wsd", "constant"])
    s.add_argument("--weight-decay", type=float)
    s.add_argument("--beta2", type=float)
    s.add_argument("--grad-clip", type=float, help="0 turns clipping off")
    s.add_argument("--eval-interval", type=whole_number)
    s.add_argument("--eval-iters", type=whole_number, help="fixed validation batches per evaluation")
    s.add_argument("--log-interval", type=whole_number)
    s.add_argument("--ckpt-interval", type=whole_number, help="steps between checkpoints (default: every evaluation)")
    s.add_argument("--early-stop", type=whole_number, metavar="N", help="stop after N evaluations without improvement")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    s.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], help="auto: bf16 autocast on GPUs, fp32 on CPU")
    s.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    s.add_argument("--seed", type=whole_number)
    s.add_argument("--fsdp", action="store_true", default=None, help="under torchrun: shard with FSDP2 instead of DDP")
    s.add_argument("--sample-tokens", type=whole_number, help="tokens of the text sample at each evaluation (0: none)")
    s.add_argument("--target-loss", type=float, metavar="L",
                   help="stop at the first evaluation whose validation loss is at most L and report the wall time "
                        "to it (a speedrun: docs/benchmarks.md)")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("tensorboard", help="open the runs in TensorBoard")
    s.add_argument("--out", default="runs", help="runs directory (default: runs)")
    s.add_argument("--port", type=whole_number, default=6006)
    s.add_argument("--print", action="store_true", help="only print the command")
    s.set_defaults(fn=cmd_tensorboard)

    s = sub.add_parser("compare", help="compare runs: params, best/final val loss, tokens/s, wall time")
    s.add_argument("runs", nargs="+", metavar="RUN", help="run directories, or model names (their latest run)")
    s.add_argument("--out", default="runs", help="runs directory for model names (default: runs)")
    s.add_argument("--json", action="store_true")
    s.add_argument("--plot", metavar="FILE", help="write a PNG of the validation curves")
    s.add_argument("--force", action="store_true", help="overwrite a --plot file that zoo compare did not write")
    s.set_defaults(fn=cmd_compare)


def cmd_tensorboard(args):
    import subprocess
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", args.out, "--port", str(args.port)]
    print(f"$ tensorboard --logdir {args.out} --port {args.port}   # then open http://localhost:{args.port}")
    if args.print:
        return 0
    if not Path(args.out).is_dir():
        raise ZooError(f"no runs directory {args.out!r}; train a model first (`zoo train gpt2`).")
    return subprocess.call(cmd)


def cmd_compare(args):
    from ..io.atomic import check_output_file
    from ..train.compare import find_runs, is_our_plot, plot, read_run
    if args.plot:
        check_output_file(args.plot, args.force, ours=is_our_plot, what="--plot file")
    rows = [read_run(r) for r in find_runs(args.runs, args.out)]
    if args.plot:
        plot(rows, args.plot)
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "val_curve"} for r in rows], indent=2))
        return 0
    cells = [[r["model"], Path(r["run"]).name, fmt_params(r["params"]) if r["params"] else "-", r["steps"],
              f_(r["best_val_loss"], ".4f"), f_(r["final_val_loss"], ".4f"), f_(r["tokens_per_sec"], ",.0f"),
              f_(r["wall_time_s"], ".0f")] for r in rows]
    print(table(cells, ["model", "run", "params", "steps", "best val", "final val", "tok/s", "wall s"]))
    if args.plot:
        print(f"validation curves written to {args.plot}")
    return 0
