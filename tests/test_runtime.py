"""The runtime engine: no torch or mlflow on import; batch inference and streams reproduce the
exported model exactly; providers are chosen honestly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_export import exported_bundles
from toolkit.export.bundle import BundleError
from toolkit.runtime.engine import Engine
from toolkit.runtime.providers import DeviceError, make_session

ROOT = Path(__file__).resolve().parents[1]


def test_runtime_imports_neither_torch_nor_mlflow():
    code = "import sys, toolkit.runtime.engine; print(sorted(m for m in ('torch', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    print("heavy modules after importing the runtime:", out.strip())
    assert out.strip() == "[]"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    return exported_bundles(
        tmp_path_factory,
        "lstm",
        [("bi-tag", "tag", True), ("uni-tag", "tag", False), ("uni-classify", "classify", False)],
    )


def sequences(engine, lengths, seed=0):
    rng = np.random.default_rng(seed)
    vocab = engine.manifest["input"]["vocab_size"]
    return [rng.integers(4, vocab, size=n) for n in lengths]


def test_infer_restores_input_order_and_matches_one_at_a_time(bundles):
    engine = Engine(bundles["bi-tag"], device="cpu")
    seqs = sequences(engine, [5, 1, 40, 3, 17, 2, 9])
    batched = engine.infer(seqs, batch_size=3)
    alone = [engine.infer([s])[0] for s in seqs]
    worst = max(float(np.abs(a - b).max()) for a, b in zip(batched, alone, strict=True))
    print(f"provider {engine.provider}; max |batched - alone| {worst:.2e}")
    assert [len(b) for b in batched] == [5, 1, 40, 3, 17, 2, 9]
    assert worst <= 1e-5


@pytest.mark.parametrize("name", ["uni-tag", "uni-classify"])
def test_interleaved_streams_equal_offline_inference(bundles, name):
    engine = Engine(bundles[name], device="cpu")
    lengths = [50, 7, 120, 1, 64]
    seqs = sequences(engine, lengths, seed=1)
    offline = engine.infer(seqs)
    streams = [engine.stream() for _ in seqs]
    got = [[] for _ in seqs]
    pos = [0] * len(seqs)
    rng = np.random.default_rng(2)
    while any(p < n for p, n in zip(pos, lengths, strict=True)):
        live = [i for i, n in enumerate(lengths) if pos[i] < n]
        chosen = list(rng.choice(live, size=int(rng.integers(1, len(live) + 1)), replace=False))
        chunks = []
        for i in chosen:
            size = int(rng.integers(1, 9))
            chunks.append(seqs[i][pos[i] : pos[i] + size])
            pos[i] += len(chunks[-1])
        for i, y in zip(chosen, engine.push_many([streams[i] for i in chosen], chunks), strict=True):
            got[i].append(y)
    worst = 0.0
    for i, n in enumerate(lengths):
        stepped = np.concatenate(got[i])
        want = offline[i] if engine.per_step else offline[i][None]
        have = stepped if engine.per_step else stepped[-1:]  # classify: the prediction after the last step
        worst = max(worst, float(np.abs(have - want).max()))
        assert streams[i].steps == n
    print(f"{name}: max |streamed - offline| {worst:.2e}")
    assert worst <= 1e-5

    streams[0].reset()
    again = np.concatenate([streams[0].push(seqs[0][:10]), streams[0].push(seqs[0][10:])])
    first = np.concatenate(got[0])
    assert np.abs(again - first).max() <= 1e-6


def test_bidirectional_bundle_cannot_stream(bundles):
    with pytest.raises(BundleError, match="bidirectional"):
        Engine(bundles["bi-tag"], device="cpu").stream()


def test_unverified_bundle_is_refused_unless_allowed(bundles, tmp_path):
    import shutil

    copy = tmp_path / "unverified"
    shutil.copytree(bundles["uni-tag"], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["parity"]["passed"] = False
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="allow-unverified"):
        Engine(copy, device="cpu")
    assert Engine(copy, device="cpu", allow_unverified=True).provider == "CPUExecutionProvider"


def test_devices(bundles):
    data = (bundles["uni-tag"] / "model.onnx").read_bytes()
    auto = make_session(data, "auto").get_providers()[0]
    print("auto chose", auto)
    with pytest.raises(DeviceError, match="--device"):
        make_session(data, "nonsense")
    if auto == "CPUExecutionProvider":  # no working GPU here: asking for one is a clear error
        with pytest.raises(DeviceError, match="cuda"):
            make_session(data, "cuda")
