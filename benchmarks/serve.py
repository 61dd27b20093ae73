"""Load benchmark for `rnnkit serve`: many concurrent WebSocket streams on loopback, batched against
unbatched (`--max-batch 1`) in the same run, with plain onnxruntime at full batch as the ceiling.

    .venv/bin/python -m benchmarks.serve [--streams 256] [--seconds 20] [--chunk 1] [--soak 300]

Each stream is one client connection running a closed loop: send a chunk, wait for its outputs,
send the next. Latency is from sending a chunk to receiving its outputs. Model (serve issue):
LSTM 2x256 on 64 features. The client (websockets, asyncio) runs in this process, on the same
cores as the server, as a real deployment's load balancer would not: the figures are a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FEATURES, HIDDEN, LAYERS = 64, 256, 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bundle: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "cli.main", "serve", str(bundle), "--port", str(port), "--device", "cpu", *flags]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
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
    raise RuntimeError(f"rnnkit serve did not start: {proc.stderr.read()[-2000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def messages(stream: int, chunk: int, count: int = 16) -> list[str]:
    """Pre-serialised chunks for one stream, so the client spends its time on the socket."""
    rng = np.random.default_rng(stream)
    return [
        json.dumps({"stream": "s", "features": rng.normal(size=(chunk, FEATURES)).round(4).tolist()})
        for _ in range(count)
    ]


async def load(address: str, streams: int, seconds: float, chunk: int, warmup: float = 3.0, churn: int = 0) -> dict:
    """Closed-loop clients; returns stream-steps/s and latency percentiles measured after `warmup`.
    `churn` > 0: each stream ends and starts again every `churn` chunks (soak)."""
    import websockets

    latencies: list[float] = []
    steps = 0
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    async def client(i: int):
        nonlocal steps
        frames = messages(i, chunk)
        async with websockets.connect(f"ws://{address}/v1/streams", compression=None, max_size=None) as ws:
            n = 0
            while (now := time.perf_counter()) < stop_at:
                await ws.send(frames[n % len(frames)])
                reply = await ws.recv()
                done = time.perf_counter()
                if '"error"' in reply:
                    raise RuntimeError(reply)
                if now >= measure_from:
                    latencies.append(done - now)
                    steps += chunk
                n += 1
                if churn and n % churn == 0:
                    await ws.send('{"stream": "s", "end": true}')
                    await ws.recv()

    await asyncio.gather(*(client(i) for i in range(streams)))
    lat = np.array(latencies) * 1e3
    return {
        "stream-steps/s": steps / seconds,
        "p50 ms": float(np.percentile(lat, 50)),
        "p99 ms": float(np.percentile(lat, 99)),
        "chunks": len(lat),
    }


def plain_onnxruntime(bundle: Path, batch: int, seconds: float = 5.0) -> float:
    """Steps/s of bare step.onnx at `batch` streams, one step per call: the ceiling for batching."""
    from toolkit.runtime.engine import Engine

    engine = Engine(bundle, device="cpu", bind_state=False)
    x = np.random.default_rng(0).normal(size=(batch, 1, FEATURES)).astype(np.float32)
    state = engine.initial_state(batch)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        _, *new = engine.step.run(engine.step_outputs, {engine.input_name: x, **state})
        state = dict(zip(engine.state_names, new, strict=True))
        calls += 1
    return calls * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per configuration")
    parser.add_argument("--chunk", type=int, default=1, help="steps per message")
    parser.add_argument("--max-delay-ms", default="2")
    parser.add_argument("--soak", type=float, default=0.0, help="seconds of soak after the comparison (0: none)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    import onnxruntime as ort

    from benchmarks.models import feature_bundle

    print(f"onnxruntime {ort.__version__}, {os.cpu_count()} cores, LSTM {LAYERS}x{HIDDEN}, {FEATURES} features")
    print(f"{args.streams} concurrent streams, {args.chunk} step(s) per message, {args.seconds:g} s measured each")
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        bundle = feature_bundle(Path(tmp) / "uni", bidirectional=False)
        results[f"plain onnxruntime, batch {args.streams}"] = {
            "stream-steps/s": plain_onnxruntime(bundle, args.streams)
        }
        configs = {
            "rnnkit serve, batched": ["--max-batch", str(args.streams), "--max-delay-ms", args.max_delay_ms],
            "rnnkit serve, one stream per call": ["--max-batch", "1", "--max-delay-ms", "0"],
        }
        for name, flags in configs.items():
            proc, address = start_server(bundle, *flags)
            try:
                results[name] = asyncio.run(load(address, args.streams, args.seconds, args.chunk))
                results[name]["server RSS MiB"] = rss_mib(proc.pid)
            finally:
                stop_server(proc)
            print(name, results[name], flush=True)
        if args.soak:
            results["soak"] = soak(bundle, args)
    print()
    for name, figures in results.items():
        print(f"{name:<40} " + "  ".join(f"{k} {v:,.1f}" for k, v in figures.items()))
    batched, alone = results["rnnkit serve, batched"], results["rnnkit serve, one stream per call"]
    print("\ntargets")
    print(f"  aggregate {batched['stream-steps/s']:,.0f} stream-steps/s (target >= 40,000)")
    print(f"  batched / unbatched {batched['stream-steps/s'] / alone['stream-steps/s']:.1f}x (target >= 8x)")
    print(f"  p99 {batched['p99 ms']:.1f} ms (target <= 25 ms)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


def soak(bundle: Path, args) -> dict:
    """Steady load with stream churn for `args.soak` seconds; server RSS sampled along the way."""
    proc, address = start_server(bundle, "--max-batch", str(args.streams), "--max-delay-ms", args.max_delay_ms)
    samples = []

    async def run():
        async def sample():
            while True:
                samples.append((time.perf_counter(), rss_mib(proc.pid)))
                await asyncio.sleep(10)

        sampler = asyncio.create_task(sample())
        try:
            return await load(address, args.streams, args.soak, args.chunk, warmup=10.0, churn=500)
        finally:
            sampler.cancel()

    try:
        figures = asyncio.run(run())
        figures["RSS start MiB"], figures["RSS end MiB"] = samples[1][1], rss_mib(proc.pid)
        figures["RSS max MiB"] = max(r for _, r in samples)
    finally:
        stop_server(proc)
    print("soak", figures, flush=True)
    return figures


if __name__ == "__main__":
    main()
