"""ONNX graphs of a trained SequenceModel, built node by node from its weights with onnx.helper.

Why by hand rather than torch.onnx: each recurrent layer becomes one native ONNX RNN/LSTM/GRU
operator (what ONNX Runtime runs fastest) with `sequence_lens` for padded batches, time-major
`layout=0` (onnxruntime rejects layout=1) and GRU `linear_before_reset=1` (what torch computes);
the batch and time axes are symbolic by construction. torch.onnx cannot export
pack_padded_sequence, and its dynamo path froze the time axis of nn.RNN and mis-set the GRU
reset (torch 2.x, checked when this exporter was chosen). Parity tests
(tests/test_export_graph.py) prove the graphs compute what torch computes.

Two graphs (names of inputs and outputs are the bundle's contract with the runtime):

- `model.onnx` (`build_full_graph`), any model:
  `tokens` int64 [batch, time] | `features` float32 [batch, time, F], `lengths` int64 [batch]
  -> `logits` | `values`: [batch, K] (classify, per-sequence regress) or [batch, time, K].
  Each sequence b uses steps 0..lengths[b]-1 only; padding never reaches a real position, in
  either direction (the backward direction starts at each sequence's own last step). Every
  length must lie in 1..time (onnxruntime refuses 0).
  Features normalised per sequence (`model.normalize: sequence`, toolkit.core.normalize) are
  scaled by each sequence's own mean and std over its real steps, as nodes (below).
- `step.onnx` (`build_step_graph`), models that can stream only (toolkit.core.streaming: not
  bidirectional, not normalised per sequence, pooled by the last step):
  chunk (`tokens` [batch, chunk] | `features` [batch, chunk, F]), `h` [L, batch, H]
  (+ `c` for LSTM) -> per-step `logits` | `values` [batch, chunk, K], `h_next` (+ `c_next`).
  Per-sequence heads (classify, regress) give at every step the prediction for the sequence
  ending there, i.e. what `model.onnx` returns for that prefix. Zeros are the initial state.
  Frame-stacked (model.frame_stack: K): one output per frame, [batch, ceil(chunk / K), K]; a
  stream feeds whole frames (chunks of a multiple of K steps) and a partial frame only as its
  last chunk, which the graph fills with the normalised 0 as model.onnx fills a sequence's last
  frame (toolkit.runtime.engine buffers the steps of a frame until it is whole).

Graph structure (full graph; the step graph is the same without `sequence_lens` and with the
initial states sliced from `h`/`c`):

    tokens -> Gather(embedding) | features (-> Sub(mean) when a mean is far from 0)   [B, T, I]
       (1/std, and the mean when it is not subtracted, are folded into layer 0's weights)
       | per sequence: d = (features - features[:, :1]) * mask, mask = step < lengths;
         c = (d - ReduceSum_t(d) / n) * mask, n = ReduceSum_t(mask); c / Sqrt(ReduceSum_t(c*c) / n + eps)
         (Where, not *, applies the mask: see `_normalise_sequences`)
       | frames of K (model.frame_stack): Sub(mean), Mul(1/std), padding 0, Pad the time axis to
         a multiple of K, Reshape [B, T/K, K*F]; lengths -> frame lengths (lengths + K-1) / K
    -> Transpose -> [T, B, I]
    -> per layer i: RNN|LSTM|GRU(W, R, B, sequence_lens=Cast(lengths, int32)) -> Y [T, D, B, H]
       -> Squeeze (one direction) | Transpose+Reshape [T, B, 2H] (concat) | ReduceSum (sum)
       -> Add(layer input) when residual and i > 0
    -> per-step head: Transpose -> [B, T, W] -> MatMul + Add (for regress, the target scale
       (x W + b) * std + mean is folded into W and b)
    -> per-sequence head: pooled = GatherND(top output, max(lengths-1, 0), batch_dims=1) (one direction)
       or the top node's Y_h, directions concatenated or summed (two); model.pool mean / max: masked
       ReduceSum / ReduceMax over time; attention: Softmax over time of MatMul(Tanh(MatMul + Add))
       scores, -inf at padding, then the weighted sum -> MatMul + Add (...)

Dropout is the identity at inference and has no node. Weights are stored as float32.

NumPy and onnx only (no torch): weights come in as a dict of numpy arrays keyed like the torch
state_dict, e.g. `{k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from toolkit.core import normalize, tasks
from toolkit.core.config import ModelConfig
from toolkit.core.data.types import InputSpec, OutputSpec
from toolkit.core.errors import RnnkitError
from toolkit.core.streaming import whole_sequences_only
from toolkit.export.layout import GATES, gru_to_onnx, lstm_to_onnx, rnn_to_onnx

__all__ = [
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "ExportGraphError",
    "StepGraphError",
    "build_full_graph",
    "build_step_graph",
    "state_spec",
]

DEFAULT_OPSET = 17
#: The RNN operators' `layout` attribute (and Squeeze/ReduceSum taking axes as inputs) need 14.
MIN_OPSET = 14

_TO_ONNX = {"rnn": rnn_to_onnx, "lstm": lstm_to_onnx, "gru": gru_to_onnx}
_OP_TYPE = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


class ExportGraphError(RnnkitError, ValueError):
    """The weights, config or specs cannot be turned into a graph (says which and why)."""

    exit_code = 2


class StepGraphError(ExportGraphError):
    """A step graph was asked of a model that cannot be streamed (toolkit.core.streaming)."""


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def build_full_graph(
    weights: Mapping[str, np.ndarray],
    cfg: ModelConfig,
    input_spec: InputSpec,
    output_spec: OutputSpec,
    opset: int = DEFAULT_OPSET,
    fold: bool = True,
) -> onnx.ModelProto:
    """`model.onnx`: whole padded sequences with per-sequence `lengths`, dynamic batch and time.
    `fold=False`: feature normalisation as nodes, not folded into layer 0 (`_Plan.fold`)."""
    # Frames are filled with the normalised padding (0), so normalisation stays nodes: folded into
    # layer 0, raw padding would enter a sequence's last frame as -mean / std.
    plan = _Plan.make(weights, cfg, input_spec, output_spec, opset, fold and cfg.frame_stack == 1)
    g = _GraphBuilder()
    x = _input_layer(g, plan, weights, padded=True)
    lengths = "lengths"
    if cfg.frame_stack > 1:
        x, lengths = _stack_frames(g, x, cfg.frame_stack, cfg.frame_stack * plan.num_features, lengths)
    x = g.one("Transpose", [x], "x_time_major", perm=[1, 0, 2])
    seq = g.one("Cast", [lengths], "sequence_lens", to=TensorProto.INT32)
    top, finals = _encoder(g, plan, weights, x, seq, state=None)

    if plan.per_step:
        y = _head(g, plan, weights, g.one("Transpose", [top], "top_batch_major", perm=[1, 0, 2]))
        out_dims = ["batch", "time", plan.head_size]
    else:
        y = _head(g, plan, weights, _pool(g, plan, weights, top, finals[-1][0], lengths))
        out_dims = ["batch", plan.head_size]

    inputs = [
        _input_info(plan, "time"),
        helper.make_tensor_value_info(
            "lengths", TensorProto.INT64, ["batch"], doc_string="real steps per sequence, each in 1..time"
        ),
    ]
    outputs = [helper.make_tensor_value_info(y, TensorProto.FLOAT, out_dims, doc_string=plan.output_doc)]
    doc = (
        f"rnnkit {plan.describe}: whole sequences. Padded positions (t >= lengths[b]) never change a real "
        "position's output, in either direction."
    )
    return _finish(g, plan, "rnnkit_model", inputs, outputs, doc)


def build_step_graph(
    weights: Mapping[str, np.ndarray],
    cfg: ModelConfig,
    input_spec: InputSpec,
    output_spec: OutputSpec,
    opset: int = DEFAULT_OPSET,
    fold: bool = True,
) -> onnx.ModelProto:
    """`step.onnx`: one chunk of a stream (any length >= 1) with the recurrent state carried."""
    why = whole_sequences_only(cfg.bidirectional, cfg.normalize, cfg.pool)
    if why:
        raise StepGraphError(
            f"no step graph: {why} (the model sees the future). Stream a unidirectional model normalised by the "
            "dataset (bidirectional: false, normalize: dataset), or run this one on whole sequences with model.onnx."
        )
    plan = _Plan.make(weights, cfg, input_spec, output_spec, opset, fold and cfg.frame_stack == 1)
    g = _GraphBuilder()
    x = _input_layer(g, plan, weights)
    time = "chunk"
    if cfg.frame_stack > 1:  # a partial (last) frame is filled with the normalised 0, as in model.onnx
        x, _ = _stack_frames(g, x, cfg.frame_stack, cfg.frame_stack * plan.num_features)
        time = "frames"
    x = g.one("Transpose", [x], "x_time_major", perm=[1, 0, 2])
    names = [spec["name"] for spec in state_spec(cfg)]
    top, finals = _encoder(g, plan, weights, x, seq="", state=names)
    y = _head(g, plan, weights, g.one("Transpose", [top], "top_batch_major", perm=[1, 0, 2]))

    state_dims = [cfg.num_layers, "batch", cfg.hidden_size]
    inputs = [_input_info(plan, "chunk")]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, state_dims, doc_string=_STATE_DOC[n]) for n in names]
    outputs = [
        helper.make_tensor_value_info(y, TensorProto.FLOAT, ["batch", time, plan.head_size], doc_string=plan.step_doc)
    ]
    for k, n in enumerate(names):
        # Y_h / Y_c of every layer, [1, B, H] each, stacked to [L, B, H].
        new = g.one("Concat", [f[k] for f in finals], f"{n}_next", axis=0)
        outputs.append(
            helper.make_tensor_value_info(new, TensorProto.FLOAT, state_dims, doc_string=f"{n} after the chunk")
        )
    doc = (
        f"rnnkit {plan.describe}: one chunk of a stream, state carried between calls (start from zeros). "
        "Any chunking of a stream gives the outputs of model.onnx on the whole sequence."
    )
    return _finish(g, plan, "rnnkit_step", inputs, outputs, doc)


def state_spec(cfg: ModelConfig) -> list[dict]:
    """The step graph's state tensors, in the order of its inputs (after the chunk) and of its
    outputs (after the per-step predictions), for the manifest. Zeros is the trained initial state."""
    names = ["h", "c"] if cfg.cell == "lstm" else ["h"]
    shape = [cfg.num_layers, "batch", cfg.hidden_size]
    return [
        {"name": n, "output": f"{n}_next", "shape": list(shape), "dtype": "float32", "initial": "zeros"} for n in names
    ]


_STATE_DOC = {
    "h": "hidden state per layer [num_layers, batch, hidden_size]; zeros to start a stream",
    "c": "LSTM cell state per layer [num_layers, batch, hidden_size]; zeros to start a stream",
}


# --------------------------------------------------------------------------------------------
# What to build: checked facts derived from config, specs and weights
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    cfg: ModelConfig
    task: str
    tokens: bool
    per_step: bool
    num_features: int | None
    head_size: int
    opset: int
    #: Fold 1/std (and a small mean) into layer 0's weights (fast); False: Sub and Mul nodes
    #: before layer 0, so that its weights keep the trained scale (what int8 quantizes best).
    fold: bool = True

    @property
    def directions(self) -> int:
        return 2 if self.cfg.bidirectional else 1

    @property
    def per_sequence(self) -> bool:
        """Features normalised by each sequence's own mean and std (nodes; nothing folded)."""
        return not self.tokens and self.cfg.normalize == normalize.SEQUENCE

    @property
    def values(self) -> bool:
        """Regression: raw-unit values out (the target scale folded into the head)."""
        return tasks.of(self.task).predicts == "values"

    @property
    def output_name(self) -> str:
        return tasks.of(self.task).output_name

    @property
    def describe(self) -> str:
        cfg = self.cfg
        cell = f"rnn-{cfg.nonlinearity}" if cfg.cell == "rnn" else cfg.cell
        kind = "bidirectional" if cfg.bidirectional else "unidirectional"
        extra = f", merge={cfg.merge}" if cfg.bidirectional else ""
        extra += ", residual" if cfg.residual and cfg.num_layers > 1 else ""
        extra += ", features normalised per sequence" if self.per_sequence else ""
        return (
            f"{self.task} model ({'tokens' if self.tokens else 'features'} in), {kind} {cell}, "
            f"{cfg.num_layers} layer(s) x hidden_size {cfg.hidden_size}{extra}"
        )

    @property
    def output_doc(self) -> str:
        what = "raw-unit regression values" if self.values else f"{self.task} logits"
        return f"{what}, {'one row per step' if self.per_step else 'one row per sequence'}"

    @property
    def step_doc(self) -> str:
        if self.per_step:
            return self.output_doc
        what = "regression values" if self.values else "class logits"
        if self.cfg.frame_stack > 1:
            return f"{what} for the sequence ending at each frame of {self.cfg.frame_stack} steps of the chunk"
        return f"{what} for the sequence ending at each step of the chunk"

    @classmethod
    def make(
        cls, weights, cfg: ModelConfig, input_spec: InputSpec, output_spec: OutputSpec, opset: int, fold: bool = True
    ) -> _Plan:
        max_opset = onnx.defs.onnx_opset_version()
        if not isinstance(opset, int) or not MIN_OPSET <= opset <= max_opset:
            raise ExportGraphError(f"opset must be an integer in {MIN_OPSET}..{max_opset}, got {opset!r}")
        cfg.validate()
        task = output_spec.task
        if task not in tasks.TASKS:
            raise ExportGraphError(f"output_spec.task must be one of {', '.join(tasks.TASKS)}; got {task!r}")
        if input_spec.kind not in ("tokens", "features"):
            raise ExportGraphError(f"input_spec.kind must be 'tokens' or 'features'; got {input_spec.kind!r}")
        tokens = input_spec.kind == "tokens"
        if tasks.of(task).predicts == "tokens" and not tokens:
            raise ExportGraphError(f"an {task} model reads tokens, but input_spec.kind is 'features'")

        plan_words = f"{task}, {input_spec.kind}, {cfg.cell} x{cfg.num_layers}"
        plan_words += ", bidirectional" if cfg.bidirectional else ""

        def get(name: str, required: bool = True) -> np.ndarray | None:
            if name not in weights:
                if not required:
                    return None
                raise ExportGraphError(
                    f"weights has no {name!r}: expected the SequenceModel's state_dict as numpy arrays "
                    f"(a {plan_words} model); keys present: {', '.join(sorted(weights)) or 'none'}"
                )
            return np.asarray(weights[name])

        def expect(name: str, shape: tuple, required: bool = True) -> None:
            array = get(name, required)
            if array is None:
                return
            if array.shape != shape:
                raise ExportGraphError(f"weights[{name!r}] has shape {array.shape}, expected {shape} ({plan_words})")
            if not np.issubdtype(array.dtype, np.floating):
                raise ExportGraphError(f"weights[{name!r}] has dtype {array.dtype}, expected floating point")

        num_features = None
        if tokens:
            emb = get("embedding.weight")
            expect("embedding.weight", (emb.shape[0], cfg.embedding_dim))
            input_size = cfg.embedding_dim
            vocab = input_spec.vocab
            if vocab is not None and len(vocab) != emb.shape[0]:
                raise ExportGraphError(
                    f"the vocabulary has {len(vocab)} tokens but weights['embedding.weight'] has {emb.shape[0]} rows"
                )
        else:
            num_features = int(get("feature_mean").shape[0])
            if input_spec.num_features is not None and int(input_spec.num_features) != num_features:
                raise ExportGraphError(
                    f"input_spec.num_features is {input_spec.num_features} but weights['feature_mean'] "
                    f"has {num_features} values"
                )
            expect("feature_mean", (num_features,))
            expect("feature_std", (num_features,))
            input_size = num_features * cfg.frame_stack  # layer 0 reads frames of K steps

        gates, hidden = GATES[cfg.cell], cfg.hidden_size
        suffixes = ["", "_reverse"] if cfg.bidirectional else [""]
        for i in range(cfg.num_layers):
            width = input_size if i == 0 else cfg.output_size
            for s in suffixes:
                p = f"encoder.layers.{i}."
                expect(f"{p}weight_ih_l0{s}", (gates * hidden, width))
                expect(f"{p}weight_hh_l0{s}", (gates * hidden, hidden))
                expect(f"{p}bias_ih_l0{s}", (gates * hidden,), required=False)
                expect(f"{p}bias_hh_l0{s}", (gates * hidden,), required=False)
        extra = sorted(k for k in weights if k.startswith(f"encoder.layers.{cfg.num_layers}."))
        if extra:
            raise ExportGraphError(f"weights hold more layers than num_layers={cfg.num_layers}: {extra[0]}, ...")

        if cfg.pool == "attention":
            expect("encoder.attention_proj.weight", (cfg.output_size, cfg.output_size))
            expect("encoder.attention_proj.bias", (cfg.output_size,))
            expect("encoder.attention_score.weight", (1, cfg.output_size))
        head = get("head.weight")
        head_size = int(head.shape[0])
        expect("head.weight", (head_size, cfg.output_size))
        expect("head.bias", (head_size,))
        if tasks.of(task).predicts == "values":
            expect("target_mean", (head_size,))
            expect("target_std", (head_size,))
        per_step = tasks.of(task).outputs_per_step(bool(output_spec.per_step))
        return cls(cfg, task, tokens, per_step, num_features, head_size, opset, fold)


# --------------------------------------------------------------------------------------------
# Graph pieces
# --------------------------------------------------------------------------------------------


class _GraphBuilder:
    """Collects nodes and initializers; each node is named after its (first) output."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set()

    def _claim(self, name: str) -> str:
        if name in self._names:
            raise AssertionError(f"duplicate value name {name!r} in the graph being built")
        self._names.add(name)
        return name

    def const(self, name: str, value, dtype=None) -> str:
        array = np.asarray(value, dtype=dtype)
        if np.issubdtype(array.dtype, np.floating):
            array = array.astype(np.float32)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), self._claim(name)))
        return name

    def ints(self, name: str, values) -> str:
        return self.const(name, np.asarray(values, dtype=np.int64))

    def op(self, op_type: str, inputs: list[str], outputs: list[str], **attrs) -> list[str]:
        for out in outputs:
            self._claim(out)
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=f"{outputs[0]}/{op_type}", **attrs))
        return outputs

    def one(self, op_type: str, inputs: list[str], output: str, **attrs) -> str:
        return self.op(op_type, inputs, [output], **attrs)[0]


def _input_info(plan: _Plan, time: str) -> onnx.ValueInfoProto:
    if plan.tokens:
        return helper.make_tensor_value_info(
            "tokens", TensorProto.INT64, ["batch", time], doc_string="token ids; padding beyond lengths is ignored"
        )
    return helper.make_tensor_value_info(
        "features",
        TensorProto.FLOAT,
        ["batch", time, plan.num_features],
        doc_string="raw feature values (the graph normalises them); padding beyond lengths is ignored",
    )


def _input_layer(g: _GraphBuilder, plan: _Plan, weights, padded: bool = False) -> str:
    """Input -> [B, T, I]: embedding lookup, features normalised per sequence, or the raw
    features, centred here when the mean is too large to fold (`_centred_in_graph`); the rest of
    the normalisation is folded into layer 0's weights (`_fold_normalisation`). `padded` (the
    full graph): normalisation as nodes leaves padded steps 0 (`_zero_padding`)."""
    if plan.tokens:
        return g.one("Gather", [g.const("embedding.weight", weights["embedding.weight"]), "tokens"], "embedded")
    if plan.per_sequence:
        return _normalise_sequences(g, "features")
    if not plan.fold:
        centred = g.one("Sub", ["features", g.const("feature_mean", weights["feature_mean"])], "centred")
        inverse = 1.0 / np.asarray(weights["feature_std"], dtype=np.float64)
        normalised = g.one("Mul", [centred, g.const("feature_inverse_std", inverse)], "normalised")
        return _zero_padding(g, normalised) if padded else normalised
    if _centred_in_graph(weights):
        return g.one("Sub", ["features", g.const("feature_mean", weights["feature_mean"])], "centred")
    return "features"


def _zero_padding(g: _GraphBuilder, x: str) -> str:
    """x [B, T, F] with the steps past each sequence's length set to 0. The recurrent operators
    ignore them anyway, but int8 graphs quantize x with one range per call, and normalised
    padding (0 - mean) / std (-129 for a feature at -37 +- 0.28) would stretch that range and
    coarsen every real step."""
    mask = g.one("Cast", [_real_steps(g, x)], "real_steps_float", to=TensorProto.FLOAT)
    return g.one("Mul", [x, mask], "unpadded")


def _normalise_sequences(g: _GraphBuilder, x: str) -> str:
    """x [B, T, F] scaled by each sequence's own mean and std per feature over its real steps,
    about its first step (toolkit.core.normalize): ReduceSums over time of the real steps,
    divided by their number. Padding is left out by Where (a product with a 0/1 mask would let
    an inf or NaN there through) and comes out 0, as int8 graphs need (`_zero_padding`)."""
    real = _real_steps(g, x)
    zero = g.const("norm.zero", 0.0)
    time = g.ints("norm.time_axis", [1])
    first = g.one("Slice", [x, g.ints("norm.first", [0]), g.ints("norm.second", [1]), time], "norm.first_step")
    d = g.one("Where", [real, g.one("Sub", [x, first], "norm.shifted"), zero], "norm.shifted_real")
    count = g.one("Cast", [real], "norm.real_float", to=TensorProto.FLOAT)
    count = g.one("ReduceSum", [count, time], "norm.count", keepdims=1)
    mean = g.one("Div", [g.one("ReduceSum", [d, time], "norm.sum", keepdims=1), count], "norm.mean")
    centred = g.one("Where", [real, g.one("Sub", [d, mean], "norm.centred"), zero], "norm.centred_real")
    squares = g.one("Mul", [centred, centred], "norm.squares")
    variance = g.one("Div", [g.one("ReduceSum", [squares, time], "norm.sum_squares", keepdims=1), count], "norm.var")
    std = g.one("Sqrt", [g.one("Add", [variance, g.const("norm.eps", normalize.EPS)], "norm.var_eps")], "norm.std")
    return g.one("Div", [centred, std], "normalised")


def _real_steps(g: _GraphBuilder, x: str, prefix: str = "", lengths: str = "lengths") -> str:
    """bool [B, T, 1]: whether step t is a real step of sequence b of x [B, T, F] (t < lengths[b]).
    `prefix` names a second mask in the same graph."""
    p = prefix
    time = g.one(
        "Gather", [g.one("Shape", [x], f"{p}x_shape"), g.const(f"{p}mask.time_axis", 1, np.int64)], f"{p}x_time"
    )
    first, stride = g.const(f"{p}mask.first", 0, np.int64), g.const(f"{p}mask.stride", 1, np.int64)
    steps = g.one("Range", [first, time, stride], f"{p}steps")
    real = g.one(
        "Less",
        [g.one("Unsqueeze", [steps, g.const(f"{p}mask.axis0", [0], np.int64)], f"{p}steps_row"),
         g.one("Unsqueeze", [lengths, g.const(f"{p}mask.axis1", [1], np.int64)], f"{p}lengths_column")],
        f"{p}real_steps",
    )  # fmt: skip
    return g.one("Unsqueeze", [real, g.const(f"{p}mask.axis2", [2], np.int64)], f"{p}real_steps_mask")


# Folding the mean makes layer 0 compute (W / std) x - W (mean / std): when a feature's |mean|
# is many times its std (a sensor at 5000 +- 0.1), the two terms nearly cancel and float32
# keeps few bits of their difference (the parity stress run measured errors hundreds of times
# float32's own). Past this ratio the graph subtracts the mean first, as torch does: x - mean
# is exact for x within a factor 2 of the mean, and one Sub is a few microseconds.
FOLD_MEAN_MAX = 1.0  # max |mean| / std over the features for the mean to be folded


def _centred_in_graph(weights) -> bool:
    mean = np.asarray(weights["feature_mean"], dtype=np.float64)
    std = np.asarray(weights["feature_std"], dtype=np.float64)
    return bool(np.max(np.abs(mean) / std) > FOLD_MEAN_MAX)


def _layer_weights(g: _GraphBuilder, plan: _Plan, weights, i: int, module: str = "encoder") -> list[str]:
    """ONNX W [D, G*H, I], R [D, G*H, H], B [D, 2*G*H] of layer i of `module` (ONNX gate order)."""
    p = f"{module}.layers.{i}."
    per_direction = []
    for s in ["", "_reverse"][: plan.directions]:
        names = (f"{p}weight_ih_l0{s}", f"{p}weight_hh_l0{s}", f"{p}bias_ih_l0{s}", f"{p}bias_hh_l0{s}")
        arrays = [np.asarray(weights[n], dtype=np.float64) if n in weights else None for n in names]
        if i == 0 and not plan.tokens and plan.fold and not plan.per_sequence:
            arrays[0], arrays[2] = _fold_normalisation(weights, arrays[0], arrays[2])
        per_direction.append(_TO_ONNX[plan.cfg.cell](*arrays))
    return [g.const(f"layer{i}.{n}", np.stack([d[k] for d in per_direction])) for k, n in enumerate("WRB")]


def _fold_normalisation(weights, w_ih: np.ndarray, b_ih: np.ndarray | None):
    """W (x - mean) / std + b = (W / std) x + (b - W (mean / std)): layer 0 on raw features,
    folded in float64 (the mean only when the graph does not subtract it: `_centred_in_graph`).
    Two kernels fewer per call, which is much of a one-step call's cost."""
    std = np.asarray(weights["feature_std"], dtype=np.float64)
    mean = 0.0 if _centred_in_graph(weights) else np.asarray(weights["feature_mean"], dtype=np.float64)
    bias = np.zeros(w_ih.shape[0]) if b_ih is None else b_ih
    return w_ih / std, bias - w_ih @ (mean / std)


def _encoder(g: _GraphBuilder, plan: _Plan, weights, x: str, seq: str, state: list[str] | None, module="encoder"):
    """The stack over time-major x [T, B, I] (the weights of the torch module `module`, e.g. a
    seq2seq model's decoder). Returns (top output [T, B, W], per layer [Y_h(, Y_c)])."""
    cfg = plan.cfg
    initial: list[list[str]] = [[] for _ in range(cfg.num_layers)]
    for n in state or []:  # step graph: layer i starts from h[i:i+1] (and c[i:i+1])
        if cfg.num_layers == 1:
            initial[0].append(n)
        else:
            split = g.ints(f"{n}_split", [1] * cfg.num_layers)
            parts = g.op("Split", [n, split], [f"layer{i}.{n}0" for i in range(cfg.num_layers)], axis=0)
            for i, part in enumerate(parts):
                initial[i].append(part)

    attrs: dict = {"hidden_size": cfg.hidden_size, "direction": "bidirectional" if cfg.bidirectional else "forward"}
    attrs["layout"] = 0
    if cfg.cell == "gru":
        attrs["linear_before_reset"] = 1  # torch: r * (W_hn h + b_hn)
    if cfg.cell == "rnn":
        attrs["activations"] = ["Relu" if cfg.nonlinearity == "relu" else "Tanh"] * plan.directions

    finals = []
    for i in range(cfg.num_layers):
        inputs = [x, *_layer_weights(g, plan, weights, i, module), seq, *initial[i]]
        while inputs[-1] == "":  # trailing optional inputs left out
            inputs.pop()
        outs = [f"layer{i}.Y", f"layer{i}.Y_h"] + ([f"layer{i}.Y_c"] if cfg.cell == "lstm" else [])
        outs = g.op(_OP_TYPE[cfg.cell], inputs, outs, **attrs)
        out = _merge(g, plan, outs[0], i)
        if cfg.residual and i > 0:  # layers after the first read and write output_size: widths match
            out = g.one("Add", [out, x], f"layer{i}.residual")
        finals.append(outs[1:])
        x = out
    return x, finals


def _merge(g: _GraphBuilder, plan: _Plan, y: str, i: int) -> str:
    """ONNX Y [T, D, B, H] -> [T, B, H] (one direction, or sum) or [T, B, 2H] (concat: forward, backward)."""
    if plan.directions == 1:
        return g.one("Squeeze", [y, g.ints(f"layer{i}.axis1", [1])], f"layer{i}.out")
    if plan.cfg.merge == "sum":
        return g.one("ReduceSum", [y, g.ints(f"layer{i}.axis1", [1])], f"layer{i}.out", keepdims=0)
    tbdh = g.one("Transpose", [y], f"layer{i}.Y_tbdh", perm=[0, 2, 1, 3])
    return g.one("Reshape", [tbdh, g.ints(f"layer{i}.shape_tb_", [0, 0, -1])], f"layer{i}.out")


def _stack_frames(g: _GraphBuilder, x: str, k: int, width: int, lengths: str | None = None) -> tuple[str, str | None]:
    """x [B, T, F], padding already 0 -> (frames [B, ceil(T / k), k * F], frame lengths
    ceil(lengths / k), or None without `lengths`: the step graph), as toolkit.models.frames defines
    them: Pad the time axis with zeros to a multiple of k ((-T) mod k steps), then Reshape to
    [B, -1, width = k * F]."""
    shape = g.one("Shape", [x], "frames.x_shape")
    time = g.one("Slice", [shape, g.ints("frames.time_from", [1]), g.ints("frames.time_to", [2])], "frames.time")
    size = g.const("frames.k", k, np.int64)
    rest = g.one("Mod", [time, size], "frames.rest")
    short = g.one("Mod", [g.one("Sub", [size, rest], "frames.missing"), size], "frames.pad")  # [1]: (-T) mod k
    pads = g.one(
        "Concat",
        [g.ints("frames.pads_before", [0, 0, 0, 0]), short, g.ints("frames.pads_after", [0])],
        "frames.pads",
        axis=0,
    )
    padded = g.one("Pad", [x, pads], "frames.padded")
    frames = g.one("Reshape", [padded, g.ints("frames.shape", [0, -1, width])], "frames")
    if lengths is None:
        return frames, None
    up = g.one("Add", [lengths, g.const("frames.k_minus_1", k - 1, np.int64)], "frames.lengths_up")
    return frames, g.one("Div", [up, size], "frame_lengths")


def _pool(g: _GraphBuilder, plan: _Plan, weights, top: str, top_h: str, lengths: str = "lengths") -> str:
    """Many-to-one summary [B, W], as torch's encoder computes it (`lengths`: of the top's steps)."""
    if plan.cfg.pool == "attention":
        return _attend(g, weights, top, lengths)
    if plan.cfg.pool != "last":
        return _pool_over_time(g, plan.cfg.pool, top, lengths)
    if plan.directions == 2:
        # Y_h [2, B, H]: forward state after each sequence's last real step, backward after step 0.
        if plan.cfg.merge == "sum":
            return g.one("ReduceSum", [top_h, g.ints("pool.axis0", [0])], "pooled", keepdims=0)
        bdh = g.one("Transpose", [top_h], "pool.Y_h_bdh", perm=[1, 0, 2])
        return g.one("Reshape", [bdh, g.ints("pool.shape_b_", [0, -1])], "pooled")
    # Top output (residual included) at each sequence's last real step lengths-1.
    top_bm = g.one("Transpose", [top], "top_batch_major", perm=[1, 0, 2])
    # Clamped at 0 as in torch: GatherND would wrap index -1 round to the last (padded) step.
    last = g.one("Sub", [lengths, g.ints("one", 1)], "last_step_unclamped")
    last = g.one("Max", [last, g.ints("zero", 0)], "last_step")
    index = g.one("Unsqueeze", [last, g.ints("pool.axis1", [1])], "last_step_index")
    return g.one("GatherND", [top_bm, index], "pooled", batch_dims=1)


def _pool_over_time(g: _GraphBuilder, pool: str, top: str, lengths: str = "lengths") -> str:
    """Mean or maximum of the top outputs [T, B, W] over each sequence's real steps: padding is
    replaced by Where (0 for the sum, -inf for the max), never multiplied by a mask."""
    top_bm = g.one("Transpose", [top], "top_batch_major", perm=[1, 0, 2])
    real = _real_steps(g, top_bm, prefix="pool.", lengths=lengths)
    if pool == "mean":
        summed = g.one("Where", [real, top_bm, g.const("pool.zero", 0.0)], "pool.real_outputs")
        summed = g.one("ReduceSum", [summed, g.ints("pool.time_axis", [1])], "pool.sum", keepdims=0)
        count = g.one("Cast", [lengths], "pool.count", to=TensorProto.FLOAT)
        count = g.one("Unsqueeze", [count, g.ints("pool.count_axis", [1])], "pool.count_column")
        return g.one("Div", [summed, count], "pooled")
    masked = g.one("Where", [real, top_bm, g.const("pool.minus_inf", -np.inf)], "pool.real_outputs")
    return g.one("ReduceMax", [masked], "pooled", axes=[1], keepdims=0)  # axes an attribute up to opset 17


def _attend(g: _GraphBuilder, weights, top: str, lengths: str) -> str:
    """Attention pooling of the top outputs [T, B, W]: scores v . tanh(x W^T + b) per step, -inf
    at padding (Where), Softmax over time, then the weighted sum of the outputs."""
    top_bm = g.one("Transpose", [top], "top_batch_major", perm=[1, 0, 2])
    proj = np.asarray(weights["encoder.attention_proj.weight"], dtype=np.float64).T
    hidden = g.one("MatMul", [top_bm, g.const("pool.attention_proj_t", proj)], "pool.attention_matmul")
    hidden = g.one(
        "Add", [hidden, g.const("pool.attention_bias", weights["encoder.attention_proj.bias"])], "pool.attention_pre"
    )
    hidden = g.one("Tanh", [hidden], "pool.attention_hidden")
    score = np.asarray(weights["encoder.attention_score.weight"], dtype=np.float64).T  # [W, 1]
    scores = g.one("MatMul", [hidden, g.const("pool.attention_score_t", score)], "pool.attention_scores")  # [B, T, 1]
    real = _real_steps(g, top_bm, prefix="pool.", lengths=lengths)
    scores = g.one("Where", [real, scores, g.const("pool.minus_inf", -np.inf)], "pool.attention_real_scores")
    alpha = g.one("Softmax", [scores], "pool.attention_weights", axis=1)
    weighted = g.one("Mul", [alpha, top_bm], "pool.attention_weighted")
    return g.one("ReduceSum", [weighted, g.ints("pool.time_axis", [1])], "pooled", keepdims=0)


def _head(g: _GraphBuilder, plan: _Plan, weights, x: str) -> str:
    """Linear head on the last axis, then raw units for regression. Output named for the bundle."""
    w = np.asarray(weights["head.weight"], dtype=np.float64).T
    b = np.asarray(weights["head.bias"], dtype=np.float64)
    if plan.values:  # (x W + b) * std + mean, folded into W and b in float64
        std = np.asarray(weights["target_std"], dtype=np.float64)
        w, b = w * std, b * std + np.asarray(weights["target_mean"], dtype=np.float64)
    y = g.one("MatMul", [x, g.const("head.weight_t", w)], "head.matmul")
    return g.one("Add", [y, g.const("head.bias", b)], plan.output_name)


def _finish(g: _GraphBuilder, plan: _Plan, name: str, inputs, outputs, doc: str) -> onnx.ModelProto:
    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.initializers, doc_string=doc)
    opsets = [helper.make_opsetid("", plan.opset)]
    # Explicit, minimal IR version: onnx 1.23 would write 14, which onnxruntime-gpu 1.31 refuses.
    model = helper.make_model(
        graph,
        opset_imports=opsets,
        ir_version=helper.find_min_ir_version_for(opsets),
        producer_name="rnnkit",
        doc_string=doc,
    )
    cfg = plan.cfg
    helper.set_model_props(
        model,
        {
            "rnnkit.task": plan.task,
            "rnnkit.cell": cfg.cell,
            "rnnkit.nonlinearity": cfg.nonlinearity if cfg.cell == "rnn" else "",
            "rnnkit.num_layers": str(cfg.num_layers),
            "rnnkit.hidden_size": str(cfg.hidden_size),
            "rnnkit.bidirectional": str(cfg.bidirectional).lower(),
            "rnnkit.per_step": str(plan.per_step).lower(),
        },
    )
    onnx.checker.check_model(model, full_check=True)
    return model
