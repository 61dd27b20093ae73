"""Streaming a frame-stacked model (model.frame_stack: K): a stream answers once per frame of K
steps, holding the steps of an incomplete frame between chunks, and an end answers those with
one last output. Every output equals model.onnx on the prefix it ends (the Python API, `rnnkit
stream` and the server), whatever the chunking; Triton serves such a bundle whole sequences."""

from __future__ import annotations

import json

import numpy as np
import pytest
from websockets.sync.client import connect

from tests.helpers import make_config, rnnkit
from tests.serving import server
from tests.test_frames import series
from toolkit.export.exporter import export
from toolkit.runtime.engine import Engine
from toolkit.train.loop import train

K = 4


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("frames-stream")
    cfg = make_config(tmp, "classify", cell="gru", epochs=1)
    cfg.data.data = series(tmp)
    cfg.model.frame_stack = K
    train(cfg, progress=False, log=lambda m: None)
    result = export(tmp / "run", tmp / "bundle")
    assert result.report.passed and result.written, result.report.reasons
    return tmp / "bundle"


def prefixes(engine: Engine, x: np.ndarray) -> np.ndarray:
    """model.onnx on every frame-ending prefix of x and on x whole: [ceil(n / K), classes]."""
    ends = sorted({min(f * K, len(x)) for f in range(1, -(-len(x) // K) + 1)})
    return np.stack(engine.infer([x[:n] for n in ends]))


def chunked(rng, x: np.ndarray) -> list[np.ndarray]:
    cuts = np.cumsum(rng.integers(1, 7, size=len(x)))
    return np.split(x, cuts[cuts < len(x)])


def test_a_stream_answers_per_frame_and_its_end_answers_the_rest(bundle):
    engine = Engine(bundle, device="cpu")
    rng = np.random.default_rng(0)
    worst = 0.0
    for n in (1, 3, 4, 5, 13, 16, 37):
        x = rng.normal(size=(n, 2)).astype(np.float32)
        want = prefixes(engine, x)
        stream = engine.stream()
        outputs, frames = [], []
        for chunk in chunked(rng, x):
            frames.append(stream.frames)
            outputs.append(stream.push(chunk))
            assert stream.waiting == stream.steps % K
        got = np.concatenate(outputs + [stream.tail()])
        assert [len(o) for o in outputs] == np.diff(frames + [stream.frames]).tolist()  # one per frame completed
        assert len(got) == len(want) == -(-n // K), (n, len(got), len(want))
        worst = max(worst, float(np.abs(got - want).max()))
        assert stream.tail().shape == (1 if n % K else 0, want.shape[1])  # the tail moves no state
    print(f"streams of 1..37 steps in chunks of 1..6: max |stream - model.onnx on the prefix| {worst:.2e}")
    assert worst <= 1e-5
    # several streams in one batched call each time: the same outputs as stepping each alone
    xs = [rng.normal(size=(n, 2)).astype(np.float32) for n in (9, 10, 11)]
    streams = [engine.stream() for _ in xs]
    got = [[] for _ in xs]
    for start in range(0, 11, 3):
        live = [i for i, x in enumerate(xs) if start < len(x)]
        outputs = engine.push_many([streams[i] for i in live], [xs[i][start : start + 3] for i in live])
        for i, y in zip(live, outputs, strict=True):
            got[i].append(y)
    for i, x in enumerate(xs):
        gap = np.abs(np.concatenate(got[i] + [streams[i].tail()]) - prefixes(engine, x)).max()
        assert gap <= 1e-5, (i, gap)


def test_rnnkit_stream_says_frames_and_answers_waiting_steps_at_the_end(bundle, tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(10, 2)).round(4).astype(np.float32)
    lines = [{"stream": "a", "features": x[i:j].tolist()} for i, j in ((0, 3), (3, 9), (9, 10))]
    lines += [{"stream": "b", "features": x[:2].tolist()}, {"stream": "b", "reset": True}]
    lines += [{"stream": "b", "features": x[:4].tolist()}, {"stream": "b", "end": True}, {"stream": "a", "end": True}]
    out = rnnkit("stream", bundle, "--device", "cpu", input="\n".join(json.dumps(m) for m in lines) + "\n")
    assert out.returncode == 0, out.stderr[-2000:]
    replies = [json.loads(line) for line in out.stdout.splitlines()]
    print("\n".join(json.dumps({k: v for k, v in r.items() if k != "outputs"}) for r in replies))
    a = [r for r in replies if r["stream"] == "a"]
    assert [(r["step"], r["frame"], len(r["outputs"]), r["buffered"]) for r in a[:3]] == [
        (0, 0, 0, 3),  # steps 0-2 wait for their frame
        (3, 0, 2, 1),  # frames 0 (steps 0-3) and 1 (4-7) complete; step 8 waits
        (9, 2, 0, 2),
    ]
    assert a[3]["end"] and a[3]["steps"] == 10 and a[3]["frame"] == 2 and a[3]["buffered"] == 2
    streamed = np.array([o for r in a for o in r["outputs"]])
    assert np.abs(streamed - prefixes(Engine(bundle, device="cpu"), x)).max() <= 1e-5
    assert len(a[3]["outputs"]) == 1  # the end: steps 8-9 as the last frame, as model.onnx fills it
    b = [r for r in replies if r["stream"] == "b"]
    assert b[1] == {"stream": "b", "reset": True} and b[2]["frame"] == 0 and len(b[2]["outputs"]) == 1
    assert b[3] == {"stream": "b", "end": True, "steps": 4, "frame": 1, "buffered": 0, "outputs": [], "predictions": []}


def test_the_server_streams_frames_exactly_and_ends_with_the_rest(bundle):
    """Streams multiplexed in array frames, batched across streams with different waiting steps."""
    engine = Engine(bundle, device="cpu")
    rng = np.random.default_rng(2)
    xs = {f"s{j}": rng.normal(size=(int(rng.integers(3, 30)), 2)).round(4) for j in range(8)}
    chunks = {name: chunked(rng, x) for name, x in xs.items()}
    replies = []
    with server(bundle, "--max-batch", "8") as (_, address), connect(f"ws://{address}/v1/streams") as ws:
        for round_ in range(max(len(c) for c in chunks.values()) + 1):
            frame = []
            for name, parts in chunks.items():
                if round_ < len(parts):
                    frame.append({"stream": name, "features": parts[round_].tolist()})
                elif round_ == len(parts):
                    frame.append({"stream": name, "end": True})
            if frame:
                ws.send(json.dumps(frame))
                got = 0
                while got < len(frame):
                    batch = json.loads(ws.recv(timeout=30))
                    replies += batch
                    got += len(batch)
    assert not [r for r in replies if "error" in r], replies
    worst = 0.0
    for name, x in xs.items():
        mine = [r for r in replies if r["stream"] == name]
        end = mine[-1]
        assert end["end"] and end["steps"] == len(x) and end["buffered"] == len(x) % K, end
        streamed = np.array([o for r in mine for o in r["outputs"]])
        worst = max(worst, float(np.abs(streamed - prefixes(engine, x.astype(np.float32))).max()))
    print(f"8 served streams of 3..29 steps: max |served - model.onnx on the prefix| {worst:.2e}")
    assert worst <= 1e-5


def test_triton_serves_a_frame_stacked_bundle_whole_sequences(bundle, tmp_path):
    from toolkit.triton.repository import write_repository

    written = write_repository(bundle, tmp_path / "repo", "frames")
    config = (tmp_path / "repo" / "frames" / "config.pbtxt").read_text()
    assert written.certificate is None and "sequence_batching" not in config and "dynamic_batching" in config
    assert "Triton serves whole sequences; `rnnkit serve` streams this model" in config
    assert (tmp_path / "repo" / "frames_python" / "1" / "model.onnx").exists()
