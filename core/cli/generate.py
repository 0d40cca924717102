"""``zoo generate``: sample text from a run, streamed as it is produced."""
from __future__ import annotations

import sys

from ..errors import ZooError
from .util import whole_number


def _past_context(model, window: int) -> str:
    """What each kind of layer does past the context: a cache that grows per token slides over the
    last ``window`` positions; a fixed-size state (or segment memory) carries the whole stream."""
    from ..plugin.protocols import cache_size
    from ..spec.resolve import dims_of, layer_components
    spec, sliding, state = model.spec, [], []
    for i in range(spec["n_layers"]):
        ref = layer_components(spec, i)["attention"]
        size = cache_size(type(model.blocks[i].attn), dims_of(spec, i), ref["params"])
        (state if size is not None and size[0] == 0 else sliding).append(f"{i} ({ref['name']})")
    parts = []
    if sliding:
        parts.append(f"layer(s) {', '.join(sliding)} attend to a sliding window of the last {window} positions")
    if state:
        parts.append(f"layer(s) {', '.join(state)} carry their fixed-size state over the whole stream")
    return "; ".join(parts)


def add_cli(subparsers):
    s = subparsers.add_parser(
        "generate", help="sample text from a trained model, streamed as it is produced",
        description="Sample from a run directory or checkpoint. Several --prompt and --num-samples run as "
                    "one batch; --seed makes it reproducible. Past the context limit, models with an "
                    "unbounded positional encoding continue (attention with a sliding window, state "
                    "mixers such as mamba with their state); learned positions stop.")
    s.add_argument("checkpoint", metavar="RUN_DIR_OR_CHECKPOINT")
    s.add_argument("--prompt", action="append", metavar="TEXT",
                   help="text to continue (repeat for several prompts; default: unconditional, from the "
                        "end-of-text token)")
    s.add_argument("--max-new-tokens", type=whole_number, default=256, metavar="N")
    s.add_argument("--temperature", type=float, default=1.0, help="> 0; lower is more conservative (default 1)")
    s.add_argument("--top-k", type=whole_number, help="sample among the k most likely tokens (1: greedy)")
    s.add_argument("--top-p", type=float, help="nucleus sampling: the smallest set with this much probability, in (0, 1]")
    s.add_argument("--min-p", type=float, help="drop tokens below this fraction of the top token's probability")
    s.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages tokens already present")
    s.add_argument("--num-samples", type=whole_number, default=1, metavar="N", help="samples per prompt, in one batch")
    s.add_argument("--seed", type=whole_number, help="random seed; the same seed gives the same text on the same device")
    s.add_argument("--stop", action="append", metavar="TEXT", help="end a sample before this text (repeatable)")
    s.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    s.add_argument("--dtype", default="auto", help="float32, bfloat16 or float16 (default: bfloat16 on CUDA, else float32)")
    s.add_argument("--no-cache", action="store_true", help="recompute the whole context every step (slow; a reference)")
    s.add_argument("--compile", action="store_true", help="torch.compile the decode step over a static cache "
                                                          "(CUDA graphs on a GPU); pays off for long runs")
    s.set_defaults(fn=cmd_generate)


def cmd_generate(args):
    from ..generate.sampling import SamplingParams
    from ..generate.text import stream_text
    from ..io.checkpoint import load_run
    from ..nn.device import default_dtype, parse_dtype, resolve_device
    dev = resolve_device(args.device)
    dtype = parse_dtype(args.dtype, default=default_dtype(dev))
    if args.max_new_tokens < 0:
        raise ZooError(f"--max-new-tokens must be 0 or more, got {args.max_new_tokens}.")
    SamplingParams(args.temperature, args.top_k, args.top_p, args.min_p, args.repetition_penalty).validate()
    model, tok = load_run(args.checkpoint, device=dev, dtype=dtype)
    prompts = args.prompt or [""]
    stream = stream_text(model, tok, prompts, args.max_new_tokens, num_samples=args.num_samples, stop=args.stop,
                         temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                         repetition_penalty=args.repetition_penalty, seed=args.seed,
                         use_cache=not args.no_cache, compile=args.compile)
    g = stream.generation
    name = model.spec["name"]
    if not g.use_cache and not args.no_cache:
        print(f"zoo: note: an attention of {name!r} has no KV cache; recomputing the context every step.",
              file=sys.stderr)
    longest = max(len(p) for p in g.fed) + args.max_new_tokens
    if not g.bounded and longest > g.window:
        print(f"zoo: note: past the context of {g.window} tokens {name!r} continues: "
              f"{_past_context(model, g.window)}.", file=sys.stderr)
    _print_stream(stream, sys.stdout)
    reached = [i for i, r in enumerate(g.stop_reason) if r == "context"]
    if reached:
        pe = model.spec["posenc"]["name"]
        print(f"zoo: note: stopped at the context limit: {name!r} uses the bounded {pe!r} positional encoding "
              f"with {g.window} positions, so a sample cannot be longer than {g.window} tokens, prompt included. "
              f"Models with an unbounded encoding (rope, alibi, sinusoidal, none) continue with a sliding "
              f"window.", file=sys.stderr)
    return 0


def _print_stream(stream, out):
    """Sample 1 streams live; each later sample is printed (its text so far, then live) once the
    samples before it have finished, so samples never interleave."""
    B = stream.generation.batch
    many = B > 1
    buf = [""] * B
    finished = [False] * B
    current = 0

    def header(i):
        if many:
            out.write(("\n" if i else "") + f"--- sample {i + 1}/{B} ---\n")
        out.write(stream.prompts[i] + buf[i])
        out.flush()

    header(0)
    for i, piece, done in stream:
        buf[i] += piece
        finished[i] = finished[i] or done
        if i == current and piece:
            out.write(piece)
            out.flush()
        while current < B and finished[current]:
            out.write("\n")
            current += 1
            if current < B:
                header(current)
    out.flush()
