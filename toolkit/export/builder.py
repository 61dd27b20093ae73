"""ONNX graphs of a trained SequenceModel, built from its weights with onnx.helper.

Why by hand rather than torch.onnx: each recurrent layer becomes one native ONNX RNN/LSTM/GRU
operator (what ONNX Runtime optimises) with `sequence_lens` for padded batches, time-major
layout (onnxruntime rejects layout=1) and GRU `linear_before_reset=1` (what torch computes),
and the time axis is dynamic by construction. torch.onnx cannot export pack_padded_sequence,
and its dynamo path has frozen the time axis of nn.RNN and mis-set the GRU reset (FIELD-NOTES).
The parity certificate checks every graph against torch.

- `model.onnx`: (tokens int64 [B, T] | features float32 [B, T, F], lengths int64 [B])
  -> logits/values, [B, K] per sequence or [B, T, K] per step.
- `step.onnx` (unidirectional only): (chunk [B, Tc(, F)], h [L, B, H](, c [L, B, H]))
  -> (per-step logits/values [B, Tc, K], h_next(, c_next)). Per-sequence heads (classify,
  regress) give, at each step, the prediction for the sequence ending there.

NumPy and onnx only: weights come in as a dict of numpy arrays (the torch state_dict).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from toolkit.config import ModelConfig
from toolkit.data.types import InputSpec, OutputSpec
from toolkit.errors import RnnkitError
from toolkit.models.reference import gru_to_onnx, lstm_to_onnx, rnn_to_onnx

TO_ONNX = {"rnn": rnn_to_onnx, "lstm": lstm_to_onnx, "gru": gru_to_onnx}
OP = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


class StepGraphError(RnnkitError):
    exit_code = 2


class _Graph:
    """A small helper that names intermediate values and collects nodes and initializers."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.count = 0

    def const(self, name: str, value) -> str:
        array = np.asarray(value)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, name: str | None = None, **attrs) -> list[str]:
        self.count += 1
        base = name or f"{op_type.lower()}_{self.count}"
        names = [base] if outputs == 1 else [f"{base}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=base, **attrs))
        return names

    def one(self, op_type: str, inputs: list[str], name: str | None = None, **attrs) -> str:
        return self.op(op_type, inputs, 1, name, **attrs)[0]


def _input_info(input_spec: InputSpec, time: str) -> onnx.ValueInfoProto:
    if input_spec.kind == "tokens":
        return helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", time])
    return helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", time, int(input_spec.num_features)])


def _embed(g: _Graph, weights: dict, input_spec: InputSpec) -> str:
    """Input layer -> batch-major [B, T, I]."""
    if input_spec.kind == "tokens":
        return g.one("Gather", [g.const("embedding.weight", weights["embedding.weight"]), "tokens"], name="embedded")
    centred = g.one("Sub", ["features", g.const("feature_mean", weights["feature_mean"])])
    return g.one("Div", [centred, g.const("feature_std", weights["feature_std"])], name="normalised")


def _layer_weights(g: _Graph, weights: dict, cfg: ModelConfig, i: int) -> list[str]:
    """ONNX W, R, B for layer i, directions stacked on axis 0."""
    prefix = f"encoder.layers.{i}."
    suffixes = ["", "_reverse"] if cfg.bidirectional else [""]
    per_dir = [
        TO_ONNX[cfg.cell](*(weights[f"{prefix}{p}_l0{s}"] for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")))
        for s in suffixes
    ]
    return [g.const(f"layer{i}.{n}", np.stack([d[k] for d in per_dir])) for k, n in enumerate("WRB")]


def _recurrent(g: _Graph, cfg: ModelConfig, i: int, x: str, w: list[str], seq: str, h0: str, c0: str) -> list[str]:
    """One native recurrent node; returns [Y, Y_h(, Y_c)]."""
    attrs = {"hidden_size": cfg.hidden_size, "direction": "bidirectional" if cfg.bidirectional else "forward"}
    if cfg.cell == "gru":
        attrs["linear_before_reset"] = 1
    if cfg.cell == "rnn":
        attrs["activations"] = ["Relu" if cfg.nonlinearity == "relu" else "Tanh"] * (2 if cfg.bidirectional else 1)
    inputs = [x, *w, seq, h0]
    if cfg.cell == "lstm":
        inputs.append(c0)
    while inputs and inputs[-1] == "":
        inputs.pop()
    return g.op(OP[cfg.cell], inputs, 3 if cfg.cell == "lstm" else 2, name=f"layer{i}", **attrs)


def _merge(g: _Graph, cfg: ModelConfig, y: str, i: int) -> str:
    """ONNX Y [T, D, B, H] -> [T, B, D*H] (concat) or [T, B, H] (sum, or one direction)."""
    if not cfg.bidirectional:
        return g.one("Squeeze", [y, g.const(f"axes1_{i}", np.array([1], dtype=np.int64))])
    if cfg.merge == "sum":
        return g.one("ReduceSum", [y, g.const(f"axes1_{i}", np.array([1], dtype=np.int64))], keepdims=0)
    tbdh = g.one("Transpose", [y], perm=[0, 2, 1, 3])
    return g.one("Reshape", [tbdh, g.const(f"shape_tb_{i}", np.array([0, 0, -1], dtype=np.int64))])


def _encoder(g: _Graph, weights: dict, cfg: ModelConfig, x_tm: str, seq: str, state: dict | None):
    """The stack, time-major. Returns (top output [T, B, out], [per-layer Y_h], [per-layer Y_c])."""
    x, hs, cs = x_tm, [], []
    for i in range(cfg.num_layers):
        h0 = c0 = ""
        if state is not None:
            starts, ends = g.const(f"l{i}_start", np.array([i])), g.const(f"l{i}_end", np.array([i + 1]))
            h0 = g.one("Slice", [state["h"], starts, ends], name=f"h{i}")
            if cfg.cell == "lstm":
                c0 = g.one("Slice", [state["c"], starts, ends], name=f"c{i}")
        outs = _recurrent(g, cfg, i, x, _layer_weights(g, weights, cfg, i), seq, h0, c0)
        out = _merge(g, cfg, outs[0], i)
        if cfg.residual and i > 0:  # every layer after the first reads and writes output_size
            out = g.one("Add", [out, x], name=f"residual{i}")
        hs.append(outs[1])
        if cfg.cell == "lstm":
            cs.append(outs[2])
        x = out
    return x, hs, cs


def _head(g: _Graph, weights: dict, task: str, x: str, name: str) -> str:
    """Linear head on the last axis (then de-normalisation for regression)."""
    w = g.const("head.weight_t", weights["head.weight"].T.copy())
    y = g.one("Add", [g.one("MatMul", [x, w]), g.const("head.bias", weights["head.bias"])])
    if task != "regress":
        return g.one("Identity", [y], name=name)
    scaled = g.one("Mul", [y, g.const("target_std", weights["target_std"])])
    return g.one("Add", [scaled, g.const("target_mean", weights["target_mean"])], name=name)


def _finish(g: _Graph, name: str, inputs, outputs, opset: int, doc: str) -> onnx.ModelProto:
    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.initializers, doc_string=doc)
    opsets = [helper.make_opsetid("", opset)]
    # Explicit IR version: onnx 1.23's default (14) is refused by onnxruntime-gpu 1.31.
    model = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
    model.producer_name = "rnnkit"
    onnx.checker.check_model(model, full_check=True)
    return model


def build_full_graph(
    weights: dict, cfg: ModelConfig, input_spec: InputSpec, output_spec: OutputSpec, opset: int = 17
) -> onnx.ModelProto:
    task = output_spec.task
    per_step = task in ("tag", "lm") or output_spec.per_step
    out_name = "values" if task == "regress" else "logits"
    g = _Graph()
    x = _embed(g, weights, input_spec)
    x_tm = g.one("Transpose", [x], perm=[1, 0, 2], name="time_major")
    seq = g.one("Cast", ["lengths"], name="sequence_lens", to=TensorProto.INT32)
    top, hs, _ = _encoder(g, weights, cfg, x_tm, seq, None)
    if per_step:
        y = _head(g, weights, task, g.one("Transpose", [top], perm=[1, 0, 2]), out_name)
        dims = ["batch", "time", None]
    else:
        if cfg.bidirectional:  # final state of each direction: forward at its last step, backward at 0
            if cfg.merge == "sum":
                pooled = g.one("ReduceSum", [hs[-1], g.const("axes0", np.array([0], dtype=np.int64))], keepdims=0)
            else:
                bdh = g.one("Transpose", [hs[-1]], perm=[1, 0, 2])
                pooled = g.one("Reshape", [bdh, g.const("shape_b", np.array([0, -1], dtype=np.int64))])
        else:  # top output at each sequence's last real step
            last = g.one("Sub", ["lengths", g.const("one", np.array(1, dtype=np.int64))])
            index = g.one("Unsqueeze", [last, g.const("axes_last", np.array([1], dtype=np.int64))])
            pooled = g.one("GatherND", [g.one("Transpose", [top], perm=[1, 0, 2]), index], batch_dims=1)
        y = _head(g, weights, task, pooled, out_name)
        dims = ["batch", None]
    inputs = [_input_info(input_spec, "time"), helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"])]
    outputs = [helper.make_tensor_value_info(y, TensorProto.FLOAT, dims)]
    doc = f"rnnkit {task} model, {cfg.cell} x{cfg.num_layers}, full sequence with per-sequence lengths"
    return _finish(g, "rnnkit_model", inputs, outputs, opset, doc)


def build_step_graph(
    weights: dict, cfg: ModelConfig, input_spec: InputSpec, output_spec: OutputSpec, opset: int = 17
) -> onnx.ModelProto:
    if cfg.bidirectional:
        raise StepGraphError(
            "a bidirectional model has no step graph: its backward direction reads each sequence from the "
            "end, so no output is final until the whole sequence has arrived; stream a unidirectional "
            "model, or run this one on whole sequences (model.onnx)"
        )
    task = output_spec.task
    g = _Graph()
    x = _embed(g, weights, input_spec)
    x_tm = g.one("Transpose", [x], perm=[1, 0, 2], name="time_major")
    state = {"h": "h", "c": "c"} if cfg.cell == "lstm" else {"h": "h"}
    top, hs, cs = _encoder(g, weights, cfg, x_tm, "", state)
    y = _head(g, weights, task, g.one("Transpose", [top], perm=[1, 0, 2]), "values" if task == "regress" else "logits")
    h_next = g.one("Concat", hs, name="h_next", axis=0)
    state_dims = [cfg.num_layers, "batch", cfg.hidden_size]
    inputs = [_input_info(input_spec, "chunk")]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, state_dims) for n in state]
    outputs = [
        helper.make_tensor_value_info(y, TensorProto.FLOAT, ["batch", "chunk", None]),
        helper.make_tensor_value_info(h_next, TensorProto.FLOAT, state_dims),
    ]
    if cfg.cell == "lstm":
        c_next = g.one("Concat", cs, name="c_next", axis=0)
        outputs.append(helper.make_tensor_value_info(c_next, TensorProto.FLOAT, state_dims))
    doc = f"rnnkit {task} model, {cfg.cell} x{cfg.num_layers}, one chunk of a stream with the state carried"
    return _finish(g, "rnnkit_step", inputs, outputs, opset, doc)


def state_spec(cfg: ModelConfig) -> list[dict]:
    """The step graph's state tensors, for the manifest (zeros is the trained initial state)."""
    names = ["h", "c"] if cfg.cell == "lstm" else ["h"]
    shape = [cfg.num_layers, "batch", cfg.hidden_size]
    return [{"name": n, "output": f"{n}_next", "shape": shape, "dtype": "float32", "initial": "zeros"} for n in names]
