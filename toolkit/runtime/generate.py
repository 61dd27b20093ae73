"""Text generation from an `lm` bundle through its step graph.

The prompt primes the state in one call (or <eos>, the boundary a new text follows in training,
when there is none); then one step per drawn token, in the same `draw` loop the torch-side
preview runs, so a seed gives the same text on both sides.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from toolkit.core.data.vocab import Vocabulary
from toolkit.core.errors import RnnkitError
from toolkit.core.sampling import DEFAULT_SAMPLING, Sampling, draw, joiner, prompt_ids


class GenerateError(RnnkitError):
    exit_code = 2


def generate(engine, prompt: str = "", sampling: Sampling = DEFAULT_SAMPLING) -> Iterator[str]:
    """Yield generated tokens one at a time (stopping at <eos> or after `sampling.max_tokens`)."""
    inp = engine.manifest["input"]
    if engine.manifest["task"] != "lm":
        raise GenerateError(
            f"{engine.path}: generation needs a language model (task lm), this is {engine.manifest['task']}"
        )
    try:  # a user error (exit 2) before the prompt runs, not a ValueError from the sampler
        sampling.check()
    except ValueError as e:
        raise GenerateError(str(e)) from None
    vocab = Vocabulary(inp["vocab"])
    stream = engine.stream()
    ids = prompt_ids(vocab, prompt, inp.get("level", "char"), bool(inp.get("lowercase")))
    step = lambda ids: stream.push(np.asarray(ids, dtype=np.int64))[-1]  # noqa: E731
    for nxt in draw(step, ids, sampling):
        yield vocab.tokens[nxt]


def text_joiner(manifest: dict) -> str:
    """What goes between a bundle's generated tokens: nothing for characters, a space for words."""
    return joiner(manifest["input"].get("level", "char"))
