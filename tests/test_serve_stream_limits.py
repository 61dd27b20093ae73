"""What one client may hold on a real server, and the order of a stream's replies: stream names
capped alike in JSON and binary messages, streams capped per connection, and every reply of a
stream (outputs, refusals, notices) in its messages' order, across an end and a reopening."""

from __future__ import annotations

import json
import signal
import struct
import time

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosedOK
from websockets.sync.client import connect

from tests.helpers import exported_bundles
from tests.serving import features, server
from toolkit.runtime.messages import MAX_NAME


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return exported_bundles(tmp_path_factory, "lstm", [("uni", "regress-step", False)])["uni"]


@pytest.fixture(scope="module")
def address(bundle):
    """One server for the tests that do not stop it."""
    flags = ("--max-streams", "12", "--max-streams-per-connection", "5", "--max-message-bytes", str(8 * 2**20))
    with server(bundle, *flags, "--max-batch", "1") as (_, address):
        yield address


def binary_chunk(name: str, steps: list) -> bytes:
    encoded = name.encode()
    values = struct.pack(f"<{2 * len(steps)}f", *(v for step in steps for v in step))
    return struct.pack("<BBHI", 1, 0, len(encoded), len(steps)) + encoded + values


def test_stream_names_are_capped_alike_in_json_and_binary(address):
    """A JSON name once had no cap (250 streams named with 4 MB strings took the server from 98 MB
    to 1.1 GB); now both protocols take at most MAX_NAME bytes and the refusal does not echo it."""
    step = [[0.5, -1.0]]
    longest = "é" * (MAX_NAME // 2)  # 256 bytes in UTF-8
    over = {"ascii": "a" * (MAX_NAME + 1), "two-byte": "é" * (MAX_NAME // 2 + 1), "4 MB": "x" * 4_000_000}
    with connect(f"ws://{address}/v1/streams", max_size=None) as ws:
        ws.send(json.dumps({"stream": longest, "features": step}))
        assert json.loads(ws.recv(timeout=30))["stream"] == longest
        for what, name in over.items():
            ws.send(json.dumps({"stream": name, "features": step}))
            text = ws.recv(timeout=30)
            reply = json.loads(text)
            print(f"JSON name {what} ({len(name.encode())} bytes): {reply['code']} {reply['error']}")
            assert reply["code"] == 400 and reply["stream"] is None and f"at most {MAX_NAME} bytes" in reply["error"]
            assert len(text) < 300
        ws.send(binary_chunk("b" * MAX_NAME, step))
        assert isinstance(ws.recv(timeout=30), bytes)
        ws.send(binary_chunk("b" * (MAX_NAME + 1), step))
        reply = json.loads(ws.recv(timeout=30))
        print(f"binary name of {MAX_NAME + 1} bytes: {reply['code']} {reply['error']}")
        assert reply["code"] == 400 and f"1..{MAX_NAME}" in reply["error"]


def test_one_connection_cannot_take_every_stream(address):
    """One connection once opened all the server's streams and every other client got 429."""
    with connect(f"ws://{address}/v1/streams") as greedy, connect(f"ws://{address}/v1/streams") as other:
        greedy.send(json.dumps([{"stream": f"g{i}", "features": [[0.0, 1.0]]} for i in range(8)]))
        got = []
        while len(got) < 8:  # refusals go out at once, outputs after their batch
            got += json.loads(greedy.recv(timeout=30))
        refused = [r for r in got if "error" in r]
        print(f"greedy: {len(got) - len(refused)} opened, {len(refused)} refused: {refused[0]['error']}")
        assert len(got) == 8 and len(refused) == 3
        assert {r["code"] for r in refused} == {429} and "--max-streams-per-connection" in refused[0]["error"]
        for i in range(5):
            other.send(json.dumps({"stream": f"o{i}", "features": [[0.0, 1.0]]}))
            assert "outputs" in json.loads(other.recv(timeout=30))
        greedy.send(json.dumps({"stream": "g0", "end": True}))  # an end frees a place
        assert json.loads(greedy.recv(timeout=30))[0]["end"]
        greedy.send(json.dumps({"stream": "g5", "features": [[0.0, 1.0]]}))
        assert "outputs" in json.loads(greedy.recv(timeout=30))[0]


def what(reply: dict) -> str:
    """A reply in a word: the step of an output, reset, end, closed or the refusal's code."""
    if "error" in reply:
        return str(reply["code"])
    for key in ("reset", "end", "closed"):
        if reply.get(key):
            return key
    return f"step {reply['step']}"


def test_a_streams_replies_come_in_its_messages_order(address):
    """[chunk x3, reset, chunk x2, end, chunk] once answered the reopening chunk before the end, and
    a refusal inside an array frame came before the outputs of the chunks ahead of it."""
    one = [[0.1, 0.2]]
    frame = [
        *[{"stream": "a", "features": one}] * 3,
        {"stream": "a", "reset": True},
        *[{"stream": "a", "features": one}] * 2,
        {"stream": "a", "end": True},
        {"stream": "a", "features": one},
        {"stream": "b", "features": one},
        {"stream": "b", "end": True},
        {"stream": "b", "reset": True},  # b has ended: 404, after b's output and end
    ]
    want = {
        "a": ["step 0", "step 1", "step 2", "reset", "step 0", "step 1", "end", "step 0"],
        "b": ["step 0", "end", "404"],
    }
    with connect(f"ws://{address}/v1/streams") as ws:
        for attempt in range(5):  # each reopening races its stream's end in the batcher
            ws.send(json.dumps(frame))
            got = []
            while len(got) < len(frame):
                got += json.loads(ws.recv(timeout=30))
            order = {name: [what(r) for r in got if r["stream"] == name] for name in want}
            print(f"attempt {attempt}: {order}")
            assert order == want
            ws.send(json.dumps([{"stream": "a", "end": True}]))
            assert json.loads(ws.recv(timeout=30))[0]["end"]


def test_a_refusal_during_the_drain_comes_after_the_streams_outputs(bundle):
    """A chunk sent after SIGTERM is refused 503; that refusal once overtook the outputs of the
    chunk ahead of it (still waiting for its batch)."""
    rng = np.random.default_rng(0)
    with (
        server(bundle, "--max-delay-ms", "800", "--max-batch", "64") as (proc, address),
        connect(f"ws://{address}/v1/streams") as ws,
    ):
        ws.send(json.dumps({"stream": "a", "features": features(rng, 2)}))
        assert "outputs" in json.loads(ws.recv(timeout=30))  # the stream is open
        ws.send(json.dumps({"stream": "a", "features": features(rng, 2)}))  # waits up to 0.8 s
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        ws.send(json.dumps({"stream": "a", "features": features(rng, 2)}))
        order = []
        with pytest.raises(ConnectionClosedOK):
            while True:
                order.append(what(json.loads(ws.recv(timeout=30))))
    print(order)
    assert order == ["step 2", "503", "closed"]
