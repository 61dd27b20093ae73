"""Text generation from an `lm` bundle through its step graph.

The prompt primes the state in one call (or <eos>, the boundary a new text follows in training,
when there is none); then one step per drawn token, with the same `sample_next` the torch-side
preview uses, so a seed gives the same text on both sides.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from toolkit.data.text import prompt_tokens
from toolkit.data.vocab import EOS_ID, Vocabulary
from toolkit.errors import RnnkitError
from toolkit.models.sampling import NEVER_DRAWN, sample_next


class GenerateError(RnnkitError):
    exit_code = 2


def generate(
    engine,
    prompt: str = "",
    max_tokens: int = 200,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
) -> Iterator[str]:
    """Yield generated tokens one at a time (stopping at <eos> or after `max_tokens`)."""
    inp = engine.manifest["input"]
    if engine.manifest["task"] != "lm":
        raise GenerateError(
            f"{engine.path}: generation needs a language model (task lm), this is {engine.manifest['task']}"
        )
    if max_tokens < 0:
        raise GenerateError(f"--max-tokens must be >= 0, got {max_tokens}")
    try:  # sample_next checks these too, but only once a token is drawn
        sample_next(np.zeros(1), np.random.default_rng(0), temperature, top_k, top_p)
    except ValueError as e:
        raise GenerateError(str(e)) from None
    vocab = Vocabulary(inp["vocab"])
    ids = vocab.encode(prompt_tokens(prompt, inp.get("level", "char"), bool(inp.get("lowercase")))) if prompt else []
    if len(ids) == 0:
        ids = np.array([EOS_ID])
    rng = np.random.default_rng(seed)
    stream = engine.stream()
    logits = stream.push(ids)[-1]
    for _ in range(max_tokens):
        nxt = sample_next(logits, rng, temperature, top_k, top_p, NEVER_DRAWN)
        if nxt == EOS_ID:
            return
        yield vocab.tokens[nxt]
        logits = stream.push(np.array([nxt], dtype=np.int64))[-1]


def joiner(manifest: dict) -> str:
    """What goes between generated tokens: nothing for characters, a space for words."""
    return "" if manifest["input"].get("level", "char") == "char" else " "
