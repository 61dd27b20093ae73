"""Train, export with its certificate, record in MLflow and register: one call, what `rnnkit train` runs.

    from toolkit.core.config import Config
    from toolkit.pipeline import run

    config = Config.load("train.yaml")
    outcome = run(config, register="sensor-lstm", aliases=("staging",))
    print(outcome.summary())

MLflow failures never stop training (the tracker says so and training goes on); a parity
failure is an outcome (`outcome.passed` is False, the bundle is not written), not an exception.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.core.config import Config
from toolkit.core.errors import ConfigError, RnnkitError


class Interrupted(RnnkitError):
    """Ctrl-C or SIGTERM; the message says what is kept and how to continue."""

    exit_code = 130


class NotRegistered(RnnkitError):
    """--register was asked for but MLflow failed: the run directory and bundle are kept."""


@dataclass
class Outcome:
    train: Any  # toolkit.train.loop.TrainResult
    export: Any = None  # toolkit.export.exporter.ExportResult, when exported
    mlflow: dict | None = None
    registered: dict | None = None
    main: bool = True  # False on the other ranks of a distributed run: rank 0 reports

    @property
    def passed(self) -> bool:
        """False when the export's parity certificate failed."""
        return self.export is None or self.export.report.passed

    @property
    def bundle(self) -> Path | None:
        return self.export.out if self.export is not None and self.export.written else None

    def summary(self) -> dict[str, Any]:
        summary = self.train.summary()
        if self.export is not None:
            summary["bundle"] = str(self.bundle) if self.bundle else None
            summary["parity"] = self.export.report.summary()
        if self.mlflow is not None:
            summary["mlflow"] = self.mlflow
        if self.registered is not None:
            summary["registered"] = self.registered
        return summary


def resume_config(run_dir: str | Path) -> Config:
    """The config a run was started with, to continue it in place."""
    if not Path(run_dir, "config.json").is_file():
        raise ConfigError(f"{run_dir} holds no training run to resume (no config.json); start one with --out")
    config = Config.load(Path(run_dir, "config.json"))
    config.train.out = str(run_dir)
    return config


def run(
    config: Config,
    *,
    resume: bool = False,
    export: bool = True,
    precision: str = "fp32",
    mlflow: bool = True,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    register: str | None = None,
    aliases: tuple[str, ...] = (),
    progress: bool = False,
    progress_every: float = 0.0,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
    on_trained: Callable[[Any], None] | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
    run_tags: dict[str, str] | None = None,
) -> Outcome:
    """Train as `config` says, then (by default) export and certify the bundle into OUT/bundle,
    record the run and its model in MLflow, and register it under `register` with `aliases`.
    `on_trained(train_result)` runs between training and export (the CLI prints the scores there);
    `on_epoch_end(epoch, record)` after each epoch, once MLflow has it (a tuner prunes there: an
    exception with a `run_status` attribute ends the MLflow run with that status, e.g. KILLED);
    `run_tags` are set on a new MLflow run (e.g. mlflow.parentRunId). `progress`: tqdm bars;
    `progress_every` > 0: a plain progress line on stderr at most that often (seconds)."""
    from toolkit.train.distributed import world
    from toolkit.train.loop import train

    main = world().main
    if not main:  # a torchrun rank other than 0: trains its share; rank 0 records, exports, registers
        mlflow, export, register, aliases, on_trained, precision = False, False, None, (), None, "fp32"
        log = lambda msg: None  # noqa: E731
    if register and not (mlflow and export):
        raise ConfigError("registering needs MLflow and the export (drop --no-mlflow / --no-export)")
    if aliases and not register:
        raise ConfigError("an alias needs a registered name (--register NAME)")
    if precision != "fp32":  # refused before training, not after it
        from toolkit.export.exporter import check_precision

        if not export:
            raise ConfigError(f"--precision {precision} is the bundle's: drop --no-export")
        check_precision(precision, config)
    tracker = None
    if mlflow:
        from toolkit.tracking.training import Tracker

        tracker = Tracker(config, tracking_uri, experiment, resume=resume, log=log, tags=run_tags)
    with _aborting(tracker, lambda: _training_hint(config)):
        result = train(
            config,
            resume=resume,
            progress=progress,
            progress_every=progress_every,
            log=log,
            on_start=tracker.start if tracker else None,  # after the data and config checks
            on_epoch_end=_chained(tracker.on_epoch_end if tracker else None, on_epoch_end),
        )
    outcome = Outcome(result, main=main)
    if on_trained is not None:
        on_trained(result)
    if export:
        from toolkit.export.exporter import export as export_bundle

        hint = f"interrupted during export; training is complete: rnnkit export {result.out} --out {result.out}/bundle"
        with _aborting(tracker, lambda: hint):
            outcome.export = export_bundle(result.out, result.out / "bundle", precision=precision)
    if tracker:
        tracker.finish(result, outcome.bundle)
        outcome.mlflow = tracker.summary()
        if register and outcome.passed:
            outcome.registered = _register(tracker, register, aliases, result.out)
    return outcome


def _chained(*callbacks):
    """One on_epoch_end that calls each given callback in turn (None when none is given)."""
    given = [c for c in callbacks if c is not None]
    if not given:
        return None

    def each(epoch: int, record: dict[str, Any]) -> None:
        for callback in given:
            callback(epoch, record)

    return each


class _aborting:
    """Ends the MLflow run as KILLED on Ctrl-C (raising Interrupted with `hint()`) and as FAILED on
    any other error, which goes on up; an error that carries a `run_status` (a pruned trial: KILLED)
    ends it with that status instead."""

    def __init__(self, tracker, hint: Callable[[], str]):
        self.tracker, self.hint = tracker, hint

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if kind is None:
            return False
        interrupted = issubclass(kind, KeyboardInterrupt)
        if self.tracker:
            self.tracker.abort("KILLED" if interrupted else getattr(error, "run_status", "FAILED"))
        if interrupted:
            raise Interrupted(self.hint()) from None
        return False


def _training_hint(config: Config) -> str:
    out = config.train.out
    if Path(out, "state.pt").is_file():
        return f"{out} holds the last completed epoch; continue with: rnnkit train --resume {out}"
    return "no epoch had finished, so there is nothing to resume; run the same command again"


def _register(tracker, name: str, aliases: tuple[str, ...], out: Path) -> dict:
    if tracker.model_info is None:
        raise NotRegistered(
            f"not registered: MLflow failed ({tracker.failed}); the run directory is kept; "
            f"once MLflow works: rnnkit register {out}/bundle --name {name}"
        )
    return register_logged(tracker.model_info.model_uri, out / "bundle", name, aliases)


def register_logged(model_uri: str, bundle: Path, name: str, aliases: tuple[str, ...]) -> dict:
    """A new version of `name` from the logged model of `bundle`, with the bundle's parity verdict
    as version tags and `aliases` pointed at it; what the summaries show of it."""
    from toolkit.core.bundle import read_manifest
    from toolkit.tracking.registry import register

    version = register(model_uri, name, aliases, parity=read_manifest(bundle)["parity"])
    return {"name": name, "version": int(version.version), "aliases": list(aliases)}
