"""Fuzz `rnnkit serve` as a real process: hostile WebSocket frames and HTTP bodies, interleaved
with good streams whose outputs are checked against the offline model.

    .venv/bin/python -m benchmarks.fuzz_serve [--messages 10000] [--seed 0] [--json out.json]

Every hostile text frame must be answered with exactly one reply per message it holds (an array
frame: one per element; anything else: one) within 10 s, and none with code 500; a frame over
--max-message-bytes must close its connection with 1009 (then the client reconnects); HTTP
bodies must get a JSON 4xx. Good streams must equal `model.onnx` on their whole sequences. The
server must still be ready at the end, with no traceback in its log and RSS flat. Below the
WebSocket library (`benchmarks.hostile`): handshakes with odd header bytes must get an HTTP
status below 500, floods of empty or 2-byte fragments must be closed with 1009, binary messages
whose headers lie must get one reply each, and POST bodies that trickle in (or never come) must be
answered or closed within --request-timeout. Exit status 1 if any of that fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import orjson

from benchmarks import hostile as raw
from benchmarks.serve import free_port, rss_mib

ROOT = Path(__file__).resolve().parents[1]
WIDTH, MAX_CHUNK, MAX_BYTES, REQUEST_TIMEOUT = 4, 64, 65536, 3.0
SERVER_FLAGS = [
    *("--max-chunk", str(MAX_CHUNK), "--max-message-bytes", str(MAX_BYTES), "--max-streams", "5000"),
    *("--request-timeout", str(REQUEST_TIMEOUT)),
]


# ---- hostile frames ---------------------------------------------------------------------------------
def _value(r: random.Random, depth: int = 0):
    """A random JSON value, small."""
    kind = r.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return r.choice([True, False])
    if kind == 2:
        return r.choice([0, -1, 2**63, -(2**63) - 1, 10**30, 1e39, -1e39, 1e308, 5e-324, 0.5])
    if kind == 3:
        return r.choice(["", "a", "\u0000", "é", "\U0001f600", "<pad>", "x" * 300])
    if kind == 4:
        return r.random() * 10 - 5
    if kind == 5:
        return [_value(r, depth + 1) for _ in range(r.randrange(4))]
    return {r.choice(["stream", "features", "tokens", "reset", "end", "x"]): _value(r, depth + 1) for _ in range(3)}


def _mutated(r: random.Random) -> dict:
    """A chunk message with one thing wrong (or nothing: some hostile messages are valid)."""
    msg: dict = {
        "stream": f"h{r.randrange(50)}",
        "features": np.round(
            np.random.default_rng(r.randrange(1 << 30)).normal(size=(r.randrange(1, 6), WIDTH)), 3
        ).tolist(),
    }
    what = r.randrange(10)
    if what == 0:
        msg["stream"] = _value(r)
    elif what == 1:
        msg["features"] = _value(r)
    elif what == 2:
        msg["features"][0][r.randrange(WIDTH)] = _value(r)
    elif what == 3:
        msg["features"][-1] = msg["features"][-1][:-1]
    elif what == 4:
        msg["features"] = [[0.0] * WIDTH] * (MAX_CHUNK + 1)
    elif what == 5:
        msg[r.choice(["reset", "end", "tokens", "extra"])] = _value(r)
    elif what == 6:
        msg = {"stream": f"nobody{r.randrange(5)}", r.choice(["reset", "end"]): True}
    return msg


def hostile(r: random.Random) -> str | bytes:
    """One hostile frame: text (str) or binary (bytes)."""
    kind = r.randrange(14)
    if kind == 0:
        return '{"stream": "\\ud800", "features": [[1, 2, 3, 4]]}'
    if kind == 1:
        return "[" * r.randrange(500, 6000) + "]" * r.randrange(0, 6000)
    if kind == 2:
        return '{"stream": "a", "features": [[1, 2, 3, ' + "9" * r.randrange(20, 6000) + "]]}"
    if kind == 3:
        return r.choice(
            ['{"stream": "a", "features": [[NaN, 1, 2, 3]]}', '{"stream": "a", "features": [[Infinity, 1, 2, 3]]}']
        )
    if kind == 4:
        return bytes(r.randrange(256) for _ in range(r.randrange(1, 200))).decode("latin-1")
    if kind == 5:
        return json.dumps(_value(r))
    if kind == 6:
        return bytes(r.randrange(256) for _ in range(r.randrange(1, 50)))  # a binary frame
    if kind == 7:
        return "x" * (MAX_BYTES + 1)  # over the limit: closes the connection (1009)
    if kind == 8:
        return "[]"
    if kind == 9:
        items = [_mutated(r) for _ in range(r.randrange(1, 20))]
        text = json.dumps(items)
        return text if r.random() < 0.8 else text.replace('"h', '"\\udc00h', 1)
    if kind == 10:
        return '{"stream": "' + "s" * r.randrange(1, 5000) + '", "features": [[1, 2, 3, 4]]}'
    return json.dumps(_mutated(r))


def expected_replies(frame: str | bytes) -> int | None:
    """Replies owed to a frame; None for one that must close the connection."""
    if len(frame) > MAX_BYTES:
        return None
    if isinstance(frame, str) and frame[:1] == "[":
        try:
            items = orjson.loads(frame)
        except orjson.JSONDecodeError:
            return 1
        return len(items) if isinstance(items, list) and items else 1
    return 1


# ---- clients ------------------------------------------------------------------------------------------
async def hostile_client(address: str, r: random.Random, count: int, tally: dict) -> None:
    import websockets

    sent = 0
    while sent < count:
        async with websockets.connect(f"ws://{address}/v1/streams", max_size=None) as ws:
            for _ in range(min(200, count - sent)):  # a new connection now and then frees its streams
                frame = hostile(r)
                sent += 1
                owed = expected_replies(frame)
                await ws.send(frame)
                if owed is None:
                    try:
                        await asyncio.wait_for(ws.recv(), 10)
                        tally["not_closed"] += 1
                    except websockets.ConnectionClosed as e:
                        tally["closed_1009" if e.rcvd and e.rcvd.code == 1009 else "closed_other"] += 1
                    break
                got = 0
                try:
                    while got < owed:
                        reply = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                        for item in reply if isinstance(reply, list) else [reply]:
                            got += 1
                            tally["code_500"] += item.get("code") == 500
                            tally["refused" if "error" in item else "answered"] += 1
                except (asyncio.TimeoutError, websockets.ConnectionClosed):
                    tally["lost"] += owed - got
                tally["messages"] += owed


async def good_client(address: str, name: str, sequence: np.ndarray, r: random.Random, outputs: dict) -> None:
    import websockets

    got = []
    try:
        async with websockets.connect(f"ws://{address}/v1/streams") as ws:
            at = 0
            while at < len(sequence):
                n = r.randrange(1, 8)
                await ws.send(orjson.dumps({"stream": name, "features": sequence[at : at + n].tolist()}).decode())
                reply = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                got.append(np.array(reply["outputs"]))
                at += n
                await asyncio.sleep(r.random() * 0.01)
    except (asyncio.TimeoutError, websockets.ConnectionClosed, KeyError):
        return  # left out of `outputs`: counted as a good stream not completed
    outputs[name] = np.concatenate(got)


def hostile_http(address: str, r: random.Random, count: int, tally: dict) -> None:
    for _ in range(count):
        frame = hostile(r)
        body = frame if isinstance(frame, bytes) else frame.encode("utf-8", "surrogatepass")
        request = urllib.request.Request(
            f"http://{address}/v1/infer", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                status, text = reply.status, reply.read()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read()
        try:
            json.loads(text)
        except ValueError:
            tally["http_not_json"] += 1
        tally["http_5xx"] += status >= 500
        tally["http"] += 1


# ---- the run --------------------------------------------------------------------------------------------
def fuzz(bundle: Path, messages: int, seed: int, log_path: Path) -> dict:
    from toolkit.runtime.engine import Engine

    port = free_port()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli.main",
                "serve",
                str(bundle),
                "--port",
                str(port),
                "--device",
                "cpu",
                *SERVER_FLAGS,
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    address = f"127.0.0.1:{port}"
    try:
        wait_ready(address, proc)
        r = random.Random(seed)
        rng = np.random.default_rng(seed)
        goods = {f"good{i}": rng.normal(size=(int(rng.integers(50, 400)), WIDTH)).astype(np.float32) for i in range(8)}
        tally = dict.fromkeys(
            [
                "messages",
                "answered",
                "refused",
                "lost",
                "code_500",
                "closed_1009",
                "closed_other",
                "not_closed",
                "http",
                "http_5xx",
                "http_not_json",
                "handshake_5xx_or_none",
                "fragment_floods",
                "fragment_flood_closed_1009",
                "lying_headers",
                "lying_header_replies",
                "lying_header_lost",
                "slow_bodies",
                "slow_body_held_past_deadline",
                "slow_body_max_held_s",
            ],
            0,
        )
        outputs: dict = {}
        started = time.perf_counter()
        hostile_http(address, r, 20, tally)  # warm-up, then the baseline RSS
        rss_start = rss_mib(proc.pid)

        samples: list[float] = []

        async def sample_rss():
            while True:
                samples.append(rss_mib(proc.pid))
                await asyncio.sleep(0.5)

        async def everything():
            per = messages // 4
            sampler = asyncio.create_task(sample_rss())
            await asyncio.gather(
                *(hostile_client(address, random.Random(seed * 100 + k), per, tally) for k in range(4)),
                *(
                    good_client(address, name, x, random.Random(i), outputs)
                    for i, (name, x) in enumerate(goods.items())
                ),
                asyncio.to_thread(hostile_http, address, r, messages // 20, tally),
                raw.handshakes(port, max(2, messages // 2000), tally),
                raw.fragment_floods(port, max(4, messages // 1000), MAX_BYTES, random.Random(seed + 1), tally),
                raw.lying_headers(port, messages // 10, WIDTH, random.Random(seed + 2), tally),
                raw.slow_bodies(port, max(10, messages // 100), REQUEST_TIMEOUT, MAX_BYTES // 2, tally),
            )
            sampler.cancel()

        asyncio.run(everything())
        seconds = time.perf_counter() - started
        rss_end = rss_mib(proc.pid)
        engine = Engine(bundle, device="cpu")
        done = {n: x for n, x in goods.items() if n in outputs}
        worst = max((float(np.abs(outputs[n] - engine.infer([x])[0]).max()) for n, x in done.items()), default=0.0)
        ready = http_status(address) == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = log_path.read_text(errors="replace")
    return {
        **tally,
        "good_streams": len(goods),
        "good_streams_incomplete": len(goods) - len(done),
        "good_max_abs_diff": worst,
        "ready_after": ready,
        "exit_code": proc.returncode,
        "tracebacks_in_log": text.count("Traceback"),
        "rss_start_mib": round(rss_start, 1),
        "rss_end_mib": round(rss_end, 1),
        "rss_by_quarter_mib": [round(samples[len(samples) * q // 4], 1) for q in range(4)] + [round(rss_end, 1)],
        "seconds": round(seconds, 1),
    }


def failures(result: dict) -> list[str]:
    checks = {
        "lost replies": result["lost"] == 0,
        "500 replies": result["code_500"] == 0,
        "oversized frames not closed with 1009": result["not_closed"] == 0 and result["closed_other"] == 0,
        "HTTP 5xx or non-JSON": result["http_5xx"] == 0 and result["http_not_json"] == 0,
        "good streams wrong": result["good_max_abs_diff"] <= 1e-5,
        "good streams not completed": result["good_streams_incomplete"] == 0,
        "not ready after": result["ready_after"],
        "tracebacks in the server log": result["tracebacks_in_log"] == 0,
        "drained exit not 0": result["exit_code"] == 0,
        "odd handshakes answered 5xx or not at all": result["handshake_5xx_or_none"] == 0,
        "fragment floods not closed with 1009": result["fragment_flood_closed_1009"] == result["fragment_floods"],
        "lying binary headers not answered": result["lying_header_lost"] == 0
        and result["lying_header_replies"] == result["lying_headers"],
        "slow bodies held past the request deadline": result["slow_body_held_past_deadline"] == 0,
        "RSS grew by more than 64 MiB": result["rss_end_mib"] - result["rss_start_mib"] <= 64,
    }
    return [name for name, ok in checks.items() if not ok]


def wait_ready(address: str, proc) -> None:
    deadline = time.monotonic() + 60
    while http_status(address) != 200:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("rnnkit serve did not start")
        time.sleep(0.2)


def http_status(address: str) -> int | None:
    try:
        with urllib.request.urlopen(f"http://{address}/health/ready", timeout=5) as reply:
            return reply.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000, help="hostile WebSocket frames (HTTP: 1/20 of it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    from benchmarks.models import feature_bundle

    with tempfile.TemporaryDirectory() as tmp:
        bundle = feature_bundle(Path(tmp) / "m", bidirectional=False, hidden=32, layers=1, features=WIDTH)
        result = fuzz(bundle, args.messages, args.seed, Path(tmp) / "server.log")
    for key, value in result.items():
        print(f"{key:24} {value}")
    bad = failures(result)
    print("FAILED: " + ", ".join(bad) if bad else "no failure")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
