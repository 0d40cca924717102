"""``zoo finetune`` and ``zoo lora merge``: fine-tuning a run, fully or with LoRA adapters (the
``lora`` transform, reached through the registry), and folding a run's transforms into its weights."""
from __future__ import annotations

from pathlib import Path

from ..errors import ZooError
from ..version import __version__
from .util import whole_number


def _params_from_text(name: str, text: str) -> dict:
    """The params of transform ``name`` from its command-line form (``--lora r=8,...``)."""
    from ..plugin.protocols import ParamsFromText
    from ..spec.catalog import get_registry
    cls = get_registry().get("transform", name).cls
    if not isinstance(cls, ParamsFromText):
        raise ZooError(f"transform {name!r} ({cls.__module__}) reads no command-line form of its params.")
    return cls.params_from_text(text)


def cmd_finetune(args):
    from ..train.config import TrainConfig
    from ..train.finetune import FINETUNE_DEFAULTS, finetune
    lora = _params_from_text("lora", args.lora) if args.lora else None
    if args.block_size is not None and args.block_size < 1:
        raise ZooError(f"--block-size must be at least 1, not {args.block_size}.")
    base = dict(out=args.out, run_id=args.run_id, dataset=args.dataset, data=args.data, max_iters=args.max_iters,
                batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr, min_lr=args.min_lr,
                warmup=args.warmup, schedule=args.schedule, weight_decay=args.weight_decay,
                eval_interval=args.eval_interval, eval_iters=args.eval_iters, log_interval=args.log_interval,
                ckpt_interval=args.ckpt_interval, early_stop=args.early_stop, device=args.device, dtype=args.dtype,
                compile=args.compile, seed=args.seed, sample_tokens=args.sample_tokens)
    cfg = TrainConfig(**{k: v for k, v in base.items() if v is not None})
    if args.weight_decay is None:  # TrainConfig's default is for training from scratch
        cfg.weight_decay = FINETUNE_DEFAULTS["lora" if lora else "full"]["weight_decay"]
    res = finetune(args.run, cfg, lora=lora, name=args.name, block_size=args.block_size)
    vh = res.get("val_history") or []
    if len(vh) > 1:
        print(f"val loss {vh[0][1]:.4f} before fine-tuning, {vh[-1][1]:.4f} after {vh[-1][0]} steps "
              f"(best {res['best_val_loss']:.4f}); run directory {res['run_dir']}")
    if "adapter" in res:
        print(f"adapters saved on their own: {res['adapter']}; merged weights: zoo lora merge {res['run_dir']} --out DIR")


def cmd_merge(args):
    from ..io.atomic import check_output_dir
    from ..io.checkpoint import load_checkpoint, resolve_checkpoint_path
    from ..nn.transforms import merge_transforms
    from ..spec.catalog import get_registry
    from ..spec.resolve import validate_spec
    from ..train.finetune import load_adapter
    inputs = [resolve_checkpoint_path(args.run).parent] + ([args.adapter] if args.adapter else [])
    check_output_dir(args.out, args.force, inputs)
    ckpt = load_checkpoint(args.run)
    reg = get_registry()
    if args.adapter:  # adapters from a file, onto the base run given as RUN
        transforms, ad = load_adapter(args.adapter)
        if ckpt["spec"].get("transforms"):
            raise ZooError(f"{args.run!r} already holds adapters; give the base run to apply {args.adapter!r} to.")
        spec = validate_spec(reg, {**ckpt["spec"], "transforms": transforms},
                             f"the transforms of adapter {args.adapter!r}", "It was not written by zoo finetune.")
        try:
            spec, merged = merge_transforms(spec, {**ckpt["model"], **ad}, reg)
        except ZooError as e:  # another model's adapter: the shapes differ
            raise ZooError(f"the adapter {args.adapter!r} does not fit {args.run!r} (was it made for another "
                           f"model?): {e}") from None
    else:
        if not ckpt["spec"].get("transforms"):
            raise ZooError(f"{args.run!r} holds no LoRA adapters (no transforms); nothing to merge (or pass "
                           f"--adapter FILE).")
        spec, merged = merge_transforms(ckpt["spec"], ckpt["model"], reg)
    _write_merged(args, ckpt, spec, merged, inputs)


def _write_merged(args, ckpt, spec, merged, inputs):
    from ..io.atomic import replace_dir, write_json
    from ..io.checkpoint import CKPT_NAME, plugins_of, save_checkpoint

    def fill(d: Path):
        payload = {"model": merged, "spec": spec, "tokenizer": ckpt.get("tokenizer"), "plugins": plugins_of(spec),
                   "step": ckpt.get("step", 0), "zoo_version": __version__}
        if ckpt.get("hf"):
            payload["hf"] = ckpt["hf"]
        save_checkpoint(d / CKPT_NAME, payload)
        write_json(d / "spec.json", spec)
        if ckpt.get("tokenizer"):
            write_json(d / "tokenizer.json", ckpt["tokenizer"], indent=None)

    replace_dir(Path(args.out), fill, args.force, command="zoo lora merge", inputs=inputs)
    print(f"merged the adapters into {args.out} ({spec['name']}, no adapters; zoo export hf works on it)")


def add_cli(sub):
    s = sub.add_parser("finetune", help="fine-tune a run directory (e.g. an imported model), fully or with LoRA",
                       description="Train the model of RUN_DIR further with the trainer of zoo train (schedule, "
                                   "evaluation, checkpoints, TensorBoard). With --lora only low-rank adapters train "
                                   "and are also saved on their own (adapter.safetensors). Continue a fine-tune with "
                                   "zoo train --resume OUT/NAME/RUN_ID.")
    s.add_argument("run", metavar="RUN_DIR")
    s.add_argument("--lora", metavar="SPEC", help="r=8,alpha=16,targets=attention,ffn[,dropout=0.05][,stacked=skip]: "
                                                  "the spec gets a lora transform (stacked=skip leaves a MoE's "
                                                  "stacked experts without adapters instead of refusing them); "
                                                  "without it, a full fine-tune")
    s.add_argument("--data", help="a text file, or shards from zoo data prepare made with this run's tokenizer")
    s.add_argument("--dataset", help="built-in dataset (default: tinyshakespeare)")
    s.add_argument("--name", help="model name of the fine-tuned run (default: NAME-lora or NAME-ft)")
    s.add_argument("--block-size", type=whole_number, help="context length for training (default: the model's)")
    s.add_argument("--out", help="runs directory (default: runs)")
    s.add_argument("--run-id")
    s.add_argument("--max-iters", type=whole_number, help="default 200")
    s.add_argument("--batch-size", type=whole_number, help="default 4")
    s.add_argument("--grad-accum", type=whole_number, help="default 1")
    s.add_argument("--lr", type=float, help="default 3e-4 with LoRA, 3e-5 full")
    s.add_argument("--min-lr", type=float)
    s.add_argument("--warmup", type=whole_number, help="default 10")
    s.add_argument("--schedule", choices=["cosine", "wsd", "constant"])
    s.add_argument("--weight-decay", type=float)
    s.add_argument("--eval-interval", type=whole_number, help="default 50")
    s.add_argument("--eval-iters", type=whole_number, help="default 20")
    s.add_argument("--log-interval", type=whole_number)
    s.add_argument("--ckpt-interval", type=whole_number)
    s.add_argument("--early-stop", type=whole_number, metavar="N")
    s.add_argument("--device", default="auto")
    s.add_argument("--dtype", choices=["auto", "float32", "bfloat16"])
    s.add_argument("--compile", action="store_true", default=None)
    s.add_argument("--seed", type=whole_number)
    s.add_argument("--sample-tokens", type=whole_number)
    s.set_defaults(fn=cmd_finetune)

    s = sub.add_parser("lora", help="LoRA adapters: merge them into the weights")
    lsub = s.add_subparsers(dest="lora_command", metavar="SUBCOMMAND")
    p = lsub.add_parser("merge", help="write a run directory with the adapters (every transform of the run) "
                                      "folded into the weights")
    p.add_argument("run", metavar="RUN_DIR", help="a LoRA run, or with --adapter the base run")
    p.add_argument("--adapter", metavar="FILE", help="an adapter.safetensors to apply to RUN_DIR")
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true", help="replace OUT if an earlier zoo command wrote it")
    p.set_defaults(fn=cmd_merge)
    s.set_defaults(fn=lambda a: (s.print_help(), 2)[1])
