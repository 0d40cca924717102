"""``zoo import hf`` and ``zoo export hf``: Hugging Face checkpoints in and out (:mod:`zoo.interop.hf`)."""
from __future__ import annotations


def cmd_import(args):
    from ..interop.hf.convert import import_hf
    from ..nn.transformer import param_count
    spec = import_hf(args.source, args.out, name=args.name, tokenizer=args.tokenizer, dtype=args.dtype,
                     block_size=args.block_size, revision=args.revision, force=args.force)
    n = param_count(spec)
    print(f"imported {args.source} as {spec['name']!r} ({n:,} parameters): "
          f"{spec['attention']['name']} + {spec['posenc']['name']} + {spec['ffn']['name']} + {spec['norm']}")
    print(f"run directory: {args.out} (ckpt.pt, spec.json, tokenizer.json, manifest.json)")
    print(f"try: zoo generate {args.out}   or   zoo finetune {args.out} --data FILE")


def cmd_export(args):
    from ..interop.hf.convert import export_hf
    out = export_hf(args.run, args.out, force=args.force)
    print(f"exported {args.run} to {out} (config.json, model.safetensors); load it with "
          f"transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")


def add_cli(sub):
    s = sub.add_parser("import", help="import pretrained weights (Hugging Face) as a zoo run directory")
    isub = s.add_subparsers(dest="import_format", metavar="FORMAT")
    p = isub.add_parser("hf", help="a Hugging Face model directory or hub id -> a zoo run directory",
                        description="Map a Hugging Face checkpoint (gpt2, llama, mistral) onto zoo components "
                                    "and write a run directory that zoo generate, zoo finetune and zoo.load use.")
    p.add_argument("source", help="a local directory (config.json + *.safetensors) or a hub id such as "
                                  "openai-community/gpt2 (needs network and `pip install 'zoo[hf]'`)")
    p.add_argument("--out", required=True, help="the run directory to create")
    p.add_argument("--name", help="model name in the spec and manifest (default: hf-<source name>)")
    p.add_argument("--tokenizer", help="override the tokenizer (gpt2, a tiktoken encoding, or a tokenizer file)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the stored weights (default float32)")
    p.add_argument("--block-size", type=int, help="context length of the spec (default: the config's maximum)")
    p.add_argument("--revision", help="hub revision (branch, tag or commit)")
    p.add_argument("--force", action="store_true",
                   help="replace the output directory if a zoo command wrote it (never anything else)")
    p.set_defaults(fn=cmd_import)
    s.set_defaults(fn=lambda a: (s.print_help(), 2)[1])

    s = sub.add_parser("export", help="export a zoo run directory (Hugging Face layout)")
    esub = s.add_subparsers(dest="export_format", metavar="FORMAT")
    p = esub.add_parser("hf", help="a zoo run directory -> a Hugging Face model directory",
                        description="Write config.json and model.safetensors (and tokenizer.json for imported "
                                    "Hugging Face tokenizers) for gpt2-, llama- and mistral-shaped models.")
    p.add_argument("run", help="a run directory or checkpoint file")
    p.add_argument("out", help="the directory to create")
    p.add_argument("--force", action="store_true",
                   help="replace the output directory if a zoo command wrote it (never anything else)")
    p.set_defaults(fn=cmd_export)
    s.set_defaults(fn=lambda a: (s.print_help(), 2)[1])
