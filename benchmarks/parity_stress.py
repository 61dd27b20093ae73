"""Parity stress: does the export certificate ever raise a false alarm? Trains and exports hundreds
of models, each with a fresh parity seed, and reports how close every case came to its budget.

    .venv/bin/python -m benchmarks.parity_stress [--exports 300] [--seed 0] [--out runs/parity-stress] [--quick]
                                                 [--only 25,75]

The models. Every full run starts with the demo's three models, trained for a few epochs only
(JapaneseVowels biLSTM 1x64 for 3 epochs, GunPoint biGRU 1x64 for 5, the Shakespeare comedies
char LSTM 2x128 with embedding 32 for 1; the two classifiers also get a --sample file of their
real series laid end to end), and a confident character LM (an LSTM 1x256 trained on cyclic
text at lr 0.06: its logits reach about 30 on the certificate's inputs). The rest are drawn
from --seed (model i is the same for any --exports; the parity inputs stay fresh,
export(seed=None)), cycling through every cell (rnn tanh, rnn relu, lstm, gru) x direction x
task (classify, tag, lm, regress per sequence, regress per step; no bidirectional lm), with 1-4
layers (2-4 in two of three), merge concat or sum, residual sometimes, token or feature inputs
(1, 3 or 12 features, spread 1e-2 to 1e2, around 0, +-50 or 5000), character and word LMs, and
regression targets of size 10^k for k in -3..5 or levels such as 5000 +- 100 and 100 +- 0.01.
Most are small (hidden 16-128, one epoch on 300 sequences of 3-30 steps, lr 0.003-0.02); about
one in eight is large (hidden 256-512, 2-4 layers, one epoch on 48 sequences at lr 0.001-0.003):
training cost is not the point, realistic trained weights are. About a third of the models also
get a --sample file of four sequences of 2,000, 1,200, 333 and 7 steps (the certificate's own
grid stops at 512 steps and its stream at 1,000; an LM cannot take one, its data is a text).
--quick runs twelve small models, every task and cell among them, in well under two minutes.
torch runs on one thread (see `torch_threads`).

Reading the output. One line per model: its index, what it is, its number of cases, its worst
margin and that case, its largest output scale (max |reference|: logits or values) and the
seconds it took (train and export). Margin = error / budget: a case passes at most at 1, so the
distance below 1 is the headroom a correct export has. The summary gives the failures, each
with its reason (an error above a finite budget: a false alarm if the export is right; or
float32 overflow: the reference beyond float32's range or float32's own runs not finite) and
its parity seed (the same --seed retrains the same model i, and export(run, seed=that seed)
repeats its certificate), the worst case of the run, margin percentiles over the cases float32 can run, the
worst margin per case kind and per task x cell x direction, the largest scales reached (LM
logits must pass 20 in a full run), and the time per model by size. OUT/rows.jsonl holds one
row per case (margins of failed cases may be Infinity), OUT/summary.json the summary. Exit
status 1 if any export failed parity with an error above its budget (overflow refusals are
counted apart); 2 if a model could not be trained or exported, or a full
run's LM logits stayed below 20 (the run did not test what it claims).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from toolkit.core.config import Config
from toolkit.core.data.examples import example_path
from toolkit.core.data.formats import read_records
from toolkit.export.exporter import export
from toolkit.export.parity import Case
from toolkit.train.loop import train

CELLS = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")]
TASKS = ["classify", "tag", "lm", "regress", "regress-step"]
GRID = [
    (task, cell, nl, bi) for task in TASKS for bi in (False, True) for cell, nl in CELLS if not (task == "lm" and bi)
]
LETTERS = list("abcdefghijklmnop")
SENTENCES = ["the cat sat.", "a dog ran far.", "we go home now.", "to be or not.", "sell at 5000 now."]
SAMPLE_LENGTHS = (2000, 1200, 333, 7)  # the --sample file's sequences
LEVELS = [(100.0, 5000.0), (1e3, 1e5), (0.01, 100.0), (1e-3, -50.0)]  # regress (spread, level)
LARGE_SHARE = 0.12
LOGIT_TARGET = 20.0  # a full run must hold a model whose logits pass this
SHOWN = ("model", "name", "margin", "max_abs", "noise", "budget", "scale", "parity_seed")  # of a case, in the summary


@dataclass
class Spec:
    """One model to train and export."""

    name: str
    task: str  # a TASKS entry
    cell: str = "lstm"
    nonlinearity: str = "tanh"
    bidirectional: bool = False
    hidden_size: int = 32
    num_layers: int = 1
    merge: str = "concat"
    residual: bool = False
    embedding_dim: int = 32
    features: bool = False  # feature inputs (else tokens; lm always reads tokens)
    width: int = 3  # features per step
    feature_scale: float = 1.0
    feature_offset: float = 0.0
    target_scale: float = 1.0  # regress: target = offset + scale * (a running mean of the signal)
    target_offset: float = 0.0
    sequences: int = 300  # synthetic data: sequences (lm: sentences)
    max_length: int = 30
    level: str = "char"  # lm
    long_sample: bool = False  # a --sample file with sequences up to 2,000 steps
    size: str = "small"  # small, large, demo or confident: the group its time is reported in
    epochs: int = 1
    lr: float = 0.01
    batch_size: int = 16
    bptt: int = 32
    data: dict = field(default_factory=dict)  # DataConfig fields of real data (nothing synthesised)
    text: str | None = None  # lm: the training text (default: random sentences)

    @property
    def cell_label(self) -> str:
        return f"rnn-{self.nonlinearity}" if self.cell == "rnn" else self.cell

    @property
    def cell_key(self) -> str:
        return f"{self.task} {self.cell_label} {'bi' if self.bidirectional else 'uni'}"

    def describe(self) -> str:
        parts = [self.task, self.cell_label + (f" bi-{self.merge}" if self.bidirectional else "")]
        parts.append(f"{self.num_layers}x{self.hidden_size}" + (" residual" if self.residual else ""))
        if self.task == "lm":
            parts.append(self.level)
        elif not self.data:
            features = f"features({self.width}) {self.feature_offset:g}+-{self.feature_scale:.2g}"
            parts.append(features if self.features else "tokens")
        if self.task.startswith("regress"):
            parts.append(f"targets {self.target_offset:g}+-{self.target_scale:g}")
        if self.long_sample:
            parts.append("sample<=2000")
        return f"{self.name}: {' '.join(parts)}"


# ---- the models -------------------------------------------------------------------------------
def demo_specs() -> list[Spec]:
    """The demo's three models (a few epochs each) and a confident character LM."""
    jv = {"data": str(example_path("JapaneseVowels_TRAIN.ts"))}
    gp = {"data": str(example_path("GunPoint_TRAIN.ts")), "val_fraction": 0.2}
    plays = {"data": str(example_path("shakespeare") / "comedies"), "level": "char", "val_fraction": 0.05}
    demo = {"size": "demo", "long_sample": True}
    return [
        Spec(
            "demo JapaneseVowels",
            "classify",
            "lstm",
            bidirectional=True,
            hidden_size=64,
            epochs=3,
            lr=0.003,
            data=jv,
            **demo,
        ),
        Spec(
            "demo GunPoint",
            "classify",
            "gru",
            bidirectional=True,
            hidden_size=64,
            epochs=5,
            lr=0.005,
            batch_size=4,
            data=gp,
            **demo,
        ),
        Spec(
            "demo Shakespeare",
            "lm",
            "lstm",
            hidden_size=128,
            num_layers=2,
            embedding_dim=32,
            epochs=1,
            lr=0.004,
            batch_size=64,
            bptt=100,
            data=plays,
            size="demo",
        ),
        Spec(
            "confident char LM",
            "lm",
            "lstm",
            hidden_size=256,
            epochs=3,
            lr=0.06,
            batch_size=32,
            bptt=64,
            text="abcdefghijklmnopqrstuvwxyz\n" * 2400,
            size="confident",
        ),
    ]


def regression_targets(rng: np.random.Generator) -> tuple[float, float]:
    """(scale, offset): a size 10^k, k in -3..5, around zero, or a level such as 5000 +- 100."""
    if rng.random() < 0.3:
        return LEVELS[int(rng.integers(len(LEVELS)))]
    return 10.0 ** int(rng.integers(-3, 6)), 0.0


def random_spec(i: int, cell: tuple, rng: np.random.Generator) -> Spec:
    task, cell_name, nonlinearity, bidirectional = cell
    large = rng.random() < LARGE_SHARE
    layers = int(rng.choice([2, 3, 4] if large else [1, 1, 2, 2, 3, 4]))
    feature_chance = {"classify": 0.4, "tag": 0.4, "lm": 0.0}.get(task, 0.8)
    spec = Spec(
        f"#{i}",
        task,
        cell_name,
        nonlinearity,
        bidirectional,
        hidden_size=int(rng.choice([256, 384, 512] if large else [16, 32, 48, 64, 96, 128])),
        num_layers=layers,
        merge=str(rng.choice(["concat", "sum"])),
        residual=layers > 1 and rng.random() < 0.3,
        embedding_dim=int(rng.choice([8, 16, 32, 64])),
        features=rng.random() < feature_chance,
        width=int(rng.choice([1, 3, 12])),
        feature_scale=float(10 ** rng.uniform(-2, 2)),
        feature_offset=float(rng.choice([0.0, round(rng.normal() * 50, 2), 5000.0])),
        sequences=48 if large else 300,
        max_length=16 if large else 30,
        level="word" if rng.random() < 0.3 else "char",
        long_sample=task != "lm" and rng.random() < (0.25 if large else 0.4),
        size="large" if large else "small",
        lr=float(rng.choice([0.001, 0.003] if large else [0.003, 0.01, 0.02])),
    )
    if task.startswith("regress"):
        spec.target_scale, spec.target_offset = regression_targets(rng)
    return spec


def full_specs(exports: int, seed: int) -> list[Spec]:
    """The fixed models, then random ones cycling through every cell (a new order each round).
    Model i is the same for any --exports >= i: its draw has its own generator."""
    fixed = demo_specs()
    order = np.random.default_rng(seed)
    count = max(exports - len(fixed), 0)
    cells = [GRID[j] for _ in range(-(-count // len(GRID))) for j in order.permutation(len(GRID))][:count]
    first = len(fixed) + 1
    return fixed + [random_spec(i, c, np.random.default_rng([seed, i, 1])) for i, c in enumerate(cells, first)]


def quick_specs() -> list[Spec]:
    """Twelve small models: every task, cell and direction, tokens and features, long samples."""
    small = {"sequences": 120, "max_length": 20}
    return [
        Spec("q1", "classify", "lstm", num_layers=2, hidden_size=24, long_sample=True, **small),
        Spec("q2", "lm", "gru", num_layers=2, hidden_size=32, sequences=200),
        Spec("q3", "regress-step", "rnn", "relu", hidden_size=16, features=True, target_scale=1e5, **small),
        Spec(
            "q4",
            "classify",
            "gru",
            bidirectional=True,
            features=True,
            feature_offset=5000.0,
            feature_scale=100.0,
            **small,
        ),
        Spec("q5", "tag", "rnn", "relu", bidirectional=True, merge="sum", num_layers=2, long_sample=True, **small),
        Spec("q6", "tag", "rnn", features=True, width=1, feature_scale=0.01, **small),
        Spec("q7", "lm", "rnn", hidden_size=48, level="word", sequences=200),
        Spec(
            "q8",
            "regress",
            "lstm",
            bidirectional=True,
            merge="sum",
            hidden_size=16,
            features=True,
            target_scale=100.0,
            target_offset=5000.0,
            **small,
        ),
        Spec(
            "q9",
            "regress",
            "gru",
            num_layers=3,
            residual=True,
            hidden_size=16,
            features=True,
            target_scale=1e-3,
            long_sample=True,
            **small,
        ),
        Spec(
            "q10",
            "regress-step",
            "lstm",
            bidirectional=True,
            features=True,
            target_scale=0.01,
            long_sample=True,
            **small,
        ),
        Spec("q11", "classify", "rnn", num_layers=4, residual=True, hidden_size=16, **small),
        Spec("q12", "tag", "lstm", hidden_size=64, **small),
    ]


# ---- data -------------------------------------------------------------------------------------
def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def synthetic_row(spec: Spec, rng: np.random.Generator, steps: int) -> dict:
    """One sequence and its target: a signal per step (feature 0, or +1 for a vowel) that the
    label, the tags and the regression target (its running mean, rescaled) are read from."""
    if spec.features:
        z = rng.normal(size=(steps, spec.width))
        row: dict = {"features": (spec.feature_offset + spec.feature_scale * z).round(6).tolist()}
        signal = z[:, 0]
    else:
        tokens = [str(t) for t in rng.choice(LETTERS, size=steps)]
        row = {"tokens": tokens}
        signal = np.array([1.0 if t in "aeio" else -0.3 for t in tokens])
    if spec.task == "classify":
        return {**row, "label": "up" if signal.mean() > 0 else "down"}
    if spec.task == "tag":
        return {**row, "tags": ["P" if v > 0 else "N" for v in signal]}
    value = spec.target_offset + spec.target_scale * np.cumsum(signal) / np.arange(1, steps + 1)
    return {**row, "target": value[:, None].tolist() if spec.task == "regress-step" else float(value[-1])}


def lm_text(spec: Spec, rng: np.random.Generator) -> str:
    if spec.text is not None:
        return spec.text
    return "\n".join(" ".join(rng.choice(SENTENCES, size=3)) for _ in range(spec.sequences)) + "\n"


def make_data(spec: Spec, tmp: Path, rng: np.random.Generator) -> dict:
    """DataConfig fields for the spec, writing its synthetic files under tmp."""
    if spec.data:
        return spec.data
    if spec.task == "lm":
        (tmp / "train.txt").write_text(lm_text(spec, rng), encoding="utf-8")
        return {"data": str(tmp / "train.txt"), "level": spec.level}
    lengths = rng.integers(3, spec.max_length + 1, size=spec.sequences)
    return {"data": write_jsonl(tmp / "train.jsonl", [synthetic_row(spec, rng, int(n)) for n in lengths])}


def sample_file(spec: Spec, tmp: Path, rng: np.random.Generator) -> str | None:
    """Sequences of SAMPLE_LENGTHS steps for the certificate's --sample case: synthetic, or the
    real training series laid end to end."""
    if not spec.long_sample:
        return None
    if spec.data:
        series = np.concatenate([r.features for r in read_records(spec.data["data"], spec.task)])
        steps = np.resize(series, (sum(SAMPLE_LENGTHS), series.shape[1]))
        cuts = np.cumsum(SAMPLE_LENGTHS)[:-1]
        rows = [{"features": part.tolist()} for part in np.split(steps, cuts)]
    else:
        rows = [synthetic_row(spec, rng, n) for n in SAMPLE_LENGTHS]
        rows = [{k: v for k, v in row.items() if k in ("tokens", "features")} for row in rows]
    return write_jsonl(tmp / "sample.jsonl", rows)


def config(spec: Spec, data: dict, out: Path) -> Config:
    cfg = Config(task="regress" if spec.task.startswith("regress") else spec.task)
    for key, value in data.items():
        setattr(cfg.data, key, value)
    for key in ("cell", "nonlinearity", "bidirectional", "hidden_size", "num_layers", "merge", "residual"):
        setattr(cfg.model, key, getattr(spec, key))
    cfg.model.embedding_dim = spec.embedding_dim
    t = cfg.train
    t.epochs, t.lr, t.batch_size, t.bptt = spec.epochs, spec.lr, spec.batch_size, spec.bptt
    t.device, t.out = "cpu", str(out)
    return cfg


# ---- running ----------------------------------------------------------------------------------
@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch on `count` intra-op threads, restored after. One thread: these models are small and
    the machines shared; two threads that wait on each other's core were 5x slower here."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def certify(spec: Spec, rng: np.random.Generator, precision: str = "fp32") -> tuple[list[Case], int, dict | None]:
    """Train the spec's model and export it at `precision` with a fresh parity seed: its cases,
    that seed and (reduced precision) the task-metric check. The run directory and bundle are deleted."""
    with tempfile.TemporaryDirectory(prefix="parity-stress-") as name:
        tmp = Path(name)
        cfg = config(spec, make_data(spec, tmp, rng), tmp / "run")
        train(cfg, progress=False, log=lambda m: None)
        sample = sample_file(spec, tmp, rng)
        result = export(tmp / "run", tmp / "bundle", sample=sample, seed=None, precision=precision)
        return result.report.cases, result.report.seed, result.report.summary().get("metric")


def case_row(index: int, spec: Spec, case: Case, seed: int) -> dict:
    fields = ("name", "graph", "provider", "margin", "max_abs", "noise", "budget", "scale", "passed", "reason")
    return {
        "index": index,
        "model": spec.describe(),
        "size": spec.size,
        "cell": spec.cell_key,
        "task": spec.task,
        "parity_seed": seed,
        **{k: getattr(case, k) for k in fields},
    }


def output_scale(rows: list[dict]) -> float:
    """Largest max |reference| of a model's outputs (logits or values; final states left out)."""
    return max((r["scale"] for r in rows if ", final " not in r["name"]), default=0.0)


def model_line(index: int, total: int, spec: Spec, rows: list[dict], seconds: float) -> str:
    worst = max(rows, key=lambda r: r["margin"])
    verdict = "" if all(r["passed"] for r in rows) else f"  FAILED {sum(not r['passed'] for r in rows)} cases"
    return (
        f"[{index}/{total}] {spec.describe()}: {len(rows)} cases, worst margin {worst['margin']:.3f} "
        f"({worst['name']}), max|out| {output_scale(rows):.3g}, {seconds:.1f} s{verdict}"
    )


def stress(
    specs: list[Spec],
    out: Path,
    seed: int = 0,
    echo=print,
    logit_target: float | None = None,
    only: set[int] | None = None,
    precision: str = "fp32",
) -> dict:
    """Train, export and record every spec (those numbered in `only`, when given); write
    OUT/rows.jsonl and OUT/summary.json; the summary."""
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    models: list[dict] = []
    started = time.perf_counter()
    with open(out / "rows.jsonl", "w", encoding="utf-8") as f, torch_threads(1):
        for i, spec in enumerate(specs, 1):
            if only and i not in only:
                continue
            began = time.perf_counter()
            try:
                cases, parity_seed, metric = certify(spec, np.random.default_rng([seed, i]), precision)
            except Exception as e:  # recorded, and the run goes on: one bad model must not lose the rest
                models.append({"model": spec.describe(), "size": spec.size, "error": f"{type(e).__name__}: {e}"})
                echo(f"[{i}/{len(specs)}] {spec.describe()}: ERROR {type(e).__name__}: {e}")
                continue
            got = [case_row(i, spec, c, parity_seed) for c in cases]
            seconds = time.perf_counter() - began
            rows += got
            models.append({"model": spec.describe(), "size": spec.size, "seconds": seconds, "metric": metric})
            f.writelines(json.dumps(r) + "\n" for r in got)
            f.flush()
            echo(model_line(i, len(specs), spec, got, seconds))
            if metric:
                echo(
                    f"    {metric['metric']} fp32 {metric['fp32']:.4f} {precision} {metric['reduced']:.4f} "
                    f"drop {metric['drop']:+.4f} (max {metric['max_drop']:.4f})"
                )
    summary = summarise(rows, models, time.perf_counter() - started, logit_target)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


# ---- the summary ------------------------------------------------------------------------------
def kind(case_name: str) -> str:
    """A case's kind: its name without the sample's size."""
    return case_name.split(" (")[0]


def worst_by(rows: list[dict], key) -> dict[str, float]:
    worst: dict[str, float] = {}
    for r in rows:
        worst[key(r)] = max(worst.get(key(r), 0.0), r["margin"])
    return dict(sorted(worst.items()))


def largest(rows: list[dict]) -> dict | None:
    top = max(rows, key=lambda r: r["scale"], default=None)
    return {"scale": top["scale"], "model": top["model"], "case": top["name"]} if top else None


def scales(rows: list[dict]) -> dict:
    outputs = [r for r in rows if ", final " not in r["name"]]
    return {
        "lm logits": largest([r for r in outputs if r["task"] == "lm"]),
        "classify/tag logits": largest([r for r in outputs if r["task"] in ("classify", "tag")]),
        "regress values": largest([r for r in outputs if r["task"].startswith("regress")]),
        "final state (h, c)": largest([r for r in rows if ", final " in r["name"]]),
    }


def timings(models: list[dict]) -> dict:
    by_size: dict[str, list[float]] = {}
    for m in models:
        if "seconds" in m:
            by_size.setdefault(m["size"], []).append(m["seconds"])
    return {
        size: {"models": len(s), "median_s": float(np.median(s)), "max_s": max(s), "total_s": sum(s)}
        for size, s in by_size.items()
    }


def overflowed(row: dict) -> bool:
    """float32 overflows on the case (the reference beyond float32's range, or float32's own runs
    not finite): torch in float32 cannot run that input either, so it has no margin to speak of."""
    return row["reason"].startswith("float32 overflows")


def failure(row: dict) -> dict:
    """A failed case, and why (`Case.reason`): an error above a finite budget (a false alarm, if
    the export is right), or float32 overflow (`overflowed`)."""
    return {**{k: row[k] for k in SHOWN}, "reason": "float32 overflow" if overflowed(row) else "error above budget"}


def summarise(rows: list[dict], models: list[dict], seconds: float, logit_target: float | None) -> dict:
    judged = [r for r in rows if not overflowed(r)]  # margins: the cases float32 can run
    margins = np.array([r["margin"] for r in judged]) if judged else np.zeros(1)
    worst = max(judged, key=lambda r: r["margin"], default=None)
    failed = [r for r in rows if not r["passed"]]
    reasons = [failure(r) for r in failed]
    top = scales(judged)
    lm = top["lm logits"]
    met = logit_target is None or (lm is not None and lm["scale"] >= logit_target)
    return {
        "exports": sum("seconds" in m for m in models),
        "cases": len(rows),
        "failed_exports": len({r["model"] for r in failed}),
        "failed_cases": len(failed),
        "false_alarms": len({f["model"] for f in reasons if f["reason"] == "error above budget"}),
        "overflowed": len({f["model"] for f in reasons if f["reason"] == "float32 overflow"}),
        "failures": reasons,
        "errors": [{"model": m["model"], "error": m["error"]} for m in models if "error" in m],
        "worst": {k: worst[k] for k in SHOWN} if worst else None,
        "margin_percentiles": {
            **{f"p{p:g}": float(np.percentile(margins, p)) for p in (50, 90, 99, 99.9)},
            "max": float(margins.max()),
        },
        "worst_margin_by_case": worst_by(judged, lambda r: kind(r["name"])),
        "worst_margin_by_cell": worst_by(judged, lambda r: r["cell"]),
        "largest_scales": top,
        "logit_target": logit_target,
        "logit_target_met": met,
        "seconds_by_size": timings(models),
        "seconds": seconds,
    }


def report(summary: dict, echo=print) -> None:
    echo(f"\n{summary['exports']} exports, {summary['cases']} cases in {summary['seconds'] / 60:.1f} min")
    echo(f"failures: {summary['failed_exports']} exports, {summary['failed_cases']} cases")
    echo(f"  false alarms (error above budget): {summary['false_alarms']} exports")
    echo(f"  refused for float32 overflow (torch float32 cannot run the input either): {summary['overflowed']} exports")
    by_model: dict[str, list[dict]] = {}
    for r in summary["failures"]:
        by_model.setdefault(r["model"], []).append(r)
    for model, cases in by_model.items():
        r = max(cases, key=lambda c: c["margin"])
        echo(f"  FAILED {model}: {len(cases)} cases; worst {r['name']}: {r['reason']}, margin {r['margin']:.3g}")
        sizes = f"error {r['max_abs']:.2e}, fp32 err {r['noise']:.2e}, budget {r['budget']:.2e}, scale {r['scale']:.3g}"
        echo(f"    {sizes}, parity seed {r['parity_seed']}")
    for e in summary["errors"]:
        echo(f"  ERROR {e['model']}: {e['error']}")
    if w := summary["worst"]:
        echo(f"worst margin {w['margin']:.3f}: {w['model']} / {w['name']} (parity seed {w['parity_seed']})")
        echo(f"  error {w['max_abs']:.2e}, fp32 err {w['noise']:.2e}, budget {w['budget']:.2e}, scale {w['scale']:.3g}")
    echo("margin percentiles: " + ", ".join(f"{k} {v:.3f}" for k, v in summary["margin_percentiles"].items()))
    echo("worst margin by case:")
    for name, value in summary["worst_margin_by_case"].items():
        echo(f"  {name:<46} {value:.3f}")
    echo("worst margin by task, cell and direction:")
    for name, value in summary["worst_margin_by_cell"].items():
        echo(f"  {name:<26} {value:.3f}")
    echo("largest scales (max |reference|):")
    for name, top in summary["largest_scales"].items():
        if top:
            echo(f"  {name:<20} {top['scale']:10.4g}  {top['model']} / {top['case']}")
    if not summary["logit_target_met"]:
        echo(f"LM logits stayed below {summary['logit_target']:g}: the run did not test confident logits")
    echo("seconds per model by size:")
    for size, t in summary["seconds_by_size"].items():
        times = f"median {t['median_s']:6.1f}, max {t['max_s']:6.1f}, total {t['total_s']:7.1f}"
        echo(f"  {size:<10} {t['models']:4d} models, {times}")


def exit_status(summary: dict) -> int:
    if summary["false_alarms"]:
        return 1
    return 2 if summary["errors"] or not summary["logit_target_met"] else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exports", type=int, default=300, help="number of models (the four fixed ones included)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model draw and data (parity stays fresh)")
    parser.add_argument("--out", default="runs/parity-stress", help="directory for rows.jsonl and summary.json")
    parser.add_argument("--quick", action="store_true", help="twelve small models, every task (a smoke check)")
    parser.add_argument("--only", help="comma-separated model numbers to run (e.g. 25,75: a failure's model again)")
    parser.add_argument(
        "--precision", default="fp32", help="export at this precision (int8: LSTM models only; bf16: 1-way GRU and RNN)"
    )
    args = parser.parse_args(argv)
    only = {int(i) for i in args.only.split(",")} if args.only else None
    specs = quick_specs() if args.quick else full_specs(args.exports, args.seed)
    if args.precision == "int8":
        specs = [s for s in specs if s.cell == "lstm"]
    if args.precision == "bf16":  # what precision.check offers bf16 for
        specs = [s for s in specs if s.cell != "lstm" and not s.bidirectional]
    target = None if args.quick else LOGIT_TARGET
    print(
        f"{len(specs)} models, model seed {args.seed}, fresh parity seeds; rows and summary to {args.out}", flush=True
    )
    if only:
        target = target if 4 in only else None  # the confident LM is model 4
    echo = lambda line: print(line, flush=True)  # noqa: E731
    kwargs = {"echo": echo, "logit_target": target, "only": only, "precision": args.precision}
    summary = stress(specs, Path(args.out), args.seed, **kwargs)
    report(summary)
    return exit_status(summary)


if __name__ == "__main__":
    sys.exit(main())
