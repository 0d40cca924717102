"""``zoo data prepare`` and ``zoo tokenizer train``: data and tokenizers for training."""
from __future__ import annotations

from pathlib import Path

from ..errors import ZooError
from .util import whole_number


def cmd_prepare(args):
    from ..data.corpus import read_text, split_text
    from ..data.shards import hf_documents, prepare_shards
    from ..tokenizers import get_tokenizer
    if bool(args.inputs) == bool(args.hf):
        raise ZooError("give text files to encode, or --hf DATASET (e.g. --hf HuggingFaceFW/fineweb-edu "
                       "--hf-config sample-10BT), not both and not neither.")
    if args.shard_tokens < 1:
        raise ZooError("--shard-tokens must be at least 1.")
    if not 0 <= args.val_fraction < 1:  # also refuses nan
        raise ZooError(f"--val-fraction must be in [0, 1), not {args.val_fraction}: it is the share of each text "
                       f"file kept for validation, e.g. 0.1.")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise ZooError(f"--max-tokens must be at least 1, not {args.max_tokens}.")
    if args.val_tokens < 0:
        raise ZooError(f"--val-tokens must be at least 0, not {args.val_tokens}.")
    if args.hf:
        tok = get_tokenizer(args.tokenizer or "gpt2")
        docs = hf_documents(args.hf, args.hf_config, args.hf_split, args.text_field)
        meta = prepare_shards(args.out, tok, documents=docs, val_tokens=args.val_tokens,
                              shard_tokens=args.shard_tokens, max_tokens=args.max_tokens)
    else:
        texts = [read_text(Path(p)) for p in args.inputs]
        tok = get_tokenizer(args.tokenizer or "gpt2", corpus="".join(texts))
        parts = [split_text(t, args.val_fraction) for t in texts]
        meta = prepare_shards(args.out, tok, texts_train=[a for a, _ in parts], texts_val=[b for _, b in parts],
                              shard_tokens=args.shard_tokens, max_tokens=args.max_tokens)
    n = {s: len(v) for s, v in meta["shards"].items()}
    print(f"wrote {meta['tokens']['train']:,} train tokens in {n['train']} shard(s) and {meta['tokens']['val']:,} "
          f"val tokens in {n['val']} shard(s) ({meta['dtype']}) to {args.out}")
    print(f"train on them with: zoo train MODEL --data {args.out}")


def cmd_tokenizer_train(args):
    import time
    from ..data.corpus import find_dataset, read_text
    from ..io.atomic import check_output_file, write_json
    from ..tokenizers.bpe import BPETokenizer, train_bpe
    from .util import json_file_with
    path = find_dataset("tinyshakespeare", args.data)
    check_output_file(args.out, args.force, inputs=[path], ours=json_file_with("type", "merges"),
                      what="tokenizer file")
    text = read_text(path)
    if args.max_chars:
        text = text[:args.max_chars]
    t0 = time.time()
    tok = BPETokenizer(train_bpe(text, args.vocab_size))
    out = Path(args.out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, tok.config(), indent=None)
    except OSError as e:
        raise ZooError(f"cannot write {str(out)!r}: {e.strerror}.") from None
    n = len(tok.encode(text))
    print(f"trained a byte-level BPE of {tok.vocab_size} tokens on {len(text):,} characters of {path} in "
          f"{time.time() - t0:.1f}s: {n:,} tokens ({len(text.encode('utf-8')) / n:.2f} bytes/token)")
    print(f"saved to {out}; use it with: zoo train MODEL --tokenizer {out}")


def add_cli(sub):
    s = sub.add_parser("data", help="prepare token shards for training")
    dsub = s.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    p = dsub.add_parser("prepare", help="encode text files or a streamed Hugging Face dataset into token shards")
    p.add_argument("inputs", nargs="*", help="text files (each split 90/10 into train/val)")
    p.add_argument("--out", required=True, help="directory for the shards and meta.json")
    p.add_argument("--tokenizer", help="char, gpt2 (default) or a trained BPE file from `zoo tokenizer train`")
    p.add_argument("--shard-tokens", type=whole_number, default=100_000_000, help="tokens per shard (default 1e8)")
    p.add_argument("--max-tokens", type=whole_number, help="stop after this many tokens in all")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of each text file for validation")
    p.add_argument("--hf", metavar="DATASET", help="a Hugging Face dataset to stream, e.g. HuggingFaceFW/fineweb-edu")
    p.add_argument("--hf-config", help="dataset config, e.g. sample-10BT")
    p.add_argument("--hf-split", default="train")
    p.add_argument("--text-field", default="text")
    p.add_argument("--val-tokens", type=whole_number, default=1_000_000,
                   help="with --hf: the first this many tokens go to validation")
    p.set_defaults(fn=cmd_prepare)
    s.set_defaults(fn=lambda a: (s.print_help(), 2)[1])

    s = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer on your corpus")
    tsub = s.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND")
    p = tsub.add_parser("train", help="learn byte-level BPE merges from a text file")
    p.add_argument("--data", help="text file (default: the built-in tinyshakespeare)")
    p.add_argument("--vocab-size", type=whole_number, default=1024)
    p.add_argument("--max-chars", type=whole_number, help="train on only the first this many characters")
    p.add_argument("--out", required=True, help="where to save the tokenizer (JSON)")
    p.add_argument("--force", action="store_true", help="overwrite --out even if it is not a tokenizer this "
                                                        "command wrote (never the corpus itself)")
    p.set_defaults(fn=cmd_tokenizer_train)
    s.set_defaults(fn=lambda a: (s.print_help(), 2)[1])
