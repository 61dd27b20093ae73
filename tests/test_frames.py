"""model.frame_stack: K consecutive steps of a feature series read as one frame, the same in
torch, the ONNX graph and the NumPy oracle (certificate, torch-free verify); partial last frames
and padding; refusals for tokens and per-step tasks. Streaming a frame-stacked model:
tests/test_frames_stream.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.helpers import make_config, rnnkit, write_jsonl
from toolkit.core.bundle import BundleError, read_manifest
from toolkit.core.errors import ConfigError
from toolkit.export.exporter import export
from toolkit.models.frames import frames_of, stack_frames
from toolkit.runtime.engine import Engine
from toolkit.train.loop import train


def series(tmp_path, n: int = 80, seed: int = 0) -> str:
    """Two features, 5..40 steps; label: whether feature 0 rises over the sequence."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        t = int(rng.integers(5, 41))
        slope = rng.choice([-1.0, 1.0])
        x = np.stack([slope * np.linspace(0, 1, t), rng.normal(size=t)], axis=1) + 0.1 * rng.normal(size=(t, 2))
        rows.append({"features": x.round(4).tolist(), "label": "up" if slope > 0 else "down"})
    return write_jsonl(tmp_path / "series.jsonl", rows)


def test_frames_hold_real_steps_in_order_and_zeros_after():
    x = torch.arange(2 * 7 * 2, dtype=torch.float32).reshape(2, 7, 2) + 1
    frames, lengths = stack_frames(x, torch.tensor([7, 3]), 3)
    assert frames.shape == (2, 3, 6) and lengths.tolist() == [3, 1]
    assert frames[0, 0].tolist() == x[0, :3].reshape(-1).tolist()
    assert frames[0, 2].tolist() == x[0, 6].tolist() + [0.0] * 4  # step 6, then two missing steps
    assert frames[1, 0].tolist() == x[1, :3].reshape(-1).tolist() and not frames[1, 1:].any()
    assert [frames_of(n, 4) for n in (1, 4, 5, 8, 9)] == [1, 1, 2, 2, 3]


@pytest.mark.parametrize(
    "task, k, pool, cell, bidirectional, normalize",
    [
        ("classify", 4, "last", "lstm", False, "dataset"),
        ("classify", 3, "max", "gru", True, "dataset"),
        ("classify", 5, "mean", "rnn", False, "sequence"),
        ("regress", 2, "last", "gru", True, "dataset"),
    ],
)
def test_frame_stacked_model_exports_with_its_certificate(tmp_path, task, k, pool, cell, bidirectional, normalize):
    cfg = make_config(tmp_path, task, cell=cell, bidirectional=bidirectional, epochs=1)
    if task == "classify":
        cfg.data.data = series(tmp_path)
    cfg.model.frame_stack, cfg.model.pool, cfg.model.normalize = k, pool, normalize
    train(cfg, progress=False, log=lambda m: None)
    result = export(tmp_path / "run", tmp_path / "bundle")
    report = result.report.summary()
    print(f"{task} K={k} {pool} {cell} bi={bidirectional} {normalize}: {report['cases']} cases, "
          f"worst {report['worst_margin']:.3f}")  # fmt: skip
    assert result.report.passed and result.written, result.report.reasons
    manifest = read_manifest(tmp_path / "bundle")
    streams = not bidirectional and normalize == "dataset" and pool == "last"
    assert manifest["model"]["frame_stack"] == k and (manifest["state"] is not None) == streams
    engine = Engine(tmp_path / "bundle")
    if streams:  # certified on streams fed whole frames, then the partial last frame
        cases = [c["name"] for c in json.loads((tmp_path / "bundle" / "parity.json").read_text())["cases"]]
        assert f"stream of 998, chunks of 3 frames of {k}" in cases, cases
        assert engine.step is not None and engine.why_not_streaming is None
    else:
        assert engine.step is None and "cannot stream" in engine.why_not_streaming
        with pytest.raises(BundleError, match="cannot stream"):
            engine.stream()
    verified = rnnkit("verify", tmp_path / "bundle")  # torch-free: the NumPy oracle stacks frames too
    print(verified.stdout[-300:])
    assert verified.returncode == 0, verified.stdout[-2000:] + verified.stderr[-2000:]


def test_padding_never_reaches_a_sequences_frames(tmp_path):
    """A sequence's output is the same alone and padded (with huge values) beside a longer one,
    whatever its length modulo K."""
    cfg = make_config(tmp_path, "classify", epochs=1)
    cfg.data.data = series(tmp_path)
    cfg.model.frame_stack = 4
    train(cfg, progress=False, log=lambda m: None)
    from toolkit.train.checkpoint import load_model

    model = load_model(tmp_path / "run")[0].eval()
    x = torch.randn(1, 23, 2, dtype=torch.float32)
    for n in (5, 6, 7, 8):
        batch = x.repeat(2, 1, 1)
        batch[0, n:] = 1e6
        with torch.no_grad():
            padded, _ = model(batch, torch.tensor([n, 23]))
            alone, _ = model(x[:, :n], torch.tensor([n]))
        gap = float((padded[0] - alone[0]).abs().max())
        print(f"length {n}: alone vs padded {gap:.2e}")
        assert gap <= 1e-5


@pytest.mark.parametrize("task", ["classify", "tag", "regress-step"])
def test_frame_stacking_is_refused_for_tokens_and_per_step_tasks(tmp_path, task):
    cfg = make_config(tmp_path, task, epochs=1)
    cfg.model.frame_stack = 4
    words = "reads tokens" if task == "classify" else "predicts every step"
    with pytest.raises(ConfigError, match=f"model.frame_stack 4 .*{words}"):
        train(cfg, progress=False, log=lambda m: None)
    assert not (tmp_path / "run").exists()


def test_frame_stack_through_the_cli_int8_and_infer(tmp_path):
    data = series(tmp_path)
    out = rnnkit("train", "--task", "classify", "--data", data, "--frame-stack", "4", "--hidden-size", "16",
                 "--epochs", "2", "--out", tmp_path / "run", "--no-mlflow", "--device", "cpu", "--no-progress",
                 "--precision", "int8", "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["parity"]["passed"], summary
    manifest = read_manifest(tmp_path / "run" / "bundle")
    assert manifest["model"]["frame_stack"] == 4 and manifest["precision"] == "int8"
    inferred = rnnkit("infer", tmp_path / "run" / "bundle", "--input", data, "--output", tmp_path / "p.jsonl")
    assert inferred.returncode == 0, inferred.stderr[-2000:]
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 80
    bad = rnnkit("train", "--task", "classify", "--data", data, "--frame-stack", "0", "--out", tmp_path / "r0",
                 "--no-mlflow", "--no-export")  # fmt: skip
    assert bad.returncode == 2 and "model.frame_stack must be a positive integer" in bad.stderr, bad.stderr


def test_old_manifests_read_one_step_per_frame():
    from toolkit.core.manifest import ModelInfo

    assert ModelInfo(cell="lstm", num_layers=1, hidden_size=4, bidirectional=False).frame_stack == 1
