"""Time warping (`train.time_warp: S`): each training series is resampled along a random smooth,
monotone time map, a fresh one per sequence per epoch, so that a small set of series shows its
shapes at many local speeds (Le Guennec et al., "Data augmentation for time series
classification using convolutional neural networks", 2016; Iwana and Uchida, "An empirical
survey of data augmentation for time series classification with neural networks", 2021).

The map: a sequence's time axis [0, 1] is cut into SEGMENTS equal pieces whose speeds are
e^(S * N(0, 1)); the warped position of a step is where the piecewise-linear map with those
speeds (normalised to end at 1) takes it, and its value is linearly interpolated between the two
real steps around that position. The first and last steps stay, the length stays, and steps
past a sequence's length are left as they are. Per-sequence tasks on feature series only: a
per-step target would have to move with its step.
"""

from __future__ import annotations

import numpy as np
import torch

SEGMENTS = 5


def time_warp(x: torch.Tensor, lengths: torch.Tensor, strength: float, rng: np.random.Generator) -> torch.Tensor:
    """x [B, T, F] (padded; `lengths` [B] of real steps) resampled along random monotone maps."""
    batch, total, _ = x.shape
    speeds = np.exp(strength * rng.standard_normal((batch, SEGMENTS)))
    knots = np.concatenate([np.zeros((batch, 1)), np.cumsum(speeds, axis=1)], axis=1)
    knots = torch.from_numpy(knots / knots[:, -1:]).to(x.device, torch.float64)  # [B, SEGMENTS + 1], 0 .. 1
    n = lengths.to(x.device, torch.float64).unsqueeze(1)  # [B, 1]
    t = torch.arange(total, device=x.device, dtype=torch.float64).unsqueeze(0)  # [1, T]
    u = (t / (n - 1).clamp(min=1)).clamp(max=1.0) * SEGMENTS  # where step t lies, in segments
    piece = u.floor().clamp(max=SEGMENTS - 1).long()
    left, right = knots.gather(1, piece), knots.gather(1, piece + 1)
    position = (left + (u - piece) * (right - left)) * (n - 1)  # the warped position, in steps
    low = position.floor().long().clamp(max=total - 1)
    high = (low + 1).clamp(max=(n.long() - 1))
    share = (position - low).unsqueeze(-1).to(x.dtype)
    take = lambda index: x.gather(1, index.unsqueeze(-1).expand_as(x))  # noqa: E731
    warped = take(low) * (1 - share) + take(high) * share
    real = t < n  # padding stays as it was
    return torch.where(real.unsqueeze(-1), warped, x)
