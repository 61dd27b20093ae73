"""A plain progress line at most every N seconds: what a pass over the data shows where a tqdm bar
would not render (stderr is a log file or a CI console), e.g.

    epoch 3/30  batch 120/400  1,234 steps/s  loss 0.6931  (12 s)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class ProgressLine:
    """Call `update` after each batch; it writes one line when `every` seconds have passed since
    the pass started or since the last line. `clock` and `write` can be replaced (tests)."""

    def __init__(
        self,
        every: float,
        desc: str,
        total: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        write: Callable[[str], None] = _to_stderr,
    ):
        if every <= 0:
            raise ValueError(f"every must be positive, got {every}")
        self.every, self.desc, self.total, self.clock, self.write = every, desc, total, clock, write
        self.started = self.last = clock()
        self.batches, self.loss_sum, self.count = 0, 0.0, 0

    def update(self, steps: float, loss_sum: float, count: int) -> None:
        """One more batch: `steps` is the pass's steps so far (time steps, all ranks'), `loss_sum`
        and `count` this batch's summed loss and the targets it sums over (the line shows their
        running mean over the pass)."""
        self.batches += 1
        self.loss_sum += loss_sum
        self.count += count
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            self.write(self.line(steps, now - self.started))

    def line(self, steps: float, elapsed: float) -> str:
        total = f"/{self.total}" if self.total is not None else ""
        rate = steps / elapsed if elapsed > 0 else 0.0
        loss = self.loss_sum / self.count if self.count else float("nan")
        return f"{self.desc}  batch {self.batches}{total}  {rate:,.0f} steps/s  loss {loss:.4f}  ({elapsed:.0f} s)"
