"""One trial: the study's base config with the sampled values, trained by `toolkit.pipeline.run`
into OUT/trials/NNNN as an MLflow child run of the study's parent run. After every epoch the
monitored validation value goes to Optuna, whose pruner may stop the trial there.

How a trial ends, in Optuna and in MLflow (tag `rnnkit.trial_state`):
- complete: the best epoch's value is the trial's value (run FINISHED);
- pruned: stopped by the pruner (run KILLED, not FAILED: nothing went wrong);
- failed: a sampled config the trainer refuses, a diverged (nan) run, an error while training
  (run FAILED, the reason in `rnnkit.error`); it counts towards --trials and the study goes on;
- timeout: still running when this call's --timeout passed (run KILLED); not counted, so a rerun
  of the command runs another trial in its place; so is an interrupted one (Ctrl-C, a killed process).
"""

from __future__ import annotations

import copy
import math
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna

from toolkit import pipeline
from toolkit.core import tasks
from toolkit.core.config import Config
from toolkit.core.errors import DataError, RnnkitError, first_line
from toolkit.tune import parent
from toolkit.tune.space import Space, merge

FAILED = "rnnkit.failed"  # Optuna user attribute: why a counted failure failed
# Errors a sampled config or an unlucky run can cause; anything else (a bug) stops the study.
TRIAL_ERRORS = (RnnkitError, ValueError, RuntimeError, ArithmeticError, MemoryError)


@dataclass
class Settings:
    """What every trial of one call shares; JSON-able, to reach the worker processes."""

    base: dict  # the base config (Config.to_dict), flags applied
    space: dict  # Space.to_dict
    out: str
    study: str
    storage: str
    direction: str  # maximize | minimize
    trials: int  # finished trials wanted in the study, all calls together
    deadline: float | None  # time.time() after which no trial starts and running ones stop
    seed: int
    pruner_startup: int
    pruner_warmup: int
    tracking_uri: str | None = None  # None: no MLflow
    experiment: str | None = None
    parent_run_id: str | None = None
    jobs: int = 1

    def to_dict(self) -> dict:
        return asdict(self)

    def config(self) -> Config:
        return Config.from_dict(copy.deepcopy(self.base), where="base config")

    def search_space(self) -> Space:
        return merge(Space({}), self.space, self.base.get("task", "classify"), "search space")


class Pruned(optuna.TrialPruned):
    run_status = "KILLED"  # how pipeline.run ends the trial's MLflow run


class TimedOut(Exception):
    run_status = "KILLED"


class Failed(Exception):
    """A counted failure, already recorded (its reason is the message)."""


class Diverged(RnnkitError):
    """The monitored value (or a loss) is not a finite number."""


def monitor_of(config: Config, record: dict[str, Any]) -> str:
    """The record key a trial is judged by, as the trainer picks it: --monitor, else the task's
    default (span F1 falls back to accuracy when the tags are no chunk tags: then it is not
    reported), on validation data."""
    if config.train.monitor:
        return "val_" + config.train.monitor
    name = tasks.of(config.task).monitor[0]
    return f"val_{name}" if f"val_{name}" in record else "val_accuracy"


class Objective:
    """Optuna's objective: run one trial, return its best epoch's monitored value."""

    def __init__(self, settings: Settings, log):
        self.settings, self.log = settings, log
        self.space = settings.search_space()
        self.failures, self.last_failure = 0, ""  # failed trials in a row: a base config no trial can run

    def __call__(self, trial: optuna.Trial) -> float:
        s = self.settings
        base = s.config()
        values = self.space.suggest(trial, base)
        config = Space.apply(base, values)
        out = Path(s.out) / "trials" / f"{trial.number:04d}"
        config.train.out = str(out)
        for key, value in {"out": str(out), "pid": os.getpid(), "host": socket.gethostname()}.items():
            trial.set_user_attr(key, value)
        shown = ", ".join(f"{k} {_short(v)}" for k, v in values.items())
        self.log(f"trial {trial.number}: {shown or 'the base config'}")
        started = time.perf_counter()
        tags = {
            "mlflow.parentRunId": s.parent_run_id,
            "mlflow.runName": f"trial-{trial.number:04d}",
            "rnnkit.study": s.study,
            "rnnkit.trial": str(trial.number),
        }
        try:
            outcome = pipeline.run(
                config,
                export=False,
                mlflow=s.tracking_uri is not None,
                tracking_uri=s.tracking_uri,
                experiment=s.experiment,
                log=self._training_log(trial.number),
                on_epoch_end=self._reporter(trial, config),
                run_tags={k: v for k, v in tags.items() if v is not None},
            )
        except Pruned as e:
            self._end(trial, out, "pruned", str(e), started)
            self.failures = 0
            raise
        except TimedOut as e:
            self._end(trial, out, "timeout", str(e), started)
            raise
        except pipeline.Interrupted:
            self._end(trial, out, "interrupted", "Ctrl-C or SIGTERM", started)
            raise
        except DataError:  # the data is every trial's: no other trial would do better
            raise
        except TRIAL_ERRORS as e:
            raise self._failed(trial, out, f"{type(e).__name__}: {first_line(e)}", started, config) from None
        result = outcome.train
        value = result.best.get(result.monitor.split("_", 1)[1])
        if value is None or not math.isfinite(value):
            raise self._failed(trial, out, f"{result.monitor} of the best epoch is {value}", started)
        trial.set_user_attr("monitor", result.monitor)
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("epochs_run", result.epochs_run)
        note = f"{result.monitor} {value:.4g} at epoch {result.best_epoch}/{result.epochs_run}"
        self._end(trial, out, "complete", note, started)
        self.failures = 0
        return float(value)

    def _failed(self, trial, out: Path, reason: str, started: float, config: Config | None = None) -> Failed:
        """Record a counted failure (Optuna user attribute, MLflow tags); the exception to raise."""
        trial.set_user_attr(FAILED, reason)
        self._end(trial, out, "failed", reason, started, config)
        self.failures, self.last_failure = self.failures + 1, reason
        return Failed(reason)

    def _reporter(self, trial: optuna.Trial, config: Config):
        deadline = self.settings.deadline

        def on_epoch_end(epoch: int, record: dict[str, Any]) -> None:
            key = monitor_of(config, record)
            value = record.get(key)
            checked = {key: value, **{n: record[n] for n in ("train_loss", "val_loss") if n in record}}
            for name, v in checked.items():
                if not isinstance(v, int | float) or not math.isfinite(v):
                    raise Diverged(f"{name} is {v} after epoch {epoch}")
            trial.report(float(value), epoch)
            if trial.should_prune():
                raise Pruned(f"at epoch {epoch}, {key} {value:.4g} (worse than the median of earlier trials)")
            if deadline is not None and time.time() > deadline:
                raise TimedOut(f"--timeout passed after epoch {epoch}")

        return on_epoch_end

    def _training_log(self, number: int):
        """The trainer's warnings, marked with the trial; its epoch lines stay in MLflow and metrics.json."""

        def log(message: str) -> None:
            if message.startswith(("warning", "error")):
                self.log(f"trial {number}: {message}")

        return log

    def _end(self, trial, out: Path, state: str, note: str, started: float, config: Config | None = None) -> None:
        self.log(f"trial {trial.number}: {state}, {note} ({time.perf_counter() - started:.1f} s)")
        if self.settings.tracking_uri is None:
            return
        problem = parent.mark_trial(self.settings, trial.number, out, state, note, config)
        if problem:
            self.log(f"trial {trial.number}: warning: MLflow: {problem}")


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
