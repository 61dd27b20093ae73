"""Runtime benchmark: cold start, per-step stream latency and full-sequence throughput, each next
to PyTorch eager measured in the same run (the machines are shared and noisy: every figure is the
median over rounds that interleave the contenders).

    .venv/bin/python -m benchmarks.runtime [--rounds 7] [--json results.json]

Models (runtime issue): LSTM 2x256 on 64 features; one stream steps one step per call; the
bidirectional one runs batch 32 x length 256. "plain" is an nn.LSTM + Linear exported with
torch.onnx (dynamo=False) and run in onnxruntime with the same threads: what a user gets
without rnnkit.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FEATURES, HIDDEN, LAYERS = 64, 256, 2


def per_call_ms(fn, calls: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e3


def interleaved(contenders: dict, calls: int, rounds: int) -> dict[str, float]:
    """Median ms per call of each contender over `rounds`, the contenders taking turns in a new
    order each round (whoever runs after torch meets its worker threads still spinning)."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    rng = np.random.default_rng(0)
    for _ in range(rounds):
        for name in rng.permutation(list(contenders)):
            times[name].append(per_call_ms(contenders[name], calls))
    return {name: statistics.median(t) for name, t in times.items()}


# ---- cold start -------------------------------------------------------------------------------
def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


def first_output(bundle: Path) -> float:
    """Seconds from spawning `rnnkit stream` to its answer to the first message."""
    message = json.dumps({"stream": "a", "features": [[0.0] * FEATURES]}) + "\n"
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "stream", str(bundle)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    proc.stdin.write(message)
    proc.stdin.flush()
    proc.stdout.readline()
    took = time.perf_counter() - start
    proc.stdin.close()
    proc.wait()
    return took


def cold_start(bundle: Path, rounds: int) -> dict[str, float]:
    py = sys.executable
    runs = {
        "rnnkit stream --help": lambda: wall([py, "-m", "cli.main", "stream", "--help"]),
        "rnnkit stream: first output": lambda: first_output(bundle),
        "python -c 'import torch' (for scale)": lambda: wall([py, "-c", "import torch"]),
        "python -c 'import mlflow' (for scale)": lambda: wall([py, "-c", "import mlflow"]),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            times[name].append(run())
    return {name: statistics.median(t) for name, t in times.items()}


# ---- the plain baseline ---------------------------------------------------------------------
def plain_lstm(bidirectional: bool):
    import torch
    from torch import nn

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(FEATURES, HIDDEN, LAYERS, batch_first=True, bidirectional=bidirectional)
            self.head = nn.Linear(HIDDEN * (2 if bidirectional else 1), 1)

        def forward(self, x, h, c):
            y, (h, c) = self.lstm(x, (h, c))
            return self.head(y), h, c

    torch.manual_seed(0)
    return Plain().eval()


def plain_onnx(model, batch: int, directions: int, threads: int | None):
    """torch.onnx.export (TorchScript exporter, dynamo=False) of `model`, in an ORT session."""
    import onnxruntime as ort
    import torch

    x = torch.zeros(batch, 3, FEATURES)
    h = torch.zeros(LAYERS * directions, batch, HIDDEN)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plain.onnx"
        torch.onnx.export(
            model,
            (x, h, h.clone()),
            str(path),
            input_names=["x", "h", "c"],
            output_names=["y", "h_out", "c_out"],
            dynamic_axes={"x": {0: "batch", 1: "time"}, "h": {1: "batch"}, "c": {1: "batch"}},
            dynamo=False,
        )
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# ---- per-step latency -------------------------------------------------------------------------
def step_latency(bundle: Path, run: Path, calls: int, rounds: int) -> dict[str, float]:
    import torch

    from toolkit.runtime.engine import Engine
    from toolkit.train.checkpoint import load_model

    model = load_model(run)[0]
    plain = plain_lstm(bidirectional=False)
    plain_session = plain_onnx(plain, 1, 1, None)
    engine = Engine(bundle, device="cpu")
    stream = engine.stream()
    x = np.random.default_rng(0).normal(size=(1, 1, FEATURES)).astype(np.float32)
    xt = torch.from_numpy(x)
    carried: dict = {"eager": None, "h": torch.zeros(LAYERS, 1, HIDDEN), "c": torch.zeros(LAYERS, 1, HIDDEN)}
    raw_state = engine.initial_state(1)
    plain_state = {"h": np.zeros((LAYERS, 1, HIDDEN), np.float32), "c": np.zeros((LAYERS, 1, HIDDEN), np.float32)}

    @torch.no_grad()
    def torch_rnnkit():
        _, carried["eager"] = model(xt, state=carried["eager"])

    @torch.no_grad()
    def torch_plain():
        _, carried["h"], carried["c"] = plain(xt, carried["h"], carried["c"])

    def ort_plain():
        _, h, c = plain_session.run(None, {"x": x, **plain_state})
        plain_state.update(h=h, c=c)

    def ort_step_graph():
        nonlocal raw_state
        _, raw_state = engine.run_step(x, raw_state)

    contenders = {
        "PyTorch eager, rnnkit model": torch_rnnkit,
        "PyTorch eager, nn.LSTM + Linear": torch_plain,
        "plain torch.onnx export in onnxruntime": ort_plain,
        "rnnkit step.onnx, bare session.run": ort_step_graph,
        "rnnkit Python API, Stream.push": lambda: stream.push(x[0]),
    }
    return interleaved(contenders, calls, rounds)


def stream_command_step(bundle: Path, steps: int) -> dict[str, float]:
    """`rnnkit stream` in a pipe: ms per one-step message, lock-step (send, wait for the answer)
    and pipelined (all messages written, answers read as they come)."""
    rng = np.random.default_rng(0)
    lines = [
        json.dumps({"stream": "a", "features": rng.normal(size=(1, FEATURES)).round(4).tolist()}) + "\n"
        for _ in range(steps)
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "stream", str(bundle), "--device", "cpu"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        bufsize=1,
    )
    proc.stdin.write(lines[0])
    proc.stdin.flush()
    proc.stdout.readline()  # warm
    start = time.perf_counter()
    for line in lines:
        proc.stdin.write(line)
        proc.stdin.flush()
        proc.stdout.readline()
    lockstep = (time.perf_counter() - start) / steps * 1e3

    def write_all():  # from a thread: both pipes would fill if one side waited on the other
        proc.stdin.writelines(lines)
        proc.stdin.close()

    start = time.perf_counter()
    writer = threading.Thread(target=write_all)
    writer.start()
    answered = sum(1 for _ in proc.stdout)
    writer.join()
    pipelined = (time.perf_counter() - start) / steps * 1e3
    proc.wait()
    assert answered == steps, f"{answered} answers to {steps} messages"
    return {"rnnkit stream, lock-step round trip": lockstep, "rnnkit stream, pipelined": pipelined}


# ---- full-sequence throughput -----------------------------------------------------------------
def full_sequence(bundle: Path, run: Path, batch: int, length: int, rounds: int) -> dict[str, float]:
    import torch

    from toolkit.runtime.engine import Engine
    from toolkit.train.checkpoint import load_model

    model = load_model(run)[0]
    plain = plain_lstm(bidirectional=True)
    plain_session = plain_onnx(plain, batch, 2, None)
    engine = Engine(bundle, device="cpu")
    x = np.random.default_rng(0).normal(size=(batch, length, FEATURES)).astype(np.float32)
    xt, lengths = torch.from_numpy(x), torch.full((batch,), length, dtype=torch.int64)
    zeros = np.zeros((LAYERS * 2, batch, HIDDEN), np.float32)
    sequences = list(x)

    @torch.no_grad()
    def torch_rnnkit():
        model(xt, lengths)

    @torch.no_grad()
    def torch_plain():
        plain(xt, torch.from_numpy(zeros), torch.from_numpy(zeros))

    contenders = {
        "PyTorch eager, rnnkit model": torch_rnnkit,
        "PyTorch eager, nn.LSTM + Linear": torch_plain,
        "plain torch.onnx export in onnxruntime": lambda: plain_session.run(None, {"x": x, "h": zeros, "c": zeros}),
        "rnnkit Engine.infer": lambda: engine.infer(sequences, batch_size=batch),
    }
    return interleaved(contenders, 1, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000, help="steps per round in the latency test")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    from benchmarks.models import feature_bundle

    torch.set_num_threads(os.cpu_count() or 1)
    print(
        f"torch {torch.__version__}, onnxruntime {ort.__version__}, {os.cpu_count()} cores, "
        f"LSTM {LAYERS}x{HIDDEN}, {FEATURES} features"
    )
    with tempfile.TemporaryDirectory() as tmp:
        uni = feature_bundle(Path(tmp) / "uni", bidirectional=False)
        bi = feature_bundle(Path(tmp) / "bi", bidirectional=True)
        results = {
            "cold start (s)": cold_start(uni, max(3, args.rounds // 2)),
            "one stream, one step per call (ms)": {
                **step_latency(uni, uni.parent / "run", args.calls, args.rounds),
                **stream_command_step(uni, args.calls),
            },
            "biLSTM full sequence, batch 32 x 256 steps (ms per batch)": full_sequence(
                bi, bi.parent / "run", 32, 256, args.rounds
            ),
        }
    for section, figures in results.items():
        print(f"\n{section}")
        for name, value in figures.items():
            print(f"  {name:<44} {value:10.4f}")
    step = results["one stream, one step per call (ms)"]
    full = results["biLSTM full sequence, batch 32 x 256 steps (ms per batch)"]
    print("\ntargets")
    print(f"  Stream.push per step {step['rnnkit Python API, Stream.push']:.4f} ms (target <= 0.12)")
    added = step["rnnkit stream, lock-step round trip"] - step["rnnkit Python API, Stream.push"]
    print(f"  the stream command adds {added:.4f} ms per step (lock-step round trip over a pipe)")
    speedup = full["PyTorch eager, rnnkit model"] / full["rnnkit Engine.infer"]
    print(f"  biLSTM Engine.infer vs PyTorch eager (rnnkit model): {speedup:.2f}x throughput (target >= 1.5)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
