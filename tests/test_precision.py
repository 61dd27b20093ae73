"""Reduced-precision bundles (`--precision`): int8 on CPU for every LSTM task and direction, bf16 on
OpenVINO for unidirectional GRU and RNN, each with its certificate and task-metric check; the
refusals that say why (GRU/RNN int8, LSTM or bidirectional bf16, fp16 without CUDA); a wrong int8
graph refused, OpenVINO's padded backward direction refused; fp16 on CUDA where a GPU is."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from tests.helpers import cuda_works, in_process, rnnkit, trained_run, write_jsonl
from tests.test_parity_detection import Break, broken, graphs, initializer, set_initializer
from toolkit.core.bundle import read_manifest
from toolkit.export import parity, precision
from toolkit.export.exporter import certify, export
from toolkit.runtime.engine import Engine
from toolkit.runtime.openvino import PROVIDER as OPENVINO
from toolkit.runtime.openvino import bf16_works

NO_CUDA = "no working CUDA execution provider on this machine"
NO_BF16 = "OpenVINO is not installed or this CPU has no bfloat16 arithmetic"


@pytest.mark.parametrize(
    "task, bidirectional",
    [
        pytest.param("classify", True, marks=pytest.mark.cpu_features),
        pytest.param("tag", False, marks=pytest.mark.cpu_features),
        ("lm", False),
        ("regress", False),
        ("regress-step", True),
    ],
)
def test_int8_lstm_exports_with_certificate_and_metric(tmp_path, task, bidirectional):
    run = trained_run(tmp_path, task, "lstm", bidirectional=bidirectional)
    result = export(run, tmp_path / "bundle", precision="int8")
    report = result.report
    worst = max(report.cases, key=lambda c: c.margin)
    m = report.metric
    print(f"{task}: {len(report.cases)} cases, worst {worst.name} margin {worst.margin:.3f} ({worst.max_abs:.2e})")
    print(f"  {m.metric} fp32 {m.fp32:.4f} int8 {m.reduced:.4f} drop {m.drop:+.4f} (max {m.max_drop:.4f}) on {m.data}")
    assert report.passed and result.written, report.reasons
    assert {c.provider for c in report.cases} == {"CPUExecutionProvider"}
    manifest = read_manifest(tmp_path / "bundle")
    assert manifest["precision"] == "int8" and manifest["parity"]["metric"]["metric"] == m.metric
    ops = {n.op_type for n in onnx.load(tmp_path / "bundle" / "model.onnx").graph.node}
    assert "DynamicQuantizeLSTM" in ops and "LSTM" not in ops, ops
    certificate = json.loads((tmp_path / "bundle" / "parity.json").read_text())
    assert certificate["rule"]["precision"] == "int8" and certificate["metric"]["passed"]
    engine = Engine(tmp_path / "bundle", device="cpu")  # it runs like any bundle
    assert engine.step is None if bidirectional else engine.step is not None


def test_int8_through_the_cli_prints_the_metric_and_infers(tmp_path):
    run = trained_run(tmp_path, "classify", "lstm")
    rows = [{"tokens": list("abcab"), "label": "a"}, {"tokens": list("ccbca"), "label": "c"}]
    data = write_jsonl(tmp_path / "eval.jsonl", rows * 10)
    out = rnnkit("export", run, "--out", tmp_path / "b", "--precision", "int8", "--eval-data", data)
    print(out.stdout[-900:])
    assert out.returncode == 0, out.stderr
    assert "task metric on --eval-data" in out.stdout and "(20 sequences): accuracy fp32" in out.stdout
    assert "int8 err" in out.stdout
    inferred = rnnkit("infer", tmp_path / "b", "--input", data, "--output", tmp_path / "p.jsonl", "--device", "cpu")
    assert inferred.returncode == 0, inferred.stderr
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 20


def test_metric_drop_over_the_limit_writes_no_bundle(tmp_path):
    """A limit no bundle can meet (it must gain a point): refused, report kept, reason given."""
    run = trained_run(tmp_path, "tag", "lstm")
    result = export(run, tmp_path / "bundle", precision="int8", max_metric_drop=-0.01)
    assert not result.written and not (tmp_path / "bundle").exists()
    assert all(c.passed for c in result.report.cases)
    assert any(r.startswith(("task metric: span_f1", "task metric: accuracy")) for r in result.report.reasons)
    assert json.loads(result.report_path.read_text())["metric"]["passed"] is False


def test_metric_check_direction_and_defaults():
    up = precision.MetricCheck("accuracy", "max", "d", 10, 0.90, 0.894, 0.005, {}, {})
    assert round(up.drop, 6) == 0.006 and not up.passed and "0.0060 > --max-metric-drop 0.0050" in up.reason
    down = precision.MetricCheck("rmse", "min", "d", 10, 2.0, 1.99, precision.default_max_drop("rmse", 2.0), {}, {})
    assert down.drop < 0 and down.passed and down.max_drop == pytest.approx(0.02)
    assert precision.default_max_drop("cross_entropy", 1.3) == 0.01
    nan = precision.MetricCheck("accuracy", "max", "d", 10, 0.9, float("nan"), 0.005, {}, {})
    assert not nan.passed


def blocks_swapped(gates: int, a: int, b: int, layers: int = 1) -> Break:
    """An edit for `broken`: gate blocks a and b of each layer's input weights W swapped (a layout bug)."""

    def edit(graph, _name):
        for i in range(layers):
            blocks = np.split(initializer(graph, f"layer{i}.W"), gates, axis=1)
            blocks[a], blocks[b] = blocks[b], blocks[a]
            set_initializer(graph, f"layer{i}.W", np.concatenate(blocks, axis=1))

    return edit


def certify_intact_and_broken(model, intact_blobs, broken_blobs, input_dict, per_step, **kw):
    """Both sets of graphs certified on one fresh seed; prints the worst margins and returns
    (intact report, broken report, (intact margin, broken margin))."""
    seed = parity.fresh_seed(None)
    intact = certify(model, intact_blobs, input_dict, per_step, seed, **kw)
    refused = certify(model, broken_blobs, input_dict, per_step, seed, **kw)
    margins = intact.summary()["worst_margin"], refused.summary()["worst_margin"]
    failed = f"{len(refused.failures)}/{len(refused.cases)} failed"
    print(f"seed {seed}: worst margin intact {margins[0]:.3f}, broken {margins[1]:.1f} ({failed})")
    return intact, refused, margins


@pytest.mark.cpu_features
def test_wrong_int8_graph_is_refused(tmp_path):
    """Gates swapped in the fp32 graphs before quantization (a layout bug): the int8 certificate
    refuses them, and the intact int8 graphs pass on the same seed."""
    model, blobs, input_dict, per_step = graphs(trained_run(tmp_path, "tag", "lstm"))
    good = {n: precision.convert(b, "int8") for n, b in blobs.items()}
    bad = {n: precision.convert(b, "int8") for n, b in broken(blobs, blocks_swapped(4, 1, 2, layers=2)).items()}
    kw = {"rule": precision.INT8, "providers": ["CPUExecutionProvider"]}
    intact, refused, margins = certify_intact_and_broken(model, good, bad, input_dict, per_step, **kw)
    assert intact.passed, intact.reasons
    # 7-bit weights make a tiny one-epoch model's int8 noise large enough to hide the swap in some
    # cases; the refusal must still be far from a borderline call.
    assert not refused.passed and margins[1] > 10 * margins[0]


@pytest.mark.parametrize(
    "cell, flag, words",
    [
        ("gru", "int8", ["int8 needs ONNX Runtime's integer LSTM kernel", "none for GRU", "bf16"]),
        ("rnn", "int8", ["none for RNN"]),
        ("lstm", "bf16", ["bf16 is offered for GRU and RNN", "--precision int8"]),
    ],
)
def test_refusals_say_why(tmp_path, cell, flag, words):
    run = trained_run(tmp_path, "classify", cell)
    out = rnnkit("export", run, "--out", tmp_path / "b", "--precision", flag)
    assert out.returncode == 2, out.stderr
    assert all(w in out.stderr for w in words), out.stderr
    assert not (tmp_path / "b").exists()


def test_train_refuses_an_impossible_precision_before_training(tmp_path):
    data = write_jsonl(tmp_path / "t.jsonl", [{"tokens": ["a", "b"], "label": "x"}] * 8)
    out = rnnkit("train", "--task", "classify", "--data", data, "--cell", "gru", "--precision", "int8",
                 "--out", tmp_path / "run", "--no-mlflow", "--device", "cpu")  # fmt: skip
    assert out.returncode == 2 and "none for GRU" in out.stderr, out.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(cuda_works(), reason="this machine has CUDA: fp16 is offered here")
def test_fp16_without_cuda_is_refused_and_an_fp16_bundle_never_loads_on_cpu(tmp_path):
    run = trained_run(tmp_path, "tag", "lstm")
    out = rnnkit("export", run, "--out", tmp_path / "b", "--precision", "fp16")
    assert out.returncode == 2 and "fp16 bundles run and are certified on CUDA only" in out.stderr
    # A bundle made elsewhere: its manifest says fp16, which CPU sessions must never be built for
    # (onnxruntime 1.31's CPU provider crashes loading a float16 LSTM).
    export(run, tmp_path / "b32")
    manifest_path = tmp_path / "b32" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["precision"] = "fp16"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(Exception, match="an fp16 bundle runs on CUDA only"):
        Engine(tmp_path / "b32", device="auto")


def test_verify_of_an_int8_bundle_needs_its_checkpoint(tmp_path):
    run = trained_run(tmp_path, "lm", "lstm")
    export(run, tmp_path / "b", precision="int8")
    alone = rnnkit("verify", tmp_path / "b")
    assert alone.returncode == 2 and "pass --checkpoint RUN_DIR" in alone.stderr, alone.stderr
    checked = rnnkit("verify", tmp_path / "b", "--checkpoint", run)
    assert checked.returncode == 0, checked.stderr
    assert "int8 err" in checked.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_works(), reason=NO_CUDA)
@pytest.mark.parametrize("cell, bidirectional", [("lstm", False), ("gru", True)])
def test_fp16_on_cuda_exports_with_certificate_and_runs(tmp_path, cell, bidirectional):
    run = trained_run(tmp_path, "tag", cell, bidirectional=bidirectional)
    result = export(run, tmp_path / "bundle", precision="fp16")
    worst = max(result.report.cases, key=lambda c: c.margin)
    print(f"{cell}: worst {worst.name} margin {worst.margin:.3f}; metric {result.report.summary()['metric']}")
    assert result.report.passed, result.report.reasons
    assert {c.provider for c in result.report.cases} == {"CUDAExecutionProvider"}
    engine = Engine(tmp_path / "bundle", device="auto")
    assert engine.provider == "CUDAExecutionProvider"
    y = engine.infer([np.array([4, 5, 6], dtype=np.int64)])[0]
    assert y.dtype == np.float32 and np.isfinite(y).all()


def test_unfolded_graphs_int8_starts_from_are_exact_in_fp32(tmp_path):
    """The graphs int8 quantizes keep the feature normalisation as nodes and zero the padding
    (fold=False): in fp32 they pass the fp32 certificate, padding included."""
    from toolkit.export.graph import build_full_graph, build_step_graph
    from toolkit.train.checkpoint import load_model

    run = trained_run(tmp_path, "regress", "lstm")
    model, config, input_spec, output_spec = load_model(run)
    weights = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    args = weights, config.model, input_spec, output_spec
    blobs = {"model.onnx": build_full_graph(*args, fold=False), "step.onnx": build_step_graph(*args, fold=False)}
    ops = {n.op_type for n in blobs["model.onnx"].graph.node}
    assert {"Sub", "Mul", "Less", "Range"} <= ops, ops
    report = certify(model, {k: g.SerializeToString() for k, g in blobs.items()}, input_spec.to_dict(), False, 0)
    print(f"worst margin {report.summary()['worst_margin']:.3f}")
    assert report.passed, report.reasons


def test_int8_padding_does_not_stretch_the_quantization_range(tmp_path):
    """Features far from zero (mean 500, std 0.5): unmasked, the normalised padding (-1000) would
    set the int8 range of the layer input; a padded batch must match each sequence alone closely."""
    rng = np.random.default_rng(3)
    rows = []
    for _ in range(96):
        x = 500 + 0.5 * rng.normal(size=(int(rng.integers(3, 30)), 2))
        rows.append({"features": x.round(4).tolist(), "target": float(x[:, 0].mean() - 500)})
    data = write_jsonl(tmp_path / "far.jsonl", rows)
    out = rnnkit("train", "--task", "regress", "--data", data, "--hidden-size", "32", "--epochs", "3",
                 "--out", tmp_path / "run", "--no-mlflow", "--device", "cpu", "--precision", "int8",
                 "--no-progress", "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    certificate = json.loads((tmp_path / "run" / "bundle" / "parity.json").read_text())
    padded = next(c for c in certificate["cases"] if c["name"] == "padded batch vs one at a time")
    print(f"padded vs alone: error {padded['max_abs']:.2e}, budget {padded['budget']:.2e}, scale {padded['scale']:.2e}")
    assert padded["passed"] and padded["max_abs"] < 0.05 * padded["scale"]


@pytest.mark.skipif(not bf16_works(), reason=NO_BF16)
@pytest.mark.parametrize("task, cell", [("classify", "gru"), ("lm", "rnn"), ("regress-step", "gru")])
def test_bf16_gru_and_rnn_run_on_openvino_with_certificate(tmp_path, task, cell):
    run = trained_run(tmp_path, task, cell)
    result = export(run, tmp_path / "bundle", precision="bf16")
    worst, m = max(result.report.cases, key=lambda c: c.margin), result.report.metric
    print(f"{task} {cell}: worst {worst.name} margin {worst.margin:.3f}; {m.metric} {m.fp32:.4f} -> {m.reduced:.4f}")
    assert result.report.passed, result.report.reasons
    providers = {c.graph: c.provider for c in result.report.cases}
    assert providers == {"model.onnx": OPENVINO, "step.onnx": "CPUExecutionProvider"}  # streams stay on ORT
    assert read_manifest(tmp_path / "bundle")["precision"] == "bf16"
    engine = Engine(tmp_path / "bundle", device="cpu")
    assert engine.provider == OPENVINO and engine.step.get_providers()[0] == "CPUExecutionProvider"
    export(run, tmp_path / "b32", seed=0)
    fp32 = Engine(tmp_path / "b32", device="cpu")
    seq = np.random.default_rng(0).integers(4, 9, size=40) if task != "regress-step" else None
    seq = seq if seq is not None else np.random.default_rng(0).normal(size=(40, 2)).astype(np.float32)
    stream = engine.stream()
    streamed = np.concatenate([stream.push(seq[i : i + 7]) for i in range(0, 40, 7)])
    whole = fp32.infer([seq])[0]
    want = whole if whole.ndim == 2 else np.stack([fp32.infer([seq[: t + 1]])[0] for t in range(40)])
    print(f"bf16 stream vs fp32: max {np.abs(streamed - want).max():.2e} (scale {np.abs(want).max():.2f})")
    assert np.abs(streamed - want).max() <= 0.05 * max(1.0, float(np.abs(want).max()))


@pytest.mark.skipif(not bf16_works(), reason=NO_BF16)
def test_wrong_bf16_graph_is_refused(tmp_path):
    """A GRU's reset and candidate blocks swapped (a layout bug): the bf16 certificate on OpenVINO,
    whose floor is one bfloat16 ulp of the output's scale, refuses it far from the line, and the
    intact graphs pass on the same seed."""
    model, blobs, input_dict, per_step = graphs(trained_run(tmp_path, "tag", "gru"))
    full = {"model.onnx": blobs["model.onnx"]}
    kw = {"rule": precision.BF16, "providers": [OPENVINO]}
    swapped = broken(full, blocks_swapped(3, 1, 2))
    intact, refused, margins = certify_intact_and_broken(model, full, swapped, input_dict, per_step, **kw)
    assert intact.passed, intact.reasons
    assert not refused.passed and margins[1] > 10 * margins[0]


@pytest.mark.skipif(not bf16_works(), reason=NO_BF16)
def test_bf16_bundle_runs_fp32_on_onnxruntime_where_openvino_cannot(tmp_path, monkeypatch):
    run = trained_run(tmp_path, "tag", "gru")
    export(run, tmp_path / "bundle", precision="bf16")
    monkeypatch.setattr("toolkit.runtime.engine.bf16_works", lambda: False)
    engine = Engine(tmp_path / "bundle", device="cpu")
    assert engine.provider == "CPUExecutionProvider" and engine.precision == "bf16"


@pytest.mark.cpu_features
def test_bf16_where_the_cpu_has_no_bfloat16_is_refused_saying_so(tmp_path):
    """A CPU whose OpenVINO reports no BF16 (AVX2, or AVX-512 before BF16; `make cpu-test` runs
    this under an emulated AVX2-only CPU): a GRU's bf16 export exits 2 naming the CPU and fp32.
    Where the CPU computes in bfloat16, the certificate tests below run instead."""
    if bf16_works():
        pytest.skip("this CPU computes in bfloat16: the bf16 certificate tests cover it")
    run = trained_run(tmp_path, "classify", "gru")
    out = in_process(["export", str(run), "--out", str(tmp_path / "b"), "--precision", "bf16"])
    print(out.stderr.strip()[-400:])
    assert out.returncode == 2 and not (tmp_path / "b").exists(), out.stderr
    assert "OpenVINO reports no BF16" in out.stderr or "pip install 'rnnkit[openvino]'" in out.stderr


def test_bf16_refuses_bidirectional_models(tmp_path):
    run = trained_run(tmp_path, "classify", "gru", bidirectional=True)
    out = rnnkit("export", run, "--out", tmp_path / "b", "--precision", "bf16")
    assert out.returncode == 2 and "start the backward direction of a padded" in out.stderr, out.stderr


@pytest.mark.skipif(not bf16_works(), reason=NO_BF16)
def test_the_certificate_catches_openvinos_padded_backward_direction(tmp_path):
    """Why bidirectional bf16 is refused: OpenVINO (in fp32 too) runs the backward direction of
    padded sequences from the padded end; the fp32 certificate on OpenVINO fails the padded cases."""
    model, blobs, input_dict, per_step = graphs(trained_run(tmp_path, "tag", "gru", bidirectional=True))
    report = certify(model, blobs, input_dict, per_step, 0, providers=[OPENVINO], rule=precision.BF16)
    failed = {c.name for c in report.failures}
    print(sorted(failed))
    assert "padded batch vs one at a time" in failed and "batch 2 length 2" not in failed


def test_a_bf16_models_requirements_name_openvino():
    from toolkit.tracking.pyfunc import pip_requirements

    assert not any(r.startswith("openvino") for r in pip_requirements({"precision": "fp32"}))
    assert any(r.startswith("openvino") for r in pip_requirements({"precision": "bf16"}))
