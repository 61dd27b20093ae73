"""Hostile input never stops the server: messages no reply could carry, a reply or a batch that
fails, and a batcher that dies (the server then says not ready and exits non-zero)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.helpers import exported_bundles
from tests.serving import features, http, server
from toolkit.runtime.engine import Engine
from toolkit.runtime.scheduler import Job, Scheduler

SURROGATE = '{"stream": "\\ud800", "features": [[1, 2]]}'  # a lone surrogate as a JSON escape
DEEP = "[" * 5000 + "]" * 5000
DIGITS = '{"stream": "a", "features": [[1, ' + "9" * 5000 + "]]}"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    return exported_bundles(tmp_path_factory, "lstm", [("uni", "regress-step", False), ("tok", "tag", False)])


def replies(ws) -> list[dict]:
    """The next frame's replies (a connection that sent array frames gets arrays)."""
    got = json.loads(ws.recv(timeout=30))
    return got if isinstance(got, list) else [got]


def test_messages_no_reply_could_carry_are_refused_and_the_server_goes_on(bundles):
    """The lone surrogate once ended the batcher (the json fallback accepted it, then the reply
    could not be encoded): nothing was ever answered again while /health/ready said ready."""
    engine = Engine(bundles["uni"], device="cpu")
    good = features(np.random.default_rng(7), 5)
    with server(bundles["uni"]) as (proc, address):
        with connect(f"ws://{address}/v1/streams") as ws, connect(f"ws://{address}/v1/streams") as other:
            hostile = [
                (SURROGATE, "no low surrogate"),
                ('[{"stream": "a\\udfff", "features": [[1, 2]]}]', "surrogate"),
                (DEEP, "depth limit exceeded"),
                (DIGITS, "beyond float64's range"),
                ('[{"stream": "x", "features": [[1, 2]]}, ' + DIGITS + "]", "beyond float64's range"),
            ]
            for n, (text, words) in enumerate(hostile, start=1):
                ws.send(text)
                [reply] = replies(ws)
                print(reply)
                assert reply["code"] == 400 and words in reply["error"] and reply["message"] == n, reply
            ws.send(json.dumps([{"stream": "b", "features": good}]))
            [on_same] = replies(ws)
            other.send(json.dumps({"stream": "b", "features": good}))
            on_other = json.loads(other.recv(timeout=30))
        for bad in (SURROGATE.replace('"stream"', '"sequences": [[[1, 2]]], "x"'), DEEP, DIGITS):
            status, body = http(address, "/v1/infer", bad.encode())
            print(status, body)
            assert status == 400 and "malformed JSON" in body["error"]
        assert http(address, "/health/ready")[0] == 200 and proc.poll() is None
    offline = engine.infer([np.array(good, dtype=np.float32)])[0]
    for reply in (on_same, on_other):
        assert np.abs(np.array(reply["outputs"]) - offline).max() <= 1e-5
    log = proc.stdout.read()
    assert "Traceback" not in log, log[-3000:]


def test_a_token_model_refuses_the_lone_surrogate_too(bundles):
    vocab = Engine(bundles["tok"], device="cpu").manifest["input"]["vocab"]
    with server(bundles["tok"]) as (proc, address), connect(f"ws://{address}/v1/streams") as ws:
        ws.send('{"stream": "s", "tokens": ["\\ud800"]}')
        assert json.loads(ws.recv(timeout=30))["code"] == 400
        ws.send(json.dumps({"stream": "s", "tokens": vocab[4:7]}))
        assert json.loads(ws.recv(timeout=30))["step"] == 0


# ---- the batcher, in process ---------------------------------------------------------------------
def run_jobs(scheduler: Scheduler, plan) -> list:
    """Submit (stream, job) pairs on a running scheduler; wait for every answer."""

    async def go():
        task = asyncio.create_task(scheduler.run())
        for stream, job in plan:
            scheduler.submit(stream, job)
        await asyncio.wait_for(scheduler.idle(), 30)
        await asyncio.sleep(0)
        task.cancel()
        return task

    return asyncio.run(go())


def test_a_reply_that_fails_costs_that_reply_only(bundles):
    engine = Engine(bundles["uni"], device="cpu", bind_state=False)
    scheduler = Scheduler(engine, max_delay=0.0)
    answered = []

    def explode(stream, job):
        raise RuntimeError("a reply that cannot be sent")

    def keep(stream, job):
        answered.append((stream.name, job.start, job.error))

    a, b = scheduler.open("a"), scheduler.open("b")
    x = np.ones((2, 2), dtype=np.float32)
    plan = [(a, Job("chunk", explode, chunk=x)), (b, Job("chunk", keep, chunk=x))]
    plan += [(a, Job("chunk", keep, chunk=x)), (b, Job("chunk", keep, chunk=x)), (a, Job("reset", explode))]
    task = run_jobs(scheduler, plan)
    print(answered)
    assert sorted(answered) == [("a", 2, None), ("b", 0, None), ("b", 2, None)]
    assert task.cancelled() or not task.done() or task.exception() is None


def test_a_batch_commits_the_state_of_all_its_streams_or_none(bundles):
    """Two chunk lengths make two groups; the second group's run fails: the first group's
    streams must not have advanced (a client retrying its chunk would apply it twice)."""
    engine = Engine(bundles["uni"], device="cpu", bind_state=False)
    scheduler = Scheduler(engine, max_delay=0.05)
    calls = []
    run_step = engine.run_step

    def second_group_fails(x, state):
        calls.append(x.shape)
        if len(calls) == 2:
            raise RuntimeError("injected: onnxruntime failed on the second group")
        return run_step(x, state)

    engine.run_step = second_group_fails
    answered = []
    streams = [scheduler.open(f"s{i}") for i in range(4)]
    rng = np.random.default_rng(8)
    plan = [
        (
            s,
            Job(
                "chunk",
                lambda st, job: answered.append((st.name, job.error)),
                chunk=rng.normal(size=(n, 2)).astype(np.float32),
            ),
        )
        for s, n in zip(streams, (1, 1, 3, 3), strict=True)
    ]
    run_jobs(scheduler, plan)
    print(calls, answered)
    assert len(calls) == 2 and all(error and "injected" in error for _, error in answered) and len(answered) == 4
    state = scheduler.pool.gather(np.array([s.slot for s in streams]))
    assert all(not np.any(v) for v in state.values()), "a failed batch advanced some streams"
    assert [s.steps for s in streams] == [0, 0, 0, 0]


# ---- a dead batcher: not ready, chunks answered, exit non-zero -----------------------------------------
KILLER = """
from toolkit.runtime import scheduler

async def dies_on_first_chunk(self):  # as a bug outside every guard would end it
    await self._arrival.wait()
    raise RuntimeError("injected: the batcher dies")

scheduler.Scheduler.run = dies_on_first_chunk
"""


def test_a_dead_batcher_makes_the_server_unready_and_exit_nonzero(bundles):
    with server(bundles["uni"], patch=KILLER) as (proc, address):
        with connect(f"ws://{address}/v1/streams") as ws:
            ws.send(json.dumps({"stream": "a", "features": [[1.0, 2.0]]}))
            reply = json.loads(ws.recv(timeout=30))
            print(reply)
            assert reply["code"] == 503 and "batcher stopped" in reply["error"]
        code = proc.wait(timeout=30)
    log = proc.stdout.read()
    print(log[-2000:])
    assert code == 3 and "no longer ready" in log and "injected: the batcher dies" in log


# ---- browsers, hosts and slow clients ---------------------------------------------------------------
def handshake(address: str, path: str = "/v1/streams", **headers: str) -> int:
    """A raw WebSocket handshake with the given headers (Host among them); the HTTP status."""
    host, port = address.split(":")
    fields = {"Host": address, "Upgrade": "websocket", "Connection": "Upgrade"}
    fields |= {"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}
    fields |= {k.replace("_", "-"): v for k, v in headers.items()}
    request = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request.encode())
        return int(s.recv(4096).split(b" ", 2)[1])


@pytest.mark.parametrize("protocol", ["picows", "websockets-sansio"])
def test_hosts_origins_content_type_and_token_place_are_checked(bundles, protocol):
    """DNS rebinding (a foreign Host), a cross-site WebSocket (a foreign Origin), a text/plain POST
    (no CORS preflight) and the token in an HTTP query are refused; /health hides internals from
    clients without the token."""
    secret = "tok-123"
    flags = ["--allow-origin", "https://app.example.com", "--ws-protocol", protocol]
    with server(bundles["uni"], *flags, env={"RNNKIT_SERVE_TOKEN": secret}) as (proc, address):
        bearer = {"Authorization": f"Bearer {secret}"}
        port = address.split(":")[1]
        status, reply = http(address, "/v1/model", headers={**bearer, "Host": f"evil.example:{port}"})
        print(status, reply)
        assert status == 400 and "--allow-host" in reply["error"]
        assert http(address, "/v1/model", headers={**bearer, "Host": f"localhost:{port}"})[0] == 200
        assert handshake(address, Host="rebound.example", Authorization=f"Bearer {secret}") == 403
        assert handshake(address, Origin="https://evil.example", Authorization=f"Bearer {secret}") == 403
        assert handshake(address, Origin="https://app.example.com", Authorization=f"Bearer {secret}") == 101
        assert handshake(address, Origin=f"http://{address}", Authorization=f"Bearer {secret}") == 101
        assert handshake(address, Authorization=f"Bearer {secret}") == 101  # no Origin: not a browser
        assert handshake(address, path=f"/v1/streams?token={secret}") == 101
        body = json.dumps({"sequences": [[[0.5, 0.5]]]}).encode()
        status, reply = http(address, "/v1/infer", body, {**bearer, "Content-Type": "text/plain"})
        assert status == 415 and "application/json" in reply["error"]
        assert http(address, "/v1/infer", body, bearer)[0] == 200
        assert http(address, f"/v1/model?token={secret}")[0] == 401
        public, private = http(address, "/health")[1], http(address, "/health", headers=bearer)[1]
        print(public, private)
        assert set(public) == {"live", "ready", "draining"} and private["model"] == str(bundles["uni"])


@pytest.mark.parametrize("protocol", ["picows", "websockets-sansio"])
def test_slow_and_silent_clients_are_timed_out_and_connections_capped(bundles, protocol):
    flags = ["--request-timeout", "1", "--first-message-timeout", "1", "--max-connections", "6"]
    flags += ["--ws-protocol", protocol]
    with server(bundles["uni"], *flags) as (proc, address):
        host, port = address.split(":")
        silent = socket.create_connection((host, int(port)), timeout=10)
        trickle = socket.create_connection((host, int(port)), timeout=10)
        trickle.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
        started = time.monotonic()
        assert silent.recv(100) == b"" and trickle.recv(100) == b""  # closed by the server
        waited = time.monotonic() - started
        print(f"half-sent and silent requests closed after {waited:.1f} s")
        assert waited < 5
        with connect(f"ws://{address}/v1/streams") as ws:
            started = time.monotonic()
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            print(f"a WebSocket that sent nothing was closed after {time.monotonic() - started:.1f} s:", closed.value)
            assert closed.value.rcvd.code == 1008
        with contextlib.ExitStack() as held:
            for _ in range(6):
                held.enter_context(connect(f"ws://{address}/v1/streams"))
            assert handshake(address) == 503
        assert http(address, "/health/ready")[0] == 200


INFER_FAILS = """
from toolkit.runtime import engine

def fails(self, sequences):
    raise RuntimeError("injected: onnxruntime failed")

engine.Engine.infer = fails
"""


def test_a_failed_http_request_is_a_json_500_and_streams_go_on(bundles):
    with server(bundles["uni"], patch=INFER_FAILS) as (proc, address):
        status, reply = http(address, "/v1/infer", {"sequences": [[[0.5, 0.5]]]})
        print(status, reply)
        assert status == 500 and "logged by the server" in reply["error"]
        with connect(f"ws://{address}/v1/streams") as ws:
            ws.send(json.dumps({"stream": "a", "features": [[1.0, 2.0]]}))
            assert json.loads(ws.recv(timeout=30))["step"] == 0
