"""Next-token sampling from logits: temperature, top-k, top-p (nucleus).

NumPy only, so the torch-side generator and the ONNX runtime draw tokens the same way.
"""

from __future__ import annotations

import numpy as np

from toolkit.data.vocab import BOS_ID, PAD_ID

# Never generated: padding, and <bos> (texts are separated by <eos>, which ends generation).
NEVER_DRAWN = (PAD_ID, BOS_ID)


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
    logits = np.array(logits, dtype=np.float64)
    logits[list(exclude)] = -np.inf
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
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
