"""Token generation with the models' caches (``zoo generate`` is :mod:`zoo.cli.generate`).

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
``block_size`` slots, so each new token attends to the last ``block_size`` positions, and a longer
prompt is read from its last ``block_size`` tokens. A model whose every layer caches a fixed-size
state (mamba, mamba2, the linear family, segment memories: ``cache_size`` reports no bytes per token)
reads a prompt of any length whole and carries the whole stream. A bounded encoding (learned
positions) stops at its last position with ``stop_reason == "context"``.

Sampling order (as in Hugging Face transformers): repetition penalty (Keskar et al. 2019, CTRL,
arXiv:1909.05858), temperature, top-k, top-p (nucleus, Holtzman et al. 2020, arXiv:1904.09751),
min-p (Nguyen et al. 2024, arXiv:2407.01082), then a draw from a ``torch.Generator`` seeded with
``seed``, so a seed reproduces a sample on the same device.
"""
from __future__ import annotations

from ..errors import ZooError
from ..plugin.protocols import max_positions_of, offers_cache
from .sampling import SamplingParams, next_token_probs


def _unwrap(model):
    """The plain Transformer behind a torch.compile or DDP wrapper."""
    for attr in ("_orig_mod", "module"):
        while hasattr(model, attr) and hasattr(getattr(model, attr), "spec"):
            model = getattr(model, attr)
    return model


def context_window(model):
    """(window, bounded): how many positions a step may attend to, and whether generation must stop
    there (a learned table of positions) rather than slide (every other encoding)."""
    limit = max_positions_of(model.posenc)
    return (model.block_size, False) if limit is None else (limit, True)


def carries_whole_stream(model) -> bool:
    """Whether every layer's cache is a fixed-size state (a mixer reporting no bytes per token, such
    as mamba or a segment memory): such a model reads a prompt of any length whole and never slides."""
    from ..plugin.protocols import cache_size
    from ..spec.resolve import dims_of, layer_components
    spec = model.spec
    for i, block in enumerate(model.blocks):
        size = cache_size(type(block.attn), dims_of(spec, i), layer_components(spec, i)["attention"]["params"])
        if size is None or size[0] != 0:
            return False
    return True


def supports_cache(model) -> bool:
    """Whether every layer's attention offers a cache (``new_cache``); if not, generation recomputes."""
    return all(offers_cache(b.attn) for b in model.blocks)


def check_memory(model, batch: int, longest_prompt: int, max_new_tokens: int, use_cache=True, compile=False):
    """Refuse (a ``ZooError`` with the figures) a generation whose cache, token ids and logits would not
    fit in the memory left on the model's device, before any of it is allocated."""
    from ..nn.memory import available_bytes, device_words, fmt_bytes, generation_bytes, model_cache_bytes
    m = _unwrap(model)
    window, bounded = context_window(m)
    total = min(longest_prompt, window) + max_new_tokens
    positions = min(total, window) if bounded else total
    cached = use_cache and supports_cache(m)
    cache_len = (window if compile else min(total, window)) if cached else None
    w = m.wte.weight
    size = model_cache_bytes(m, w.element_size()) if cached else None
    per_token, per_seq = size if size is not None else (None, 0)
    need = generation_bytes(m.spec, per_token, batch, positions, cache_len, w.element_size(), per_seq)
    have = available_bytes(w.device)
    if have is None or need["total"] <= have:
        return need
    weights = sum(p.numel() * p.element_size() for p in m.parameters())
    fixed = (f" + {need['cache_per_sequence']:,} fixed bytes per sequence x {batch:,}"
             if need["cache_per_sequence"] else "")
    cache = (f"a cache of {fmt_bytes(need['cache'])} ({need['cache_per_token']:,} bytes per token x {batch:,} "
             f"sequences x {cache_len:,} positions{fixed}) and " if cached else "")
    raise ZooError(f"generating {batch:,} sequence(s) of up to {positions:,} tokens needs about "
                   f"{fmt_bytes(need['total'])} beyond the model's {fmt_bytes(weights)} of weights: {cache}"
                   f"{fmt_bytes(need['ids'] + need['vocab'])} for token ids and logits; {device_words(w.device)} "
                   f"has {fmt_bytes(have)} available. Generate fewer samples (--num-samples, --prompt) or fewer "
                   f"tokens (--max-new-tokens).")


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
        # an unbounded model reads at most the last `window` prompt tokens (it slides past that anyway),
        # unless every layer carries a fixed-size state over the whole stream
        self.whole_stream = not self.bounded and carries_whole_stream(self.model)
        self.fed = prompts if self.whole_stream else [p[-self.window:] for p in prompts]
        self.eot = eot
        self.use_cache = bool(use_cache) and supports_cache(self.model)
        self.compile = compile if (compile and self.use_cache) else False  # True, or torch.compile options
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                                 or not -2 ** 63 <= seed < 2 ** 64):
            raise ZooError(f"seed must be a whole number from -2**63 to 2**64 - 1 (what torch.Generator takes), "
                           f"not {seed!r}.")
        self.seed = seed
        check_memory(self.model, len(prompts), max(map(len, self.fed)), self.max_new_tokens, self.use_cache,
                     bool(self.compile))
        self.tokens = [[] for _ in prompts]
        self.stop_reason = [None] * len(prompts)
        self.steps = 0
        self.cache = None

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
        self.cache = cache  # the model's cache while it runs (None when recomputing), e.g. for its nbytes
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
        start = 0 if cache is not None or self.whole_stream else max(0, n - self.window)
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
