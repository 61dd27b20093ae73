"""The runtime engine: no torch or mlflow on import; batch inference and streams reproduce the
exported model exactly; providers are chosen honestly."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from tests.helpers import ROOT, cuda_works, exported_bundles
from toolkit.core.bundle import BundleError
from toolkit.runtime.engine import Engine, InputError
from toolkit.runtime.providers import DeviceError, make_session


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
        [
            ("bi-tag", "tag", True),
            ("uni-tag", "tag", False),
            ("uni-classify", "classify", False),
            ("uni-regress", "regress", False),
        ],
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


@pytest.mark.parametrize(
    ("name", "bad", "message"),
    [
        ("uni-tag", [], "no steps"),
        ("uni-tag", [4, -1, 5], "token id -1 is outside the vocabulary"),
        ("uni-tag", [4, 10_000], "token id 10000 is outside the vocabulary"),
        ("uni-tag", [[4, 5]], r"shape \[1, 2\]; accepted: 1-D sequence of token ids"),
        ("uni-regress", [[0.0, 1.0, 2.0]], r"shape \[1, 3\]; accepted: 2-D array \[steps, 2\]"),
        ("uni-regress", [[0.0, float("nan")]], "step 0, feature 1 is nan"),
        ("uni-regress", [[0.0, 1.0], [float("inf"), 1.0]], "step 1, feature 0 is inf"),
        ("uni-regress", [["a", "b"]], "not a 2-D array"),
    ],
)
def test_bad_input_is_refused_before_onnxruntime_sees_it(bundles, name, bad, message):
    # Unchecked, onnxruntime takes a length of 0 and reads id -1 as the embedding's last row.
    engine = Engine(bundles[name], device="cpu")
    good = sequences(engine, [3])[0] if engine.width is None else np.zeros((3, engine.width), np.float32)
    with pytest.raises(InputError, match=message) as info:
        engine.infer([good, bad])
    print(info.value)
    assert str(info.value).startswith("sequence 1:")
    stream = engine.stream()
    stream.push(good)
    before = {k: v.copy() for k, v in stream.state.items()}
    with pytest.raises(InputError, match=message):
        stream.push(bad)
    assert stream.steps == 3 and all(np.array_equal(before[k], stream.state[k]) for k in before)  # untouched


def test_infer_reports_progress_for_every_sequence(bundles):
    engine = Engine(bundles["bi-tag"], device="cpu")
    done = []
    engine.infer(sequences(engine, range(1, 11)), batch_size=4, progress=done.append)
    assert done == [4, 4, 2]


def test_state_held_in_ortvalues_with_iobinding_gives_the_same_outputs(bundles):
    # On CPU this runs the IOBinding path the CUDA provider uses by default, state as OrtValues.
    plain = Engine(bundles["uni-regress"], device="cpu")
    bound = Engine(bundles["uni-regress"], device="cpu", bind_state=True)
    rng = np.random.default_rng(3)
    chunks = [rng.normal(size=(n, 2)).astype(np.float32) for n in (1, 5, 2, 9)]
    a, b, c = plain.stream(), bound.stream(), bound.stream()
    want = np.concatenate([a.push(x) for x in chunks])
    got = [b.push(chunks[0]), b.push(chunks[1])]
    assert all(isinstance(v, ort.OrtValue) for v in b.state.values())
    # A batched call with a bound stream and a fresh one gathers rows through the host.
    got += bound.push_many([b, c], [chunks[2], chunks[2]])[:1]
    got.append(b.push(chunks[3]))
    worst = float(np.abs(np.concatenate(got) - want).max())
    print(f"max |IOBinding state - NumPy state| {worst:.2e}")
    assert worst <= 1e-6 and b.steps == 17


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_works(), reason="no working CUDA execution provider on this machine")
def test_cuda_stream_keeps_state_on_the_device_and_matches_cpu(bundles):
    cpu, gpu = Engine(bundles["uni-regress"], device="cpu"), Engine(bundles["uni-regress"], device="cuda")
    assert gpu.bind_state and gpu.provider == "CUDAExecutionProvider"
    rng = np.random.default_rng(4)
    chunks = [rng.normal(size=(n, 2)).astype(np.float32) for n in (1, 7, 3, 1, 12)]
    a, b = cpu.stream(), gpu.stream()
    want = np.concatenate([a.push(x) for x in chunks])
    got = np.concatenate([b.push(x) for x in chunks])
    assert all(v.device_name().lower() == "cuda" for v in b.state.values())
    worst = float(np.abs(got - want).max())
    print(f"max |CUDA - CPU| {worst:.2e}")
    assert worst <= 1e-4
