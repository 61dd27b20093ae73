"""Text generation from an `lm` bundle through its step graph.

The prompt primes the state in one call (or <eos>, the boundary a new text follows in training,
when there is none); then one step per drawn token, in the same `draw` loop the torch-side
preview runs, so a seed gives the same text on both sides.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from toolkit.data.vocab import Vocabulary
from toolkit.errors import RnnkitError
from toolkit.models.sampling import check_settings, draw, prompt_ids


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
    try:  # a user error (exit 2) before the prompt runs, not a ValueError from the sampler
        check_settings(temperature, top_k, top_p)
    except ValueError as e:
        raise GenerateError(str(e)) from None
    vocab = Vocabulary(inp["vocab"])
    stream = engine.stream()
    ids = prompt_ids(vocab, prompt, inp.get("level", "char"), bool(inp.get("lowercase")))
    step = lambda ids: stream.push(np.asarray(ids, dtype=np.int64))[-1]  # noqa: E731
    for nxt in draw(step, ids, max_tokens, temperature, top_k, top_p, seed):
        yield vocab.tokens[nxt]


def joiner(manifest: dict) -> str:
    """What goes between generated tokens: nothing for characters, a space for words."""
    return "" if manifest["input"].get("level", "char") == "char" else " "
