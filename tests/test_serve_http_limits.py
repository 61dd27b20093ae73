"""POST /v1/infer against hostile bodies (issue 33, defects 2 and 4), through one real server:
a 4 MB body stalls no stream, and the work one request may ask for is bounded (413 naming the
limit); a body that trickles or never comes is answered 408 within `--request-timeout`; a client
that goes away mid-body costs one log line at most, not a traceback."""

from __future__ import annotations

import json
import os
import select
import socket
import statistics
import threading
import time
import urllib.error
import urllib.request

import pytest
from websockets.sync.client import connect

from tests.helpers import exported_bundles
from tests.serving import http, server

TIMEOUT = 2  # this module's --request-timeout, seconds
MAX_SEQUENCES, MAX_STEPS = 4096, 262_144  # the defaults of --max-infer-sequences and --max-infer-steps
HEAD = b"POST /v1/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(process, address) of one `rnnkit serve` of a streaming feature model for the module; its
    log is read as it comes (`log_so_far`)."""
    bundle = exported_bundles(tmp_path_factory, "lstm", [("uni", "regress-step", False)])["uni"]
    with server(bundle, "--request-timeout", str(TIMEOUT)) as (proc, address):
        os.set_blocking(proc.stdout.fileno(), False)
        yield proc, address


def log_so_far(proc) -> str:
    """What the server has logged since the last call (its stdout, read without blocking)."""
    chunks = []
    while True:
        try:
            data = os.read(proc.stdout.fileno(), 1 << 20)
        except BlockingIOError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks).decode("utf-8", "replace")


def round_trips(ws, more, timeout: float = 3.0) -> list[float]:
    """Stream round trips (send a one-step chunk, wait for its outputs), one after the other,
    while `more()` (at least 3); a reply not back within `timeout` counts as inf and ends them."""
    times: list[float] = []
    while more() or len(times) < 3:
        started = time.perf_counter()
        ws.send('{"stream": "probe", "features": [[0.25, 0.5]]}')
        try:
            json.loads(ws.recv(timeout=timeout))
        except TimeoutError:
            return [*times, float("inf")]
        times.append(time.perf_counter() - started)
    return times


def during(address, body: bytes, ws) -> tuple[tuple[int, dict | str], list[float]]:
    """POST `body` to /v1/infer on a thread; the stream's round trips while it is in flight. (The
    reply is parsed after them: parsing 6 MB of JSON in this process would stall its own round
    trips, this process's heap being large.)"""
    answer = []

    def post():
        request = urllib.request.Request(
            f"http://{address}/v1/infer", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                answer.append((r.status, r.read()))
        except urllib.error.HTTPError as e:
            answer.append((e.code, e.read()))

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    times = round_trips(ws, thread.is_alive)
    thread.join(timeout=60)
    if not answer:
        return (0, "no answer within 60 s"), times
    status, text = answer[0]
    return (status, json.loads(text)), times


def ms(times: list[float]) -> str:
    return f"median {statistics.median(times) * 1e3:.1f} ms, max {max(times) * 1e3:.1f} ms over {len(times)}"


def test_a_large_post_stalls_no_stream_and_the_work_of_one_request_is_bounded(served):
    """A 4 MB body of 260,000 one-step sequences once held every stream's round trip for seconds
    (parsed, answered and rendered on the event loop); it is now refused (413) once parsed, on the
    infer thread. A request at both limits is run, all of it off the event loop."""
    proc, address = served
    with connect(f"ws://{address}/v1/streams") as ws:
        count = iter(range(20))
        before = round_trips(ws, lambda: next(count, None) is not None)
        flood = b'{"sequences": [' + b", ".join([b"[[0.25, 0.5]]"] * 260_000) + b"]}"
        (status, reply), big = during(address, flood, ws)
        print(f"{len(flood) / 2**20:.2f} MiB, 260,000 sequences: {status} {str(reply)[:200]}")
        print(f"stream round trip: before {ms(before)}; during the 4 MB POST {ms(big)}")
        assert max(big) < 0.5, f"a stream stalled {max(big):.1f} s behind one POST"
        assert status == 413 and f"at most {MAX_SEQUENCES} sequences" in reply["error"]

        step = b"[0.25, 0.5]"
        full = b'{"sequences": [' + b", ".join([b"[" + b", ".join([step] * 64) + b"]"] * MAX_SEQUENCES) + b"]}"
        started = time.perf_counter()
        (status, reply), heavy = during(address, full, ws)
        took = time.perf_counter() - started
        print(f"{len(full) / 2**20:.2f} MiB at the limits ({MAX_SEQUENCES} x 64 steps): {status} in {took:.2f} s")
        print(f"stream round trip during it: {ms(heavy)}")
        assert status == 200 and len(reply["results"]) == MAX_SEQUENCES
        assert max(heavy) < 0.5, f"a stream stalled {max(heavy):.1f} s behind one POST"
    long = b'{"sequences": [[' + b", ".join([step] * (MAX_STEPS + 1)) + b"]]}"
    status, reply = http(address, "/v1/infer", long)
    print(status, reply)
    assert status == 413 and f"at most {MAX_STEPS} steps" in reply["error"]
    log = log_so_far(proc)
    assert "Traceback" not in log, log[-3000:]


def test_a_body_that_trickles_or_never_comes_is_answered_408_within_the_request_timeout(served):
    """Only the headers had a deadline: a body announced and then trickled one byte at a time (or
    never sent) held its socket for minutes. A slow body that arrives in time is answered; one
    declared over --max-message-bytes is refused at once and its connection closed."""
    proc, address = served
    host, port = address.split(":")
    names = ("silent", "trickle", "in time", "too large")
    socks = {name: socket.create_connection((host, int(port)), timeout=10) for name in names}
    started = time.monotonic()
    socks["silent"].sendall(HEAD + b'{"sequences": ')
    socks["trickle"].sendall(HEAD)
    timely = b'{"sequences": [[[0.5, 0.5], [1, 2]]]}'
    closing = b"Connection: close\r\nContent-Length: %d" % len(timely)
    socks["in time"].sendall(HEAD.replace(b"Content-Length: 100000", closing))
    pieces = [timely[:10], timely[10:20], timely[20:]]  # a piece every quarter second: done in 0.75 s
    socks["too large"].sendall(HEAD.replace(b"100000", b"100000000"))
    got = {name: b"" for name in socks}
    closed: dict[str, float] = {}
    while len(closed) < len(socks) and time.monotonic() - started < TIMEOUT + 4:
        waiting = [s for name, s in socks.items() if name not in closed]
        readable, _, _ = select.select(waiting, [], [], 0.25)
        for name, sock in socks.items():
            if sock in readable:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                got[name] += data
                if not data:
                    closed[name] = time.monotonic() - started
        if "trickle" not in closed and not got["trickle"]:
            socks["trickle"].send(b" ")  # one byte every quarter second, for ever
        if pieces and time.monotonic() - started > 0.25 * (4 - len(pieces)):
            socks["in time"].send(pieces.pop(0))
    for name, sock in socks.items():
        sock.close()
        print(f"{name}: closed after {closed.get(name, float('inf')):.2f} s with {got[name][:200]!r}")
    for name in ("silent", "trickle"):
        assert name in closed and closed[name] < TIMEOUT + 1.5, f"{name}: the socket is still held"
        assert got[name].startswith(b"HTTP/1.1 408 "), got[name]
        assert b"request-timeout" in got[name] and b"connection: close" in got[name].lower()
    assert got["in time"].startswith(b"HTTP/1.1 200 ") and b'"results"' in got["in time"]
    assert 0.75 < closed["in time"] < TIMEOUT
    assert got["too large"].startswith(b"HTTP/1.1 413 ") and closed["too large"] < 1
    assert http(address, "/health/ready")[0] == 200
    log = log_so_far(proc)
    print(log)
    assert "Traceback" not in log


def test_a_client_that_aborts_mid_body_costs_no_traceback(served):
    """Each abort once logged starlette's ClientDisconnect with a 62-line traceback; now one line
    at INFO (rnnkit.serve), at most."""
    proc, address = served
    host, port = address.split(":")
    log_so_far(proc)
    for _ in range(3):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(HEAD + b'{"sequences": [[[0.5')
            time.sleep(0.1)
    status, reply = http(address, "/v1/infer", {"sequences": [[[0.5, 0.5]]]})
    assert status == 200
    time.sleep(0.2)
    log = log_so_far(proc)
    print(log)
    assert "Traceback" not in log and "ClientDisconnect" not in log
    assert len(log.splitlines()) <= 3
