"""Sampling: ``zoo generate`` on the command line, :func:`generate` and friends from Python.

    import zoo
    from zoo.generate import generate, generate_text, stream_text
    model, tok = zoo.load("runs/gpt2/20260101-120000")
    print(generate_text(model, tok, "ROMEO:", max_new_tokens=200, temperature=0.8, top_k=50, seed=1))
    for i, piece, done in stream_text(model, tok, ["ROMEO:", "JULIET:"], max_new_tokens=100):
        ...                                  # text of sample i as it is produced
    for step in generate(model, [[0, 1, 2]], max_new_tokens=20, seed=0):
        ...                                  # step[i]: the new token id of sequence i (or None)

Decoding prefills each layer's preallocated cache with the prompt (every attention owns its cache
layout, see ``zoo.components.KVCache``), then feeds one token per step at its absolute position,
so a step costs O(context) instead of the O(context^2) of recomputing the whole context
(``use_cache=False`` does that, as a reference and for attentions without a cache).

Several prompts (and several samples of one prompt) run as one batch. Prompts of different
lengths share positions: the shortest is prefilled, and each longer prompt's own next token is fed
in place of a sampled one until it is used up (as in Meta's reference Llama ``generate``), so no
padding or per-sequence positions are needed and results equal those of running alone.

Past the context limit: an encoding without a bound (``max_positions() is None``: RoPE, ALiBi,
sinusoidal, none) keeps going with a sliding window -- the cache is a ring buffer of
``block_size`` slots, so each new token attends to the last ``block_size`` positions. A bounded
encoding (learned positions) stops at its last position with ``stop_reason == "context"``.

Sampling order (as in Hugging Face transformers): repetition penalty (Keskar et al. 2019, CTRL,
arXiv:1909.05858), temperature, top-k, top-p (nucleus, Holtzman et al. 2020, arXiv:1904.09751),
min-p (Nguyen et al. 2024, arXiv:2407.01082), then a draw from a ``torch.Generator`` seeded with
``seed``, so a seed reproduces a sample on the same device.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ZooError

STOP_REASONS = ("length", "eot", "stop", "context")


# ---- loading -----------------------------------------------------------------------------------

def _unwrap(model):
    """The plain Transformer behind a torch.compile or DDP wrapper."""
    for attr in ("_orig_mod", "module"):
        while hasattr(model, attr) and hasattr(getattr(model, attr), "spec"):
            model = getattr(model, attr)
    return model


def load(path, device=None, dtype=None):
    """(model, tokenizer) from a run directory or a checkpoint file; the model in eval mode.

    ``device``: "cpu", "cuda", ... (default: where the checkpoint is loaded, the CPU); ``dtype``:
    a torch dtype or its name ("float32", "bfloat16", "float16"; default: as saved).
    """
    from .checkpoint import load_checkpoint, model_from_checkpoint, resolve_checkpoint_path
    from .tokenizers import from_config, load_config
    ckpt = load_checkpoint(path)
    sd = ckpt["model"]
    if isinstance(sd, dict) and any(k.startswith("_orig_mod.") for k in sd):  # saved from a compiled model
        ckpt = dict(ckpt, model={k.removeprefix("_orig_mod."): v for k, v in sd.items()})
    model = model_from_checkpoint(ckpt)
    tok_cfg = ckpt.get("tokenizer")
    if tok_cfg:
        tok = from_config(tok_cfg)
    else:
        tj = resolve_checkpoint_path(path).parent / "tokenizer.json"
        if not tj.is_file():
            raise ZooError(f"{str(path)!r} has no tokenizer: the checkpoint holds no 'tokenizer' entry and "
                           f"there is no {tj.name} next to it. Copy the run's tokenizer.json there.")
        tok = load_config(tj)
    if tok.vocab_size > model.spec["vocab_size"]:
        raise ZooError(f"the tokenizer has {tok.vocab_size} tokens but the model only {model.spec['vocab_size']}; "
                       f"this tokenizer does not belong to this checkpoint.")
    model = model.to(device=device, dtype=_dtype(dtype))
    return model.eval(), tok


def _dtype(dtype):
    import torch
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ZooError(f"unknown dtype {dtype!r}; choose one of float32, bfloat16, float16.")
    return names[dtype]


# ---- sampling ----------------------------------------------------------------------------------

@dataclass
class SamplingParams:
    """How the next token is drawn from the logits. ``top_k=1`` is greedy decoding."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0

    def validate(self):
        t = self.temperature
        if not (isinstance(t, (int, float)) and t > 0 and t != float("inf")):
            raise ZooError(f"temperature must be a positive number, got {t!r}; "
                           f"for (near-)greedy decoding use --top-k 1 or a small temperature such as 0.01.")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise ZooError(f"top-k must be a whole number of at least 1, got {self.top_k!r}.")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ZooError(f"top-p must be in (0, 1], got {self.top_p!r}; 1 keeps every token, 0.9 is usual.")
        if self.min_p is not None and not 0 <= self.min_p < 1:
            raise ZooError(f"min-p must be in [0, 1), got {self.min_p!r}; 0.05 to 0.1 is usual.")
        if not self.repetition_penalty > 0:
            raise ZooError(f"repetition penalty must be positive, got {self.repetition_penalty!r}; "
                           f"1 is none, 1.1 to 1.3 discourages repeats.")
        return self


def next_token_probs(logits, params: SamplingParams, seen=None):
    """logits (B, V) -> probabilities (B, V) after penalty, temperature and truncation.

    ``seen`` (B, V) bool marks tokens already in each sequence, for the repetition penalty.
    """
    import torch
    logits = logits.float()  # (B, V)
    if seen is not None and params.repetition_penalty != 1.0:
        p = params.repetition_penalty
        logits = torch.where(seen, torch.where(logits > 0, logits / p, logits * p), logits)  # (B, V)
    logits = logits / params.temperature  # (B, V)
    if params.top_k is not None and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))  # (B, V)
    if params.top_p is not None and params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        sorted_probs = sorted_logits.softmax(-1)  # (B, V)
        drop = sorted_probs.cumsum(-1) - sorted_probs > params.top_p  # (B, V); the first token always stays
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))  # (B, V)
    probs = logits.softmax(-1)  # (B, V)
    if params.min_p:
        keep = probs >= params.min_p * probs.max(-1, keepdim=True).values  # (B, V)
        probs = probs * keep
        probs = probs / probs.sum(-1, keepdim=True)  # (B, V)
    return probs


# ---- token generation --------------------------------------------------------------------------

def context_window(model):
    """(window, bounded): how many positions a step may attend to, and whether generation must stop
    there (a learned table of positions) rather than slide (every other encoding)."""
    limit = model.posenc.max_positions() if hasattr(model.posenc, "max_positions") else None
    return (model.block_size, False) if limit is None else (limit, True)


def supports_cache(model) -> bool:
    """Whether every layer's attention offers a cache (``new_cache``); if not, generation recomputes."""
    return all(callable(getattr(b.attn, "new_cache", None)) for b in model.blocks)


class Generation:
    """Token-by-token generation for a batch of prompts; iterate to run it.

    Each step yields a list with, for each sequence, its new token id, or None while the sequence
    is still being fed its own (longer) prompt or once it has finished. Afterwards (and during),
    ``tokens[i]`` holds sequence i's generated ids and ``stop_reason[i]`` one of "length"
    (max_new_tokens reached), "eot" (the end-of-text id was drawn; not included in ``tokens``),
    "stop" (finished by :meth:`stop`, e.g. on a stop string), "context" (a bounded positional
    encoding's last position was reached), or None while running.
    """

    def __init__(self, model, prompts, max_new_tokens=256, sampling: SamplingParams | None = None, *,
                 seed=None, eot=None, vocab_size=None, use_cache=True, compile=False):
        self.model = _unwrap(model)
        self.sampling = (sampling or SamplingParams()).validate()
        self.max_new_tokens = int(max_new_tokens)
        if self.max_new_tokens < 0:
            raise ZooError(f"max_new_tokens must be 0 or more, got {max_new_tokens}.")
        if not prompts:
            raise ZooError("no prompts to generate from.")
        V = self.model.spec["vocab_size"]
        self.vocab_size = min(vocab_size or V, V)  # ids past the tokenizer's vocabulary (padding) are never drawn
        prompts = [list(map(int, p)) for p in prompts]
        for i, p in enumerate(prompts):
            if not p:
                raise ZooError(f"prompt {i + 1} is empty: give at least one token (a tokenizer without an "
                               f"end-of-text token cannot start from nothing).")
            if min(p) < 0 or max(p) >= V:
                raise ZooError(f"prompt {i + 1} holds token ids outside the model's vocabulary [0, {V}).")
        self.window, self.bounded = context_window(self.model)
        if self.bounded and max(map(len, prompts)) > self.window:
            raise ZooError(f"a prompt is {max(map(len, prompts))} tokens long, but this model's "
                           f"{self.model.spec['posenc']['name']!r} positional encoding has only {self.window} "
                           f"positions; shorten the prompt.")
        self.prompts = prompts
        # an unbounded model reads at most the last `window` prompt tokens (it slides past that anyway)
        self.fed = [p[-self.window:] for p in prompts]
        self.eot = eot
        self.use_cache = bool(use_cache) and supports_cache(self.model)
        self.compile = compile if (compile and self.use_cache) else False  # True, or torch.compile options
        self.seed = seed
        self.tokens = [[] for _ in prompts]
        self.stop_reason = [None] * len(prompts)
        self.steps = 0

    @property
    def batch(self) -> int:
        return len(self.prompts)

    @property
    def done(self) -> bool:
        return all(r is not None for r in self.stop_reason)

    def stop(self, i, reason="stop"):
        """Finish sequence i (the batch goes on for the others)."""
        if self.stop_reason[i] is None:
            self.stop_reason[i] = reason

    def __iter__(self):
        import torch
        m = self.model
        was_training = m.training
        m.eval()
        try:
            with torch.no_grad():
                yield from self._run(torch)
        finally:
            m.train(was_training)

    def _run(self, torch):
        m = self.model
        dev = m.wte.weight.device
        B = self.batch
        lens = [len(p) for p in self.fed]
        P0, P1 = min(lens), max(lens)
        total = P1 + self.max_new_tokens  # positions a sequence may reach
        if self.max_new_tokens == 0:
            self.stop_reason = ["length"] * B
            return
        if self.bounded and P1 >= self.window:
            self.stop_reason = ["context"] * B
            return
        seq = torch.zeros(B, min(total, self.window) if self.bounded else total, dtype=torch.long, device=dev)  # (B, S)
        for i, p in enumerate(self.fed):
            seq[i, :len(p)] = torch.tensor(p, dtype=torch.long)
        forced = torch.zeros_like(seq, dtype=torch.bool)  # (B, S) True where the prompt supplies the token
        for i, p in enumerate(self.fed):
            forced[i, :len(p)] = True
        seen = torch.zeros(B, m.spec["vocab_size"], dtype=torch.bool, device=dev)  # (B, V)
        for i, p in enumerate(self.prompts):
            seen[i, torch.tensor(p, device=dev)] = True
        gen = torch.Generator(device=dev)
        gen.manual_seed(self.seed if self.seed is not None else int(torch.randint(0, 2**62, ()).item()))

        step_fn, cache = self._decoder(torch, B, total, dev)
        logits = self._forward_context(seq, P0, cache)  # (B, V): predictions for position P0
        cur = P0  # the position whose token is chosen next
        while True:
            if self.bounded and cur >= self.window:
                for i in range(B):
                    self.stop(i, "context")
                return
            probs = next_token_probs(logits[:, :self.vocab_size], self.sampling, seen[:, :self.vocab_size])  # (B, V')
            drawn = torch.multinomial(probs, 1, generator=gen).squeeze(1)  # (B,)
            nxt = torch.where(forced[:, cur], seq[:, cur], drawn)  # (B,); cur < S (see total)
            seen.scatter_(1, nxt[:, None], True)
            out, ids = [], nxt.tolist()
            for i in range(B):
                if self.stop_reason[i] is not None or cur < lens[i]:
                    out.append(None)
                    continue
                if self.eot is not None and ids[i] == self.eot:
                    self.stop(i, "eot")
                    out.append(None)
                    continue
                self.tokens[i].append(ids[i])
                out.append(ids[i])
                if len(self.tokens[i]) >= self.max_new_tokens:
                    self.stop(i, "length")
            self.steps += 1
            yield out
            if self.done:
                return
            seq[:, cur] = nxt
            if step_fn is not None:
                logits = step_fn(nxt[:, None], torch.tensor([cur], device=dev))  # (B, V)
            else:
                logits = self._forward_context(seq, cur + 1, None)  # (B, V)
            cur += 1

    def _forward_context(self, seq, n, cache):
        """Logits (B, V) after the first n tokens: a prefill of the cache, or a full recompute of
        the last ``window`` tokens at their absolute positions."""
        import torch
        start = 0 if cache is not None else max(0, n - self.window)
        pos = torch.arange(start, n, device=seq.device)  # (T,)
        return self.model(seq[:, start:n], cache=cache, pos=pos)[0][:, -1]  # (B, V)

    def _decoder(self, torch, B, total, dev):
        """(decode step, cache) for the cached path; (None, None) for the recompute path."""
        if not self.use_cache:
            return None, None
        m = self.model
        dtype = m.wte.weight.dtype
        if not self.compile:
            cache = m.new_cache(B, min(total, self.window), device=dev, dtype=dtype)

            def step(idx, pos):  # idx: (B, 1), pos: (1,)
                return m(idx, cache=cache, pos=pos)[0][:, -1]  # (B, V)
            return step, cache
        # a static cache of the whole window, compiled once per (batch, device, dtype, options), reused
        opts = dict(self.compile) if isinstance(self.compile, dict) else {}
        opts.setdefault("dynamic", False)
        if dev.type == "cuda" and "backend" not in opts:
            opts.setdefault("mode", "reduce-overhead")  # CUDA graphs over the static cache
        key = (B, self.window, str(dev), dtype, tuple(sorted(opts.items())))
        store = m.__dict__.setdefault("_zoo_static_decoders", {})
        if key not in store:
            cache = m.new_cache(B, self.window, device=dev, dtype=dtype)

            def step(idx, pos):  # idx: (B, 1), pos: (1,)
                return m(idx, cache=cache, pos=pos)[0][:, -1]  # (B, V)
            store[key] = (torch.compile(step, **opts), cache)
        step, cache = store[key]
        cache.reset()
        return step, cache


def generate(model, prompts, max_new_tokens=256, *, temperature=1.0, top_k=None, top_p=None, min_p=None,
             repetition_penalty=1.0, seed=None, eot=None, vocab_size=None, use_cache=True, compile=False):
    """A :class:`Generation` over token-id prompts (a list of lists); iterate it to get the new
    tokens step by step. See the module docstring for the sampling parameters."""
    sp = SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty)
    return Generation(model, prompts, max_new_tokens, sp, seed=seed, eot=eot, vocab_size=vocab_size,
                      use_cache=use_cache, compile=compile)


# ---- text --------------------------------------------------------------------------------------

def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a prompt; an empty prompt starts from the end-of-text token if there is one."""
    ids = tokenizer.encode(text)
    if ids:
        return ids
    if getattr(tokenizer, "eot", None) is not None:
        return [tokenizer.eot]
    raise ZooError("the prompt is empty and this tokenizer has no beginning/end-of-text token to start "
                   "from; give some text, e.g. --prompt $'\\n' or --prompt 'ROMEO:'.")


class TextStream:
    """Text of a batch of samples as it is produced: iterate for ``(i, piece, finished)`` events.

    Stop strings end a sample before they appear (the text that could be the start of one is held
    back until it is clear); so is an incomplete multi-byte character. ``texts[i]`` is sample i's
    continuation, ``prompts[i]`` its prompt, ``generation`` the underlying :class:`Generation`.
    """

    def __init__(self, tokenizer, generation: Generation, prompts, stop=()):
        self.tok = tokenizer
        self.generation = generation
        self.prompts = list(prompts)
        self.stop_strings = [s for s in (stop or ()) if s]
        self.texts = [""] * generation.batch

    def __iter__(self):
        g, B = self.generation, self.generation.batch
        hold = max(map(len, self.stop_strings), default=1) - 1
        emitted = [0] * B
        closed = [False] * B

        def settle(i, final):
            text = self.tok.decode(g.tokens[i])
            for s in self.stop_strings:
                at = text.find(s, max(0, emitted[i] - len(s)))
                if at >= 0:
                    text, final = text[:at], True
                    g.stop_reason[i] = "stop"  # even if this step also reached max_new_tokens
            safe = len(text) if final else len(text) - hold
            while not final and safe > emitted[i] and text[safe - 1] == "\ufffd":  # an unfinished character
                safe -= 1
            self.texts[i] = text if final else text[:max(safe, emitted[i])]
            piece = text[emitted[i]:safe] if safe > emitted[i] else ""
            emitted[i] = max(emitted[i], safe)
            return piece, final

        for step in g:
            for i, t in enumerate(step):
                if closed[i] or (t is None and g.stop_reason[i] is None):
                    continue
                piece, final = settle(i, g.stop_reason[i] is not None)
                if final:
                    closed[i] = True
                if piece or final:
                    yield i, piece, final
        for i in range(B):
            if not closed[i]:
                piece, _ = settle(i, True)
                yield i, piece, True


def stream_text(model, tokenizer, prompts, max_new_tokens=256, *, num_samples=1, stop=(), temperature=1.0,
                top_k=None, top_p=None, min_p=None, repetition_penalty=1.0, seed=None, use_cache=True,
                compile=False) -> TextStream:
    """Sample ``num_samples`` continuations of each prompt (a string or a list of strings), all in
    one batch; iterate the result for ``(sample index, text piece, finished)``. Sample
    ``j * num_samples + s`` is the s-th sample of prompt j."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if num_samples < 1:
        raise ZooError(f"num-samples must be at least 1, got {num_samples}.")
    texts = [p for p in prompts for _ in range(num_samples)]
    ids = [encode_prompt(tokenizer, p) for p in texts]
    g = generate(model, ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                 repetition_penalty=repetition_penalty, seed=seed, eot=getattr(tokenizer, "eot", None),
                 vocab_size=tokenizer.vocab_size, use_cache=use_cache, compile=compile)
    return TextStream(tokenizer, g, texts, stop)


def generate_text(model, tokenizer, prompt, max_new_tokens=256, temperature=1.0, top_k=None, seed=None,
                  **kwargs) -> str:
    """The prompt followed by one sampled continuation (what the trainer writes to TensorBoard).
    Leaves the model in the train/eval mode it was in. ``kwargs``: as :func:`stream_text`."""
    s = stream_text(model, tokenizer, [prompt], max_new_tokens, temperature=temperature, top_k=top_k,
                    seed=seed, **kwargs)
    for _ in s:
        pass
    return prompt + s.texts[0]


# ---- the command -------------------------------------------------------------------------------

def _device(name):
    import torch
    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ZooError(f"--device {name}: no CUDA device is available here; use --device cpu.")
    return name


def add_cli(subparsers):
    s = subparsers.add_parser(
        "generate", help="sample text from a trained model, streamed as it is produced",
        description="Sample from a run directory or checkpoint. Several --prompt and --num-samples run as "
                    "one batch; --seed makes it reproducible. Past the context limit, models with an "
                    "unbounded positional encoding continue with a sliding window; learned positions stop.")
    s.add_argument("checkpoint", metavar="RUN_DIR_OR_CHECKPOINT")
    s.add_argument("--prompt", action="append", metavar="TEXT",
                   help="text to continue (repeat for several prompts; default: unconditional, from the "
                        "end-of-text token)")
    s.add_argument("--max-new-tokens", type=int, default=256, metavar="N")
    s.add_argument("--temperature", type=float, default=1.0, help="> 0; lower is more conservative (default 1)")
    s.add_argument("--top-k", type=int, help="sample among the k most likely tokens (1: greedy)")
    s.add_argument("--top-p", type=float, help="nucleus sampling: the smallest set with this much probability, in (0, 1]")
    s.add_argument("--min-p", type=float, help="drop tokens below this fraction of the top token's probability")
    s.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages tokens already present")
    s.add_argument("--num-samples", type=int, default=1, metavar="N", help="samples per prompt, in one batch")
    s.add_argument("--seed", type=int, help="random seed; the same seed gives the same text on the same device")
    s.add_argument("--stop", action="append", metavar="TEXT", help="end a sample before this text (repeatable)")
    s.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    s.add_argument("--dtype", default="auto", help="float32, bfloat16 or float16 (default: bfloat16 on CUDA, else float32)")
    s.add_argument("--no-cache", action="store_true", help="recompute the whole context every step (slow; a reference)")
    s.add_argument("--compile", action="store_true", help="torch.compile the decode step over a static cache "
                                                          "(CUDA graphs on a GPU); pays off for long runs")
    s.set_defaults(fn=cmd_generate)


def cmd_generate(args):
    import torch
    dev = _device(args.device)
    dtype = args.dtype
    if dtype == "auto":
        dtype = "bfloat16" if dev.startswith("cuda") and torch.cuda.is_bf16_supported() else "float32"
    if args.max_new_tokens < 0:
        raise ZooError(f"--max-new-tokens must be 0 or more, got {args.max_new_tokens}.")
    SamplingParams(args.temperature, args.top_k, args.top_p, args.min_p, args.repetition_penalty).validate()
    model, tok = load(args.checkpoint, device=dev, dtype=dtype)
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
        print(f"zoo: note: past the context of {g.window} tokens {name!r} continues with a sliding window "
              f"over the last {g.window} positions.", file=sys.stderr)
    _print_stream(stream, sys.stdout)
    reached = [i for i, r in enumerate(g.stop_reason) if r == "context"]
    if reached:
        pe = model.spec["posenc"]["name"]
        print(f"zoo: note: stopped at the context limit: {name!r} uses the bounded {pe!r} positional encoding "
              f"with {g.window} positions, so a sample cannot be longer than {g.window} tokens, prompt included. "
              f"Models with an unbounded encoding (rope, alibi, sinusoidal, none) continue with a sliding "
              f"window.", file=sys.stderr)
    return 0


def _print_stream(stream: TextStream, out):
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


# ---- benchmark: cache against recompute --------------------------------------------------------

def bench_cache(model_name="gpt2", preset="char", new_tokens=500, prompt_len=1, batch=1, device="cpu",
                overrides=None, seed=0, compile=False, runs=("cache", "recompute"), dtype=None, log=print):
    """Seconds to decode ``new_tokens`` tokens per sequence with the KV cache ("cache") and by
    recomputing the whole context each step ("recompute"), greedy, same randomly initialised model
    (speed does not depend on the weights); "hf" times Hugging Face transformers' ``generate`` on a
    GPT-2 built from the same configuration (no download). A bounded (learned) model's context is
    raised to fit ``prompt_len + new_tokens``."""
    import torch
    import zoo
    overrides = dict(overrides or {})
    spec = zoo.resolve(model_name, preset, **overrides)
    need = prompt_len + new_tokens
    torch.manual_seed(seed)
    model = zoo.build_from_spec(spec)
    window, bounded = context_window(model)
    if bounded and window < need:
        log(f"block_size raised from {spec['block_size']} to {need}: {model_name}'s learned positions must "
            f"cover {need} positions")
        overrides["block_size"] = need
        spec = zoo.resolve(model_name, preset, **overrides)
        torch.manual_seed(seed)
        model = zoo.build_from_spec(spec)
    model = model.to(device=device, dtype=_dtype(dtype)).eval()
    prompt = torch.randint(0, spec["vocab_size"], (batch, prompt_len), generator=torch.Generator().manual_seed(seed))
    res = {"model": model_name, "preset": preset, "block_size": spec["block_size"], "new_tokens": new_tokens,
           "prompt_len": prompt_len, "batch": batch, "device": str(device), "dtype": str(model.wte.weight.dtype),
           "compile": bool(compile), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if str(device).startswith("cuda"):
        res["gpu"] = torch.cuda.get_device_name(device)
    outs = {}

    def timed(fn):
        fn(3)  # warm-up (and compilation)
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn(new_tokens)
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0, time.process_time() - c0, out

    for name in runs:
        if name == "hf":
            run = _hf_gpt2_generate(spec, prompt.to(device), device, model.wte.weight.dtype)
        else:
            def run(n, name=name):
                g = generate(model, prompt.tolist(), n, top_k=1, use_cache=name != "recompute",
                             compile=compile and name != "recompute")
                for _ in g:
                    pass
                return g.tokens
        dt, cpu, outs[name] = timed(run)
        res[f"{name}_s"], res[f"{name}_cpu_s"] = dt, cpu
        res[f"{name}_tok_s"] = batch * new_tokens / dt
        log(f"{name:>9}: {dt:8.2f} s wall  {batch * new_tokens / dt:9.1f} tok/s  ({cpu:.2f} s of CPU time)")
    if "cache_s" in res and "recompute_s" in res:
        res["speedup"] = res["recompute_s"] / res["cache_s"]
        res["speedup_cpu_time"] = res["recompute_cpu_s"] / res["cache_cpu_s"]
        res["same_tokens"] = outs["cache"] == outs["recompute"]
        log(f"  speedup: {res['speedup']:.1f}x wall, {res['speedup_cpu_time']:.1f}x CPU time "
            f"(greedy tokens identical: {res['same_tokens']})")
    if "cache_s" in res and "hf_s" in res:
        res["vs_hf"] = res["hf_s"] / res["cache_s"]
        log(f"  zoo / transformers decode speed: {res['vs_hf']:.2f}x")
    return res


def _hf_gpt2_generate(spec, prompt, device, dtype):
    """A function n -> tokens running transformers' greedy ``generate`` for n new tokens on GPT-2
    built from ``spec``'s sizes (random weights; only the speed is compared)."""
    import torch
    att, pe, ffn = spec["attention"]["name"], spec["posenc"]["name"], spec["ffn"]["name"]
    if (att, pe, ffn) != ("mha", "learned", "mlp"):
        raise ZooError(f"the transformers comparison needs GPT-2's components (mha, learned, mlp); "
                       f"{spec['name']!r} has {att}, {pe}, {ffn}. Use --model gpt2.")
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        raise ZooError("the transformers comparison needs Hugging Face transformers: pip install transformers") from None
    cfg = GPT2Config(vocab_size=spec["vocab_size"], n_positions=spec["block_size"], n_embd=spec["d_model"],
                     n_layer=spec["n_layers"], n_head=spec["n_heads"], resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)
    hf = GPT2LMHeadModel(cfg).to(device=device, dtype=dtype).eval()

    def run(n):
        with torch.no_grad():
            out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
                              do_sample=False, pad_token_id=0)
        return out[:, prompt.shape[1]:].tolist()
    return run


def main(argv=None):
    p = argparse.ArgumentParser(prog="python3 -m zoo.generate",
                                description="Benchmark: decode with the KV cache against recomputing the context.")
    p.add_argument("--bench", action="store_true", required=True)
    p.add_argument("--model", default="gpt2")
    p.add_argument("--preset", default="char")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.add_argument("--new-tokens", type=int, default=500)
    p.add_argument("--prompt-len", type=int, default=1)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice); on a "
                                                "shared machine 1 avoids stalls of an oversubscribed thread pool")
    p.add_argument("--dtype", help="float32, bfloat16 or float16 (default float32)")
    p.add_argument("--only", choices=["cache", "recompute"], help="time one decoder only")
    p.add_argument("--hf", action="store_true", help="also time transformers' generate on the same GPT-2 "
                                                     "configuration (needs transformers)")
    p.add_argument("--json", metavar="FILE", help="also write the results here")
    args = p.parse_args(argv)
    from .manifest import parse_override
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    try:
        res = bench_cache(args.model, args.preset, args.new_tokens, args.prompt_len, args.batch, _device(args.device),
                          dict(parse_override(s) for s in args.set or []), compile=args.compile,
                          runs=([args.only] if args.only else ["cache", "recompute"]) + (["hf"] if args.hf else []),
                          dtype=args.dtype)
    except ZooError as e:
        print(f"zoo: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        import json
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
