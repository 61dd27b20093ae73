"""Running a bundle: full-sequence batch inference and stateful streams, with ONNX Runtime.

- `Engine.infer(sequences)`: sorts by length, pads, passes `lengths`, and returns each
  sequence's outputs in input order (bidirectional models run here).
- `Engine.stream()`: a `Stream` holding its own state; `push(chunk)` returns the outputs of
  exactly those steps. `Engine.push_many(streams, chunks)` steps many streams in one batched
  call per chunk length (gathering and scattering state rows), with outputs identical to
  stepping each alone.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from toolkit.export.bundle import BundleError, read_graph, read_manifest
from toolkit.runtime.providers import make_session


class Engine:
    def __init__(
        self,
        bundle: str | Path,
        device: str = "auto",
        threads: int | None = None,
        allow_unverified: bool = False,
    ):
        self.path = Path(bundle)
        self.manifest = read_manifest(self.path)
        if not self.manifest["parity"]["passed"] and not allow_unverified:
            raise BundleError(
                f"{self.path}: this bundle failed its parity check (worst: {self.manifest['parity']['worst_case']}); "
                "pass --allow-unverified to run it anyway"
            )
        graphs = {name: read_graph(self.path, name, info) for name, info in self.manifest["graphs"].items()}
        self.full = make_session(graphs["model.onnx"], device, threads)
        self.step = make_session(graphs["step.onnx"], device, threads) if "step.onnx" in graphs else None
        self.provider = self.full.get_providers()[0]
        self.input_name = self.manifest["input"]["name"]
        self.per_step = bool(self.manifest["output"]["per_step"])
        self.state_spec = self.manifest["state"] or []

    @property
    def dtype(self):
        return np.int64 if self.manifest["input"]["kind"] == "tokens" else np.float32

    # ---- full sequences ------------------------------------------------------------------
    def infer(self, sequences: Sequence[np.ndarray], batch_size: int = 64) -> list[np.ndarray]:
        """Outputs per sequence, in input order: [K] per sequence, or [T_i, K] per step."""
        order = np.argsort([len(s) for s in sequences], kind="stable")
        results: list[np.ndarray | None] = [None] * len(sequences)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            lengths = np.array([len(sequences[i]) for i in index], dtype=np.int64)
            batch = np.zeros((len(index), int(lengths.max()), *np.shape(sequences[index[0]])[1:]), dtype=self.dtype)
            for row, i in enumerate(index):
                batch[row, : lengths[row]] = sequences[i]
            y = self.full.run(None, {self.input_name: batch, "lengths": lengths})[0]
            for row, i in enumerate(index):
                results[i] = y[row, : lengths[row]] if self.per_step else y[row]
        return results

    # ---- streams -------------------------------------------------------------------------
    def stream(self) -> Stream:
        if self.step is None:
            raise BundleError(
                f"{self.path}: a bidirectional model cannot stream (its backward direction needs the whole "
                "sequence); run whole sequences with infer"
            )
        return Stream(self)

    def initial_state(self, batch: int) -> dict[str, np.ndarray]:
        shape = lambda spec: [batch if d == "batch" else d for d in spec["shape"]]  # noqa: E731
        return {spec["name"]: np.zeros(shape(spec), dtype=np.float32) for spec in self.state_spec}

    def push_many(self, streams: Sequence[Stream], chunks: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Step several streams at once: one batched call per distinct chunk length."""
        if len({id(s) for s in streams}) != len(streams):
            raise ValueError("a stream may appear only once per push_many call (its steps must stay in order)")
        by_length: dict[int, list[int]] = defaultdict(list)
        for i, chunk in enumerate(chunks):
            if len(chunk) == 0:
                raise ValueError("a chunk must hold at least one step")
            by_length[len(chunk)].append(i)
        outputs: list[np.ndarray | None] = [None] * len(streams)
        for group in by_length.values():
            x = np.stack([np.asarray(chunks[i], dtype=self.dtype) for i in group])
            feeds = {self.input_name: x}
            for name in streams[group[0]].state:  # gather each stream's state row (axis 1 = batch)
                feeds[name] = np.concatenate([streams[i].state[name] for i in group], axis=1)
            values = self.step.run(None, feeds)
            for row, i in enumerate(group):
                outputs[i] = values[0][row]
                for k, spec in enumerate(self.state_spec, start=1):  # scatter the new state rows
                    streams[i].state[spec["name"]] = values[k][:, row : row + 1]
                streams[i].steps += len(chunks[i])
        return outputs


class Stream:
    """One stream's state (numpy, [L, 1, H] per state tensor) and step count."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.reset()

    def reset(self) -> None:
        self.state = self.engine.initial_state(1)
        self.steps = 0

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Outputs [len(chunk), K] for exactly these steps, the state carried on."""
        return self.engine.push_many([self], [chunk])[0]

    def close(self) -> None:
        self.state = {}
