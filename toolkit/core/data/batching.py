"""Padded batches of sequences and truncated-BPTT windows over streams (NumPy only).

Sequences: `bucket_batches` groups similar lengths so little compute goes to padding; `pad_batch`
pads with 0 (<pad>) and keeps `lengths`. Streams: `stream_windows` is the classic "batchify":
B parallel contiguous rows walked in windows of `bptt` steps, state carried between windows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from toolkit.core.data.types import PAD_TARGET, Batch, Example, SequenceDataset, StreamDataset


def pad(sequences: Sequence[np.ndarray], fill=0, dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """Sequences [T_i, ...] stacked into [B, max T_i, ...] with `fill` beyond each length, and the
    lengths (int64 [B]). The one padding routine of training, export checks and the runtime."""
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    first = np.asarray(sequences[0])
    out = np.full((len(sequences), int(lengths.max()), *first.shape[1:]), fill, dtype=dtype or first.dtype)
    for b, s in enumerate(sequences):
        out[b, : lengths[b]] = s
    return out, lengths


def pad_batch(examples: Sequence[Example], index: Sequence[int] | np.ndarray) -> Batch:
    """Pad `examples` to their longest length.

    inputs: int64 [B, T] (0 = <pad>) or float32 [B, T, F] (zeros); lengths: int64 [B]. targets:
    classify int64 [B]; tag int64 [B, T] (PAD_TARGET beyond each length); regress float32 [B, D]
    or [B, T, D] (zeros beyond each length); None if any example has no target.
    """
    if not len(examples):
        raise ValueError("pad_batch needs at least one example")
    first = examples[0].inputs
    inputs, lengths = pad([ex.inputs for ex in examples], dtype=np.int64 if first.ndim == 1 else np.float32)
    return Batch(
        inputs=inputs, lengths=lengths, targets=_pad_targets(examples, lengths), index=np.asarray(index, dtype=np.int64)
    )


def _pad_targets(examples: Sequence[Example], lengths: np.ndarray) -> np.ndarray | None:
    targets = [ex.target for ex in examples]
    if any(t is None for t in targets):
        return None
    first = targets[0]
    if not isinstance(first, np.ndarray):  # classify: one label id per sequence
        return np.array(targets, dtype=np.int64)
    if first.dtype.kind in "iu":  # tag: one id per step
        return pad(targets, fill=PAD_TARGET, dtype=np.int64)[0]
    if first.ndim == 1:  # regress, per sequence
        return np.stack(targets).astype(np.float32)
    return pad(targets, dtype=np.float32)[0]  # regress, per step


def bucket_batches(
    dataset: SequenceDataset, batch_size: int, rng: np.random.Generator | None = None, pool: int = 50
) -> list[Batch]:
    """Batches of similar length covering every example exactly once.

    With `rng` (training): shuffle, cut into pools of batch_size * pool examples, sort each pool
    by length, cut pools into batches, shuffle the batch order; deterministic given the rng state.
    Without (evaluation): sorted by length, no shuffling; Batch.index restores input order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    examples = dataset.examples
    n = len(examples)
    if n == 0:
        return []
    lengths = np.array([len(ex) for ex in examples], dtype=np.int64)
    groups: list[np.ndarray] = []
    if rng is None:
        order = np.argsort(lengths, kind="stable")
        groups = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    else:
        order = rng.permutation(n)
        span = batch_size * max(1, pool)
        for start in range(0, n, span):
            chunk = order[start : start + span]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            groups.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
        groups = [groups[i] for i in rng.permutation(len(groups))]
    return [pad_batch([examples[i] for i in g], g) for g in groups]


def stream_windows(stream: StreamDataset, batch_size: int, bptt: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Truncated-BPTT windows over a stream.

    B = min(batch_size, N) rows; row b is the contiguous slice [b*n, (b+1)*n) with n = N // B
    (the last N - B*n positions are dropped). Windows of `bptt` steps along time: inputs [B, W]
    or [B, W, F], targets [B, W] or [B, W, D]; the last window may be shorter. No shuffling:
    consecutive windows continue each row, so the caller carries the hidden state across them.
    """
    if batch_size < 1 or bptt < 1:
        raise ValueError(f"batch_size and bptt must be positive, got {batch_size} and {bptt}")
    total = len(stream)
    if total == 0:
        return []
    rows = min(batch_size, total)
    n = total // rows
    inputs = stream.inputs[: rows * n].reshape(rows, n, *stream.inputs.shape[1:])
    targets = stream.targets[: rows * n].reshape(rows, n, *stream.targets.shape[1:])
    return [
        (np.ascontiguousarray(inputs[:, s : s + bptt]), np.ascontiguousarray(targets[:, s : s + bptt]))
        for s in range(0, n, bptt)
    ]
