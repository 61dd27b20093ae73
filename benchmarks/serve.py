"""Load benchmark for `rnnkit serve`: many concurrent WebSocket streams on loopback, batched against
unbatched (`--max-batch 1`) in the same run, with plain onnxruntime at full batch as the ceiling.

    .venv/bin/python -m benchmarks.serve [--streams 256] [--seconds 10] [--modes 0,1,2,3] [--soak 300]

Clients run a closed loop: send a chunk for each stream of the connection, wait for the outputs,
send the next, in four ways (MODES): a connection per stream with one step per message, 16
streams per connection in array frames, a connection per stream with 4 steps per message, and a
connection per stream with one step per binary message (toolkit.runtime.binary).
Latency is from sending a chunk to receiving its outputs. Model (serve issue): LSTM 2x256 on 64
features. The client (picows, or websockets with --client; asyncio) runs in this process, on the
same cores as the server unless --pin, as a real deployment's clients would not: the figures are
a floor. Server and client CPU per message are read over the measured window.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np

from toolkit.runtime import WS_PROTOCOLS

ROOT = Path(__file__).resolve().parents[1]
FEATURES, HIDDEN, LAYERS = 64, 256, 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bundle: Path, *flags: str, cpus: str | None = None) -> tuple[subprocess.Popen, str]:
    """`rnnkit serve` in its own process (pinned to `cpus`, a taskset list, when given)."""
    port = free_port()
    cmd = [sys.executable, "-m", "cli.main", "serve", str(bundle), "--port", str(port), "--device", "cpu", *flags]
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    # The server's log goes to a file: a pipe nobody reads would block the server once it fills.
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (lives as long as the server process)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, f"127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.2)
    proc.kill()
    log.seek(0)
    raise RuntimeError(f"rnnkit serve did not start: {log.read()[-2000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (/proc/PID/stat fields 14, 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def frames(connection: int, per_connection: int, chunk: int, count: int = 16, binary: bool = False) -> list:
    """Pre-serialised frames for one connection, so the client spends its time on the socket: one
    message, or (several streams per connection) an array of one message per stream; `binary`:
    binary messages (toolkit.runtime.binary), one stream per connection."""
    rng = np.random.default_rng(connection)
    if binary:
        header = struct.Struct("<BBHI")
        values = [rng.normal(size=(chunk, FEATURES)).astype("<f4") for _ in range(count)]
        return [header.pack(1, 0, 2, chunk) + b"s0" + v.tobytes() for v in values]
    out = []
    for _ in range(count):
        messages = [
            {"stream": f"s{j}", "features": rng.normal(size=(chunk, FEATURES)).round(4).tolist()}
            for j in range(per_connection)
        ]
        out.append(json.dumps(messages if per_connection > 1 else messages[0]))
    return out


async def load(
    address: str,
    streams: int,
    seconds: float,
    chunk: int,
    per_connection: int = 1,
    inflight: int = 1,
    warmup: float = 3.0,
    churn: int = 0,
    binary: bool = False,
    server_pid: int | None = None,
    client: str = "picows",
) -> dict:
    """Each connection keeps `inflight` frames in flight (1: a closed loop, send, wait for the
    outputs, send the next; 2: the next chunk is on its way while the last is computed, as a
    sensor that sends at its own pace). Latency is from sending a chunk to receiving its outputs,
    measured after `warmup`. `churn` > 0: every stream ends and starts again every `churn` frames."""
    import orjson

    connect = CLIENTS[client]
    latencies: list[float] = []
    steps = 0
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds
    ends = [{"stream": f"s{j}", "end": True} for j in range(per_connection)]
    ends = json.dumps(ends if per_connection > 1 else ends[0])

    async def run_client(i: int):
        nonlocal steps
        texts = frames(i, per_connection, chunk, binary=binary)
        sent_at = [deque() for _ in range(per_connection)]  # per stream, its chunks in flight
        async with connect(f"ws://{address}/v1/streams") as ws:
            n = outstanding = 0

            async def send_frame():
                nonlocal n, outstanding
                now = time.perf_counter()
                for queue in sent_at:
                    queue.append(now)
                await ws.send(texts[n % len(texts)])
                n += 1
                outstanding += per_connection
                if churn and n % churn == 0:
                    await ws.send(ends)
                    outstanding += per_connection

            for _ in range(inflight):
                await send_frame()
            while outstanding:
                data = await ws.recv()
                done = time.perf_counter()
                if isinstance(data, bytes):  # a binary reply (kind 0: outputs) to this connection's one stream
                    replies = {"stream": "s0", "outputs": True} if data[1] == 0 else {"binary kind": data[1]}
                else:
                    replies = orjson.loads(data)
                for reply in replies if isinstance(replies, list) else [replies]:
                    outstanding -= 1
                    if "outputs" not in reply:
                        if "end" in reply:
                            continue
                        raise RuntimeError(reply)
                    sent = sent_at[int(reply["stream"][1:])].popleft()
                    if sent >= measure_from:
                        latencies.append(done - sent)
                        steps += chunk
                while outstanding <= per_connection * (inflight - 1) and time.perf_counter() < stop_at:
                    await send_frame()

    cpu: list[float] = []

    async def cpu_window():  # the server's and this client's CPU seconds over the measured window
        for at in (measure_from, stop_at):
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            cpu.append((cpu_seconds(server_pid), time.process_time()))

    sampler = asyncio.ensure_future(cpu_window()) if server_pid else None
    await asyncio.gather(*(run_client(i) for i in range(streams // per_connection)))
    lat = np.array(latencies) * 1e3
    figures = {
        "stream-steps/s": steps / seconds,
        "p50 ms": float(np.percentile(lat, 50)),
        "p99 ms": float(np.percentile(lat, 99)),
        "chunks": len(lat),
    }
    if sampler is not None:
        await sampler
        figures["server CPU us/message"] = (cpu[1][0] - cpu[0][0]) / len(lat) * 1e6  # a message carries one chunk
        figures["client CPU us/message"] = (cpu[1][1] - cpu[0][1]) / len(lat) * 1e6
    return figures


@contextlib.asynccontextmanager
async def websockets_client(url: str):
    import websockets

    async with websockets.connect(url, compression=None, max_size=None) as ws:
        yield ws


class PicowsClient:
    """A picows connection with the `send` / `recv` of a websockets one (replies queued by picows'
    frame callback): a client that costs the shared cores a fraction of what websockets costs."""

    def __init__(self, transport, listener):
        self.transport, self.replies = transport, listener.replies

    async def send(self, message: str | bytes) -> None:
        from picows import WSMsgType

        if isinstance(message, str):
            self.transport.send(WSMsgType.TEXT, message.encode())
        else:
            self.transport.send(WSMsgType.BINARY, message)

    async def recv(self) -> str | bytes:
        reply = await self.replies.get()
        if reply is None:
            raise ConnectionError("the server closed the connection")
        return reply


@contextlib.asynccontextmanager
async def picows_client(url: str):
    from picows import WSListener, WSMsgType, ws_connect

    class Listener(WSListener):
        def __init__(self):
            super().__init__()
            self.replies: asyncio.Queue = asyncio.Queue()

        def on_ws_frame(self, transport, frame):
            if frame.msg_type == WSMsgType.TEXT:
                self.replies.put_nowait(frame.get_payload_as_utf8_text())
            elif frame.msg_type == WSMsgType.BINARY:
                self.replies.put_nowait(frame.get_payload_as_bytes())
            elif frame.msg_type == WSMsgType.CLOSE:
                self.replies.put_nowait(None)

        def on_ws_disconnected(self, transport):
            self.replies.put_nowait(None)

    transport, listener = await ws_connect(Listener, url, max_frame_size=2**30)
    try:
        yield PicowsClient(transport, listener)
    finally:
        transport.send_close()
        transport.disconnect()


CLIENTS = {"picows": picows_client, "websockets": websockets_client}


def plain_onnxruntime(bundle: Path, batch: int, chunk: int = 1, seconds: float = 5.0) -> float:
    """Steps/s of bare step.onnx at `batch` streams, `chunk` steps per call: the ceiling for batching."""
    from toolkit.runtime.engine import Engine

    engine = Engine(bundle, device="cpu", bind_state=False)
    x = np.random.default_rng(0).normal(size=(batch, chunk, FEATURES)).astype(np.float32)
    state = engine.initial_state(batch)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        _, *new = engine.step.run(engine.step_outputs, {engine.input_name: x, **state})
        state = dict(zip(engine.state_names, new, strict=True))
        calls += 1
    return calls * batch * chunk / (time.perf_counter() - start)


# How clients send (see README): steps per message, streams per connection (1: a connection per
# stream; more: a gateway's connection carrying array frames), frames in flight per connection,
# binary messages (toolkit.runtime.binary) instead of JSON.
MODES = {
    "1 step per message, a connection per stream": (1, 1, 1, False),
    "1 step per message, 16 streams per connection": (1, 16, 1, False),
    "4 steps per message, a connection per stream": (4, 1, 1, False),
    "1 step per message, a connection per stream, binary": (1, 1, 1, True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per configuration")
    parser.add_argument("--modes", default=",".join(str(i) for i in range(len(MODES))), help="indices into MODES")
    parser.add_argument("--max-delay-ms", default="2")
    parser.add_argument("--soak", type=float, default=0.0, help="seconds of soak after the comparison (0: none)")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument(
        "--ws", default=WS_PROTOCOLS[0], help="comma list of `rnnkit serve --ws-protocol` values (its default)"
    )
    parser.add_argument("--client", choices=list(CLIENTS), default="picows", help="the load client's WebSocket library")
    parser.add_argument("--batched-only", action="store_true", help="skip the unbatched servers")
    parser.add_argument(
        "--pin", action="store_true", help="server on the first half of the cores, this client on the rest (taskset)"
    )
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    server_cpus = None
    if args.pin:
        half = max(1, len(cores) // 2)
        server_cpus = ",".join(map(str, cores[:half]))
        os.sched_setaffinity(0, cores[half:] or cores)

    import onnxruntime as ort

    from benchmarks.models import feature_bundle

    print(f"onnxruntime {ort.__version__}, {os.cpu_count()} cores, LSTM {LAYERS}x{HIDDEN}, {FEATURES} features")
    print(f"{args.streams} concurrent streams, closed loop, {args.seconds:g} s measured per configuration")
    results: dict = {}
    servers = {}
    for ws in args.ws.split(","):
        named = "" if ws == WS_PROTOCOLS[0] else f", {ws}"
        protocol = ["--ws-protocol", ws]
        servers[f"batched{named}"] = ["--max-batch", str(args.streams), "--max-delay-ms", args.max_delay_ms, *protocol]
        if not args.batched_only:
            servers[f"one stream per call{named}"] = ["--max-batch", "1", "--max-delay-ms", "0", *protocol]
    if server_cpus:
        print(f"server pinned to cores {server_cpus}, client to {sorted(os.sched_getaffinity(0))}")
    with tempfile.TemporaryDirectory() as tmp:
        bundle = feature_bundle(Path(tmp) / "uni", bidirectional=False)
        for chunk in sorted({MODES[m][0] for m in MODES}):
            steps_per_s = plain_onnxruntime(bundle, args.streams, chunk)
            results[f"plain onnxruntime, batch {args.streams}, {chunk} step(s) per call"] = {
                "stream-steps/s": steps_per_s
            }
        for index in args.modes.split(","):
            mode = list(MODES)[int(index)]
            chunk, per_connection, inflight, binary = MODES[mode]
            for kind, flags in servers.items():
                proc, address = start_server(bundle, *flags, cpus=server_cpus)
                try:
                    figures = asyncio.run(
                        load(
                            address, args.streams, args.seconds, chunk, per_connection, inflight,
                            binary=binary, server_pid=proc.pid, client=args.client,
                        )
                    )  # fmt: skip
                    figures["server RSS MiB"] = rss_mib(proc.pid)
                finally:
                    stop_server(proc)
                results[f"{mode}: {kind}"] = figures
                print(f"{mode}: {kind}", figures, flush=True)
        if args.soak:
            results["soak"] = soak(bundle, args)
    print()
    for name, figures in results.items():
        print(f"{name:<70} " + "  ".join(f"{k} {v:,.1f}" for k, v in figures.items() if not isinstance(v, list)))
    print("\ntargets: >= 40,000 stream-steps/s, >= 8x unbatched, p99 <= 25 ms")
    for mode in MODES:
        if f"{mode}: batched" in results and f"{mode}: one stream per call" in results:
            batched, alone = results[f"{mode}: batched"], results[f"{mode}: one stream per call"]
            ratio = batched["stream-steps/s"] / alone["stream-steps/s"]
            rate, p99 = batched["stream-steps/s"], batched["p99 ms"]
            print(f"  {mode}: {rate:,.0f} stream-steps/s, {ratio:.1f}x unbatched, p99 {p99:.1f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


def soak(bundle: Path, args) -> dict:
    """Steady load (a connection per stream, one step per message, every stream ending and starting
    again every 500 chunks) for `args.soak` seconds; server RSS sampled every 10 s."""
    proc, address = start_server(bundle, "--max-batch", str(args.streams), "--max-delay-ms", args.max_delay_ms)
    samples = []

    async def run():
        async def sample():
            while True:
                samples.append(rss_mib(proc.pid))
                await asyncio.sleep(10)

        sampler = asyncio.create_task(sample())
        try:
            return await load(address, args.streams, args.soak, 1, warmup=10.0, churn=500)
        finally:
            sampler.cancel()

    try:
        figures = asyncio.run(run())
        # "start" is after the 10 s warm-up (allocators and caches settled), "end" after the soak.
        figures["RSS start MiB"], figures["RSS end MiB"] = samples[1], rss_mib(proc.pid)
        figures["RSS max MiB"] = max(samples)
        figures["RSS samples MiB"] = samples
    finally:
        stop_server(proc)
    print("soak", figures, flush=True)
    return figures


if __name__ == "__main__":
    main()
