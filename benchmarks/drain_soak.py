"""SIGTERM soak for `rnnkit serve`: streams still sending while the server drains, per front end.

    .venv/bin/python -m benchmarks.drain_soak [--runs 20] [--connections 10] [--streams 50]
                                              [--ws picows,websockets-sansio]

Each run starts a server, opens `--streams` streams spread over `--connections` WebSocket
connections (5 per connection by default), lets every stream send chunks of CHUNK steps with up
to `--window` chunks unanswered (topped up on every reply, and every millisecond), and sends
SIGTERM while they all still send. The drain promises:
every chunk the server accepted is answered, chunks it receives while draining are refused with
503, every stream gets its `closed` notice and every connection the close code 1001.

A stream's notice says how many steps the server ran for it: its accepted chunks are
notice steps / CHUNK, and `lost` counts the accepted chunks that got no reply. Chunks the client
sent after the server's close frame went out are never read (`unread`: nothing may be written
after a close frame, so they cannot be refused either). A connection that ends without its close
frame (1006) has no notices, so what it lost cannot be known: its streams count in
`notices_missing` and its unanswered chunks in `unaccounted`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

CHUNK = 2  # steps per chunk
WINDOW = 64  # chunks a stream may have unanswered (MAX_PENDING, the most the server lets wait)
COUNTS = (
    "runs",
    "connections",
    "streams",
    "sent",
    "accepted",
    "answered",
    "refused_503",
    "refused_other",
    "unread",
    "lost",
    "out_of_order",
    "notices",
    "notices_missing",
    "unaccounted",
)


async def connection(address: str, names: list[str], width: int, window: int, started: asyncio.Event, rng) -> dict:
    """One client connection sending chunks on its streams until the server closes it."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    sent = dict.fromkeys(names, 0)
    answered = dict.fromkeys(names, 0)  # chunks answered with outputs
    next_step = dict.fromkeys(names, 0)  # the step the next reply of the stream must start at
    refused = dict.fromkeys(names, 0)
    notices: dict[str, int] = {}
    tally = Counter()
    errors: list[str] = []  # the first refusal other than 503 (printed)
    ws = await connect(f"ws://{address}/v1/streams", open_timeout=30, close_timeout=10, max_queue=None)
    wake = asyncio.Event()

    async def send() -> None:
        with contextlib.suppress(ConnectionClosed, asyncio.CancelledError):
            while True:
                for name in names:
                    if sent[name] - answered[name] - refused[name] < window:
                        chunk = rng.normal(size=(CHUNK, width)).round(3).tolist()
                        await ws.send(json.dumps({"stream": name, "features": chunk}))
                        sent[name] += 1
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), 0.001)

    async def receive() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for text in ws:
                reply = json.loads(text)
                name = reply.get("stream")
                if "outputs" in reply:
                    if reply["step"] != next_step[name]:
                        tally["out_of_order"] += 1
                    next_step[name] = reply["step"] + len(reply["outputs"])
                    answered[name] += 1
                elif reply.get("closed"):
                    notices[name] = reply["steps"]
                elif "error" in reply:
                    if name in refused:
                        refused[name] += 1
                    tally["refused_503" if reply["code"] == 503 else "refused_other"] += 1
                    if reply["code"] != 503 and not errors:
                        errors.append(f"{reply['code']} {reply['error'][:200]}")
                wake.set()
                if not started.is_set() and all(answered.values()):
                    started.set()

    sender = asyncio.create_task(send())
    await receive()
    wake.set()
    sender.cancel()
    await asyncio.gather(sender, return_exceptions=True)
    await ws.wait_closed()
    started.set()  # (a connection that ended early must not hold up the others' SIGTERM)
    if errors:
        print("  a refusal other than 503:", errors[0])
    received = ws.protocol.close_rcvd
    tally["close_" + str(received.code if received else 1006)] += 1
    tally["sent"] = sum(sent.values())
    tally["answered"] = sum(answered.values())
    for name in names:
        unanswered = sent[name] - answered[name] - refused[name]
        if name in notices:
            accepted = notices[name] // CHUNK
            tally["notices"] += 1
            tally["accepted"] += accepted
            tally["lost"] += accepted - answered[name]
            tally["unread"] += sent[name] - accepted - refused[name]
        else:
            tally["notices_missing"] += 1
            tally["unaccounted"] += unanswered
    return tally


def run(
    bundle: Path, ws_protocol: str, connections: int = 10, streams: int = 50, window: int = WINDOW, seed: int = 0
) -> dict:
    """One run: start a server, stream, SIGTERM while sending; the counts (and close codes)."""
    from benchmarks.serve import start_server

    manifest = json.loads((Path(bundle) / "manifest.json").read_text())
    width = manifest["input"]["num_features"]
    proc, address = start_server(bundle, "--ws-protocol", ws_protocol)
    per = [list(range(streams))[i::connections] for i in range(connections)]

    async def everything() -> list[Counter]:
        events = [asyncio.Event() for _ in per]
        rng = np.random.default_rng(seed)
        tasks = [
            asyncio.create_task(connection(address, [f"s{j}" for j in names], width, window, event, rng))
            for names, event in zip(per, events, strict=True)
        ]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 60)
        await asyncio.sleep(0.3)  # all streams answered at least once and still sending
        proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(asyncio.gather(*tasks), 90)

    try:
        tallies = asyncio.run(everything())
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    total = Counter({"runs": 1, "connections": connections, "streams": streams})
    for tally in tallies:
        total.update(tally)
    total["exit_" + str(code)] += 1
    return dict(total)


def failures(total: dict) -> list[str]:
    """What broke the drain's promise in these counts (empty: nothing)."""
    bad = [f"{k}={total.get(k, 0)}" for k in ("lost", "out_of_order", "notices_missing", "unaccounted")]
    bad = [b for b in bad if not b.endswith("=0")]
    bad += [f"{k}={v}" for k, v in total.items() if k.startswith("close_") and k != "close_1001"]
    bad += [f"{k}={v}" for k, v in total.items() if k.startswith("exit_") and k != "exit_0"]
    return bad


def line(total: dict) -> str:
    counts = " ".join(f"{k} {total.get(k, 0)}" for k in COUNTS)
    codes = " ".join(f"{k} {v}" for k, v in sorted(total.items()) if k.startswith(("close_", "exit_")))
    return f"{counts} | {codes}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="runs per front end")
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--window", type=int, default=WINDOW, help="chunks a stream may have unanswered")
    parser.add_argument("--ws", default="picows,websockets-sansio", help="comma list of --ws-protocol values")
    args = parser.parse_args()

    from benchmarks.models import feature_bundle

    print(f"{args.runs} runs per front end of {args.streams} streams on {args.connections} connections,")
    print(f"chunks of {CHUNK} steps, up to {args.window} unanswered per stream; SIGTERM while all send")
    bad = False
    with tempfile.TemporaryDirectory() as tmp:
        bundle = feature_bundle(Path(tmp) / "m", bidirectional=False, hidden=32, layers=1, features=8)
        for ws in args.ws.split(","):
            total: Counter = Counter()
            started = time.monotonic()
            for i in range(args.runs):
                counts = run(bundle, ws, args.connections, args.streams, args.window, seed=i)
                print(f"  {ws} run {i + 1}: {line(counts)}", flush=True)
                total.update(counts)
            print(f"{ws}, {args.runs} runs in {time.monotonic() - started:.0f} s: {line(total)}", flush=True)
            if failures(total):
                print(f"{ws}: the drain lost replies or notices: {', '.join(failures(total))}")
                bad = True
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
