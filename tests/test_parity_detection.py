"""The certificate refuses wrong exports: each test builds a trained model's correct graphs, breaks
them the way an exporter bug would, and certifies the broken pair against the model. Each must
fail, and the case that caught it is named; the unbroken graphs pass on the same inputs (so a
failure is the break's doing, not the budget's). Parity seeds are fresh each run and printed.

The other direction, no false alarms, is measured over hundreds of trained models by
`python -m benchmarks.parity_stress` (README, "Parity budget").
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from tests.helpers import trained_run, write_jsonl
from toolkit.core.bundle import MANIFEST, sha256
from toolkit.core.config import Config
from toolkit.export import parity
from toolkit.export.exporter import certify, export
from toolkit.export.graph import build_full_graph, build_step_graph
from toolkit.export.verify import verify
from toolkit.train.checkpoint import load_model
from toolkit.train.loop import train

Break = Callable[[onnx.ModelProto, str], None]  # edits one graph in place; str: "model.onnx" | "step.onnx"


def weights_of(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def graphs(run: Path, weights: dict | None = None) -> tuple[object, dict[str, bytes], dict, bool]:
    """(torch model, the export's graphs as bytes, manifest input spec, per_step) of a run."""
    model, config, input_spec, output_spec = load_model(run)
    weights = weights_of(model) if weights is None else weights
    blobs = {"model.onnx": build_full_graph(weights, config.model, input_spec, output_spec).SerializeToString()}
    if not config.model.bidirectional:
        step = build_step_graph(weights, config.model, input_spec, output_spec)
        blobs["step.onnx"] = step.SerializeToString()
    return model, blobs, input_spec.to_dict(), model.per_step


def broken(blobs: dict[str, bytes], edit: Break) -> dict[str, bytes]:
    out = {}
    for name, blob in blobs.items():
        graph = onnx.load_model_from_string(blob)
        edit(graph, name)
        out[name] = graph.SerializeToString()
    return out


def initializer(graph: onnx.ModelProto, name: str) -> np.ndarray | None:
    for init in graph.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init).copy()
    return None


def set_initializer(graph: onnx.ModelProto, name: str, array: np.ndarray) -> None:
    for init in graph.graph.initializer:
        if init.name == name:
            init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array, dtype=init_dtype(init)), name))
            return
    raise KeyError(name)


def init_dtype(init: onnx.TensorProto):
    return helper.tensor_dtype_to_np_dtype(init.data_type)


def recurrent_nodes(graph: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in graph.graph.node if n.op_type in ("RNN", "LSTM", "GRU")]


def assert_refused(run: Path, edit: Break, caught_by: str | None, weights: dict | None = None) -> parity.Report:
    """Certify the broken graphs (must fail, with a case whose name contains `caught_by` among
    the failures when given) and the intact ones on the same seed (must pass)."""
    model, blobs, input_dict, per_step = graphs(run)
    bad = broken(blobs if weights is None else graphs(run, weights)[1], edit)
    assert bad != blobs, "the break changed nothing"
    seed = parity.fresh_seed(None)
    intact = certify(model, blobs, input_dict, per_step, seed)
    report = certify(model, bad, input_dict, per_step, seed)
    print(f"seed {seed}: intact worst margin {intact.summary()['worst_margin']:.3f}")
    for c in report.cases:
        print(f"  {c.name:<44} {c.graph:<10} error {c.max_abs:.2e} budget {c.budget:.2e} margin {c.margin:9.2f}")
    assert intact.passed, [(c.name, c.margin) for c in intact.failures]
    assert not report.passed
    assert caught_by is None or any(caught_by in c.name for c in report.failures), [c.name for c in report.failures]
    return report


def test_one_weight_changed_by_1e_3_relative_is_refused(tmp_path):
    """The largest recurrent weight of layer 0 times 1.001 (in both graphs): about 2e-6 relative
    on the logits, near float32's resolution after 17 steps, so which cases see it depends on
    the inputs (the final state after the 1,000-step stream has, at 4x to 15x its budget)."""

    def nudge(graph, _name):
        r = initializer(graph, "layer0.R")
        index = np.unravel_index(np.argmax(np.abs(r)), r.shape)
        r[index] *= 1.001
        set_initializer(graph, "layer0.R", r)

    report = assert_refused(trained_run(tmp_path, "classify", "lstm"), nudge, None)
    print(f"caught by {len(report.failures)} of {len(report.cases)} cases")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_two_gates_swapped_is_refused(tmp_path, cell):
    """LSTM output and forget gates (ONNX order i o f c), GRU update and reset (z r h), swapped in
    every layer's W, R and both halves of B."""
    gates = {"lstm": 4, "gru": 3}[cell]

    def swap(graph, _name):
        for i in range(2):
            for part in "WRB":
                w = initializer(graph, f"layer{i}.{part}")
                blocks = np.split(w, gates * (2 if part == "B" else 1), axis=1)
                for offset in range(0, len(blocks), gates):
                    blocks[offset], blocks[offset + 1] = blocks[offset + 1], blocks[offset]
                set_initializer(graph, f"layer{i}.{part}", np.concatenate(blocks, axis=1))

    assert_refused(trained_run(tmp_path, "tag", cell), swap, "batch 2 length 2")


def test_gru_linear_before_reset_flipped_is_refused(tmp_path):
    def flip(graph, _name):
        for node in recurrent_nodes(graph):
            for a in node.attribute:
                if a.name == "linear_before_reset":
                    a.i = 1 - a.i

    assert_refused(trained_run(tmp_path, "classify", "gru"), flip, "batch 1 length 1")


def test_backward_direction_ignoring_sequence_lens_is_refused(tmp_path):
    """sequence_lens left out of a bidirectional tagger: the backward direction then starts at
    the padded end. Only padded batches can see it; equal-length ones must still pass."""

    def drop_lengths(graph, _name):
        for node in recurrent_nodes(graph):
            node.input[4] = ""

    report = assert_refused(trained_run(tmp_path, "tag", "lstm", bidirectional=True), drop_lengths, "padded")
    failed = {c.name for c in report.failures}
    assert "batch 7 length 17" not in failed and "batch 2 length 512" not in failed, failed


def test_pooled_step_off_by_one_is_refused(tmp_path):
    """A classifier reading its summary at step lengths-2 instead of lengths-1."""

    def off_by_one(graph, name):
        if name == "model.onnx":
            set_initializer(graph, "one", np.asarray(2, dtype=np.int64))

    assert_refused(trained_run(tmp_path, "classify", "gru"), off_by_one, "batch 2 length 2")


def lengths_one_shorter(graph, _name):
    """The recurrent ops told each sequence is one step shorter (at least 1)."""
    nodes = list(graph.graph.node)
    cast = next((i for i, n in enumerate(nodes) if n.output[0] == "sequence_lens"), None)
    if cast is None:  # step.onnx has no lengths
        return
    graph.graph.initializer.append(numpy_helper.from_array(np.asarray([1], dtype=np.int64), "bug.one"))
    extra = [
        helper.make_node("Sub", ["lengths", "bug.one"], ["bug.minus_one"]),
        helper.make_node("Max", ["bug.minus_one", "bug.one"], ["bug.lengths"]),
    ]
    nodes[cast].input[0] = "bug.lengths"
    del graph.graph.node[:]
    graph.graph.node.extend(nodes[:cast] + extra + nodes[cast:])


def test_sequence_lens_off_by_one_is_refused(tmp_path):
    """A bidirectional classifier told each sequence is one step shorter (at least 1)."""
    run = trained_run(tmp_path, "classify", "lstm", bidirectional=True)
    assert_refused(run, lengths_one_shorter, "batch 2 length 2")


def test_step_graph_not_carrying_c_is_refused(tmp_path):
    """step.onnx whose LSTMs start every chunk from c = 0 (initial_c left out): model.onnx is
    intact, so only the stream cases can see it."""

    def forget_c(graph, name):
        if name == "step.onnx":
            for node in recurrent_nodes(graph):
                del node.input[6:]

    report = assert_refused(trained_run(tmp_path, "lm", "lstm"), forget_c, "stream of 1000, chunks of 1")
    assert all(c.graph == "step.onnx" for c in report.failures)


def test_step_graph_not_carrying_c_is_refused_by_verify_without_torch(tmp_path):
    """The same break in a bundle (hashes made to match): `rnnkit verify` with no checkpoint, which
    compares step.onnx with model.onnx, refuses it too."""
    run = trained_run(tmp_path, "tag", "lstm")
    export(run, tmp_path / "bundle")
    step_path = tmp_path / "bundle" / "step.onnx"
    graph = onnx.load_model(step_path)
    for node in recurrent_nodes(graph):
        del node.input[6:]
    step_path.write_bytes(graph.SerializeToString())
    manifest = json.loads((tmp_path / "bundle" / MANIFEST).read_text())
    manifest["graphs"]["step.onnx"]["sha256"] = sha256(step_path.read_bytes())
    (tmp_path / "bundle" / MANIFEST).write_text(json.dumps(manifest))

    report = verify(tmp_path / "bundle")
    print([(c.name, f"{c.margin:.1f}") for c in report.cases])
    assert not report.passed
    assert any("chunks of 1" in c.name for c in report.failures)


def test_normalisation_applied_twice_is_refused(tmp_path):
    """Features with mean ~3 and std ~5: an exporter that normalises weights already folded with
    the normalisation. (With mean 0 and std 1 a second normalisation changes nothing, rightly.)"""
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(96):
        x = 3.0 + 5.0 * rng.normal(size=(int(rng.integers(3, 12)), 2))
        rows.append({"features": x.round(4).tolist(), "target": float(x[:, 0].mean())})
    cfg = Config(task="regress")
    cfg.data.data = write_jsonl(tmp_path / "train.jsonl", rows)
    cfg.model.cell, cfg.model.hidden_size, cfg.model.num_layers = "gru", 24, 2
    cfg.train.epochs, cfg.train.batch_size, cfg.train.lr, cfg.train.device = 1, 16, 0.02, "cpu"
    cfg.train.out = str(tmp_path / "run")
    train(cfg, progress=False, log=lambda m: None)
    run = Path(cfg.train.out)

    weights = weights_of(load_model(run)[0])
    mean, std = weights["feature_mean"].astype(np.float64), weights["feature_std"].astype(np.float64)
    print(f"feature mean {mean}, std {std}")
    w = weights["encoder.layers.0.weight_ih_l0"].astype(np.float64)
    folded = dict(weights)  # layer 0 already reads normalised input; the builder folds it again
    folded["encoder.layers.0.weight_ih_l0"] = (w / std).astype(np.float32)
    folded["encoder.layers.0.bias_ih_l0"] = (weights["encoder.layers.0.bias_ih_l0"] - w @ (mean / std)).astype(
        np.float32
    )
    assert_refused(run, lambda graph, name: None, "batch 1 length 1", weights=folded)


def test_head_bias_dropped_is_refused(tmp_path):
    def drop_bias(graph, _name):
        set_initializer(graph, "head.bias", np.zeros_like(initializer(graph, "head.bias")))

    assert_refused(trained_run(tmp_path, "classify", "rnn"), drop_bias, "batch 1 length 1")


def broken_bundle(run: Path, out: Path, edit: Break) -> Path:
    """The run exported to `out` with `edit` applied to each of its graphs and the manifest's
    hashes and sizes made to match (so only the computation can give it away)."""
    export(run, out)
    manifest = json.loads((out / MANIFEST).read_text())
    for name in manifest["graphs"]:
        graph = onnx.load_model(out / name)
        edit(graph, name)
        data = graph.SerializeToString()
        (out / name).write_bytes(data)
        manifest["graphs"][name].update(sha256=sha256(data), bytes=len(data))
    (out / MANIFEST).write_text(json.dumps(manifest))
    return out


def flip_linear_before_reset(graph, _name):
    for node in recurrent_nodes(graph):
        for a in node.attribute:
            if a.name == "linear_before_reset":
                a.i = 1 - a.i


def pool_one_step_early(graph, name):
    if name == "model.onnx":
        set_initializer(graph, "one", np.asarray(2, dtype=np.int64))


@pytest.fixture(scope="module")
def verified_runs(tmp_path_factory):
    """A unidirectional GRU classifier and a bidirectional LSTM one, each exported intact and
    verified once (no torch) on a fixed seed."""
    runs = {}
    for name, cell, bidirectional in [("gru", "gru", False), ("bilstm", "lstm", True)]:
        d = tmp_path_factory.mktemp(name)
        run = trained_run(d, "classify", cell, bidirectional=bidirectional)
        export(run, d / "intact")
        intact = verify(d / "intact", seed=SEED)
        print(f"{name}: intact worst margin {intact.summary()['worst_margin']:.3f}")
        assert intact.passed, [(c.name, c.margin) for c in intact.failures]
        runs[name] = (run, d)
    return runs


SEED = 20261204


@pytest.mark.parametrize(
    "run, edit, caught_by",
    [
        ("gru", flip_linear_before_reset, "batch 1 length 1"),
        ("gru", pool_one_step_early, "batch 2 length 2"),
        ("bilstm", lengths_one_shorter, "batch 2 length 2"),
    ],
    ids=["gru-reset-flipped-in-both-graphs", "pooled-step-off-by-one", "sequence-lens-off-by-one"],
)
def test_verify_without_torch_refuses_graphs_that_do_not_compute_the_equations(verified_runs, run, edit, caught_by):
    """`rnnkit verify` with no checkpoint recomputes model.onnx with the NumPy oracle in float64
    from the graph's own weights. Breaks made consistently in both graphs (which agree with each
    other, so comparing the graphs with each other cannot see them: the flipped GRU and the short
    lengths passed the earlier torch-free verify) are refused; the intact bundles pass."""
    trained, d = verified_runs[run]
    report = verify(broken_bundle(trained, d / edit.__name__, edit), seed=SEED)
    for c in report.failures:
        print(f"  {c.name:<44} {c.graph:<10} vs {c.reference}: margin {c.margin:9.2f}")
    assert not report.passed and any(caught_by in c.name for c in report.failures)
    assert all(c.reference == "NumPy oracle fp64" for c in report.failures if c.name != "padded batch vs one at a time")
