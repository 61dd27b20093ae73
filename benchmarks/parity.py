"""Parity stress: does the certificate ever refuse a correct export? Trains and exports hundreds
of models with fresh parity seeds and reports how close every case came to its budget.

    .venv/bin/python -m benchmarks.parity [--exports 300] [--seed 0] [--out runs/parity-stress] [--quick]

Models are drawn at random (seeded by --seed; the parity inputs are fresh each export): every
cell (rnn tanh/relu, lstm, gru) x direction x task (classify, tag, lm, regress per sequence and
per step), token and feature inputs, 1-4 layers, hidden sizes 16-512, merge concat/sum and
residual sometimes; feature scales from 1e-2 to 1e2 with offsets; regression targets from 1e-3 to
1e5 in size; a --sample file of sequences up to 2,000 steps for many models; and in every full
run the demo's three models (a few epochs each) and a confident character LM whose logits pass
20. Each model trains for an epoch or so on small synthetic data: the point is realistic trained
weights, not accuracy.

Output: one line per export (worst margin and its case), then the margin distribution over all
cases (margin = error / budget; a case fails above 1), the worst case per case kind and per task
and cell, the largest output scales reached, and the failures. Rows go to OUT/rows.jsonl, the
summary to OUT/summary.json. Exit 1 if any export failed parity.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from toolkit.config import Config
from toolkit.data.examples import example_path
from toolkit.export.exporter import export
from toolkit.train.loop import train

LETTERS = list("abcdefghijklmnop")
CELLS = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")]
TASKS = ["classify", "tag", "lm", "regress", "regress-step"]


@dataclass
class Spec:
    """One model to train and export."""

    name: str
    task: str  # a TASKS entry
    cell: str
    nonlinearity: str = "tanh"
    bidirectional: bool = False
    hidden_size: int = 32
    num_layers: int = 1
    merge: str = "concat"
    residual: bool = False
    features: bool = False  # classify/tag read features instead of tokens
    target_scale: float = 1.0  # regress: size of the targets
    target_offset: float = 0.0
    long_sample: bool = False  # a --sample file with sequences up to 2,000 steps
    epochs: int = 1
    lr: float = 0.01
    data: dict = field(default_factory=dict)  # set for real data: DataConfig fields

    @property
    def describe(self) -> str:
        cell = f"rnn-{self.nonlinearity}" if self.cell == "rnn" else self.cell
        extra = (" bi-" + self.merge) if self.bidirectional else ""
        extra += " residual" if self.residual else ""
        extra += " features" if self.features and self.task in ("classify", "tag") else ""
        if self.task.startswith("regress"):
            extra += f" targets~{self.target_scale:g}" + (f"+{self.target_offset:g}" if self.target_offset else "")
        extra += " sample<=2000" if self.long_sample else ""
        return f"{self.name}: {self.task} {cell} {self.num_layers}x{self.hidden_size}{extra}"


# ---- data -------------------------------------------------------------------------------------
def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def features(rng, steps: int, width: int, spec: Spec) -> np.ndarray:
    """Features with a per-model offset and spread, so folding the normalisation matters."""
    scale = spec.data.get("feature_scale", 1.0)
    offset = spec.data.get("feature_offset", 0.0)
    return offset + scale * rng.normal(size=(steps, width))


def synthetic_rows(spec: Spec, rng, n: int, lengths: tuple[int, int]) -> list[dict]:
    rows = []
    for _ in range(n):
        steps = int(rng.integers(*lengths))
        toks = [str(t) for t in rng.choice(LETTERS, size=steps)]
        x = features(rng, steps, 3, spec)
        z = (x[:, 0] - spec.data.get("feature_offset", 0.0)) / spec.data.get("feature_scale", 1.0)
        if spec.task == "classify":
            label = "vowel" if sum(t in "aeio" for t in toks) * 4 > steps else "other"
            if spec.features:
                rows.append({"features": x.round(4).tolist(), "label": "up" if z.mean() > 0 else "down"})
            else:
                rows.append({"tokens": toks, "label": label})
        elif spec.task == "tag":
            if spec.features:
                rows.append({"features": x.round(4).tolist(), "tags": ["P" if v > 0 else "N" for v in z]})
            else:
                rows.append({"tokens": toks, "tags": ["V" if t in "aeio" else "C" for t in toks]})
        else:  # regress: a running mean of feature 0, rescaled
            value = spec.target_offset + spec.target_scale * np.cumsum(z) / np.arange(1, steps + 1)
            target = value[:, None].tolist() if spec.task == "regress-step" else float(value[-1])
            rows.append({"features": x.round(6).tolist(), "target": target})
    return rows


def make_data(spec: Spec, tmp: Path, rng) -> dict:
    """DataConfig fields for the spec, writing its files under tmp."""
    if spec.data.get("data"):
        return {k: v for k, v in spec.data.items() if not k.startswith("feature_")}
    if spec.task == "lm":
        words = ["the cat sat. ", "a dog ran far. ", "we go home now. ", "to be or not. "]
        text = "".join(rng.choice(words) for _ in range(spec.data.get("sentences", 200)))
        (tmp / "train.txt").write_text(spec.data.get("text", text), encoding="utf-8")
        return {"data": str(tmp / "train.txt")}
    rows = synthetic_rows(spec, rng, 96, (3, 30))
    return {"data": write_jsonl(tmp / "train.jsonl", rows)}


def sample_file(spec: Spec, tmp: Path, rng) -> str | None:
    """Sequences up to 2,000 steps for the certificate's --sample case (not for lm: a text)."""
    if not spec.long_sample or spec.task == "lm":
        return None
    rows = synthetic_rows(spec, rng, 3, (5, 40))
    for row, steps in zip(rows, (2000, 1000), strict=False):
        key = "tokens" if "tokens" in row else "features"
        row[key] = (
            [str(t) for t in rng.choice(LETTERS, size=steps)]
            if key == "tokens"
            else features(rng, steps, 3, spec).round(4).tolist()
        )
        for extra in ("label", "tags", "target"):
            row.pop(extra, None)
    return write_jsonl(tmp / "sample.jsonl", rows)


def config(spec: Spec, data: dict, out: Path) -> Config:
    cfg = Config(task="regress" if spec.task.startswith("regress") else spec.task)
    for key, value in data.items():
        setattr(cfg.data, key, value)
    m = cfg.model
    m.cell, m.nonlinearity, m.bidirectional = spec.cell, spec.nonlinearity, spec.bidirectional
    m.hidden_size, m.num_layers, m.merge, m.residual = spec.hidden_size, spec.num_layers, spec.merge, spec.residual
    m.embedding_dim = min(64, spec.hidden_size)
    t = cfg.train
    t.epochs, t.lr, t.batch_size, t.bptt, t.device, t.out = spec.epochs, spec.lr, 16, 64, "cpu", str(out)
    if spec.task == "lm":
        t.batch_size = 32
    return cfg


# ---- the models -------------------------------------------------------------------------------
def demo_specs() -> list[Spec]:
    """The demo's three models (fewer epochs) and a confident character LM (logits past 20)."""
    jv = {"data": str(example_path("JapaneseVowels_TRAIN.ts"))}
    gp = {"data": str(example_path("GunPoint_TRAIN.ts")), "val_fraction": 0.2}
    plays = {"data": str(example_path("shakespeare") / "comedies"), "level": "char", "val_fraction": 0.05}
    cyclic = {"text": "abcdefghijklmnopqrstuvwxyz" * 8000 + "\n"}  # next letter certain: logits grow
    return [
        Spec("demo JapaneseVowels", "classify", "lstm", bidirectional=True, hidden_size=64, epochs=8, lr=3e-3, data=jv),
        Spec("demo GunPoint", "classify", "gru", bidirectional=True, hidden_size=64, epochs=8, lr=0.005, data=gp),
        Spec("demo Shakespeare", "lm", "lstm", hidden_size=128, num_layers=2, epochs=1, lr=0.004, data=plays),
        Spec("confident char LM", "lm", "lstm", hidden_size=128, num_layers=2, epochs=4, lr=0.03, data=cyclic),
    ]


def random_spec(i: int, rng: np.random.Generator) -> Spec:
    task = str(rng.choice(TASKS))
    cell, nonlinearity = CELLS[int(rng.integers(len(CELLS)))]
    large = rng.random() < 0.1
    hidden = int(rng.choice([256, 384, 512])) if large else int(rng.choice([16, 32, 64, 128, 192]))
    layers = int(rng.integers(2, 5)) if large else int(rng.choice([1, 2, 2, 3, 4]))
    spec = Spec(
        f"#{i}",
        task,
        cell,
        nonlinearity,
        bidirectional=task != "lm" and rng.random() < 0.5,
        hidden_size=hidden,
        num_layers=layers,
        merge=str(rng.choice(["concat", "sum"])),
        residual=layers > 1 and rng.random() < 0.3,
        features=task in ("classify", "tag") and rng.random() < 0.4,
        long_sample=not large and rng.random() < 0.3,
        lr=float(rng.choice([0.003, 0.01, 0.03])),
    )
    spec.data = {"feature_scale": float(10 ** rng.uniform(-2, 2)), "feature_offset": float(rng.normal() * 50)}
    if task.startswith("regress"):
        spec.target_scale = 10.0 ** int(rng.integers(-3, 6))
        spec.target_offset = float(rng.choice([0.0, 0.0, 5000.0, -20.0]))
    return spec


def quick_specs() -> list[Spec]:
    """Small models: each task once, both directions, every cell."""
    return [
        Spec("q1", "classify", "lstm", hidden_size=24, num_layers=2),
        Spec("q2", "classify", "gru", bidirectional=True, features=True, hidden_size=16),
        Spec("q3", "tag", "rnn", "relu", bidirectional=True, hidden_size=24, num_layers=2, long_sample=True),
        Spec("q4", "lm", "gru", hidden_size=32, num_layers=2),
        Spec("q5", "regress", "lstm", hidden_size=16, target_scale=1e4, target_offset=5000.0),
        Spec("q6", "regress-step", "rnn", hidden_size=16, target_scale=1e-3),
    ]


# ---- running ----------------------------------------------------------------------------------
def run_one(spec: Spec, rng: np.random.Generator) -> tuple[list[dict], float]:
    """Train and export one model; returns its case rows and the seconds taken."""
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="parity-stress-"))
    try:
        cfg = config(spec, make_data(spec, tmp, rng), tmp / "run")
        train(cfg, progress=False, log=lambda m: None)
        result = export(tmp / "run", tmp / "bundle", sample=sample_file(spec, tmp, rng))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = [
        {
            "model": spec.describe,
            "task": spec.task,
            "cell": spec.cell,
            "hidden_size": spec.hidden_size,
            "seed": result.report.seed,
            **{k: getattr(c, k) for k in ("name", "graph", "provider", "max_abs", "noise", "scale", "budget")},
            **{k: getattr(c, k) for k in ("margin", "passed")},
        }
        for c in result.report.cases
    ]
    return rows, time.perf_counter() - started


def kind(case_name: str) -> str:
    """The case's kind: its name without the sample's size or the stream's state."""
    return case_name.split(" (")[0]


def summarise(rows: list[dict], exports: int, seconds: float) -> dict:
    margins = np.array([r["margin"] for r in rows])
    worst = max(rows, key=lambda r: r["margin"])
    by_kind: dict[str, float] = {}
    by_model: dict[str, float] = {}
    for r in rows:
        by_kind[kind(r["name"])] = max(by_kind.get(kind(r["name"]), 0.0), r["margin"])
        key = f"{r['task']} {r['cell']}"
        by_model[key] = max(by_model.get(key, 0.0), r["margin"])
    scales = {
        task: max((r["scale"] for r in rows if r["task"] == task and "final" not in r["name"]), default=None)
        for task in TASKS
    }
    failed = sorted({r["model"] for r in rows if not r["passed"]})
    return {
        "exports": exports,
        "cases": len(rows),
        "failed_exports": len(failed),
        "failed_cases": int(sum(not r["passed"] for r in rows)),
        "failures": failed,
        "worst": {k: worst[k] for k in ("model", "name", "margin", "max_abs", "noise", "budget", "scale", "seed")},
        "margin_percentiles": {str(p): float(np.percentile(margins, p)) for p in (50, 90, 99, 99.9, 100)},
        "worst_margin_by_case": dict(sorted(by_kind.items())),
        "worst_margin_by_task_cell": dict(sorted(by_model.items())),
        "largest_output_scale_by_task": scales,
        "seconds": seconds,
    }


def report(summary: dict) -> None:
    print(f"\n{summary['exports']} exports, {summary['cases']} cases in {summary['seconds'] / 60:.1f} min")
    print(f"failures: {summary['failed_exports']} exports ({summary['failed_cases']} cases)")
    for name in summary["failures"]:
        print(f"  FAILED {name}")
    w = summary["worst"]
    print(f"worst margin {w['margin']:.3f}: {w['model']} / {w['name']} (seed {w['seed']})")
    print(f"  error {w['max_abs']:.2e}, fp32 err {w['noise']:.2e}, budget {w['budget']:.2e}, scale {w['scale']:.3g}")
    print("margin percentiles: " + ", ".join(f"p{k} {v:.3f}" for k, v in summary["margin_percentiles"].items()))
    print("worst margin by case:")
    for name, value in summary["worst_margin_by_case"].items():
        print(f"  {name:<46} {value:.3f}")
    print("worst margin by task and cell:")
    for name, value in summary["worst_margin_by_task_cell"].items():
        print(f"  {name:<22} {value:.3f}")
    scales = ", ".join(f"{k} {v:.3g}" for k, v in summary["largest_output_scale_by_task"].items() if v is not None)
    print(f"largest max|output| by task: {scales}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exports", type=int, default=300, help="number of models (at least the fixed ones)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model draw (parity inputs stay fresh)")
    parser.add_argument("--out", default="runs/parity-stress", help="directory for rows.jsonl and summary.json")
    parser.add_argument("--quick", action="store_true", help="six small models, one of each task (a smoke check)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    rng = np.random.default_rng(args.seed)
    specs = quick_specs() if args.quick else demo_specs()
    specs += [random_spec(i, rng) for i in range(len(specs), args.exports)] if not args.quick else []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    started = time.perf_counter()
    with open(out / "rows.jsonl", "w", encoding="utf-8") as f:
        for i, spec in enumerate(specs, 1):
            got, seconds = run_one(spec, rng)
            rows += got
            f.writelines(json.dumps(r) + "\n" for r in got)
            f.flush()
            worst = max(got, key=lambda r: r["margin"])
            verdict = "" if all(r["passed"] for r in got) else "  FAILED"
            print(
                f"[{i}/{len(specs)}] {spec.describe}: worst margin {worst['margin']:.3f} ({worst['name']}), "
                f"{seconds:.1f} s{verdict}",
                flush=True,
            )
    summary = summarise(rows, len(specs), time.perf_counter() - started)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    report(summary)
    return 1 if summary["failed_exports"] else 0


if __name__ == "__main__":
    sys.exit(main())
