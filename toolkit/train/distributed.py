"""Data-parallel training across processes: PyTorch's DistributedDataParallel, launched by torchrun
(`torchrun --nproc-per-node N -m cli.main train ...`, or `rnnkit train --nproc N`), gloo on the CPU
and NCCL on CUDA.

How a global batch is shared. Every rank draws the same batches (same seed, same epoch), so
`--batch-size` stays the global batch: rank r takes a contiguous slice of each batch's rows (of a
stream's parallel rows for truncated BPTT), as even as possible. Each rank's loss is its summed
loss times world size / the global count (one all-reduce per batch), so DDP's gradient average is
exactly the single-process gradient of the whole batch. A batch with fewer rows than ranks (the
last, uneven one) gives the ranks without a row a copy of row 0 at weight 0: every rank steps
together, and no sequence is dropped or counted twice.

Rank 0 alone writes (run directory, checkpoints, metrics, MLflow, the bundle). Validation runs
on every rank over the whole validation set with the same weights, so every rank takes the same
early-stopping decision. When one rank fails, torchrun stops the others.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass, replace
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from toolkit.core.data.types import Batch
from toolkit.core.errors import ConfigError

#: How long a collective waits for a rank that stopped answering before it fails (torchrun
#: usually stops the group sooner, when it sees the rank's process end).
TIMEOUT = timedelta(seconds=60)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def rows(self, n: int) -> slice:
        """This rank's rows of a batch of n: contiguous, the first n % size ranks one more."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))


def world() -> World:
    """The process group torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK)."""
    try:
        return World(
            int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
        )
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (they are set by torchrun)") from None


def start(w: World, device: torch.device) -> torch.device:
    """Join the process group (once); on CUDA each rank takes the GPU of its local rank."""
    if not w.active or dist.is_initialized():
        return device
    if device.type == "cuda":
        torch.cuda.set_device(w.local_rank)
        device = torch.device("cuda", w.local_rank)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    return device


def stop(barrier: bool = False) -> None:
    """Leave the process group; with `barrier`, once every rank has arrived (the normal end). The
    caller drops its DDP wrapper first: collected here, its reducer lets go of the group while the
    interpreter is whole (a group freed at interpreter exit aborts in gloo's thread teardown)."""
    if dist.is_initialized():
        gc.collect()
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


def all_sum(w: World, values: list[float], device) -> list[float]:
    """The sums of `values` over all ranks (float64)."""
    if not w.active:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather(w: World, value):
    """`value` of every rank, in rank order (any picklable value)."""
    if not w.active:
        return [value]
    out = [None] * w.size
    dist.all_gather_object(out, value)
    return out


def shard(item, w: World) -> tuple[object, float]:
    """This rank's part of a batch (a padded Batch, or a stream window (inputs, targets)) and its
    weight: 1, or 0 for a stand-in row when the batch has fewer rows than ranks."""
    n = len(item.lengths) if isinstance(item, Batch) else item[0].shape[0]
    rows, weight = w.rows(n), 1.0
    if rows.start == rows.stop:  # no row of its own: row 0, counted for nothing
        rows, weight = slice(0, 1), 0.0
    if isinstance(item, Batch):
        targets = item.targets[rows] if item.targets is not None else None
        return replace(
            item, inputs=item.inputs[rows], lengths=item.lengths[rows], targets=targets, index=item.index[rows]
        ), weight
    return (np.ascontiguousarray(item[0][rows]), np.ascontiguousarray(item[1][rows])), weight
