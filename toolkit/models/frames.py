"""Frame stacking (`model.frame_stack: K`): K consecutive steps of a feature series concatenated
into one frame before layer 0, so the recurrence runs ceil(T / K) steps of K * F features. A long
series (hundreds of steps) becomes one a recurrent layer can carry gradients through, at a K-th
of the recurrent steps (the speech recognisers' low-frame-rate trick).

Definition (torch here, the ONNX graph in toolkit.export.graph and the NumPy oracle compute the
same): steps past a sequence's length are 0 after input normalisation (the normalised mean); the
time axis is padded with zeros to a multiple of K; frame f holds steps fK .. fK+K-1 in order; a
sequence of n steps has ceil(n / K) frames, its last frame filled with zeros past step n.
"""

from __future__ import annotations

import torch
from torch.nn import functional

from toolkit.core.streaming import frames_of
from toolkit.models.encoder import real_steps


def stack_frames(x: torch.Tensor, lengths: torch.Tensor | None, k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x [B, T, F] -> (frames [B, ceil(T / k), k * F], frame lengths ceil(lengths / k)); lengths
    None (no padding) stays None."""
    if k == 1:
        return x, lengths
    batch, total, width = x.shape
    if lengths is not None:
        x = torch.where(real_steps(lengths, total, x.device).unsqueeze(-1), x, 0.0)
    count = frames_of(total, k)
    frames = functional.pad(x, (0, 0, 0, count * k - total)).reshape(batch, count, k * width)
    return frames, None if lengths is None else frames_of(lengths, k)
