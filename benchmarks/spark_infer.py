"""Batch scoring throughput: `rnnkit infer` (ONNX Runtime in one process) and `rnnkit infer --engine
spark --master local[N]` (Spark through the MLflow model) on the same JSON Lines file, side by side
in one run, wall time of the whole command (process and Spark start included) and rows per second.

    .venv/bin/python -m benchmarks.spark_infer [--rows 50000] [--master local[2]] [--json out.json]

The model: a biLSTM 1x64 character classifier (trained one epoch on the rows themselves).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def rnnkit(*args: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = []
        for _ in range(args.rows):
            tokens = list(rng.choice(list("abcdef"), size=int(rng.integers(5, 60))))
            rows.append({"tokens": tokens, "label": max("abc", key=tokens.count)})
        data = tmp / "rows.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        train = ["--task", "classify", "--data", str(data), "--bidirectional", "--hidden-size", "64", "--epochs", "1"]
        rnnkit("train", *train, "--out", str(tmp / "run"), "--no-mlflow", "--no-progress", "--device", "cpu")
        infer = ["infer", str(tmp / "run" / "bundle"), "--input", str(data), "--output"]
        seconds = {
            "rnnkit infer (ONNX Runtime)": rnnkit(*infer, str(tmp / "a.jsonl")),
            f"rnnkit infer --engine spark --master {args.master}": rnnkit(
                *infer, str(tmp / "b.jsonl"), "--engine", "spark", "--master", args.master
            ),
        }
    report = {k: {"seconds": round(v, 1), "rows_per_s": round(args.rows / v)} for k, v in seconds.items()}
    for name, figures in report.items():
        print(f"{name}: {json.dumps(figures)}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
