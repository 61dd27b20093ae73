"""Hand-built ONNX graphs (toolkit.export.graph) against torch.

Small random models (float32 weights) are turned into `model.onnx` / `step.onnx` graphs, run
with ONNX Runtime on the CPU provider, and compared with the same weights in torch float64 on
real positions only (padding holds garbage). fp32 ORT vs fp64 torch: max abs error <= 1e-5.
"""

from __future__ import annotations

import copy
import itertools
import subprocess
import sys
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tests.helpers import ROOT
from toolkit.core.config import ModelConfig
from toolkit.core.data.types import InputSpec, OutputSpec
from toolkit.core.data.vocab import Vocabulary
from toolkit.export.graph import (
    ExportGraphError,
    StepGraphError,
    build_full_graph,
    build_step_graph,
    state_spec,
)
from toolkit.models.model import SequenceModel

TOL = 1e-5
VOCAB = Vocabulary.build([list("abcdefghij")])  # 14 tokens, specials included
NUM_FEATURES = 3
CELLS = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")]
CELL_IDS = ["rnn-tanh", "rnn-relu", "lstm", "gru"]


# --------------------------------------------------------------------------------------------
# Models, inputs and references
# --------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One random model: float32 weights for the graphs, a float64 torch copy as the reference."""

    model: SequenceModel  # float64, eval
    weights: dict
    cfg: ModelConfig
    input_spec: InputSpec
    output_spec: OutputSpec

    @property
    def tokens(self) -> bool:
        return self.input_spec.kind == "tokens"

    @property
    def per_step(self) -> bool:
        return self.model.per_step

    @cached_property
    def full(self) -> ort.InferenceSession:
        return _session(build_full_graph(self.weights, self.cfg, self.input_spec, self.output_spec))

    @cached_property
    def step(self) -> ort.InferenceSession:
        return _session(build_step_graph(self.weights, self.cfg, self.input_spec, self.output_spec))

    @property
    def input_name(self) -> str:
        return "tokens" if self.tokens else "features"

    def run_full(self, x: np.ndarray, lengths) -> np.ndarray:
        return self.full.run(None, {self.input_name: x, "lengths": np.asarray(lengths, dtype=np.int64)})[0]

    def run_step(self, x: np.ndarray, state: dict) -> tuple[np.ndarray, dict]:
        values = self.step.run(None, {self.input_name: x, **state})
        return values[0], {spec["name"]: v for spec, v in zip(state_spec(self.cfg), values[1:], strict=True)}

    def zero_state(self, batch: int) -> dict:
        return {
            s["name"]: np.zeros([batch if d == "batch" else d for d in s["shape"]], np.float32)
            for s in state_spec(self.cfg)
        }

    @torch.no_grad()
    def torch_full(self, x: np.ndarray, lengths) -> np.ndarray:
        y, _ = self.model(_to_torch(x), torch.as_tensor(np.asarray(lengths, dtype=np.int64)))
        return y.numpy()

    @torch.no_grad()
    def torch_every_step(self, x: np.ndarray) -> tuple[np.ndarray, dict]:
        """Head on every step's top output (the per-sequence prediction for each prefix, for a
        unidirectional model) and the final state stacked [L, B, H] like step.onnx's."""
        m = self.model
        inp = _to_torch(x)
        inp = m.embedding(inp) if m.tokens else (inp - m.feature_mean) / m.feature_std
        outputs, _, state = m.encoder(inp)
        y = m.head(outputs)
        if m.task == "regress":
            y = y * m.target_std + m.target_mean
        if isinstance(state[0], tuple):
            final = {"h": torch.cat([s[0] for s in state]).numpy(), "c": torch.cat([s[1] for s in state]).numpy()}
        else:
            final = {"h": torch.cat(state).numpy()}
        return y.numpy(), final


def make_case(task, cell="lstm", nonlinearity="tanh", bidirectional=False, tokens=True, per_step=False, seed=0, **kw):
    cfg = ModelConfig(
        cell=cell,
        nonlinearity=nonlinearity,
        hidden_size=7,
        num_layers=kw.pop("num_layers", 2),
        bidirectional=bidirectional,
        embedding_dim=6,
        **kw,
    )
    if tokens:
        inp = InputSpec("tokens", vocab=VOCAB)
    else:
        inp = InputSpec("features", num_features=NUM_FEATURES, mean=[0.5, -1.0, 2.0], std=[2.0, 0.5, 1.5])
    if task == "regress":
        out = OutputSpec("regress", num_targets=2, per_step=per_step, target_mean=[1.0, -1.0], target_std=[3.0, 0.5])
    elif task == "lm":
        out = OutputSpec("lm")
    else:
        out = OutputSpec(task, labels=["A", "B", "C", "D"][: 3 if task == "classify" else 4])
    torch.manual_seed(seed)
    model = SequenceModel(cfg, inp, out).eval()  # float32, as trained
    weights = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    return Case(copy.deepcopy(model).double().eval(), weights, cfg, inp, out)


def random_inputs(case: Case, lengths, total: int | None = None, seed: int = 0) -> np.ndarray:
    """A padded batch; padded positions hold garbage (random tokens, huge feature values)."""
    rng = np.random.default_rng(seed)
    batch, steps = len(lengths), total or max(lengths)
    if case.tokens:
        x = rng.integers(4, len(VOCAB), size=(batch, steps)).astype(np.int64)
        garbage = rng.integers(0, len(VOCAB), size=(batch, steps))
    else:
        x = rng.standard_normal((batch, steps, NUM_FEATURES)).astype(np.float32) * 2
        garbage = np.full((batch, steps, NUM_FEATURES), 123.0, np.float32)
    for b, n in enumerate(lengths):
        x[b, n:] = garbage[b, n:]
    return x


def real_error(case: Case, got: np.ndarray, ref: np.ndarray, lengths) -> float:
    """Max abs difference on real positions only."""
    if not case.per_step:
        return float(np.abs(got - ref).max())
    return max(float(np.abs(got[b, :n] - ref[b, :n]).max()) for b, n in enumerate(lengths))


def _to_torch(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x) if x.dtype == np.int64 else torch.from_numpy(x.astype(np.float64))


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------------------------
# model.onnx: every cell x direction x task x input kind
# --------------------------------------------------------------------------------------------

# (task, per_step, tokens); lm is tokens-only and unidirectional-only.
TASK_INPUTS = [
    ("classify", False, True),
    ("classify", False, False),
    ("tag", False, True),
    ("tag", False, False),
    ("regress", False, True),
    ("regress", False, False),
    ("regress", True, True),
    ("regress", True, False),
    ("lm", False, True),
]
# Cycled over the cases so that each cell x direction meets every variant.
VARIANTS = [
    {},
    {"residual": True},
    {"merge": "sum"},
    {"dropout": 0.3, "residual": True},
    {"merge": "sum", "residual": True, "dropout": 0.2},
]


def _full_cases():
    for (c, (cell, nl)), bi in itertools.product(enumerate(CELLS), [False, True]):
        for k, (task, per_step, tokens) in enumerate(TASK_INPUTS):
            if task == "lm" and bi:
                continue
            variant = VARIANTS[(k + c + 2 * bi) % len(VARIANTS)]
            name = "-".join(
                [CELL_IDS[c], "bi" if bi else "uni", task + ("-step" if per_step else ""), "tok" if tokens else "feat"]
                + [f"{key}={value}" for key, value in variant.items()]
            )
            yield pytest.param(cell, nl, bi, task, per_step, tokens, variant, id=name)


# (lengths, total T): batch sizes 1, 2, 7; length 1; a batch whose every sequence is padded.
BATCHES = [([9], 9), ([1, 12], 15), ([5, 1, 17, 3, 17, 8, 2], 17)]


@pytest.mark.parametrize(
    ("cell", "nonlinearity", "bidirectional", "task", "per_step", "tokens", "variant"), list(_full_cases())
)
def test_full_graph_matches_torch(cell, nonlinearity, bidirectional, task, per_step, tokens, variant):
    case = make_case(task, cell, nonlinearity, bidirectional, tokens, per_step, **variant)
    worst = 0.0
    for i, (lengths, total) in enumerate(BATCHES):
        x = random_inputs(case, lengths, total, seed=i)
        got = case.run_full(x, lengths)
        ref = case.torch_full(x, lengths)
        assert got.shape == ref.shape and got.dtype == np.float32
        worst = max(worst, real_error(case, got, ref, lengths))
    print(f"full {cell}/{nonlinearity} bi={bidirectional} {task} per_step={per_step} tokens={tokens} {variant}: "
          f"max abs err {worst:.2e}")  # fmt: skip
    assert worst <= TOL


@pytest.mark.parametrize(
    ("cell", "bidirectional", "task", "tokens"),
    [
        ("lstm", False, "classify", True),
        ("lstm", True, "tag", False),
        ("gru", False, "tag", True),
        ("gru", True, "classify", False),
        ("rnn", True, "tag", True),
    ],
)
def test_full_graph_long_padded_sequences(cell, bidirectional, task, tokens):
    """Lengths >= 500 next to length 1 in one padded batch."""
    case = make_case(task, cell, "tanh", bidirectional, tokens, residual=True)
    lengths = [523, 1, 311]
    x = random_inputs(case, lengths, total=530, seed=7)
    err = real_error(case, case.run_full(x, lengths), case.torch_full(x, lengths), lengths)
    print(f"long {cell} bi={bidirectional} {task} lengths={lengths} T=530: max abs err {err:.2e}")
    assert err <= TOL


@pytest.mark.parametrize(("cell", "nonlinearity"), CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("merge", ["concat", "sum"])
def test_padding_changes_nothing_in_onnx_itself(cell, nonlinearity, merge):
    """Bidirectional: each sequence of a padded batch gives exactly what it gives alone (ORT vs ORT)."""
    for task in ("tag", "classify"):
        case = make_case(task, cell, nonlinearity, True, tokens=False, merge=merge)
        lengths = [4, 1, 11, 7]
        x = random_inputs(case, lengths, total=13, seed=3)
        batched = case.run_full(x, lengths)
        worst = 0.0
        for b, n in enumerate(lengths):
            alone = case.run_full(x[b : b + 1, :n], [n])[0]
            got = batched[b, :n] if case.per_step else batched[b]
            worst = max(worst, float(np.abs(got - alone).max()))
        print(f"padding {cell}/{nonlinearity} {merge} {task}: max |padded - alone| {worst:.2e}")
        assert worst <= 1e-6


# --------------------------------------------------------------------------------------------
# step.onnx: streams in any chunking reproduce the full graph
# --------------------------------------------------------------------------------------------

STREAMS = [
    pytest.param("rnn", "tanh", "classify", False, True, {}, id="rnn-tanh-classify-tok"),
    pytest.param("rnn", "relu", "regress", False, False, {"residual": True}, id="rnn-relu-regress-feat"),
    pytest.param("lstm", "tanh", "lm", False, True, {"residual": True, "dropout": 0.2}, id="lstm-lm-tok"),
    pytest.param("lstm", "tanh", "classify", False, False, {}, id="lstm-classify-feat"),
    pytest.param("gru", "tanh", "regress", True, False, {"dropout": 0.3}, id="gru-regress-step-feat"),
    pytest.param("gru", "tanh", "tag", False, True, {"residual": True}, id="gru-tag-tok"),
]


def _chunkings(n: int) -> dict[str, list[int]]:
    rng = np.random.default_rng(11)
    random_sizes: list[int] = []
    while sum(random_sizes) < n:
        random_sizes.append(int(rng.integers(1, 100)))
    random_sizes[-1] -= sum(random_sizes) - n
    return {"1": [1] * n, "3": [3] * (n // 3) + [n % 3], "64": [64] * (n // 64) + [n % 64], "random": random_sizes}


@pytest.mark.parametrize(("cell", "nonlinearity", "task", "per_step", "tokens", "variant"), STREAMS)
def test_step_graph_stream_in_any_chunking(cell, nonlinearity, task, per_step, tokens, variant):
    case = make_case(task, cell, nonlinearity, False, tokens, per_step, **variant)
    n, batch = 1031, 2
    x = random_inputs(case, [n] * batch, seed=5)
    ref_steps, ref_state = case.torch_every_step(x)  # [B, N, K] in float64

    full = case.run_full(x, [n] * batch)
    if case.per_step:
        expected, full_err = full, float(np.abs(full - ref_steps).max())
    else:
        # Per-sequence head: the step graph's output at step t is the full graph's for the prefix 0..t.
        expected, full_err = ref_steps, float(np.abs(full - ref_steps[:, -1]).max())
        positions = np.unique(np.r_[0, 1, 2, np.random.default_rng(2).integers(0, n, 13), n - 1])
        prefixes = case.run_full(np.repeat(x, len(positions), axis=0), np.tile(positions + 1, batch))
        prefixes = prefixes.reshape(batch, len(positions), -1)
    print(f"stream {cell}/{nonlinearity} {task}: full graph vs torch {full_err:.2e}")
    assert full_err <= TOL

    for label, sizes in _chunkings(n).items():
        assert sum(sizes) == n
        state, outs, start = case.zero_state(batch), [], 0
        for size in (s for s in sizes if s):
            y, state = case.run_step(x[:, start : start + size], state)
            assert y.shape[:2] == (batch, size)
            outs.append(y)
            start += size
        got = np.concatenate(outs, axis=1)
        err_full = float(np.abs(got - expected).max())
        err_torch = float(np.abs(got - ref_steps).max())
        err_state = max(float(np.abs(state[k] - ref_state[k]).max()) for k in ref_state)
        line = f"  chunks {label:>6}: vs full graph {err_full:.2e}, vs torch {err_torch:.2e}, state {err_state:.2e}"
        if not case.per_step:
            err_prefix = float(np.abs(got[:, positions] - prefixes).max())
            line += f", vs full graph on prefixes {err_prefix:.2e}"
            assert err_prefix <= TOL
        print(line)
        assert max(err_full, err_torch, err_state) <= TOL


def test_step_graph_state_carries_between_calls_in_lstm_and_gru_mid_stream():
    """The state handed back mid-stream is torch's state after that prefix."""
    for cell in ("lstm", "gru"):
        case = make_case("tag", cell, tokens=False)
        x = random_inputs(case, [40, 40], seed=4)
        _, state = case.run_step(x[:, :17], case.zero_state(2))
        _, ref_state = case.torch_every_step(x[:, :17])
        err = max(float(np.abs(state[k] - ref_state[k]).max()) for k in ref_state)
        print(f"{cell}: state after 17 steps, max abs err {err:.2e}")
        assert set(state) == set(ref_state) and err <= TOL


def test_step_graph_refused_for_bidirectional():
    case = make_case("tag", "gru", bidirectional=True)
    with pytest.raises(StepGraphError, match="backward direction") as info:
        build_step_graph(case.weights, case.cfg, case.input_spec, case.output_spec)
    assert isinstance(info.value, ValueError)
    assert "whole sequence" in str(info.value) and "model.onnx" in str(info.value)


# --------------------------------------------------------------------------------------------
# Dynamic axes, metadata, opsets, errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "nonlinearity", "bidirectional", "task", "tokens"),
    [
        ("lstm", "tanh", False, "tag", True),
        ("gru", "tanh", True, "classify", False),
        ("rnn", "relu", False, "regress", False),
    ],
)
def test_time_axis_is_dynamic(cell, nonlinearity, bidirectional, task, tokens):
    """One session of each graph, run at many lengths (a frozen time axis fails here)."""
    case = make_case(task, cell, nonlinearity, bidirectional, tokens)
    worst = 0.0
    for steps in (1, 2, 17, 600):
        lengths = [steps, max(1, steps // 3)]
        x = random_inputs(case, lengths, seed=steps)
        worst = max(worst, real_error(case, case.run_full(x, lengths), case.torch_full(x, lengths), lengths))
        if not bidirectional:
            xs = x[:1]
            y, _ = case.run_step(xs, case.zero_state(1))
            ref, _ = case.torch_every_step(xs)
            assert y.shape[1] == steps
            worst = max(worst, float(np.abs(y - ref).max()))
    print(f"dynamic time {cell}/{nonlinearity} bi={bidirectional} {task}: max abs err {worst:.2e}")
    assert worst <= TOL


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_graph_interface_and_metadata():
    case = make_case("classify", "gru", tokens=False)
    full = build_full_graph(case.weights, case.cfg, case.input_spec, case.output_spec)
    step = build_step_graph(case.weights, case.cfg, case.input_spec, case.output_spec)
    for model in (full, step):
        assert model.ir_version == 8  # the minimum for opset 17: loads in onnxruntime-gpu 1.31 too
        assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
        assert model.doc_string and model.graph.doc_string and model.graph.name.startswith("rnnkit")
        assert all(v.doc_string for v in [*model.graph.input, *model.graph.output])
        assert len({n.name for n in model.graph.node}) == len(model.graph.node)
        props = {p.key: p.value for p in model.metadata_props}
        assert props["rnnkit.task"] == "classify" and props["rnnkit.cell"] == "gru"
        grus = [n for n in model.graph.node if n.op_type == "GRU"]
        assert len(grus) == 2
        for node in grus:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert attrs["linear_before_reset"] == 1 and attrs["layout"] == 0 and attrs["hidden_size"] == 7
            assert attrs["direction"] == b"forward"
    assert [(i.name, _dims(i)) for i in full.graph.input] == [
        ("features", ["batch", "time", NUM_FEATURES]),
        ("lengths", ["batch"]),
    ]
    assert [(o.name, _dims(o)) for o in full.graph.output] == [("logits", ["batch", 3])]
    assert all(n.input[4] == "sequence_lens" for n in full.graph.node if n.op_type == "GRU")
    assert [(i.name, _dims(i)) for i in step.graph.input] == [
        ("features", ["batch", "chunk", NUM_FEATURES]),
        ("h", [2, "batch", 7]),
    ]
    assert [(o.name, _dims(o)) for o in step.graph.output] == [
        ("logits", ["batch", "chunk", 3]),
        ("h_next", [2, "batch", 7]),
    ]


def test_recurrent_node_attributes_per_cell():
    for (cell, nl), bi in itertools.product(CELLS, [False, True]):
        case = make_case("tag", cell, nl, bi)
        model = build_full_graph(case.weights, case.cfg, case.input_spec, case.output_spec)
        nodes = [n for n in model.graph.node if n.op_type == {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}[cell]]
        assert len(nodes) == 2
        for node in nodes:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert attrs["direction"] == (b"bidirectional" if bi else b"forward")
            if cell == "rnn":
                assert attrs["activations"] == [nl.capitalize().encode()] * (2 if bi else 1)
        assert [o.name for o in model.graph.output] == ["logits"]
        assert _dims(model.graph.output[0]) == ["batch", "time", 4]


def test_state_spec_matches_step_graph():
    for cell in ("rnn", "lstm", "gru"):
        case = make_case("lm", cell, num_layers=3)
        spec = state_spec(case.cfg)
        assert [s["name"] for s in spec] == (["h", "c"] if cell == "lstm" else ["h"])
        assert all(s["shape"] == [3, "batch", 7] and s["initial"] == "zeros" for s in spec)
        step = build_step_graph(case.weights, case.cfg, case.input_spec, case.output_spec)
        assert [i.name for i in step.graph.input][1:] == [s["name"] for s in spec]
        assert [o.name for o in step.graph.output] == ["logits"] + [s["output"] for s in spec]
        assert all(_dims(i) == s["shape"] for i, s in zip(step.graph.input[1:], spec, strict=True))


@pytest.mark.parametrize("opset", [14, 21])
def test_other_opsets(opset):
    case = make_case("classify", "lstm", bidirectional=True, tokens=False, merge="sum", residual=True)
    model = build_full_graph(case.weights, case.cfg, case.input_spec, case.output_spec, opset=opset)
    assert model.ir_version == onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", opset)])
    lengths = [3, 8]
    x = random_inputs(case, lengths)
    got = _session(model).run(None, {"features": x, "lengths": np.array(lengths)})[0]
    assert np.abs(got - case.torch_full(x, lengths)).max() <= TOL


def test_one_layer_models():
    for cell in ("rnn", "lstm", "gru"):
        case = make_case("tag", cell, num_layers=1, tokens=False, residual=True)
        x = random_inputs(case, [30, 30])
        y, state = case.run_step(x, case.zero_state(2))
        ref, ref_state = case.torch_every_step(x)
        assert np.abs(y - ref).max() <= TOL
        assert max(float(np.abs(state[k] - ref_state[k]).max()) for k in ref_state) <= TOL


@pytest.mark.parametrize(("mean", "std", "centred"), [(5000.0, 0.1, True), (-300.0, 0.5, True), (0.05, 1.0, False)])
def test_features_far_from_zero_keep_float32_accuracy(mean, std, centred):
    """A sensor at 5000 +- 0.1: folding the mean into layer 0 computed (W / std) x - W mean / std,
    two terms of ~5e4 that cancel, and lost ~15 bits (errors hundreds of times float32's own in
    the parity stress run). Such features are centred in the graph; small means are still folded.
    The graph must be about as exact as torch in float32 on the same input (the parity rule)."""
    cfg = ModelConfig(cell="gru", hidden_size=32, num_layers=2)
    inp = InputSpec("features", num_features=2, mean=[mean, mean / 2], std=[std, std])
    out = OutputSpec("regress", num_targets=1, per_step=True, target_mean=[0.0], target_std=[10.0])
    torch.manual_seed(0)
    model = SequenceModel(cfg, inp, out).eval()
    weights = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    graph = build_full_graph(weights, cfg, inp, out)
    assert any(n.op_type == "Sub" and "features" in n.input for n in graph.graph.node) == centred
    x = (np.array([mean, mean / 2]) + std * np.random.default_rng(0).standard_normal((4, 200, 2))).astype(np.float32)
    lengths = np.full(4, 200, np.int64)
    got = _session(graph).run(None, {"features": x, "lengths": lengths})[0].astype(np.float64)
    with torch.no_grad():
        want = copy.deepcopy(model).double()(torch.from_numpy(x.astype(np.float64)), torch.from_numpy(lengths))[0]
        fp32 = model(torch.from_numpy(x), torch.from_numpy(lengths))[0].double()
    onnx_err, torch_err = float((got - want.numpy()).__abs__().max()), float((fp32 - want).abs().max())
    floor = 16 * 2.0**-23 * float(want.abs().max())
    print(f"mean {mean} std {std}: onnx error {onnx_err:.2e}, torch fp32 error {torch_err:.2e}, floor {floor:.2e}")
    assert onnx_err <= 8 * torch_err + floor


def test_clear_errors_for_bad_weights_and_opset():
    case = make_case("classify", "lstm", tokens=False)
    args = (case.cfg, case.input_spec, case.output_spec)
    missing = {k: v for k, v in case.weights.items() if k != "encoder.layers.1.weight_hh_l0"}
    with pytest.raises(ExportGraphError, match=r"weights has no 'encoder\.layers\.1\.weight_hh_l0'"):
        build_full_graph(missing, *args)
    wrong = dict(case.weights, **{"head.weight": np.zeros((3, 5), np.float32)})
    with pytest.raises(ExportGraphError, match=r"head\.weight.*shape \(3, 5\), expected \(3, 7\)"):
        build_full_graph(wrong, *args)
    bigger = copy.deepcopy(case.cfg)
    bigger.hidden_size = 9
    with pytest.raises(ExportGraphError, match="expected"):
        build_full_graph(case.weights, bigger, case.input_spec, case.output_spec)
    with pytest.raises(ExportGraphError, match="opset must be an integer in 14"):
        build_full_graph(case.weights, *args, opset=13)
    lm = make_case("lm", "gru")
    with pytest.raises(ExportGraphError, match="reads tokens"):
        build_full_graph(lm.weights, lm.cfg, case.input_spec, lm.output_spec)


def test_graph_module_imports_no_torch():
    code = "import sys, toolkit.export.graph; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
