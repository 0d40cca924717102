"""Sampling from a model: :func:`generate` over token ids, :func:`stream_text` and
:func:`generate_text` over text, :func:`load` for a run directory (the same as ``zoo.load``).

    import zoo
    from zoo.generate import generate, generate_text, stream_text
    model, tok = zoo.load("runs/gpt2/20260101-120000")
    print(generate_text(model, tok, "ROMEO:", max_new_tokens=200, temperature=0.8, top_k=50, seed=1))
"""
from ..io.checkpoint import load_run as load  # noqa: F401
from .generation import Generation, context_window, generate, supports_cache  # noqa: F401
from .sampling import SamplingParams, next_token_probs  # noqa: F401
from .text import TextStream, encode_prompt, generate_text, stream_text  # noqa: F401

__all__ = ["load", "generate", "generate_text", "stream_text", "Generation", "SamplingParams", "TextStream",
           "next_token_probs", "encode_prompt", "context_window", "supports_cache"]
