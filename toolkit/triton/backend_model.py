"""An rnnkit bundle as a model of Triton's Python backend (`rnnkit deploy triton` copies this file
into the repository as `1/model.py`, next to the bundle's graph and manifest).

It runs the bundle's graph with onnxruntime inside Triton and needs only numpy (< 2 for the
backend stub) and onnxruntime in the stub's Python; nothing of rnnkit.

- Streams (unidirectional bundle: step.onnx under the sequence batcher): the state of each
  sequence is kept here, by correlation id (Triton's implicit state is for the onnxruntime,
  TensorRT and PyTorch backends; the Python backend has no state API). START starts from zeros,
  END drops the state, and a sequence silent for `idle_timeout_s` is dropped as Triton drops its
  slot. The requests of one `execute` with chunks of the same length run as one step call.
- Whole sequences (bidirectional bundle: model.onnx under the dynamic batcher): the requests of
  one `execute` are padded into one batch with their `lengths`, which the graph honours exactly.

A bad request gets an error response that says what was wrong and what is accepted; the other
requests of the batch go on, and the state of a sequence changes only when its request succeeds.
"""

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

MAX_MANIFEST_BYTES = 64 * 2**20


class RequestError(ValueError):
    """One request cannot be run as sent; the message goes back to its client."""


def _read(path: Path, limit: int) -> bytes:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise RuntimeError(f"{path}: larger than {limit} bytes")
    return data


def _error(message: str):
    try:
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))
    except (AttributeError, TypeError):  # a backend without error codes
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))


def _input(request, name: str):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        here = Path(args["model_repository"]) / args["model_version"]
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.max_steps = int(params.get("max_steps", 4096))
        self.idle_timeout = float(params.get("idle_timeout_s", 60))
        manifest = json.loads(_read(here / "manifest.json", MAX_MANIFEST_BYTES))
        # as toolkit.triton.config.streams: a frame-stacked model runs whole sequences here
        self.streams = manifest["state"] is not None and manifest["model"].get("frame_stack", 1) == 1
        name = "step.onnx" if self.streams else "model.onnx"
        info = manifest["graphs"][name]
        graph = _read(here / name, info.get("bytes") or 2**31)
        if hashlib.sha256(graph).hexdigest() != info["sha256"]:
            raise RuntimeError(f"{here / name}: its sha256 is not the manifest's; the model directory was changed")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("threads", 0))
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        inp = manifest["input"]
        self.input_name, self.tokens = inp["name"], inp["kind"] == "tokens"
        self.vocab_size, self.width = inp.get("vocab_size"), inp.get("num_features")
        self.output_name = manifest["output"]["name"]
        self.state_spec = [(s["name"], s["shape"][0], s["shape"][2]) for s in manifest["state"] or []]
        self.fetch = [self.output_name, *(s["output"] for s in manifest["state"] or [])]
        self.states = {}  # correlation id -> {state name: [layers, hidden]}
        self.last_seen = {}

    def execute(self, requests):
        responses = [None] * len(requests)
        parsed = []
        for i, request in enumerate(requests):
            try:
                parsed.append((i, *self._parse(request)))
            except RequestError as e:
                responses[i] = _error(str(e))
        if parsed:
            (self._steps if self.streams else self._sequences)(parsed, responses)
        self._forget_idle()
        return responses

    def finalize(self):
        self.states.clear()

    # ---- one request --------------------------------------------------------------------------
    def _parse(self, request):
        x = _input(request, self.input_name)
        if x is None:
            raise RequestError(f"missing input {self.input_name!r}")
        rank = 2 if self.tokens else 3
        what = "[batch, steps]" if self.tokens else f"[batch, steps, {self.width}]"
        if x.ndim != rank or (not self.tokens and x.shape[2] != self.width):
            raise RequestError(f"{self.input_name} has shape {list(x.shape)}; expected {what}")
        if not 1 <= x.shape[1] <= self.max_steps:
            raise RequestError(f"{x.shape[1]} steps in one request; accepted: 1..{self.max_steps} (max_steps)")
        if self.tokens:
            bad = (x < 0) | (x >= self.vocab_size)
            if bad.any():
                raise RequestError(f"token id {int(x[bad][0])} is outside the vocabulary (0..{self.vocab_size - 1})")
        elif not np.isfinite(x).all():
            raise RequestError("features must be finite numbers (found NaN or infinity)")
        if not self.streams:
            return (x,)
        if x.shape[0] != 1:
            raise RequestError(f"a request of a sequence carries one row; got a batch of {x.shape[0]}")
        sequence = int(_input(request, "CORRID").reshape(-1)[0])
        start = bool(_input(request, "START").reshape(-1)[0])
        end = bool(_input(request, "END").reshape(-1)[0])
        return x, sequence, start, end

    # ---- streams: one step call per chunk length ------------------------------------------------
    def _steps(self, parsed, responses):
        # Triton sends one request per sequence per batch; should two of one sequence arrive
        # together, the later runs in a later pass, on the state the earlier one left.
        passes, seen = [], {}
        for item in parsed:
            k = seen[item[2]] = seen.get(item[2], -1) + 1
            passes.extend([] for _ in range(k + 1 - len(passes)))
            passes[k].append(item)
        for items in passes:
            by_steps = {}
            for item in items:
                i, _, seq, start, _ = item
                if start or seq in self.states:
                    by_steps.setdefault(item[1].shape[1], []).append(item)
                else:
                    responses[i] = _error(
                        f"sequence {seq} has no state here: send its first request with sequence_start=True "
                        f"(a sequence silent for {self.idle_timeout:g} s is ended)"
                    )
            for group in by_steps.values():
                self._step(group, responses)

    def _step(self, group, responses):
        try:
            feed = {self.input_name: np.concatenate([item[1] for item in group])}
            for name, layers, hidden in self.state_spec:
                rows = [
                    np.zeros((layers, hidden), np.float32) if start else self.states[seq][name]
                    for _, _, seq, start, _ in group
                ]
                feed[name] = np.stack(rows, axis=1)
            y, *new = self.session.run(self.fetch, feed)
        except Exception as e:  # nothing of this group is committed
            for i, *_ in group:
                responses[i] = _error(f"inference failed: {type(e).__name__}: {e}")
            return
        now = time.monotonic()
        for row, (i, _, seq, _, end) in enumerate(group):
            if end:
                self.states.pop(seq, None)
                self.last_seen.pop(seq, None)
            else:
                names = (spec[0] for spec in self.state_spec)
                self.states[seq] = {name: s[:, row].copy() for name, s in zip(names, new, strict=True)}
                self.last_seen[seq] = now
            responses[i] = self._reply(y[row : row + 1])

    def _forget_idle(self):
        cutoff = time.monotonic() - self.idle_timeout
        for seq in [s for s, seen in self.last_seen.items() if seen < cutoff]:
            self.states.pop(seq, None)
            self.last_seen.pop(seq, None)

    # ---- whole sequences: one padded call ---------------------------------------------------------
    def _sequences(self, parsed, responses):
        rows = [x for _, x in parsed]
        longest = max(x.shape[1] for x in rows)
        total = sum(x.shape[0] for x in rows)
        batch = np.zeros((total, longest, *rows[0].shape[2:]), rows[0].dtype)
        lengths = np.empty(total, np.int64)
        at = 0
        for x in rows:
            batch[at : at + len(x), : x.shape[1]] = x
            lengths[at : at + len(x)] = x.shape[1]
            at += len(x)
        try:
            (y,) = self.session.run(self.fetch, {self.input_name: batch, "lengths": lengths})
        except Exception as e:
            for i, _ in parsed:
                responses[i] = _error(f"inference failed: {type(e).__name__}: {e}")
            return
        at = 0
        for i, x in parsed:
            out = y[at : at + len(x)]
            responses[i] = self._reply(out[:, : x.shape[1]] if out.ndim == 3 else out)
            at += len(x)

    def _reply(self, y):
        tensor = pb_utils.Tensor(self.output_name, np.ascontiguousarray(y, dtype=np.float32))
        return pb_utils.InferenceResponse(output_tensors=[tensor])
