"""Running a bundle: full-sequence batch inference and stateful streams, with ONNX Runtime.

- `Engine.infer(sequences)`: sorts by length, pads, passes `lengths`, and returns each
  sequence's outputs in input order (models that read whole sequences only, bidirectional or
  normalised per sequence, run here). A seq2seq bundle
  (encoder.onnx + decoder_step.onnx) decodes instead: each source's n-best hypotheses under a
  `Search` (greedy by default), batched across sources (`toolkit.runtime.seq2seq`).
- `Engine.stream()`: a `Stream` holding its own state; `push(chunk)` returns the outputs of
  exactly those steps. `Engine.push_many(streams, chunks)` steps many streams in one batched
  call per chunk length (gathering and scattering state rows), with outputs identical to
  stepping each alone. A frame-stacked model (model.frame_stack: K) steps once per frame of K
  steps: a stream holds the steps of its incomplete frame (`take_frames`) and `push` returns
  one output per frame it completed (none, one or several); `Stream.tail()` is the output for
  the steps still waiting, filled as model.onnx fills a sequence's last frame.

Inputs are checked before they reach ONNX Runtime, which would otherwise accept a length of 0
and read a negative or too-large token id as some other row of the embedding.

State lives as NumPy arrays on the CPU. With `bind_state` (the default on CUDA) a stream's state
stays an OrtValue on the device between pushes through IOBinding, so it does not cross the bus
every step; a batched `push_many` gathers rows through the host.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from toolkit.core.bundle import BundleError, check_certified, read_graph, read_manifest
from toolkit.core.data.batching import pad
from toolkit.core.errors import RnnkitError, first_line
from toolkit.core.search import Search
from toolkit.core.streaming import frame_stack, of_manifest
from toolkit.runtime.openvino import OpenVINOSession, bf16_works
from toolkit.runtime.providers import DeviceError, cuda_works, make_session
from toolkit.runtime.seq2seq import PER_SOURCE, Translator

DEVICE_TYPE = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda"}


class InputError(RnnkitError, ValueError):
    """Model input that does not fit the bundle's input spec (what, where, what is accepted)."""

    exit_code = 2


class Engine:
    def __init__(
        self,
        bundle: str | Path,
        device: str = "auto",
        threads: int | None = None,
        allow_unverified: bool = False,
        bind_state: bool | None = None,
        spin: bool = True,
    ):
        self.path = Path(bundle)
        self.manifest = read_manifest(self.path)
        if not allow_unverified:
            check_certified(self.path, self.manifest, "pass --allow-unverified to run it anyway")
        self.precision = self.manifest["precision"]
        if self.precision == "fp16":
            device = self._fp16_device(device)
        # bf16: whole sequences on OpenVINO where it computes in bf16 here, else the same fp32 graph
        # on ONNX Runtime; streams always on ONNX Runtime at fp32 (one step per call: OpenVINO's call
        # overhead made it 3x slower, benchmarks/precision.py)
        self.openvino = self.precision == "bf16" and device in ("auto", "cpu") and bf16_works()
        graphs = {name: read_graph(self.path, name, info) for name, info in self.manifest["graphs"].items()}
        inp = self.manifest["input"]
        self.input_name = inp["name"]
        self.dtype = np.int64 if inp["kind"] == "tokens" else np.float32
        self.width = inp.get("num_features")  # features: steps are [T, width]; tokens: [T]
        self.vocab_size = inp.get("vocab_size")
        self.per_step = bool(self.manifest["output"]["per_step"])
        self.state_spec = self.manifest["state"] or []
        self.state_names = [spec["name"] for spec in self.state_spec]
        self.full = self.step = self.translator = None
        if "encoder.onnx" in graphs:  # seq2seq: the decoder's state is the manifest's state
            encoder = self._session(graphs, "encoder.onnx", device, threads, spin)
            decoder = self._session(graphs, "decoder_step.onnx", device, threads, spin)
            self._check_inputs(encoder, "encoder.onnx", {"tokens", "lengths"})
            attention = PER_SOURCE if self.manifest["model"].get("attention") != "none" else ()
            self._check_inputs(decoder, "decoder_step.onnx", {"previous", *self.state_names, *attention})
            self._check_state(decoder, "decoder_step.onnx")
            self.translator = Translator(encoder, decoder)
            self.provider = decoder.get_providers()[0]
        else:
            self.full = self._session(graphs, "model.onnx", device, threads, spin)
            self.step = self._session(graphs, "step.onnx", device, threads, spin) if "step.onnx" in graphs else None
            self.provider = self.full.get_providers()[0]
            self._check_inputs(self.full, "model.onnx", {self.input_name, "lengths"})
        self.device_type = DEVICE_TYPE.get(self.provider, "cpu")
        self.bind_state = self.device_type != "cpu" if bind_state is None else bind_state
        self.frame_stack = frame_stack(self.manifest)  # steps per stream output
        if self.step is not None:
            self.step_outputs = [o.name for o in self.step.get_outputs()]
            self.head_size = self.step.get_outputs()[0].shape[-1]
            self._check_inputs(self.step, "step.onnx", {self.input_name, *self.state_names})
            self._check_state(self.step, "step.onnx")

    def _fp16_device(self, device: str) -> str:
        """fp16 bundles run on CUDA only: ONNX Runtime's CPU provider has no float16 recurrent
        kernels (and 1.31 crashes loading one), so they are refused before any session exists."""
        why = None
        if device == "cpu":
            why = "not with --device cpu"
        elif not cuda_works():
            why = "and this machine has no working CUDA provider"
        if why:
            raise BundleError(
                f"{self.path}: an fp16 bundle runs on CUDA only ({why}); export the model with --precision fp32 "
                "or int8 for CPUs"
            )
        return "cuda"

    @property
    def why_not_streaming(self) -> str | None:
        """Why this bundle cannot stream (None when it can): what the user should do instead."""
        if self.step is not None:
            return None
        instead = f"`rnnkit infer {self.path} --input FILE` or POST them to /v1/infer"
        if self.translator is not None:
            return f"a seq2seq model decodes whole sources: run {instead}"
        return f"{of_manifest(self.manifest)}; run whole sequences with {instead}"

    def _session(self, graphs: dict, name: str, device, threads, spin):
        """An ONNX Runtime session on a graph, or a BundleError if it is not one ONNX Runtime can load."""
        try:
            if self.openvino and name == "model.onnx":  # streams stay on ONNX Runtime (below)
                return OpenVINOSession(graphs[name], threads)
            return make_session(graphs[name], device, threads, spin)
        except DeviceError:
            raise
        except Exception as e:  # InvalidProtobuf, InvalidGraph, Fail: the bytes are not a model it runs
            why = f"{type(e).__name__}: {first_line(e)}"
            raise BundleError(f"{self.path / name}: ONNX Runtime cannot load it ({why})") from None

    def _check_state(self, session, name: str) -> None:
        """The manifest's state spec must be the step graph's own state inputs: the server sizes
        its state pool from the spec."""
        inputs = {i.name: i.shape for i in session.get_inputs()}
        for spec in self.state_spec:
            layers, _, hidden = spec["shape"]
            shape = inputs.get(spec["name"])
            if shape is None or len(shape) != 3 or (shape[0], shape[2]) != (layers, hidden):
                raise BundleError(
                    f"{self.path / 'manifest.json'}: state {spec['name']!r} of shape {spec['shape']} does not match "
                    f"{name}'s input {shape}; the manifest was changed after export"
                )

    def _check_inputs(self, session, name: str, wanted: set[str]) -> None:
        have = {i.name for i in session.get_inputs()}
        if have != wanted:
            raise BundleError(
                f"{self.path / name}: inputs {sorted(have)}, but the manifest describes {sorted(wanted)}; "
                "the bundle was changed after export"
            )

    # ---- input checks --------------------------------------------------------------------
    def check(self, steps, where: str) -> np.ndarray:
        """`steps` as the model's input array [T] (tokens) or [T, F] (features), or an InputError."""
        try:
            x = np.asarray(steps, dtype=self.dtype)
        except (TypeError, ValueError) as e:
            raise InputError(f"{where}: not a {self._accepted()} ({e})") from None
        if x.ndim >= 1 and len(x) == 0:
            raise InputError(f"{where}: no steps; a sequence or chunk needs at least one")
        if x.ndim != (1 if self.width is None else 2) or (self.width is not None and x.shape[1] != self.width):
            raise InputError(f"{where}: shape {list(x.shape)}; accepted: {self._accepted()}")
        if self.width is None:
            if x.min() < 0 or x.max() >= self.vocab_size:
                bad = int(x[(x < 0) | (x >= self.vocab_size)][0])
                raise InputError(f"{where}: token id {bad} is outside the vocabulary (0..{self.vocab_size - 1})")
        elif not np.isfinite(x).all():
            row, col = np.argwhere(~np.isfinite(x))[0]
            raise InputError(f"{where}: step {row}, feature {col} is {x[row, col]}; features must be finite")
        return x

    def _accepted(self) -> str:
        if self.width is None:
            return f"1-D sequence of token ids in 0..{self.vocab_size - 1}"
        return f"2-D array [steps, {self.width}] of finite numbers"

    # ---- full sequences ------------------------------------------------------------------
    def infer(
        self,
        sequences: Sequence,
        batch_size: int = 64,
        progress: Callable[[int], None] | None = None,
        search: Search | None = None,
    ) -> list:
        """Outputs per sequence, in input order: [K] per sequence, or [T_i, K] per step; for a
        seq2seq bundle, each source's n-best hypotheses (`toolkit.core.search.Hypothesis`, best
        first) under `search` (greedy when None). `progress(n)` is called after each batch with
        the number of sequences it held."""
        if batch_size < 1:
            raise InputError(f"batch size must be at least 1, got {batch_size}")
        if self.translator is not None:
            try:
                search = (search or Search()).check()
            except ValueError as e:
                raise InputError(f"decoding settings: {e}") from None
        sequences = [self.check(s, f"sequence {i}") for i, s in enumerate(sequences)]
        if self.translator is not None:
            run = lambda batch: self.translator.translate(batch, search, batch_size)  # noqa: E731
        else:
            run = lambda batch: run_full(self.full, self.input_name, batch, self.per_step, self.dtype)  # noqa: E731
        return in_length_order(sequences, batch_size, run, progress)

    # ---- streams -------------------------------------------------------------------------
    def stream(self) -> Stream:
        if self.step is None:
            raise BundleError(f"{self.path}: {self.why_not_streaming}")
        return Stream(self)

    def initial_state(self, batch: int) -> dict[str, np.ndarray]:
        shape = lambda spec: [batch if d == "batch" else d for d in spec["shape"]]  # noqa: E731
        return {spec["name"]: np.zeros(shape(spec), dtype=np.float32) for spec in self.state_spec}

    def no_outputs(self, rows: int) -> np.ndarray:
        """The outputs [rows, 0, K] of chunks that completed no frame."""
        return np.zeros((rows, 0, self.head_size), dtype=np.float32)

    def run_step(self, x: np.ndarray, state: dict) -> tuple[np.ndarray, dict]:
        """One call of the step graph on a batch [B, T, ...]: outputs [B, T, K] and the new state
        (NumPy, or OrtValues left on the device when `bind_state`)."""
        if not self.bind_state:
            values = self.step.run(self.step_outputs, {self.input_name: x, **state})
            return values[0], dict(zip(self.state_names, values[1:], strict=True))
        binding = self.step.io_binding()
        binding.bind_cpu_input(self.input_name, x)
        for name, value in state.items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, value)
        binding.bind_output(self.step_outputs[0], "cpu")
        for name in self.step_outputs[1:]:
            binding.bind_output(name, self.device_type)
        self.step.run_with_iobinding(binding)
        values = binding.get_outputs()
        return values[0].numpy(), dict(zip(self.state_names, values[1:], strict=True))

    def push_many(self, streams: Sequence[Stream], chunks: Sequence) -> list[np.ndarray]:
        """Step several streams at once: one batched call per distinct chunk length."""
        if len({id(s) for s in streams}) != len(streams):
            raise ValueError("a stream may appear only once per push_many call (its steps must stay in order)")
        if len(streams) != len(chunks):
            raise ValueError(f"{len(streams)} streams but {len(chunks)} chunks")
        if len(streams) == 1:
            return [streams[0].push(chunks[0])]
        chunks = [self.check(c, f"chunk {i}") for i, c in enumerate(chunks)]
        runs = [take_frames(s.buffered, c, self.frame_stack) for s, c in zip(streams, chunks, strict=True)]
        outputs: list[np.ndarray | None] = [None] * len(streams)
        for size, group in by_length([run for run, _ in runs]).items():
            if size == 0:  # no frame completed: nothing to run
                y, new = self.no_outputs(len(group)), None
            else:
                x = np.stack([runs[i][0] for i in group])
                # Gather each stream's state row (axis 1 = batch); device-held state comes to the host.
                state = {n: np.concatenate([_host(streams[i].state[n]) for i in group], 1) for n in self.state_names}
                y, new = self.run_step(x, state)
                new = {n: _host(v) for n, v in new.items()}
            for row, i in enumerate(group):
                outputs[i] = y[row]
                if new is not None:
                    streams[i].state = {n: v[:, row : row + 1] for n, v in new.items()}
                streams[i].steps += len(chunks[i])
                streams[i].buffered = runs[i][1]
        return outputs


def in_length_order(
    sequences: Sequence, batch_size: int, run: Callable[[list], list], progress: Callable[[int], None] | None = None
) -> list:
    """`run` on batches of up to `batch_size` sequences of similar lengths (sorted, so that a batch
    pads little); its outputs, one per sequence, put back in input order. `progress(n)` after each
    batch of n."""
    order = np.argsort([len(s) for s in sequences], kind="stable")
    results: list = [None] * len(sequences)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        for i, output in zip(index, run([sequences[i] for i in index]), strict=True):
            results[i] = output
        if progress:
            progress(len(index))
    return results


def run_full(session, input_name: str, sequences: list, per_step: bool, dtype=None) -> list[np.ndarray]:
    """model.onnx on one padded batch of `sequences`: each one's outputs, its real steps only
    ([T_i, K]) or its one row ([K])."""
    batch, lengths = pad(sequences, dtype=dtype)
    y = session.run(None, {input_name: batch, "lengths": lengths})[0]
    return [y[row, : lengths[row]] if per_step else y[row] for row in range(len(sequences))]


def by_length(chunks: Sequence) -> dict[int, list[int]]:
    """Indices of `chunks` grouped by chunk length: one batched step-graph call per group."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, chunk in enumerate(chunks):
        groups[len(chunk)].append(i)
    return groups


def take_frames(buffered: np.ndarray | None, chunk: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray | None]:
    """A stream's steps waiting for their frame (`buffered`, None when none) and a new chunk ->
    (the steps to run now, whole frames of k steps, possibly none; those left waiting, or None).
    With k = 1 every step is a frame."""
    if k == 1:
        return chunk, None
    steps = chunk if buffered is None else np.concatenate([buffered, chunk])
    whole = len(steps) // k * k
    return steps[:whole], steps[whole:] if whole < len(steps) else None


def frame_position(steps: int, buffered: np.ndarray | None, k: int) -> tuple[int, int]:
    """A stream's (frames run, steps waiting for their frame), from the steps it received and
    those it holds (`take_frames`)."""
    waiting = 0 if buffered is None else len(buffered)
    return (steps - waiting) // k, waiting


def _host(value) -> np.ndarray:
    return value.numpy() if isinstance(value, ort.OrtValue) else value


class Stream:
    """One stream's state ([L, 1, H] per state tensor), step count and, for a frame-stacked model,
    the steps of its incomplete frame (`buffered`)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.reset()

    def reset(self) -> None:
        self.state = self.engine.initial_state(1)
        self.steps = 0
        self.buffered: np.ndarray | None = None

    @property
    def frames(self) -> int:
        """Frames run so far: the index of the next output (= steps for a model without frames)."""
        return frame_position(self.steps, self.buffered, self.engine.frame_stack)[0]

    @property
    def waiting(self) -> int:
        """Steps received but not run yet: those of an incomplete frame."""
        return frame_position(self.steps, self.buffered, self.engine.frame_stack)[1]

    def push(self, chunk) -> np.ndarray:
        """Outputs [frames completed, K] (one per step without frames), the state carried on."""
        x = self.engine.check(chunk, "chunk")
        run, rest = take_frames(self.buffered, x, self.engine.frame_stack)
        if len(run):
            y, self.state = self.engine.run_step(run[None], self.state)
        else:
            y = self.engine.no_outputs(1)
        self.steps += len(x)
        self.buffered = rest
        return y[0]

    def tail(self) -> np.ndarray:
        """The output [1, K] for the steps still waiting for their frame, the frame filled as
        model.onnx fills a sequence's last frame: the prediction for the whole stream so far, as
        model.onnx gives it for this sequence. [0, K] when no step waits. The state does not move:
        the stream may go on."""
        if self.buffered is None:
            return self.engine.no_outputs(1)[0]
        return self.engine.run_step(self.buffered[None], self.state)[0][0]
