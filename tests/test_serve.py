"""`rnnkit serve` as a real process on loopback: streams batched across clients give exactly the
offline outputs; bad messages, limits, auth and SIGTERM behave as documented."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import websockets
from websockets.sync.client import connect

from tests.helpers import ROOT, cuda_works, exported_bundles
from tests.serving import features, http, server
from toolkit.runtime.engine import Engine

NO_CUDA = "no working CUDA execution provider on this machine"
# /v1/streams on picows (the default) and through the ASGI app (uvicorn's protocol): the tests of
# limits and SIGTERM run on both.
PROTOCOLS = pytest.mark.parametrize("protocol", ["picows", "websockets-sansio"])


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    return exported_bundles(
        tmp_path_factory, "lstm", [("uni", "regress-step", False), ("bi", "tag", True), ("tok", "tag", False)]
    )


# ---- exactness under concurrency -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("device", "tolerance"),
    [
        ("cpu", 1e-5),
        pytest.param("cuda", 1e-4, marks=[pytest.mark.gpu, pytest.mark.skipif(not cuda_works(), reason=NO_CUDA)]),
    ],
)
def test_concurrent_streams_equal_offline_model(bundles, device, tolerance):
    """40 clients, 2 streams each, random lengths and chunk sizes, interleaved freely; every stream's
    outputs equal model.onnx (on CPU) on its whole sequence."""
    engine = Engine(bundles["uni"], device="cpu")
    rng = np.random.default_rng(0)
    plans = [[features(rng, int(rng.integers(1, 90))) for _ in range(2)] for _ in range(40)]

    async def client(address, i, sequences):
        got = {f"c{i}s{j}": [] for j in range(len(sequences))}
        crng = np.random.default_rng(i)
        async with websockets.connect(f"ws://{address}/v1/streams") as ws:
            pos = [0] * len(sequences)
            sent = 0
            while any(p < len(s) for p, s in zip(pos, sequences, strict=True)):
                j = int(crng.choice([k for k, s in enumerate(sequences) if pos[k] < len(s)]))
                size = int(crng.integers(1, 10))
                chunk = sequences[j][pos[j] : pos[j] + size]
                await ws.send(json.dumps({"stream": f"c{i}s{j}", "features": chunk}))
                pos[j] += len(chunk)
                sent += 1
                if crng.random() < 0.5:  # sometimes several chunks in flight before reading
                    continue
                for _ in range(sent):
                    reply = json.loads(await ws.recv())
                    got[reply["stream"]].append(reply)
                sent = 0
            for _ in range(sent):
                reply = json.loads(await ws.recv())
                got[reply["stream"]].append(reply)
        return got

    async def run_all(address):
        return await asyncio.gather(*(client(address, i, seqs) for i, seqs in enumerate(plans)))

    with server(bundles["uni"], "--max-batch", "16", "--max-delay-ms", "3", "--device", device) as (_, address):
        results = asyncio.run(run_all(address))
        _, metrics = http(address, "/metrics")
    worst = 0.0
    for i, (got, sequences) in enumerate(zip(results, plans, strict=True)):
        for j, seq in enumerate(sequences):
            replies = got[f"c{i}s{j}"]
            assert all("error" not in r for r in replies), replies
            starts = [r["step"] for r in replies]
            assert starts == sorted(starts) and starts[0] == 0, starts  # in order, none lost
            streamed = np.concatenate([np.array(r["outputs"]) for r in replies])
            offline = engine.infer([np.array(seq, dtype=np.float32)])[0]
            assert streamed.shape == offline.shape
            worst = max(worst, float(np.abs(streamed - offline).max()))
    batches = {k: float(v) for k, v in _samples(metrics, "rnnkit_batch_size_")}
    mean_batch = batches["rnnkit_batch_size_sum"] / batches["rnnkit_batch_size_count"]
    count = batches["rnnkit_batch_size_count"]
    print(f"80 streams on {device}: max |served - offline| {worst:.2e}; {count:.0f} batches of {mean_batch:.1f}")
    assert worst <= tolerance
    assert mean_batch > 1.5  # steps of different streams really shared calls


def test_array_frames_multiplex_streams_exactly(bundles):
    """A gateway's connection: each frame is an array of messages for many streams; replies come
    back as arrays. A bad element is refused alone; every stream still equals the offline model."""
    engine = Engine(bundles["uni"], device="cpu")
    rng = np.random.default_rng(4)
    sequences = {f"s{j}": features(rng, int(rng.integers(5, 40))) for j in range(12)}
    got: dict[str, list] = {name: [] for name in sequences}
    errors = []
    with server(bundles["uni"], "--max-batch", "8") as (_, address), connect(f"ws://{address}/v1/streams") as ws:
        pos = dict.fromkeys(sequences, 0)
        frames = 0
        while any(pos[n] < len(seq) for n, seq in sequences.items()):
            frame = []
            for name, seq in sequences.items():
                if pos[name] < len(seq) and rng.random() < 0.7:
                    size = int(rng.integers(1, 6))
                    frame.append({"stream": name, "features": seq[pos[name] : pos[name] + size]})
                    pos[name] += len(frame[-1]["features"])
            if not frame:
                continue
            if frames == 2:  # one bad element in the middle of a frame
                frame.insert(1, {"stream": "s0", "features": [[1.0, "x"]]})
            ws.send(json.dumps(frame))
            frames += 1
            expected = len(frame)
            while expected:
                replies = json.loads(ws.recv(timeout=30))
                assert isinstance(replies, list), replies
                for reply in replies:
                    (errors if "error" in reply else got[reply["stream"]]).append(reply)
                expected -= len(replies)
        first = sequences["s1"][:3]  # a reset then a chunk in one frame: the chunk starts afresh
        ws.send(json.dumps([{"stream": "s1", "reset": True}, {"stream": "s1", "features": first}]))
        again = []
        while len(again) < 2:
            again += json.loads(ws.recv(timeout=30))
        ws.send("[]")
        empty = json.loads(ws.recv(timeout=30))
    print(f"{frames} frames; refused: {errors}; empty frame: {empty}")
    assert len(errors) == 1 and errors[0]["stream"] == "s0" and "feature 2: expected a number" in errors[0]["error"]
    assert empty[0]["code"] == 400 and "at least one message" in empty[0]["error"]
    worst = 0.0
    for name, seq in sequences.items():
        streamed = np.concatenate([np.array(r["outputs"]) for r in got[name]])
        offline = engine.infer([np.array(seq, dtype=np.float32)])[0]
        assert streamed.shape == offline.shape, name
        worst = max(worst, float(np.abs(streamed - offline).max()))
    print(f"12 multiplexed streams: max |served - offline| {worst:.2e}")
    assert worst <= 1e-5
    assert again[0] == {"stream": "s1", "reset": True} and again[1]["step"] == 0
    restarted = engine.infer([np.array(first, dtype=np.float32)])[0]
    assert np.abs(np.array(again[1]["outputs"]) - restarted).max() <= 1e-5


def _samples(text: str, prefix: str):
    for line in text.splitlines():
        if line.startswith(prefix) and "{" not in line:
            name, value = line.rsplit(" ", 1)
            yield name, value


# ---- bad messages ----------------------------------------------------------------------------------
def test_bad_messages_are_answered_on_their_stream_only(bundles):
    engine = Engine(bundles["uni"], device="cpu")
    rng = np.random.default_rng(1)
    good = features(rng, 12)
    other = features(rng, 6)
    bad = [
        ("{not json", 400, "malformed JSON"),
        ('{"stream": "a", "features": [[1.0]]}', 400, "step 1 must be a list of 2 numbers, got 1"),
        ('{"stream": "a", "features": [[1.0, NaN]]}', 400, "NaN is not a JSON number; only finite numbers"),
        ('{"stream": "a", "features": [[1.0, true]]}', 400, "expected a number"),
        ('{"stream": "a", "tokens": ["x"]}', 400, 'this model takes "features"'),
        ('{"stream": "zz", "reset": true}', 404, "unknown stream 'zz'"),
        ('{"stream": "a", "features": ' + json.dumps([[0.0, 0.0]] * 9) + "}", 413, "at most 8 per message"),
        ('{"stream": "a", "features": [[1, 2]], "extra": 1}', 400, "unknown field(s) extra"),
        ('"just a string"', 400, "must be a JSON object"),
    ]
    with server(bundles["uni"], "--max-chunk", "8") as (proc, address):
        with connect(f"ws://{address}/v1/streams") as ws, connect(f"ws://{address}/v1/streams") as ws2:
            outputs, n = [], 0
            for k in range(0, 12, 4):
                ws.send(json.dumps({"stream": "a", "features": good[k : k + 4]}))
                ws2.send(
                    json.dumps({"stream": "a", "features": other[k // 2 : k // 2 + 2]})
                )  # same name, other connection
                n += 1
                outputs.append(json.loads(ws.recv()))
                for text, code, words in bad[k // 4 * 3 : k // 4 * 3 + 3]:
                    ws.send(text)
                    n += 1
                    reply = json.loads(ws.recv())
                    print(reply)
                    assert reply["code"] == code and words in reply["error"] and reply["message"] == n, reply
            ws.send(b"\x00\x01")  # too short for a binary message (tests/test_serve_binary.py)
            assert json.loads(ws.recv())["error"].startswith("a binary message starts with an 8-byte header")
            others = [json.loads(ws2.recv()) for _ in range(3)]
        assert proc.poll() is None
    streamed = np.concatenate([np.array(o["outputs"]) for o in outputs])
    assert [o["step"] for o in outputs] == [0, 4, 8]
    assert np.abs(streamed - engine.infer([np.array(good, dtype=np.float32)])[0]).max() <= 1e-5
    assert (
        np.abs(
            np.concatenate([np.array(o["outputs"]) for o in others])
            - engine.infer([np.array(other, dtype=np.float32)])[0]
        ).max()
        <= 1e-5
    )


@PROTOCOLS
def test_limits_idle_eviction_and_sizes(bundles, protocol):
    rng = np.random.default_rng(2)
    flags = ["--max-streams", "2", "--idle-timeout", "1", "--max-message-bytes", "2048", "--ws-protocol", protocol]
    with server(bundles["uni"], *flags) as (proc, address):
        with connect(f"ws://{address}/v1/streams") as ws:
            for name in ("a", "b", "c"):
                ws.send(json.dumps({"stream": name, "features": features(rng, 1)}))
            replies = {r["stream"]: r for r in (json.loads(ws.recv()) for _ in range(3))}  # ordered per stream only
            print(replies["c"])
            assert replies["c"]["code"] == 429 and "limit of 2 streams" in replies["c"]["error"]
            assert replies["a"]["step"] == replies["b"]["step"] == 0
            with pytest.raises(websockets.InvalidStatus) as refused:
                connect(f"ws://{address}/v1/streams")
            assert refused.value.response.status_code == 429
            print(refused.value.response.body.decode())

            notices = [json.loads(ws.recv(timeout=10)) for _ in range(2)]  # both idle past 1 s
            print(notices[0])
            assert {n["stream"] for n in notices} == {"a", "b"} and all(n["evicted"] for n in notices)
            ws.send(json.dumps({"stream": "a", "features": features(rng, 1)}))
            gone = json.loads(ws.recv())
            print(gone)
            assert gone["code"] == 410 and '"reset": true' in gone["error"]
            ws.send(json.dumps({"stream": "a", "reset": True}))
            assert json.loads(ws.recv()) == {"stream": "a", "reset": True}
            ws.send(json.dumps({"stream": "a", "features": features(rng, 1)}))
            assert json.loads(ws.recv())["step"] == 0

            ws.send(json.dumps({"stream": "a", "features": features(rng, 200)}))  # > 2048 bytes
            with pytest.raises(websockets.ConnectionClosedError) as closed:
                ws.recv()
            print("oversized message:", closed.value.rcvd)
            assert closed.value.rcvd.code == 1009
        status, body = http(address, "/v1/infer", {"sequences": [features(rng, 200)]})
        print(status, body)
        assert status == 413 and "over the limit of 2048 bytes" in body["error"]
        assert proc.poll() is None


# ---- auth -------------------------------------------------------------------------------------------
def test_token_is_required_except_for_probes(bundles):
    secret = "s3cret-token"
    with server(bundles["uni"], env={"RNNKIT_SERVE_TOKEN": secret}) as (proc, address):
        body = {"sequences": [[[0.5, 0.5]]]}
        status, reply = http(address, "/v1/infer", body)
        print(status, reply)
        assert status == 401 and "Bearer" in reply["error"]
        assert http(address, "/v1/infer", body, {"Authorization": "Bearer wrong"})[0] == 401
        assert http(address, "/v1/infer", body, {"Authorization": f"Bearer {secret}"})[0] == 200
        assert http(address, "/metrics")[0] == 401
        assert http(address, "/health/live")[0] == 200 and http(address, "/health/ready")[0] == 200
        with pytest.raises(websockets.InvalidStatus) as refused:
            connect(f"ws://{address}/v1/streams")
        assert refused.value.response.status_code == 401
        with connect(f"ws://{address}/v1/streams", additional_headers={"Authorization": f"Bearer {secret}"}) as ws:
            ws.send(json.dumps({"stream": "a", "features": [[0.1, 0.2]]}))
            assert json.loads(ws.recv())["step"] == 0
        with connect(f"ws://{address}/v1/streams?token={secret}") as ws:
            ws.send(json.dumps({"stream": "a", "features": [[0.1, 0.2]]}))
            assert json.loads(ws.recv())["step"] == 0
        assert secret not in " ".join(Path(f"/proc/{proc.pid}/cmdline").read_text().split("\0"))


# ---- SIGTERM ----------------------------------------------------------------------------------------
@PROTOCOLS
def test_sigterm_answers_accepted_chunks_then_closes_streams(bundles, protocol):
    engine = Engine(bundles["uni"], device="cpu")
    rng = np.random.default_rng(3)
    seqs = {name: features(rng, 60) for name in ("a", "b", "c")}
    with server(bundles["uni"], "--max-batch", "2", "--ws-protocol", protocol) as (proc, address):
        with connect(f"ws://{address}/v1/streams") as ws:
            for k in range(0, 60, 3):  # 60 chunks queued before the signal
                for name, seq in seqs.items():
                    ws.send(json.dumps({"stream": name, "features": seq[k : k + 3]}))
            time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            replies = []
            with pytest.raises(websockets.ConnectionClosedOK) as closed:
                while True:
                    replies.append(json.loads(ws.recv(timeout=30)))
        assert proc.wait(timeout=30) == 0
        output = proc.stdout.read()
    print(closed.value.rcvd, f"{len(replies)} replies")
    assert closed.value.rcvd.code == 1001 and closed.value.rcvd.reason == "server shutting down"
    chunks = [r for r in replies if "outputs" in r]
    notices = [r for r in replies if r.get("closed")]
    refused = [r for r in replies if "error" in r]
    assert not refused, refused[:3]
    assert len(chunks) == 60 and {n["stream"] for n in notices} == {"a", "b", "c"}
    for name, seq in seqs.items():
        mine = [r for r in chunks if r["stream"] == name]
        got = np.concatenate([np.array(r["outputs"]) for r in mine])
        assert np.abs(got - engine.infer([np.array(seq, dtype=np.float32)])[0]).max() <= 1e-5
    assert "Traceback" not in output


# ---- HTTP -------------------------------------------------------------------------------------------
def test_http_infer_model_health_metrics_and_openapi(bundles):
    engine = Engine(bundles["bi"], device="cpu")
    vocab = engine.manifest["input"]["vocab"]
    rng = np.random.default_rng(4)
    sentences = [[vocab[i] for i in rng.integers(4, len(vocab), size=n)] for n in (5, 1, 17)]
    with server(bundles["bi"]) as (proc, address):
        status, reply = http(address, "/v1/infer", {"sequences": sentences})
        assert status == 200, reply
        offline = engine.infer([engine_ids(engine, s) for s in sentences])
        labels = engine.manifest["output"]["labels"]
        assert [r["predictions"] for r in reply["results"]] == [[labels[j] for j in y.argmax(-1)] for y in offline]
        status, reply = http(address, "/v1/infer", {"sequences": [["a"], []]})
        print(status, reply)
        assert status == 400 and reply["error"].startswith("sequences[1]:")
        assert http(address, "/v1/infer", b"{oops")[0] == 400
        with pytest.raises(websockets.InvalidStatus) as refused:
            connect(f"ws://{address}/v1/streams")
        assert refused.value.response.status_code == 409
        print(refused.value.response.body.decode())
        status, model = http(address, "/v1/model")
        assert status == 200 and model["manifest"]["task"] == "tag"
        status, health = http(address, "/health")
        assert status == 200 and health["ready"] and not health["streaming"]
        status, spec = http(address, "/openapi.json")
        assert status == 200 and "/v1/infer" in spec["paths"] and "/health" in spec["paths"]
        status, metrics = http(address, "/metrics")
        for name in ("rnnkit_requests_total", "rnnkit_errors_total", "rnnkit_batch_size", "rnnkit_active_streams"):
            assert name in metrics, name
        assert 'rnnkit_requests_total{kind="infer"} 3.0' in metrics


def test_a_vanished_client_frees_its_streams_and_disturbs_no_other(bundles):
    """A token model: one client sends chunks for 20 streams and drops the connection without
    reading; a second client's stream is unaffected and the first one's state rows are freed."""
    engine = Engine(bundles["tok"], device="cpu")
    vocab = engine.manifest["input"]["vocab"]
    rng = np.random.default_rng(5)
    sentence = [vocab[i] for i in rng.integers(4, len(vocab), size=30)]
    with server(bundles["tok"], "--max-batch", "8") as (proc, address):
        with connect(f"ws://{address}/v1/streams") as ws:
            for k in range(60):
                ws.send(json.dumps({"stream": f"gone{k % 20}", "tokens": sentence[: 1 + k % 5]}))
        with connect(f"ws://{address}/v1/streams") as ws:
            replies = []
            for k in range(0, 30, 7):
                ws.send(json.dumps({"stream": "kept", "tokens": sentence[k : k + 7]}))
                replies.append(json.loads(ws.recv(timeout=30)))
            ws.send(json.dumps({"stream": "kept", "end": True}))
            assert json.loads(ws.recv(timeout=30)) == {"stream": "kept", "end": True, "steps": 30}
            deadline = time.monotonic() + 10
            while (health := http(address, "/health")[1])["streams"] and time.monotonic() < deadline:
                time.sleep(0.1)
        print("health after both clients:", health)
        assert health["streams"] == 0 and proc.poll() is None
    offline = engine.infer([engine_ids(engine, sentence)])[0]
    served = np.concatenate([np.array(r["outputs"]) for r in replies])
    labels = engine.manifest["output"]["labels"]
    print(f"token stream through the server: max |served - offline| {np.abs(served - offline).max():.2e}")
    assert np.abs(served - offline).max() <= 1e-5
    assert sum((r["predictions"] for r in replies), []) == [labels[j] for j in offline.argmax(-1)]


def test_a_client_that_never_reads_then_vanishes_is_cleaned_up(bundles):
    """A client sends long chunks for 100 streams and reads nothing: once its unsent replies pass
    the server's budget (8 MiB) the server stops reading it. Then it drops the socket: its
    streams are freed, and the server goes on serving others."""
    vocab = Engine(bundles["tok"], device="cpu").manifest["input"]["vocab"]
    rng = np.random.default_rng(6)
    chunk = json.dumps([vocab[i] for i in rng.integers(4, len(vocab), size=4096)])  # ~200 KB of replies each
    sent = []
    with server(bundles["tok"]) as (proc, address):
        ws = connect(f"ws://{address}/v1/streams", max_size=None)

        def flood():
            with contextlib.suppress(Exception):  # ends when the socket is shut
                for k in range(2000):
                    ws.send(f'{{"stream": "s{k % 100}", "tokens": {chunk}}}')
                    sent.append(k)

        threading.Thread(target=flood, daemon=True).start()
        stalled, last, deadline = 0, -1, time.monotonic() + 60
        while stalled < 10 and time.monotonic() < deadline:  # 1 s without progress: the server stopped reading
            time.sleep(0.1)
            stalled, last = (stalled + 1, last) if len(sent) == last else (0, len(sent))
        print(f"the server stopped reading after {len(sent)} of 2000 messages:", http(address, "/health")[1])
        assert len(sent) < 2000, "the server read everything: the reply budget was never reached"
        ws.socket.shutdown(socket.SHUT_RDWR)
        ws.socket.close()
        deadline = time.monotonic() + 20
        while (health := http(address, "/health")[1])["connections"] and time.monotonic() < deadline:
            time.sleep(0.2)
        print("after the client vanished:", health)
        assert health["streams"] == 0 and health["connections"] == 0
        with connect(f"ws://{address}/v1/streams") as other:
            other.send(json.dumps({"stream": "a", "tokens": ["a", "b"]}))
            assert json.loads(other.recv(timeout=30))["step"] == 0
        assert proc.poll() is None


def engine_ids(engine: Engine, tokens: list[str]) -> np.ndarray:
    vocab = engine.manifest["input"]["vocab"]
    return np.array([vocab.index(t) for t in tokens], dtype=np.int64)


def test_serving_path_imports_neither_torch_nor_mlflow():
    code = (
        "import sys, toolkit.runtime.server, cli.serve; "
        "print(sorted(m for m in ('torch', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    print("heavy modules after importing the server:", out.strip())
    assert out.strip() == "[]"
