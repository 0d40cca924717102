"""Text in, text out: prompts encoded, samples decoded as they are produced, stop strings."""
from __future__ import annotations

from ..errors import ZooError
from .generation import Generation, check_memory, generate


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
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ZooError(f"num-samples must be a whole number of at least 1, got {num_samples!r}.")
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    if encoded and isinstance(max_new_tokens, int) and max_new_tokens >= 0:  # before the batch is built
        check_memory(model, len(prompts) * num_samples, max(map(len, encoded)), max_new_tokens, use_cache, compile)
    texts = [p for p in prompts for _ in range(num_samples)]
    ids = [e for e in encoded for _ in range(num_samples)]
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
