"""Data-parallel training throughput: the same run with 1 and with N processes (`rnnkit train
--nproc N`, gloo on CPU), side by side in one run: tokens (steps) per second of the training
passes, as the run records them (`train_steps_per_s`, the group's), and the wall time.

    .venv/bin/python -m benchmarks.distributed [--nproc 2] [--epochs 3] [--json out.json]

On a 2-core machine expect little gain: each process gets one core (torchrun sets
OMP_NUM_THREADS=1) and gloo's gradient all-reduce adds a round trip per batch; the point of DDP
here is correctness (tests/test_distributed.py), the gain comes with more cores, nodes or GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def data(path: Path, n: int = 2000, features: int = 16) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(n):
        x = rng.normal(size=(int(rng.integers(50, 150)), features)).round(3)
        rows.append({"features": x.tolist(), "label": "up" if x[:, 0].sum() > 0 else "down"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run(train: Path, out: Path, nproc: int, epochs: int, threads: int) -> dict:
    command = [sys.executable, "-m", "cli.main", "train", "--task", "classify", "--data", str(train)]
    command += ["--cell", "lstm", "--hidden-size", "128", "--num-layers", "2", "--batch-size", "64"]
    command += ["--epochs", str(epochs), "--out", str(out), "--no-mlflow", "--no-export", "--no-progress"]
    command += ["--device", "cpu", "--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, env=env)
    wall = time.perf_counter() - started
    history = json.loads((out / "metrics.json").read_text())["history"]
    rates = [r["train_steps_per_s"] for r in history]
    return {"steps_per_s": float(np.median(rates)), "wall_s": wall, "final_train_loss": history[-1]["train_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train = data(tmp / "train.jsonl")
        cores = len(os.sched_getaffinity(0))
        report = {
            f"1 process ({cores} threads)": run(train, tmp / "one", 1, args.epochs, cores),
            f"{args.nproc} processes (1 thread each)": run(train, tmp / "many", args.nproc, args.epochs, 1),
        }
    for name, figures in report.items():
        print(f"{name}: {json.dumps(figures)}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
