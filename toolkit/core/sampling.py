"""Next-token sampling from logits (temperature, top-k, top-p) and the generation loop.

NumPy only: the torch-side generator and the ONNX runtime run this same loop, so a seed gives
the same text on both sides.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from toolkit.core.data.text import prompt_tokens
from toolkit.core.data.vocab import BOS_ID, EOS_ID, PAD_ID, Vocabulary

# Never generated: padding, and <bos> (texts are separated by <eos>, which ends generation).
NEVER_DRAWN = (PAD_ID, BOS_ID)


@dataclass(frozen=True)
class Sampling:
    """How to draw: up to `max_tokens` tokens, `temperature` 0 = greedy, optional top-k / top-p
    truncation, and the seed (the same seed gives the same text, in torch and in the runtime)."""

    max_tokens: int = 200
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0

    def check(self) -> Sampling:
        """ValueError naming the first setting out of range."""
        if self.max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {self.max_tokens}")
        check_settings(self.temperature, self.top_k, self.top_p)
        return self


DEFAULT_SAMPLING = Sampling()


def joiner(level: str) -> str:
    """What goes between generated tokens: nothing for characters, a space for words."""
    return "" if level == "char" else " "


def check_settings(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """ValueError naming the first sampling setting out of range."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def prompt_ids(vocab: Vocabulary, prompt: str, level: str, lowercase: bool = False) -> np.ndarray:
    """The prompt's token ids, or <eos> alone (the boundary a new text follows in training)."""
    ids = vocab.encode(prompt_tokens(prompt, level, lowercase))
    return ids if len(ids) else np.array([EOS_ID], dtype=np.int64)


def draw(step: Callable[[Sequence[int]], np.ndarray], prompt: np.ndarray, sampling: Sampling) -> Iterator[int]:
    """Token ids drawn after `prompt`, up to `max_tokens`, stopping before <eos>. `step(ids)` runs
    the model on those ids, carrying its state, and returns the logits after the last one."""
    s = sampling.check()
    rng = np.random.default_rng(s.seed)
    logits = step(prompt)
    for _ in range(s.max_tokens):
        nxt = sample_next(logits, rng, s.temperature, s.top_k, s.top_p, NEVER_DRAWN)
        if nxt == EOS_ID:
            return
        yield nxt
        logits = step([nxt])


def sample_next(
    logits: np.ndarray,
    rng: np.random.Generator,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    exclude: tuple[int, ...] = (),
) -> int:
    """Draw one token id from unnormalised `logits` [V]. temperature 0 means greedy (argmax).
    Ids in `exclude` are never drawn."""
    check_settings(temperature, top_k, top_p)
    logits = np.array(logits, dtype=np.float64)
    logits[list(exclude)] = -np.inf
    if temperature == 0:
        return int(np.argmax(logits))
    z = logits / temperature
    if top_k is not None and top_k < z.size:
        kth = np.partition(z, -top_k)[-top_k]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cumulative = np.cumsum(p[order])
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        keep = order[: int(np.searchsorted(cumulative, top_p) + 1)]
        mask = np.zeros_like(p, dtype=bool)
        mask[keep] = True
        p = np.where(mask, p, 0.0)
        p /= p.sum()
    return int(rng.choice(p.size, p=p))
