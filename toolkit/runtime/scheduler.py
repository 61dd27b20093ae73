"""Batching the steps of many streams into one ONNX Runtime call, as Triton's sequence batcher does.

Each stream owns a row ("slot") of a state pool, one array [L, slots, H] per state tensor of the
step graph. Chunks wait in their stream's queue. The batcher takes the head chunk of up to
`max_batch` streams (a stream at most once per batch, so its steps stay in order), waiting at most
`max_delay` seconds for the batch to fill, gathers their state rows, runs `step.onnx` once per
distinct chunk length, and scatters the outputs and new state back. Every stream's outputs equal
those of stepping it alone: rows of a batch never mix in the recurrent ops.

ONNX Runtime runs on one worker thread, off the event loop (one batch at a time: it already uses
every core). The stream table is touched only on the event loop; the pool has a lock because the
worker reads and writes it while the loop may grow it.

A frame-stacked model (model.frame_stack: K) steps once per frame of K steps: a stream keeps the
steps of its incomplete frame (`buffered`), a chunk runs the whole frames it completes (a group of
its own size, maybe none), and an end with steps still waiting runs them once more as the
stream's last frame, its state left as it was (`engine.take_frames`, `Stream.tail`).

Nothing one batch or one reply does can end the loop: a failure is answered on the chunks it
touched (code 500) and logged, and the batcher goes on with the next batch. A batch commits the
state of all its streams or of none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from toolkit.runtime.engine import Engine, by_length, frame_position, take_frames

log = logging.getLogger("rnnkit.serve")
BATCH_FAILED = "internal error on this batch (logged by the server); the chunk was not run"


class TooManyStreams(Exception):
    """The server already holds its maximum number of streams."""


class StatePool:
    """State rows of all open streams; a free row is all zeros (the trained initial state)."""

    def __init__(self, engine: Engine, capacity: int, limit: int):
        self.engine, self.limit = engine, limit
        self.arrays = engine.initial_state(min(capacity, limit))
        self.free = list(range(self.capacity))[::-1]
        self.lock = threading.Lock()

    @property
    def capacity(self) -> int:
        return next(iter(self.arrays.values())).shape[1] if self.arrays else self.limit

    def acquire(self) -> int:
        if not self.free:
            if self.capacity >= self.limit:
                raise TooManyStreams(self.limit)
            self._grow(min(2 * self.capacity, self.limit))
        return self.free.pop()

    def release(self, slot: int) -> None:
        self.zero(slot)
        self.free.append(slot)

    def zero(self, slot: int) -> None:
        with self.lock:
            for a in self.arrays.values():
                a[:, slot] = 0

    def gather(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        with self.lock:
            return {name: a[:, slots] for name, a in self.arrays.items()}

    def scatter(self, slots: np.ndarray, state: dict[str, np.ndarray]) -> None:
        with self.lock:
            for name, a in self.arrays.items():
                a[:, slots] = state[name]

    def _grow(self, capacity: int) -> None:
        old = self.capacity
        bigger = self.engine.initial_state(capacity)
        with self.lock:
            for name, a in self.arrays.items():
                bigger[name][:, :old] = a
            self.arrays = bigger
        self.free.extend(range(capacity - 1, old - 1, -1))


@dataclass(eq=False)
class Job:
    """A chunk to run, or a reset / end to apply in the stream's order."""

    kind: str  # "chunk" | "reset" | "end"
    done: Callable[[ServedStream, Job], None]  # called on the event loop once the job has run
    chunk: np.ndarray | None = None
    unknown: int = 0  # tokens of the chunk mapped to <unk> (for the reply)
    binary: bool = False  # answered in binary: its outputs stay a float32 array, not `present`ed
    arrived: float = field(default_factory=time.perf_counter)
    start: int = 0  # the stream's step index of the chunk's first step (or steps, for end)
    run: np.ndarray | None = None  # the steps run for it: whole frames of the chunk (and those waiting)
    rest: np.ndarray | None = None  # steps left waiting for their frame after the chunk
    frame: int = 0  # the stream's frame index of its first output
    waiting: int = 0  # steps waiting for their frame after it (an end: those its output answers)
    outputs: object = None  # the chunk's row of the batch's outputs, as `present` gave it
    error: str | None = None  # set when the job was not run, with the HTTP-style code to answer
    code: int = 500


@dataclass(eq=False)
class ServedStream:
    """A stream as the server holds it: its row (slot) in the state pool, the steps it has run and
    its jobs waiting in order. (`engine.Stream` is the one-stream Python API.)"""

    name: str
    slot: int
    steps: int = 0
    buffered: np.ndarray | None = None  # steps of an incomplete frame (frame-stacked models)
    pending: deque = field(default_factory=deque)
    running: bool = False  # a chunk of it is in the batch being computed
    ready: bool = False  # it waits in the scheduler's ready queue
    closed: bool = False
    last_active: float = field(default_factory=time.monotonic)


class Scheduler:
    def __init__(
        self,
        engine: Engine,
        max_batch: int = 256,
        max_delay: float = 0.002,
        max_streams: int = 10_000,
        observer=None,
        worker: ThreadPoolExecutor | None = None,
        present: Callable[[np.ndarray], list] | None = None,
    ):
        if engine.step is None:
            raise ValueError(f"this model has no step graph to stream: {engine.why_not_streaming}")
        if engine.bind_state:
            raise ValueError("the scheduler keeps state rows in host arrays: make the Engine with bind_state=False")
        self.engine, self.max_batch, self.max_delay = engine, max_batch, max_delay
        self.pool = StatePool(engine, capacity=256, limit=max_streams)
        # Turns a group's outputs [rows, steps, ...] into per-row results in the worker thread, in
        # one pass (rounding and lists for replies), rather than row by row on the event loop.
        self.present = present or list
        self.observer = observer  # Telemetry-like: on_batch(batch, started, seconds)
        self.worker = worker or ThreadPoolExecutor(max_workers=1, thread_name_prefix="rnnkit-onnxruntime")
        self.open_streams = 0
        self.ready: deque[ServedStream] = deque()
        self.batch: list[tuple[ServedStream, Job]] = []  # the batch being computed
        self._arrival = asyncio.Event()
        self._full = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    # ---- streams (event loop only) ----------------------------------------------------------
    def open(self, name: str) -> ServedStream:
        stream = ServedStream(name, self.pool.acquire())
        self.open_streams += 1
        return stream

    def submit(self, stream: ServedStream, job: Job) -> None:
        stream.last_active = time.monotonic()
        if not stream.pending and not stream.running and not self._runs(stream, job):
            self._apply(stream, job)
            return
        stream.pending.append(job)
        self._queue(stream)

    def close(self, stream: ServedStream) -> None:
        """Drop a stream and what it still had queued (nobody is left to answer)."""
        if stream.closed:
            return
        stream.closed = True
        stream.pending.clear()
        self.open_streams -= 1
        if not stream.running:  # else its batch releases the slot when it is done with it
            self.pool.release(stream.slot)

    def busy(self, stream: ServedStream) -> bool:
        return stream.running or bool(stream.pending)

    async def idle(self) -> None:
        """Return once every accepted job has run."""
        await self._idle.wait()

    @staticmethod
    def _runs(stream: ServedStream, job: Job) -> bool:
        """Whether a job needs the step graph: a chunk, or an end with steps waiting for their frame."""
        return job.kind == "chunk" or (job.kind == "end" and stream.buffered is not None)

    def _frames(self, stream: ServedStream) -> tuple[int, int]:
        """(frames the stream has run, steps waiting for their frame)."""
        return frame_position(stream.steps, stream.buffered, self.engine.frame_stack)

    def _apply(self, stream: ServedStream, job: Job) -> None:
        job.start = stream.steps
        job.frame, job.waiting = self._frames(stream)
        if job.kind == "reset":  # steps waiting for their frame are dropped with the state
            self.pool.zero(stream.slot)
            stream.steps, stream.buffered = 0, None
        else:  # end
            self.close(stream)
        self._deliver(stream, job)

    @staticmethod
    def _deliver(stream: ServedStream, job: Job) -> None:
        """Hand a job's result to whoever submitted it; a failure there costs that reply only."""
        try:
            job.done(stream, job)
        except Exception:
            log.exception("answering a %s on stream %r failed; the batcher goes on", job.kind, stream.name)

    def _queue(self, stream: ServedStream) -> None:
        if stream.ready or stream.running or not stream.pending:
            return
        stream.ready = True
        self.ready.append(stream)
        self._idle.clear()
        self._arrival.set()
        if len(self.ready) >= self.max_batch:
            self._full.set()

    # ---- the batching loop -------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wait_for_batch()
            batch = self.batch = []
            try:
                batch = self.batch = self._take()
                if not batch:
                    continue
                started = time.perf_counter()
                try:
                    outputs = await loop.run_in_executor(self.worker, self._compute, batch)
                    error = None
                except Exception as e:  # a failed run leaves every state row as it was
                    outputs, error = [None] * len(batch), f"inference failed: {type(e).__name__}: {e}"
                seconds = time.perf_counter() - started
                self._finish(batch, outputs, error)
                if self.observer:
                    self.observer.on_batch(batch, started, seconds)
            except Exception:  # a bug outside ONNX Runtime: answer what is unanswered, keep batching
                log.exception("a batch of %d chunks failed; they are answered with code 500", len(batch))
                self._finish([(s, j) for s, j in batch if s.running], None, BATCH_FAILED)

    async def _wait_for_batch(self) -> None:
        while not self.ready:
            self._idle.set()
            self._arrival.clear()
            await self._arrival.wait()
        # The oldest waiting chunk sets the deadline (a stream closed while queued has none).
        arrived = next((s.pending[0].arrived for s in self.ready if s.pending), None)
        waited = time.perf_counter() - arrived if arrived is not None else self.max_delay
        if len(self.ready) < self.max_batch and waited < self.max_delay:
            self._full.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._full.wait(), self.max_delay - waited)

    def _take(self) -> list[tuple[ServedStream, Job]]:
        """The head chunk of up to max_batch ready streams; resets and ends met on the way are
        applied here, in their stream's order."""
        batch = []
        while self.ready and len(batch) < self.max_batch:
            stream = self.ready.popleft()
            stream.ready = False
            while stream.pending and not self._runs(stream, stream.pending[0]):
                self._apply(stream, stream.pending.popleft())
            if stream.pending and not stream.closed:
                job = stream.pending.popleft()
                job.start = stream.steps
                job.frame, waiting = self._frames(stream)
                if job.kind == "chunk":
                    job.run, job.rest = take_frames(stream.buffered, job.chunk, self.engine.frame_stack)
                    job.waiting = 0 if job.rest is None else len(job.rest)
                else:  # an end: its waiting steps as the last frame
                    job.run, job.waiting = stream.buffered, waiting
                stream.running = True
                batch.append((stream, job))
        return batch

    def _compute(self, batch: list[tuple[ServedStream, Job]]) -> list:
        """Worker thread: one step-graph call per distinct length of the steps to run; the new
        state rows of chunks are written back only once every group has run (all or nothing, so a
        retry cannot step a stream twice). An end's last frame leaves its state as it was."""
        outputs: list = [None] * len(batch)
        updates = []
        for size, rows in by_length([job.run for _, job in batch]).items():
            if size == 0:  # chunks that completed no frame
                y = self.engine.no_outputs(len(rows))
            else:
                slots = np.array([batch[i][0].slot for i in rows])
                x = np.stack([batch[i][1].run for i in rows])
                y, state = self.engine.run_step(x, self.pool.gather(slots))
                keep = np.array([batch[i][1].kind == "chunk" for i in rows])
                if not keep.all():  # an end's last frame: its state row is not written back
                    slots, state = slots[keep], {name: value[:, keep] for name, value in state.items()}
                updates.append((slots, state))
            raw = [batch[i][1].binary for i in rows]
            if not any(raw):
                outputs_of = self.present(y)
            else:  # binary replies take the float32 rows as they are
                shown = iter(self.present(y[[not r for r in raw]]) if not all(raw) else ())
                outputs_of = [y[row].copy() if r else next(shown) for row, r in enumerate(raw)]
            for i, presented in zip(rows, outputs_of, strict=True):
                outputs[i] = presented
        for slots, state in updates:
            self.pool.scatter(slots, state)
        return outputs

    def _finish(self, batch, outputs: list | None, error: str | None, code: int = 500) -> None:
        for (stream, job), y in zip(batch, outputs or [None] * len(batch), strict=True):
            stream.running = False
            if stream.closed:
                self.pool.release(stream.slot)
                continue
            if error is None and job.kind == "chunk":
                stream.steps += len(job.chunk)
                stream.buffered = job.rest
            job.outputs, job.error, job.code = y, error, code
            self._deliver(stream, job)
            if job.kind == "end":  # closed even if its last frame failed: the client has let it go
                self.close(stream)
            self._queue(stream)
        if not self.ready:
            self._idle.set()

    def fail_all(self, error: str, code: int = 503) -> None:
        """The loop is gone for good: answer every job still waiting with `error`."""
        self._finish([(s, j) for s, j in self.batch if s.running], None, error, code)
        for stream in self.ready:
            stream.ready = False
            while stream.pending:
                job = stream.pending.popleft()
                job.error, job.code = error, code
                self._deliver(stream, job)
        self.ready.clear()
        self._idle.set()
