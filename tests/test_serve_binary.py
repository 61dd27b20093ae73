"""Binary stream messages (toolkit.runtime.binary) through a real `rnnkit serve` process: streams
sent as binary chunks equal the offline model, replies come back binary and byte-exact to the
documented layout, and every malformed message is refused in JSON on its own, the other streams
going on."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from websockets.sync.client import connect

from tests.helpers import exported_bundles
from tests.serving import server
from toolkit.runtime.engine import Engine

HEADER = struct.Struct("<BBHI")
REPLY = struct.Struct("<BBHIIIII")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    return exported_bundles(tmp_path_factory, "gru", [("uni", "regress-step", False), ("tok", "tag", False)])


def message(stream: str, kind: int = 0, values: np.ndarray | None = None, steps: int | None = None) -> bytes:
    name = stream.encode()
    body = b"" if values is None else values.tobytes()
    count = (len(values) if values is not None else 0) if steps is None else steps
    return HEADER.pack(1, kind, len(name), count) + name + body


def unpack(data: bytes) -> dict:
    version, kind, size, step, rows, width, frame, waiting = REPLY.unpack_from(data)
    name = data[REPLY.size : REPLY.size + size].decode()
    outputs = np.frombuffer(data, dtype="<f4", offset=REPLY.size + size).reshape(rows, width)
    assert version == 1 and len(data) == REPLY.size + size + rows * width * 4
    return {"kind": kind, "stream": name, "step": step, "outputs": outputs, "frame": frame, "buffered": waiting}


def test_binary_streams_equal_the_offline_model(bundles):
    engine = Engine(bundles["uni"], device="cpu")
    rng = np.random.default_rng(0)
    xs = {f"s{j}": rng.normal(size=(int(rng.integers(3, 30)), 2)).astype("<f4") for j in range(6)}
    got = {name: [] for name in xs}
    with server(bundles["uni"]) as (_, address), connect(f"ws://{address}/v1/streams") as ws:
        at = dict.fromkeys(xs, 0)
        while any(at[n] < len(x) for n, x in xs.items()):
            for name, x in xs.items():
                if at[name] < len(x):
                    size = int(rng.integers(1, 5))
                    ws.send(message(name, 0, x[at[name] : at[name] + size]))
                    reply = unpack(ws.recv(timeout=30))
                    assert reply["kind"] == 0 and reply["stream"] == name and reply["step"] == at[name]
                    got[name].append(reply["outputs"])
                    at[name] += size
        ws.send(message("s0", 2))
        end = unpack(ws.recv(timeout=30))
        ws.send(message("s1", 1))
        reset = unpack(ws.recv(timeout=30))
    assert end == {**end, "kind": 0, "stream": "s0", "step": len(xs["s0"])} and end["outputs"].shape[0] == 0
    assert reset["kind"] == 1 and reset["stream"] == "s1"
    worst = max(float(np.abs(np.concatenate(got[n]) - engine.infer([x])[0]).max()) for n, x in xs.items())
    print(f"6 binary streams of 3..29 steps: max |served - model.onnx| {worst:.2e}")
    assert worst <= 1e-5


def test_malformed_binary_messages_are_refused_alone(bundles):
    engine = Engine(bundles["uni"], device="cpu")
    x = np.arange(12, dtype="<f4").reshape(6, 2) / 10
    nan = x[:2].copy()
    nan[1, 0] = np.nan
    bad = {
        "short header": (b"\x01\x00\x02", "8-byte header"),
        "version": (b"\x02" + message("a", 0, x[:1])[1:], "version 2; accepted: 1"),
        "kind": (message("a", 7), "kind 7; accepted: 0 chunk, 1 reset, 2 end"),
        "name not UTF-8": (HEADER.pack(1, 0, 2, 1) + b"\xff\xfe" + x[:1].tobytes(), "not UTF-8"),
        "no name": (HEADER.pack(1, 0, 0, 1) + x[:1].tobytes(), "a stream name of 0 bytes"),
        "bytes short": (message("a", 0, x[:2], steps=3), "holds 24 bytes of float32 values (2 per step); got 16"),
        "no steps": (message("a", 0, x[:0], steps=0), "at least one step"),
        "NaN": (message("a", 0, nan), "step 2, feature 1: nan is not a finite number"),
        "reset with values": (message("a", 1, x[:1], steps=1), "a binary reset carries no steps"),
        "too many steps": (message("a", 0, np.zeros((5000, 2), "<f4")), "at most 4096 per message"),
    }
    with server(bundles["uni"]) as (_, address), connect(f"ws://{address}/v1/streams") as ws:
        ws.send(message("good", 0, x[:3]))
        first = unpack(ws.recv(timeout=30))
        for label, (data, words) in bad.items():
            ws.send(data)
            reply = json.loads(ws.recv(timeout=30))  # refusals are JSON text frames
            print(f"{label}: {reply}")
            assert words in reply["error"] and reply["code"] in (400, 413), (label, reply)
        ws.send(message("good", 0, x[3:]))
        second = unpack(ws.recv(timeout=30))
    streamed = np.concatenate([first["outputs"], second["outputs"]])
    assert np.abs(streamed - engine.infer([x])[0]).max() <= 1e-5  # the good stream went on untouched


def test_binary_token_ids(bundles):
    engine = Engine(bundles["tok"], device="cpu")
    ids = np.array([4, 5, 6, 4], dtype="<i4")
    with server(bundles["tok"]) as (_, address), connect(f"ws://{address}/v1/streams") as ws:
        ws.send(message("t", 0, ids))
        reply = unpack(ws.recv(timeout=30))
        ws.send(message("t", 0, np.array([engine.vocab_size], dtype="<i4")))
        refused = json.loads(ws.recv(timeout=30))
    assert np.abs(reply["outputs"] - engine.infer([ids.astype(np.int64)])[0]).max() <= 1e-5
    assert f"token id {engine.vocab_size} is outside the vocabulary" in refused["error"], refused
