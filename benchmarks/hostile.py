"""Hostile clients below the WebSocket library, for `benchmarks.fuzz_serve`: raw handshakes with odd
header bytes, fragment floods, binary messages whose headers lie, and HTTP bodies that trickle in
or never come. Each adds what it saw to a tally; none sends anything but to the server under test
(loopback) and each stops after a bounded count and time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import struct
import time

HANDSHAKES = {  # name -> extra header lines of an upgrade request to /v1/streams
    "non-ASCII Origin": [b"Origin: http://127.0.0.1:PORT\xff"],
    "non-ASCII header": ["X-Any: é".encode()],
    "two Origins": [b"Origin: http://evil.example", b"Origin: http://127.0.0.1:PORT"],
    "60 KB header": [b"X-Big: " + b"a" * 60_000],
    "control byte": [b"X-Any: a\x01b"],
    "plain": [],
}


def upgrade_request(port: int, extra: list[bytes]) -> bytes:
    key = base64.b64encode(os.urandom(16))
    lines = [
        b"GET /v1/streams HTTP/1.1",
        f"Host: 127.0.0.1:{port}".encode(),
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Key: " + key,
        b"Sec-WebSocket-Version: 13",
        *(line.replace(b"PORT", str(port).encode()) for line in extra),
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def frame(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    """One client frame (masked, as a client's must be; the mask is zero, so the payload is as is)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return head + b"\0\0\0\0" + payload


async def read_status(reader: asyncio.StreamReader) -> int | None:
    """The status of the server's answer to a handshake (None: dropped without one)."""
    try:
        line = await asyncio.wait_for(reader.readline(), 10)
    except (asyncio.TimeoutError, ConnectionError):
        return None
    if line[:5] != b"HTTP/":
        return None
    with contextlib.suppress(asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)  # the headers, before any frame
    return int(line.split()[1])


async def read_close(reader: asyncio.StreamReader, seconds: float = 15) -> int | None:
    """Read server frames until a close frame: its code (None if the socket ended or time ran out)."""
    deadline = time.monotonic() + seconds
    try:
        while True:
            left = deadline - time.monotonic()
            head = await asyncio.wait_for(reader.readexactly(2), left)
            n = head[1] & 0x7F
            if n == 126:
                n = struct.unpack(">H", await reader.readexactly(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", await reader.readexactly(8))[0]
            payload = await asyncio.wait_for(reader.readexactly(n), max(left, 0.1))
            if head[0] & 0x0F == 0x8:
                return struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
    except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        return None


async def handshakes(port: int, rounds: int, tally: dict) -> None:
    """Every odd handshake `rounds` times: the status each gets (a 5xx or no status is a failure)."""
    for _ in range(rounds):
        for name, extra in HANDSHAKES.items():
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
            try:
                writer.write(upgrade_request(port, extra))
                await writer.drain()
                status = await read_status(reader)
            except ConnectionError:
                status = None
            finally:
                writer.close()
            key = f"handshake {name}"
            tally.setdefault(key, {})
            tally[key][str(status)] = tally[key].get(str(status), 0) + 1
            tally["handshake_5xx_or_none"] += status is None or status >= 500


async def open_raw(port: int):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(upgrade_request(port, []))
    await writer.drain()
    if await read_status(reader) != 101:
        writer.close()
        raise ConnectionError("handshake refused")
    return reader, writer


async def fragment_floods(port: int, floods: int, max_bytes: int, r: random.Random, tally: dict) -> None:
    """Messages split into floods of empty or 2-byte fragments, far past --max-message-bytes on the
    wire: each connection must be closed with 1009."""
    for _ in range(floods):
        empty = r.random() < 0.5
        part = frame(0x0, b"" if empty else b"  ", fin=False)
        count = (4 * max_bytes) // len(part) + 1  # several times the limit on the wire
        reader, writer = await open_raw(port)
        try:
            writer.write(frame(0x1, b"[", fin=False))
            batch = part * 4096
            for _ in range(0, count, 4096):
                writer.write(batch)
                await writer.drain()
        except ConnectionError:
            pass
        code = await read_close(reader)
        writer.close()
        tally["fragment_floods"] += 1
        tally["fragment_flood_closed_1009"] += code == 1009


def lying_binary(r: random.Random, width: int) -> bytes:
    """A binary message whose header says one thing and whose body holds another."""
    name = b"liar"
    steps = r.choice([0, 1, 2, 7, 2**32 - 1, 2**31])
    size = r.choice([0, 1, len(name), 255, 256, 257, 65535])
    body = os.urandom(4 * width * r.choice([0, 1, 2, 3]))
    kind = r.choice([0, 0, 1, 2, 3, 255])
    version = r.choice([1, 1, 1, 0, 2])
    return struct.pack("<BBHI", version, kind, size, steps) + name + body


async def lying_headers(port: int, count: int, width: int, r: random.Random, tally: dict) -> None:
    """Binary messages with lying headers on one raw connection: each must get one reply."""
    reader, writer = await open_raw(port)
    try:
        for _ in range(count):
            writer.write(frame(0x2, lying_binary(r, width)))
            await writer.drain()
            head = await asyncio.wait_for(reader.readexactly(2), 10)
            n = head[1] & 0x7F
            if n == 126:
                n = struct.unpack(">H", await reader.readexactly(2))[0]
            await reader.readexactly(n)
            tally["lying_headers"] += 1
            tally["lying_header_replies"] += head[0] & 0x0F in (0x1, 0x2)
    except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        tally["lying_header_lost"] += 1
    finally:
        writer.close()


async def slow_bodies(port: int, count: int, deadline: float, declared: int, tally: dict) -> None:
    """POSTs that declare `declared` bytes (under the body limit) and send a byte a second, or
    nothing: each socket must be answered or closed within the request timeout (plus slack)."""

    async def one(trickle: bool) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        writer.write(
            f"POST /v1/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared}\r\n\r\n".encode()
        )
        status = None
        try:
            await writer.drain()
            reading = asyncio.ensure_future(reader.read(1 << 16))
            while not reading.done() and time.monotonic() - started < deadline + 10:
                if trickle:
                    writer.write(b" ")
                    await writer.drain()
                await asyncio.wait([reading], timeout=1.0)
            if reading.done():
                data = reading.result()
                status = int(data.split()[1]) if data[:5] == b"HTTP/" else 0
            else:
                reading.cancel()
        except ConnectionError:
            status = 0
        held = time.monotonic() - started
        writer.close()
        tally["slow_bodies"] += 1
        tally["slow_body_held_past_deadline"] += status is None
        tally["slow_body_max_held_s"] = round(max(tally["slow_body_max_held_s"], held), 1)

    await asyncio.gather(*(one(trickle=i % 2 == 0) for i in range(count)))
