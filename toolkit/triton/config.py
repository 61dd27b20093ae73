"""Triton `config.pbtxt` files, built as tritonclient's `ModelConfig` protobuf messages (so every
field name and enum is the server's own) and checked against the ONNX graph they describe.

Three kinds of model (see repository.py for which bundle gets which):
- `sequence_config`: the step graph under the sequence batcher with implicit state (onnxruntime
  backend): `h`/`c` live in Triton between requests, START and READY are the control inputs.
- `full_config`: `model.onnx` under the dynamic batcher (bidirectional models): `lengths` is a
  per-request scalar (`dims: [1]` reshaped to `[]`).
- `python_config`: the Python-backend model (backend_model.py) that runs the same graphs with
  onnxruntime inside Triton, keeping state per correlation id itself; same inputs and outputs.
"""

from __future__ import annotations

import onnx
from google.protobuf import text_format

from toolkit.core import tasks
from toolkit.core.errors import RnnkitError
from toolkit.triton.graph import READY, START
from toolkit.triton.options import Options

END, CORRID = "END", "CORRID"
KIND = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "cuda": "KIND_GPU"}
_DTYPE = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.INT64: "TYPE_INT64"}


class TritonConfigError(RnnkitError):
    exit_code = 2


def pb():
    """tritonclient's model_config_pb2, or an error that says how to install it."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        raise TritonConfigError(
            f"writing a Triton model repository needs tritonclient ({e}); install it with: pip install 'rnnkit[triton]'"
        ) from None
    return model_config_pb2


def streams(manifest: dict) -> bool:
    """Whether Triton serves the bundle as streams (step.onnx under the sequence batcher) rather
    than whole sequences: a model that streams, but not a frame-stacked one, whose stream must
    hold the steps of an incomplete frame between requests, which the sequence batcher's implicit
    state (tensors of fixed shape) does not. Triton serves those whole sequences;
    `rnnkit serve` streams them."""
    return manifest["state"] is not None and manifest["model"].get("frame_stack", 1) == 1


def head_width(manifest: dict) -> int:
    """Width K of the logits | values output."""
    out, inp = manifest["output"], manifest["input"]
    return tasks.of(manifest["task"]).head_size(out.get("labels"), inp.get("vocab_size"), out.get("num_targets"))


def io(manifest: dict, lengths: bool) -> tuple[list, list]:
    """(inputs, outputs) of a model as (name, data type, dims without the batch, reshape or None);
    `lengths`: whether the model takes each request's length as an input (model.onnx does)."""
    inp, out = manifest["input"], manifest["output"]
    chunk = [-1] if inp["kind"] == "tokens" else [-1, inp["num_features"]]
    dtype = "TYPE_INT64" if inp["kind"] == "tokens" else "TYPE_FP32"
    inputs = [(inp["name"], dtype, chunk, None)]
    if lengths:
        inputs.append(("lengths", "TYPE_INT64", [1], []))
    per_step = out["per_step"] or streams(manifest)  # a stream predicts at every step of a chunk
    dims = [-1, head_width(manifest)] if per_step else [head_width(manifest)]
    return inputs, [(out["name"], "TYPE_FP32", dims, None)]


def _common(pb2, name: str, backend: str, manifest: dict, lengths: bool, opts: Options, labels: str | None):
    config = pb2.ModelConfig(name=name, backend=backend, max_batch_size=opts.max_batch_size)
    inputs, outputs = io(manifest, lengths)
    for n, dtype, dims, reshape in inputs:
        entry = config.input.add(name=n, data_type=dtype, dims=dims)
        if reshape is not None:
            entry.reshape.shape[:] = reshape
    for n, dtype, dims, _ in outputs:
        entry = config.output.add(name=n, data_type=dtype, dims=dims)
        if labels:
            entry.label_filename = labels  # Triton's classification extension (class_count) reads it
    return config


def _controls(pb2, batching, names: list[str]) -> None:
    kinds = {START: "CONTROL_SEQUENCE_START", END: "CONTROL_SEQUENCE_END", READY: "CONTROL_SEQUENCE_READY"}
    for n in names:
        control = batching.control_input.add(name=n).control.add()
        if n == CORRID:
            control.kind, control.data_type = "CONTROL_SEQUENCE_CORRID", "TYPE_UINT64"
        else:
            control.kind = kinds[n]
            control.fp32_false_true[:] = [0.0, 1.0]


def _sequence_batching(pb2, config, opts: Options, controls: list[str]):
    batching = config.sequence_batching
    batching.max_sequence_idle_microseconds = int(opts.idle_timeout_s * 1e6)
    _controls(pb2, batching, controls)
    # oldest: each batch takes the next request of up to max_batch_size different sequences (never
    # two of one sequence), so a step of many streams is one call, as in `rnnkit serve`.
    batching.oldest.max_candidate_sequences = opts.max_sequences
    batching.oldest.max_queue_delay_microseconds = opts.max_queue_delay_us
    return batching


def sequence_config(name: str, manifest: dict, opts: Options, labels: str | None = None):
    """The step graph's Triton variant (graph.batch_first_step) with implicit state."""
    pb2 = pb()
    config = _common(pb2, name, "onnxruntime", manifest, False, opts, labels)
    batching = _sequence_batching(pb2, config, opts, [START, READY])
    for spec in manifest["state"]:
        layers, _, hidden = spec["shape"]
        state = batching.state.add(
            input_name=spec["name"], output_name=spec["output"], data_type="TYPE_FP32", dims=[layers, hidden]
        )
        # zero_data: without an initial state the first request of a sequence reads whatever the
        # buffer held (Triton docs); START zeroes it inside the graph as well.
        state.initial_state.add(name="zeros", data_type="TYPE_FP32", dims=[layers, hidden], zero_data=True)
    config.instance_group.add(kind=KIND[opts.device], count=opts.instances)
    return config


def full_config(name: str, manifest: dict, opts: Options, labels: str | None = None):
    """`model.onnx` under the dynamic batcher (requests of equal length are batched together)."""
    pb2 = pb()
    config = _common(pb2, name, "onnxruntime", manifest, True, opts, labels)
    config.dynamic_batching.max_queue_delay_microseconds = opts.max_queue_delay_us
    config.instance_group.add(kind=KIND[opts.device], count=opts.instances)
    return config


def python_config(name: str, manifest: dict, opts: Options, labels: str | None = None):
    """The Python-backend model: the chunk in, the same outputs as the onnxruntime variants.
    Streams (unidirectional) under the sequence batcher with all four controls (its state is kept
    per CORRID); whole sequences (bidirectional) under the dynamic batcher, where it pads requests
    of different lengths into one call."""
    pb2 = pb()
    stream = streams(manifest)
    config = _common(pb2, name, "python", manifest, False, opts, labels)  # it pads and passes lengths itself
    # Requests of different lengths may share one execute(): the model takes each request's own
    # tensor (and groups chunks by length, or pads whole sequences). Without this Triton batches
    # only requests of one shape (measured: 64 whole sequences of lengths 1-30 ran in 60-64 calls).
    config.input[0].allow_ragged_batch = True
    if stream:
        _sequence_batching(pb2, config, opts, [START, END, READY, CORRID])
    else:
        config.dynamic_batching.max_queue_delay_microseconds = opts.max_queue_delay_us
    config.instance_group.add(kind="KIND_CPU", count=opts.instances)
    parameters = {"max_steps": opts.max_steps, "idle_timeout_s": opts.idle_timeout_s}
    for key, value in parameters.items():
        config.parameters[key].string_value = str(value)
    return config


def text(config, comment: str) -> str:
    """config.pbtxt: `comment` as '#' lines, then the message. (Fields at their protobuf default
    are not printed: a control without `kind` is CONTROL_SEQUENCE_START, an instance group
    without `kind` is KIND_AUTO.)"""
    head = "".join(f"# {line}\n" for line in comment.splitlines())
    return head + text_format.MessageToString(config)


def parse(data: str):
    """A config.pbtxt's text as a ModelConfig (raises ParseError on an unknown field or bad value)."""
    return text_format.Parse(data, pb().ModelConfig())


def check_against_graph(config, model: onnx.ModelProto) -> list[str]:
    """What in `config` does not match the ONNX graph Triton would load with it (names, data types,
    dims after the batch, state shapes, controls); empty when they agree."""
    pb2 = pb()
    dtype_name = pb2.DataType.Name

    def tensors(values):
        return {
            v.name: (
                _DTYPE.get(v.type.tensor_type.elem_type, f"ONNX type {v.type.tensor_type.elem_type}"),
                [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim],
            )
            for v in values
        }

    ins, outs = tensors(model.graph.input), tensors(model.graph.output)
    problems, batched = [], config.max_batch_size > 0

    def compare(kind: str, name: str, dtype: str, dims: list, have: dict) -> None:
        if name not in have:
            problems.append(f"{kind} {name!r} is not in the graph (graph {kind}s: {', '.join(have)})")
            return
        g_dtype, g_dims = have.pop(name)
        if batched:
            if not g_dims or g_dims[0] != -1:
                problems.append(f"{kind} {name!r}: the graph's first dimension {g_dims[:1]} is not a free batch axis")
            g_dims = g_dims[1:]
        if g_dtype != dtype:
            problems.append(f"{kind} {name!r}: config says {dtype}, the graph has {g_dtype}")
        if list(dims) != g_dims:
            problems.append(f"{kind} {name!r}: config dims {list(dims)}, the graph's {g_dims}")

    for entry in config.input:
        dims = entry.reshape.shape if entry.HasField("reshape") else entry.dims
        compare("input", entry.name, dtype_name(entry.data_type), dims, ins)
    for entry in config.output:
        compare("output", entry.name, dtype_name(entry.data_type), entry.dims, outs)
    batching = config.sequence_batching
    for control in batching.control_input:
        kind = control.control[0]
        dtype = dtype_name(kind.data_type) if kind.data_type else "TYPE_FP32"
        compare("input", control.name, dtype, [1], ins)
    for state in batching.state:
        dtype = dtype_name(state.data_type)
        compare("input", state.input_name, dtype, state.dims, ins)
        compare("output", state.output_name, dtype, state.dims, outs)
        if [list(s.dims) for s in state.initial_state] != [list(state.dims)]:
            problems.append(f"state {state.input_name!r}: its initial_state must have the state's dims")
    problems += [f"input {n!r} of the graph is not fed by the config" for n in ins]
    if batching.state and outs:
        problems += [f"output {n!r} of the graph is not in the config" for n in outs]
    return problems


def labels_text(manifest: dict) -> str | None:
    """labels.txt for the output's classification extension: the labels, or the LM's vocabulary
    (one per line; a newline token is written as the two characters \\n)."""
    names = tasks.names(manifest)
    return None if names is None else "".join(n.replace("\n", "\\n") + "\n" for n in names)
