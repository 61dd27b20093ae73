"""`rnnkit train`: parse flags over an optional config file, run the training loop, print."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from cli.main import user_errors
from toolkit.config import CELLS, DEVICES, FORMATS, LEVELS, MERGES, OPTIMIZERS, SCHEDULES, TASKS, Config
from toolkit.errors import ConfigError

# flag name -> (config section, key); None section = top level
FLAGS = {
    "task": (None, "task"),
    "data": ("data", "data"),
    "val": ("data", "val"),
    "format": ("data", "format"),
    "val_fraction": ("data", "val_fraction"),
    "level": ("data", "level"),
    "lowercase": ("data", "lowercase"),
    "min_freq": ("data", "min_freq"),
    "max_vocab": ("data", "max_vocab"),
    "target_columns": ("data", "target_columns"),
    "horizon": ("data", "horizon"),
    "cell": ("model", "cell"),
    "nonlinearity": ("model", "nonlinearity"),
    "hidden_size": ("model", "hidden_size"),
    "num_layers": ("model", "num_layers"),
    "bidirectional": ("model", "bidirectional"),
    "merge": ("model", "merge"),
    "dropout": ("model", "dropout"),
    "residual": ("model", "residual"),
    "embedding_dim": ("model", "embedding_dim"),
    "epochs": ("train", "epochs"),
    "batch_size": ("train", "batch_size"),
    "lr": ("train", "lr"),
    "optimizer": ("train", "optimizer"),
    "weight_decay": ("train", "weight_decay"),
    "schedule": ("train", "schedule"),
    "clip": ("train", "clip"),
    "bptt": ("train", "bptt"),
    "patience": ("train", "patience"),
    "monitor": ("train", "monitor"),
    "seed": ("train", "seed"),
    "device": ("train", "device"),
    "amp": ("train", "amp"),
    "out": ("train", "out"),
}


def _choice(values):
    return click.Choice(values, case_sensitive=False)


@click.command()
@click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), help="YAML or JSON config; flags override it."
)
@click.option(
    "--resume", type=click.Path(file_okay=False), help="Continue the run in this directory from its last epoch."
)
@click.option("--task", type=_choice(TASKS), help="classify | tag | lm | regress")
@click.option("--data", help="Training data file (a directory of .txt/.md files for lm).")
@click.option("--val", help="Validation file (default: hold out --val-fraction of --data).")
@click.option("--format", type=_choice(FORMATS), help="Data format (default: from the file suffix).")
@click.option("--val-fraction", type=float, help="Share of --data held out for validation when no --val (0.1).")
@click.option("--level", type=_choice(LEVELS), help="lm tokens: char or word.")
@click.option("--lowercase/--no-lowercase", default=None, help="Lower-case text before building the vocabulary.")
@click.option("--min-freq", type=int, help="Vocabulary: minimum token count.")
@click.option("--max-vocab", type=int, help="Vocabulary: maximum size, specials included.")
@click.option("--target-columns", help="CSV series: comma-separated columns to forecast (default all).")
@click.option("--horizon", type=int, help="CSV series: forecast this many steps ahead (1).")
@click.option("--cell", type=_choice(CELLS), help="Recurrent cell (lstm).")
@click.option("--nonlinearity", type=_choice(("tanh", "relu")), help="Elman RNN activation (tanh).")
@click.option("--hidden-size", type=int, help="Hidden units per direction (128).")
@click.option("--num-layers", type=int, help="Stacked layers (1).")
@click.option("--bidirectional/--unidirectional", default=None, help="Run a backward direction too.")
@click.option("--merge", type=_choice(MERGES), help="Combine directions by concat or sum.")
@click.option("--dropout", type=float, help="Dropout between stacked layers (0).")
@click.option("--residual/--no-residual", default=None, help="Skip connections between layers of equal width.")
@click.option("--embedding-dim", type=int, help="Token embedding width (64).")
@click.option("--epochs", type=int, help="Epochs to train (10); with --resume, the new total.")
@click.option("--batch-size", type=int, help="Sequences (or parallel streams) per batch (32).")
@click.option("--lr", type=float, help="Learning rate (1e-3).")
@click.option("--optimizer", type=_choice(OPTIMIZERS), help="adam | adamw | sgd")
@click.option("--weight-decay", type=float, help="Weight decay (0).")
@click.option("--schedule", type=_choice(SCHEDULES), help="Learning-rate schedule (constant).")
@click.option("--clip", type=float, help="Clip gradients to this global norm (1.0); 0 disables.")
@click.option("--bptt", type=int, help="Truncated-BPTT window for lm and CSV series (64).")
@click.option("--patience", type=int, help="Early stop after this many epochs without improvement.")
@click.option("--monitor", help="Validation metric for best-model selection and early stopping.")
@click.option("--seed", type=int, help="Random seed (0).")
@click.option("--device", type=_choice(DEVICES), help="auto | cpu | cuda")
@click.option("--amp/--no-amp", default=None, help="Mixed precision on CUDA (on).")
@click.option("--out", type=click.Path(file_okay=False), help="Run directory to write (runs/latest).")
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: when stderr is a terminal).")
@click.option(
    "--export/--no-export", "do_export", default=True, help="End with a verified ONNX bundle in OUT/bundle (on)."
)
@click.option("--mlflow/--no-mlflow", "use_mlflow", default=True, help="Record the run and its model in MLflow (on).")
@click.option("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).")
@click.option("--experiment", help="MLflow experiment (default: MLFLOW_EXPERIMENT_NAME, else rnnkit).")
@click.option("--register", "register_name", help="Register the model under this name (needs MLflow and export).")
@click.option("--alias", "aliases", multiple=True, help="With --register: point this alias at the new version.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary as the last line of stdout.")
@user_errors
def train(
    config_file,
    resume,
    progress,
    do_export,
    use_mlflow,
    tracking_uri,
    experiment,
    register_name,
    aliases,
    as_json,
    **flags,
):
    """Train a recurrent model and write a run directory (checkpoint, config, vocabulary, labels).

    The run is recorded in MLflow (params, per-epoch metrics, artifacts, the bundle as a logged
    model) unless --no-mlflow; if MLflow fails, training goes on and says so.
    """
    from toolkit.train.loop import train as run_training

    if register_name and not (use_mlflow and do_export):
        raise click.UsageError("--register needs MLflow and the export (drop --no-mlflow / --no-export)")
    if aliases and not register_name:
        raise click.UsageError("--alias needs --register NAME")

    if resume:
        if not Path(resume, "config.json").is_file():
            raise ConfigError(f"{resume} holds no training run to resume (no config.json); start one with --out")
        config = Config.load(f"{resume}/config.json")
        config.train.out = resume
        unexpected = [k for k, v in flags.items() if v is not None and k != "epochs"]
        if unexpected or config_file:
            raise click.UsageError("--resume continues a run as it was configured; only --epochs may change")
    else:
        config = Config.load(config_file) if config_file else Config()
    if flags.get("target_columns"):
        flags["target_columns"] = [c.strip() for c in flags["target_columns"].split(",") if c.strip()]
    if flags.get("clip") == 0:
        flags["clip"] = None
        config.train.clip = None
    for name, value in flags.items():
        section, key = FLAGS[name]
        config.override(section, key, value)
    if progress is None:
        progress = sys.stderr.isatty()
    tracker = None
    if use_mlflow:
        from toolkit.tracking.training import Tracker

        tracker = Tracker(config, tracking_uri, experiment, resume=bool(resume), log=lambda m: click.echo(m, err=True))
    try:
        result = run_training(
            config,
            resume=bool(resume),
            progress=progress,
            on_start=tracker.start if tracker else None,  # after the data and config checks
            on_epoch_end=tracker.on_epoch_end if tracker else None,
        )
    except KeyboardInterrupt:
        if tracker:
            tracker.abort("KILLED")
        if Path(config.train.out, "state.pt").is_file():
            hint = (
                f"{config.train.out} holds the last completed epoch; "
                f"continue with: rnnkit train --resume {config.train.out}"
            )
        else:
            hint = "no epoch had finished, so there is nothing to resume; run the same command again"
        click.echo(f"\ninterrupted: {hint}", err=True)
        sys.exit(130)
    except BaseException:
        if tracker:
            tracker.abort("FAILED")
        raise
    summary = result.summary()
    click.echo(f"best epoch {result.best_epoch}/{result.epochs_run} by {result.monitor}:")
    for key, value in result.best.items():
        click.echo(f"  {key:<16} {value:.4f}")
    if result.sample is not None:
        click.echo("sample from the best model:")
        click.echo("  " + result.sample.replace("\n", "\n  "))
    click.echo(f"run directory: {result.out} (checkpoint model.pt, config.json, spec.json, metrics.json)")
    bundle = None
    if do_export:
        from toolkit.export.exporter import export

        try:
            exported = export(result.out, result.out / "bundle")
        except KeyboardInterrupt:
            if tracker:
                tracker.abort("KILLED")
            click.echo(
                f"\ninterrupted during export; training is complete: "
                f"rnnkit export {result.out} --out {result.out}/bundle",
                err=True,
            )
            sys.exit(130)
        parity = exported.report.summary()
        summary["bundle"] = str(exported.out) if exported.written else None
        summary["parity"] = parity
        if not exported.report.passed:
            if tracker:
                tracker.finish(result, None)
            click.echo(
                f"error: parity failed ({parity['worst_case']}: {parity['worst_reason']}); "
                f"report {exported.report_path}",
                err=True,
            )
            sys.exit(1)
        bundle = exported.out
        click.echo(
            f"bundle: {exported.out} ({parity['cases']} parity cases passed, worst at {parity['worst_margin']:.2f} "
            f"of its budget, max abs error {parity['max_abs']:.1e})"
        )
    if tracker:
        tracker.finish(result, bundle)
        summary["mlflow"] = tracker.summary()
        if tracker.run_id and not tracker.failed:
            click.echo(f"MLflow run {tracker.run_id}: model {summary['mlflow']['model_uri']}")
        if register_name:
            summary["registered"] = _register(tracker, register_name, aliases, result.out)
    if as_json:
        click.echo(json.dumps(summary))


def _register(tracker, name: str, aliases: tuple[str, ...], out: Path) -> dict:
    from toolkit.tracking.registry import register

    hint = f"once MLflow works: rnnkit register {out}/bundle --name {name}"
    if tracker.model_info is None:
        click.echo(
            f"error: not registered: MLflow failed ({tracker.failed}); the run directory is kept; {hint}", err=True
        )
        sys.exit(1)
    manifest = json.loads((out / "bundle" / "manifest.json").read_text(encoding="utf-8"))
    version = register(tracker.model_info.model_uri, name, aliases, parity=manifest["parity"])
    shown = f" (alias {', '.join(aliases)})" if aliases else ""
    click.echo(f"registered models:/{name}/{version.version}{shown}")
    return {"name": name, "version": int(version.version), "aliases": list(aliases)}
