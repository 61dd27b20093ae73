"""model.normalize: sequence — each sequence's features scaled by its own mean and std over its
real steps (toolkit.core.normalize), the same in torch, the ONNX graph and the NumPy oracle;
such a bundle reads whole sequences only (no step.onnx, streaming refused, like a bidirectional
one) and records the normalisation in its manifest."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import in_process, make_model, write_jsonl
from toolkit.core.bundle import BundleError, read_manifest
from toolkit.core.config import Config
from toolkit.core.data.batching import pad
from toolkit.core.errors import ConfigError
from toolkit.core.manifest import check
from toolkit.export import oracle
from toolkit.export.exporter import check_precision, export
from toolkit.export.parity import run_full, session
from toolkit.export.precision import PrecisionError
from toolkit.export.verify import verify
from toolkit.models.model import normalise_sequences
from toolkit.runtime.engine import Engine

REFUSAL = "normalised per sequence"


def trend_rows(rng, n: int = 48) -> list[dict]:
    """Feature 0 rises or falls (the label), each sequence at its own offset and scale: what
    per-sequence normalisation takes away. Lengths 1..20."""
    rows = []
    for _ in range(n):
        steps = int(rng.integers(1, 21))
        sign = rng.choice([-1.0, 1.0])
        offset, scale = rng.normal(0, 50, size=2), np.exp(rng.normal(0, 1, size=2))
        x = offset + scale * np.stack([sign * np.arange(steps) + rng.normal(size=steps), rng.normal(size=steps)], 1)
        rows.append({"features": x.round(4).tolist(), "label": "up" if sign > 0 else "down"})
    return rows


def config(tmp_path: Path, task: str = "classify", cell: str = "lstm", bidirectional: bool = False) -> Config:
    cfg = Config(task=task)
    cfg.data.data = write_jsonl(tmp_path / "train.jsonl", trend_rows(np.random.default_rng(0)))
    if task == "regress":  # per step: the running mean of feature 0
        rows = [json.loads(line) for line in Path(cfg.data.data).read_text().splitlines()]
        for r in rows:
            del r["label"]
            f0 = np.asarray(r["features"])[:, :1]
            r["target"] = (np.cumsum(f0, 0) / np.arange(1, len(f0) + 1)[:, None]).tolist()
        cfg.data.data = write_jsonl(tmp_path / "train.jsonl", rows)
    cfg.data.val_fraction = 0.25
    cfg.model.cell, cfg.model.bidirectional, cfg.model.normalize = cell, bidirectional, "sequence"
    cfg.model.hidden_size, cfg.model.num_layers = 8, 1
    cfg.train.epochs, cfg.train.batch_size, cfg.train.device = 1, 16, "cpu"
    cfg.train.out = str(tmp_path / "run")
    return cfg


def trained(tmp_path: Path, **kw) -> Path:
    from toolkit.train.loop import train

    cfg = config(tmp_path, **kw)
    train(cfg, progress=False, log=lambda m: None)
    return Path(cfg.train.out)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A unidirectional LSTM classifier normalised per sequence: its run and certified bundle."""
    tmp = tmp_path_factory.mktemp("normalize_sequence")
    run = trained(tmp)
    result = export(run, tmp / "bundle", seed=0)
    return run, result


# ---- the certificate ---------------------------------------------------------------------------
def test_certificate_passes_and_the_bundle_reads_whole_sequences(exported):
    run, result = exported
    summary = result.report.summary()
    print(f"{summary['cases']} cases, worst margin {summary['worst_margin']:.3f} ({summary['worst_case']})")
    assert result.written and result.report.passed, result.report.reasons
    names = {c.name for c in result.report.cases}
    assert {
        "batch 1 length 1",
        "padded batch vs one at a time",
        "constant series, padded (normalised per sequence)",
    } <= names
    assert {c.graph for c in result.report.cases} == {"model.onnx"}  # no streams to certify
    assert sorted(p.name for p in result.out.iterdir()) == ["manifest.json", "model.onnx", "parity.json"]
    manifest = read_manifest(result.out)
    assert manifest["input"]["normalize"] == "sequence" and manifest["input"]["normalize_eps"] == 1e-8
    assert manifest["state"] is None and manifest["model"]["bidirectional"] is False


@pytest.mark.parametrize(("task", "cell", "bidirectional"), [("regress", "gru", True), ("regress", "rnn", False)])
def test_certificate_passes_per_step_and_bidirectional(tmp_path, task, cell, bidirectional):
    result = export(trained(tmp_path, task=task, cell=cell, bidirectional=bidirectional), tmp_path / "b", seed=1)
    assert result.written and result.report.passed, result.report.reasons
    assert result.manifest["output"]["per_step"] and result.manifest["state"] is None


def test_torch_free_verify_reads_the_normalisation_from_the_manifest(exported, tmp_path):
    _, result = exported
    assert verify(result.out, seed=5).passed  # the NumPy oracle, in float64, with the graph's weights
    bundle = Path(shutil.copytree(result.out, tmp_path / "bundle"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["input"]["normalize_eps"] = 1.0  # the oracle now normalises differently from the graph
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    report = verify(bundle, seed=5)
    assert not report.passed and any("constant" not in c.name for c in report.failures)


# ---- the definition, in torch, the graph and the oracle ---------------------------------------
def test_torch_graph_and_oracle_agree_and_padding_never_matters(exported):
    run, result = exported
    from toolkit.train.checkpoint import load_model

    model = load_model(run)[0].double().eval()
    full = session((result.out / "model.onnx").read_bytes(), "CPUExecutionProvider")
    rng = np.random.default_rng(3)
    seqs = [(rng.normal(size=(n, 2)) * 7 + 300).astype(np.float32) for n in (1, 2, 9, 30)]
    alone = [run_full(full, s[None], np.array([len(s)]))[0] for s in seqs]
    for extra in (0, 1, 25):  # the same sequences padded to different lengths, padding of any value
        x, lens = pad(seqs)
        x = np.concatenate([x, np.zeros((len(seqs), extra, 2), np.float32)], 1)
        x[np.arange(x.shape[1])[None, :] >= lens[:, None]] = np.nan if extra == 25 else 1e30
        y = run_full(full, x, lens)
        assert np.abs(y - np.stack(alone)).max() <= 1e-6, extra
        with torch.no_grad():
            t = model(torch.from_numpy(x).double(), torch.from_numpy(lens))[0].numpy()
        assert np.isfinite(t).all() and np.abs(t - y).max() <= 1e-5
        h = oracle.normalise_sequences(x.astype(np.float64), lens, 1e-8)
        n = normalise_sequences(torch.from_numpy(x).double(), torch.from_numpy(lens)).numpy()
        assert np.abs(h - n).max() <= 1e-12 and (h[np.isnan(x)] == 0).all()
    z = oracle.normalise_sequences(seqs[3][None].astype(np.float64), None, 1e-8)[0]
    assert np.allclose(z.mean(0), 0, atol=1e-12) and np.allclose(z.std(0), 1, atol=1e-6)  # the definition


def test_constant_series_are_exactly_zero_not_nan():
    """A constant series (and length 1) normalises to 0 in float32 too, even far from 0, where a
    plain float32 mean misses the value by an ulp and 1/sqrt(eps) would blow that up."""
    values = np.array([5000.1, -37.3, 1e-3], np.float32)
    x, lens = pad([np.tile(values, (n, 1)) for n in (1, 3, 17, 50)])
    got = normalise_sequences(torch.from_numpy(x), torch.from_numpy(lens))
    assert got.dtype == torch.float32 and not got.any()
    assert not oracle.normalise_sequences(x, lens, 1e-8).any()
    naive = (x[:, :3] - x[:, :3].mean(1, keepdims=True)) / np.sqrt(x[:, :3].var(1, keepdims=True) + 1e-8)
    print("a plain float32 z-score of 3 steps of 5000.1:", naive[0, :, 0])

    model = make_model("classify", tokens=False, normalize="sequence").float()
    weights = {k: v.numpy() for k, v in model.state_dict().items()}
    from toolkit.core.data.types import InputSpec, OutputSpec
    from toolkit.export.graph import build_full_graph

    spec = InputSpec("features", num_features=3, mean=[0.5] * 3, std=[2.0] * 3)
    graph = build_full_graph(weights, model.cfg, spec, OutputSpec("classify", labels=["A", "B", "C"]))
    full = session(graph.SerializeToString(), "CPUExecutionProvider")
    y = run_full(full, x, lens)
    assert np.isfinite(y).all() and np.array_equal(y, run_full(full, np.zeros_like(x), lens))


# ---- streaming refused, whole sequences served -------------------------------------------------
def test_streaming_is_refused_everywhere_with_the_reason(exported, tmp_path):
    from toolkit.export.graph import StepGraphError, build_step_graph
    from toolkit.runtime.scheduler import Scheduler
    from toolkit.train.checkpoint import load_model

    _, result = exported
    engine = Engine(result.out, device="cpu", bind_state=False)
    assert engine.step is None and REFUSAL in engine.why_not_streaming and "rnnkit infer" in engine.why_not_streaming
    with pytest.raises(BundleError, match=REFUSAL):
        engine.stream()
    with pytest.raises(ValueError, match=REFUSAL):
        Scheduler(engine)
    proc = in_process(["stream", result.out])
    print(proc.stderr)
    assert proc.returncode == 2 and REFUSAL in proc.stderr and "/v1/infer" in proc.stderr
    model, cfg, input_spec, output_spec = load_model(exported[0])
    weights = {k: v.numpy() for k, v in model.state_dict().items()}
    with pytest.raises(StepGraphError, match=REFUSAL):
        build_step_graph(weights, cfg.model, input_spec, output_spec)
    from toolkit.triton.repository import write_repository

    write_repository(result.out, tmp_path / "triton", "seqnorm")  # whole sequences: the dynamic batcher
    config = (tmp_path / "triton" / "seqnorm" / "config.pbtxt").read_text()
    assert "dynamic_batching" in config and "sequence_batching" not in config


def test_server_refuses_streams_and_serves_whole_sequences(exported):
    import websockets
    from websockets.sync.client import connect

    from tests.serving import http, server

    _, result = exported
    seqs = [np.random.default_rng(1).normal(size=(n, 2)).round(3) * 10 + 70 for n in (4, 1, 12)]
    offline = Engine(result.out, device="cpu").infer(seqs)
    with server(result.out) as (_, address):
        status, reply = http(address, "/v1/infer", {"sequences": [s.tolist() for s in seqs]})
        assert status == 200, reply
        np.testing.assert_allclose([r["scores"] for r in reply["results"]], _softmax(offline), atol=1e-5)
        with pytest.raises(websockets.InvalidStatus) as refused:
            connect(f"ws://{address}/v1/streams")
        assert refused.value.response.status_code == 409 and REFUSAL in refused.value.response.body.decode()
        assert not http(address, "/health")[1]["streaming"]


def test_rnnkit_infer_and_the_mlflow_model_run_whole_sequences(exported, tmp_path):
    import mlflow

    from toolkit.tracking.pyfunc import save_bundle

    run, result = exported
    rows = trend_rows(np.random.default_rng(9), n=12)
    data = write_jsonl(tmp_path / "test.jsonl", rows)
    proc = in_process(["infer", result.out, "--input", data, "--output", tmp_path / "out.jsonl"])
    assert proc.returncode == 0, proc.stderr
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    engine = Engine(result.out, device="cpu")
    offline = engine.infer([np.asarray(r["features"], np.float32) for r in rows])
    np.testing.assert_allclose([w["scores"] for w in written], _softmax(offline), atol=1e-5)
    model = mlflow.pyfunc.load_model(str(save_bundle(result.out, tmp_path / "pyfunc")))
    frame = model.predict([{"features": r["features"]} for r in rows])
    assert list(frame["prediction"]) == [w["prediction"] for w in written]


def _softmax(outputs: list) -> list:
    return [np.exp(y - y.max()) / np.exp(y - y.max()).sum() for y in outputs]


# ---- refused before training -------------------------------------------------------------------
def test_token_and_stream_tasks_are_refused_before_training(tmp_path):
    from toolkit.train.loop import train

    lm = Config(task="lm")
    (tmp_path / "text.txt").write_text("the cat sat on the mat. " * 40, encoding="utf-8")
    lm.data.data = str(tmp_path / "text.txt")
    tokens = Config(task="classify")
    tokens.data.data = write_jsonl(tmp_path / "t.jsonl", [{"tokens": list("abc"), "label": "x"}] * 8)
    series = Config(task="regress")
    series.data.data = str(tmp_path / "series.csv")
    values = np.random.default_rng(0).normal(size=(200, 2)).round(3)
    (tmp_path / "series.csv").write_text("a,b\n" + "".join(f"{a},{b}\n" for a, b in values))
    for cfg, why in ((lm, "reads tokens"), (tokens, "reads tokens"), (series, "one long stream")):
        cfg.model.normalize, cfg.train.out, cfg.train.device = "sequence", str(tmp_path / "run"), "cpu"
        with pytest.raises(ConfigError, match=why) as info:
            train(cfg, progress=False, log=lambda m: None)
        print(info.value)
        assert "--normalize dataset" in str(info.value) and not (tmp_path / "run").exists()
    proc = in_process(["train", "--task", "lm", "--data", lm.data.data, "--normalize", "sequence", "--out",
                       tmp_path / "cli", "--no-mlflow", "--device", "cpu"])  # fmt: skip
    assert proc.returncode == 2 and "model.normalize: sequence" in proc.stderr, proc.stderr


# ---- the manifest -------------------------------------------------------------------------------
def test_manifest_records_it_and_is_checked_on_load(exported, tmp_path):
    _, result = exported
    manifest = read_manifest(result.out)
    check(json.loads(json.dumps(manifest)))  # the round trip through JSON keeps it valid
    step_state = [{"name": n, "output": f"{n}_next", "shape": [1, "batch", 8], "dtype": "float32",
                   "initial": "zeros"} for n in ("h", "c")]  # fmt: skip
    broken = {
        "no eps": lambda m: m["input"].pop("normalize_eps"),
        "eps without sequence": lambda m: m["input"].update(normalize="dataset"),
        "unknown kind": lambda m: m["input"].update(normalize="batch"),
        "zero eps": lambda m: m["input"].update(normalize_eps=0.0),
        "a state spec (streams)": lambda m: m.update(state=step_state),
    }
    for name, change in broken.items():
        bad = copy.deepcopy(manifest)
        change(bad)
        bundle = Path(shutil.copytree(result.out, tmp_path / name.replace(" ", "_")))
        (bundle / "manifest.json").write_text(json.dumps(bad))
        with pytest.raises(BundleError, match="normalize|state must be null") as info:
            read_manifest(bundle)
        print(f"{name}: {info.value}")
    dropped = copy.deepcopy(manifest)
    del dropped["input"]["normalize"], dropped["input"]["normalize_eps"]  # dataset, which streams
    with pytest.raises(ValueError, match="state must be null exactly when"):
        check(dropped)


# ---- reduced precision --------------------------------------------------------------------------
@pytest.mark.cpu_features
def test_int8_is_certified_and_fp16_and_bf16_refused(exported, tmp_path):
    """The refusals name the model's reason on every CPU (on an AVX2-only CPU the bf16 one once
    named the CPU instead)."""
    run, _ = exported
    result = export(run, tmp_path / "int8", seed=2, precision="int8", max_metric_drop=1.0)
    assert result.written and result.report.passed, result.report.reasons
    assert "constant series, padded (normalised per sequence)" in {c.name for c in result.report.cases}
    assert Engine(result.out, device="cpu").infer([np.ones((3, 2), np.float32)])[0].shape == (2,)
    cfg = Config.load(run / "config.json")
    cfg.model.cell = "gru"  # bf16 is for GRU and RNN
    for precision, why in (("fp16", "overflows float16"), ("bf16", "constant series")):
        with pytest.raises(PrecisionError, match=why) as info:
            check_precision(precision, cfg)
        assert "normalised per sequence" in str(info.value) and "fp32" in str(info.value)
