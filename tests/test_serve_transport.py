"""/v1/streams at the transport level, on both front ends (picows, the default, and uvicorn's
websockets-sansio through ASGI), through a real server process: a SIGTERM drain loses no reply
of clients still sending (the close is a handshake), a handshake gets the same answer from
both, and a message split into a flood of tiny or empty frames is bounded."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import struct
import threading
import time
from collections import Counter

import pytest
from websockets.sync.client import connect

from benchmarks.drain_soak import failures, line, run
from tests.helpers import exported_bundles
from tests.serving import server

FRONT_ENDS = ["picows", "websockets-sansio"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return exported_bundles(tmp_path_factory, "lstm", [("uni", "regress-step", False)])["uni"]


# ---- SIGTERM while clients send ------------------------------------------------------------------
@pytest.mark.parametrize("protocol", FRONT_ENDS)
def test_a_sigterm_drain_answers_every_accepted_chunk_and_closes_every_stream(bundle, protocol):
    """50 streams on 10 connections, each with up to 64 chunks unanswered, sending while SIGTERM
    arrives (benchmarks/drain_soak.py, three runs): the server once dropped the socket right
    after its close frame, the kernel answered the data still arriving with a reset, and whole
    connections lost their last replies, notices and close frame (1006)."""
    total: Counter = Counter()
    for seed in range(3):
        counts = run(bundle, protocol, connections=10, streams=50, seed=seed)
        print(f"run {seed + 1}: {line(counts)}")
        total.update(counts)
    assert failures(total) == [], line(total)
    assert total["notices"] == 150 and total["close_1001"] == 30 and total["accepted"] > 0


# ---- handshakes -----------------------------------------------------------------------------------
KEY = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="
DEFAULTS = [b"Host: HOST", b"Upgrade: websocket", b"Connection: Upgrade", KEY, b"Sec-WebSocket-Version: 13"]
OWN, FOREIGN = b"Origin: http://HOST", b"Origin: https://evil.example"
# (what, header lines (each replaces the DEFAULTS line of its name), the status both front ends answer)
HANDSHAKES = [
    ("a plain handshake", [], 101),
    ("the server's own Origin", [OWN], 101),
    ("Origin ending in \\xff", [OWN + b"\xff"], 403),
    ("UTF-8 in another header", ["X-Any: é".encode()], 101),
    ("Latin-1 in another header", [b"X-Any: \xe9"], 101),
    ("Host ending in \\xff", [b"Host: HOST\xff"], 403),
    ("Host with a port that is no number", [b"Host: 127.0.0.1:http"], 403),
    ("two Origins, foreign first", [FOREIGN, OWN], 400),
    ("two Origins, own first", [OWN, FOREIGN], 400),
    ("two Hosts", [b"Host: evil.example", b"Host: HOST"], 400),
    ("two Authorizations", [b"Authorization: Bearer a", b"Authorization: Bearer b"], 400),
    ("a 60 KB header", [b"X-Big: " + b"a" * 60_000], 431),
    ("129 headers", [b"X-%d: v" % i for i in range(124)], 431),
    ("two keys", [KEY, KEY], 400),
    ("version 12", [b"Sec-WebSocket-Version: 12"], 400),
    ("a body", [b"Content-Length: 5"], 400),
    ("Origin: null", [b"Origin: null"], 403),
    ("Connection: keep-alive, Upgrade (as Firefox sends it)", [b"Connection: keep-alive, Upgrade"], 101),
]


def status_of(address: str, lines: list[bytes]) -> tuple[int | None, bytes]:
    """Send a handshake as raw bytes; the status of the answer (None: none came) and the answer."""
    host, port = address.split(":")
    given = {line.split(b":")[0].lower() for line in lines}
    head = [b"GET /v1/streams HTTP/1.1"] + [line for line in DEFAULTS if line.split(b":")[0].lower() not in given]
    head = [line.replace(b"HOST", address.encode()) for line in head + lines]
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"\r\n".join(head) + b"\r\n\r\n")
        try:
            answer = s.recv(4096)
        except ConnectionResetError:
            answer = b""
    parts = answer.split(b" ", 2)
    return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None), answer


@pytest.mark.parametrize("protocol", FRONT_ENDS)
def test_both_front_ends_answer_a_handshake_alike(bundle, protocol):
    """picows once answered 500 with a codec error to a non-ASCII header byte, accepted two
    Origins when the last was its own and dropped a 60 KB header without a status, where the
    ASGI front end answered 403, 400 and 431."""
    with server(bundle, "--ws-protocol", protocol) as (proc, address):
        wrong = []
        for what, lines, expected in HANDSHAKES:
            status, answer = status_of(address, lines)
            body = answer.partition(b"\r\n\r\n")[2]
            print(f"{what}: {status} {body[:100]!r}")
            if status != expected:
                wrong.append(f"{what}: {status}, expected {expected} ({answer!r})")
    assert not wrong, "\n".join(wrong)
    log = proc.stdout.read()
    assert "Traceback" not in log, log[-3000:]


# ---- fragment floods ------------------------------------------------------------------------------
def frame(opcode: int, payload: bytes, fin: bool) -> bytes:
    """A client frame (masked, with a zero mask) of a short payload."""
    return bytes([(0x80 if fin else 0) | opcode, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


def flood(address: str, payload: bytes, most: int = 24 * 2**20, seconds: float = 10.0) -> tuple[int | None, int]:
    """Open a message and send continuation frames of `payload` until the server answers (or
    `most` bytes, or `seconds`): the close code it sent (None: none) and the bytes sent."""
    host, port = address.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"GET /v1/streams HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n%s\r\n"
                  b"Sec-WebSocket-Version: 13\r\n\r\n" % (address.encode(), KEY))  # fmt: skip
        assert b" 101 " in s.recv(4096)
        s.sendall(frame(0x1, b'{"stream": ', fin=False))
        block = frame(0x0, payload, fin=False) * (2**16 // (6 + len(payload)))
        sent, started, answer = 0, time.monotonic(), b""
        with contextlib.suppress(OSError):
            while sent < most and time.monotonic() - started < seconds:
                if select.select([s], [], [], 0)[0]:
                    break
                s.sendall(block)
                sent += len(block)
            deadline = time.monotonic() + 5
            while len(answer) < 4 and time.monotonic() < deadline and select.select([s], [], [], 0.5)[0]:
                more = s.recv(4096)
                if not more:
                    break
                answer += more
    code = struct.unpack("!H", answer[2:4])[0] if answer[:1] == b"\x88" and len(answer) >= 4 else None
    return code, sent


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


@pytest.mark.parametrize("protocol", FRONT_ENDS)
def test_a_fragment_flood_is_closed_with_1009_and_stalls_no_other_stream(bundle, protocol):
    """Empty continuation frames once counted nothing against --max-message-bytes (20 M of them
    took 139 MB and stalled another stream for 6.9 s), and 2-byte ones cost a Python object
    each: each frame now counts 64 bytes besides its payload."""
    with server(bundle, "--ws-protocol", protocol) as (proc, address):
        round_trips: list[float] = []
        stop = threading.Event()

        def other_stream():
            with connect(f"ws://{address}/v1/streams") as ws:
                while not stop.is_set():
                    started = time.monotonic()
                    ws.send(json.dumps({"stream": "a", "features": [[0.1, 0.2]]}))
                    assert "outputs" in json.loads(ws.recv(timeout=60))
                    round_trips.append(time.monotonic() - started)
                    time.sleep(0.02)

        prober = threading.Thread(target=other_stream)
        prober.start()
        try:
            time.sleep(0.3)
            rss = peak_rss_mib(proc.pid)
            results = {}
            for payload in (b"", b"ab"):
                started = time.monotonic()
                code, sent = flood(address, payload)
                results[len(payload)] = (code, sent, time.monotonic() - started)
                print(f"{len(payload)}-byte frames: close {code} after {sent / 2**20:.1f} MiB sent, "
                      f"{time.monotonic() - started:.1f} s")  # fmt: skip
            time.sleep(0.2)
        finally:
            stop.set()
            prober.join(timeout=70)
        grown = peak_rss_mib(proc.pid) - rss
        print(f"peak RSS grew {grown:.0f} MiB; the other stream's round trips: {len(round_trips)}, "
              f"longest {max(round_trips) * 1e3:.0f} ms")  # fmt: skip
    for code, _, seconds in results.values():
        assert code == 1009 and seconds < 3
    assert grown < 30 and max(round_trips) < 1.0
