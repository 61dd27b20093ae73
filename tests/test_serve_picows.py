"""/v1/streams on picows (`serve --ws-protocol picows`, the default), at the frame level, through a
real server process: what picows leaves to its user is done here (a message split over frames
put together and bounded, text checked as UTF-8, a client's close answered), pings are answered,
a refused handshake carries the JSON body and headers of the ASGI path, and a flood is held back
in TCP rather than in the server's memory."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest
import websockets
from websockets.sync.client import connect

from tests.helpers import exported_bundles
from tests.serving import features, http, server
from toolkit.runtime.binary import HEADER, REPLY, VERSION
from toolkit.runtime.engine import Engine


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return exported_bundles(tmp_path_factory, "lstm", [("uni", "regress-step", False)])["uni"]


def test_fragmented_messages_utf8_pings_and_close(bundle):
    engine = Engine(bundle, device="cpu")
    rng = np.random.default_rng(11)
    seq = features(rng, 12)
    with server(bundle, "--max-message-bytes", "4096") as (proc, address):
        with connect(f"ws://{address}/v1/streams") as ws:
            text = json.dumps({"stream": "a", "features": seq[:6]})
            ws.send(iter([text[:5], text[5:40], text[40:]]))  # one text message in three frames
            first = json.loads(ws.recv(timeout=30))
            binary = HEADER.pack(VERSION, 0, 1, 6) + b"a" + np.array(seq[6:], np.float32).tobytes()
            ws.send(iter([binary[:9], binary[9:]]))  # (the same stream's next 6 steps)
            second = ws.recv(timeout=30)
            assert isinstance(second, bytes)
            pong = ws.ping(b"are you there")
            assert pong.wait(10), "no pong"
            ws.send(json.dumps({"stream": "a", "end": True}))
            assert json.loads(ws.recv(timeout=30)) == {"stream": "a", "end": True, "steps": 12}
        print("close handshake:", ws.close_code, ws.close_reason)
        assert ws.close_code == 1000  # the client's close, answered
        offline = engine.infer([np.array(seq, np.float32)])[0]
        reply_header = REPLY.size + 1  # binary reply header and the name "a"
        streamed = np.concatenate([np.array(first["outputs"]), np.frombuffer(second[reply_header:], np.float32)
                                   .reshape(6, -1)])  # fmt: skip
        worst = float(np.abs(streamed - offline).max())
        print(f"fragmented text + binary messages: max |served - offline| {worst:.1e}")
        assert worst <= 1e-5

        with connect(f"ws://{address}/v1/streams") as ws:
            ws.send(b'{"stream": "a", "features": [[0.5, \xff]]}', text=True)  # not UTF-8
            with pytest.raises(websockets.ConnectionClosedError) as closed:
                ws.recv(timeout=30)
        print("invalid UTF-8:", closed.value.rcvd)
        assert closed.value.rcvd.code == 1007
        with connect(f"ws://{address}/v1/streams") as ws:
            ws.send(iter(["x" * 3000, "x" * 3000]))  # frames under the limit, the message over it
            with pytest.raises(websockets.ConnectionClosedError) as closed:
                ws.recv(timeout=30)
        print("message over --max-message-bytes in two frames:", closed.value.rcvd)
        assert closed.value.rcvd.code == 1009
        assert http(address, "/health/ready")[0] == 200 and proc.poll() is None


def test_refused_handshakes_say_why_in_json(bundle):
    with server(bundle, env={"RNNKIT_SERVE_TOKEN": "t0k"}) as (proc, address):
        with pytest.raises(websockets.InvalidStatus) as refused:
            connect(f"ws://{address}/v1/streams")
        response = refused.value.response
        print(response.status_code, dict(response.headers), response.body)
        assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
        assert response.headers["Content-Type"] == "application/json"
        assert "Authorization: Bearer TOKEN" in json.loads(response.body)["error"]
        # Other WebSocket paths and plain HTTP on /v1/streams go through the ASGI app as before.
        request = urllib.request.Request(f"http://{address}/v1/streams", headers={"Authorization": "Bearer t0k"})
        with pytest.raises(urllib.error.HTTPError) as plain:
            urllib.request.urlopen(request, timeout=10)
        print("plain GET /v1/streams:", plain.value.code)
        assert plain.value.code in (404, 405)
        with connect(f"ws://{address}/v1/streams", additional_headers={"Authorization": "Bearer t0k"}) as ws:
            ws.send(json.dumps({"stream": "a", "features": [[0.1, 0.2]]}))
            assert json.loads(ws.recv(timeout=30))["step"] == 0
