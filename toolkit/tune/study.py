"""The Optuna study behind `rnnkit tune`: its storage, the trials it still needs, trials that a
killed process left RUNNING, the worker processes, and the outcome (the best trial exported with
its certificate, logged to the parent MLflow run, registered).

--trials N is the number of finished trials the study should hold, all calls together: a trial
counts once it is complete, pruned or failed; one stopped by --timeout or an interrupt does not
(a rerun runs another in its place). So rerunning the same command resumes where it stopped.

A trial left RUNNING by a process that died blocks nothing: on this host its recorded process id
is checked at start (gone: the trial is marked failed and not counted); from elsewhere, Optuna's
heartbeat marks it failed once its heartbeat is older than GRACE_S.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from toolkit import pipeline
from toolkit.core.atomic import atomic_write_json
from toolkit.core.errors import ConfigError, RnnkitError, first_line
from toolkit.tune import parent
from toolkit.tune.trial import FAILED, Failed, Objective, Settings, TimedOut

HEARTBEAT_S = 10
GRACE_S = 60
GIVE_UP_AFTER = 3  # failed trials in a row, with none complete in the study: the base config is wrong


def default_storage(tracking_uri: str) -> str:
    """An SQLite file beside an SQLite MLflow store (sqlite:///DIR/mlflow.db -> sqlite:///DIR/optuna.db),
    else ./optuna.db."""
    prefix = "sqlite:///"
    if tracking_uri.startswith(prefix):
        path = Path(tracking_uri[len(prefix) :].split("?", 1)[0])
        return prefix + str(path.parent / "optuna.db")
    return prefix + "optuna.db"


def open_storage(url: str) -> optuna.storages.RDBStorage:
    engine = None
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :].split("?", 1)[0]).parent.mkdir(parents=True, exist_ok=True)
        engine = {"connect_args": {"timeout": 60}}  # workers share the file: wait for its lock
    try:
        with _experimental_ok():
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S
            )
    except Exception as e:  # a bad URL, a missing driver, a server that does not answer
        raise ConfigError(f"--storage {url}: cannot open it as an Optuna storage ({type(e).__name__}: {e})") from None


@contextlib.contextmanager
def _experimental_ok():
    """Optuna's heartbeat has been marked experimental since 2.9; its warning would only be noise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


@dataclass
class Counts:
    complete: int = 0
    pruned: int = 0
    failed: int = 0  # counted failures (the trial's own config or run)
    running: int = 0
    not_counted: int = 0  # stopped by --timeout, an interrupt, or a process that died

    @property
    def counted(self) -> int:
        return self.complete + self.pruned + self.failed


def count(study: optuna.Study) -> Counts:
    counts = Counts()
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE:
            counts.complete += 1
        elif t.state == TrialState.PRUNED:
            counts.pruned += 1
        elif t.state == TrialState.RUNNING:
            counts.running += 1
        elif t.state == TrialState.FAIL and FAILED in t.user_attrs:
            counts.failed += 1
        else:
            counts.not_counted += 1
    return counts


def _identity(settings: Settings) -> dict[str, Any]:
    """What must stay the same across the calls of one study, as JSON reads it back."""
    out = str(Path(settings.out).resolve())
    return json.loads(json.dumps({"out": out, "base": settings.base, "space": settings.space}))


def prepare(settings: Settings) -> optuna.Study:
    """Create the study, or load it and check it is this command's: same out directory, base
    config and space (a changed one would mix trials that are not comparable)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # trials are reported by rnnkit, once
    study = optuna.create_study(
        storage=open_storage(settings.storage),
        study_name=settings.study,
        direction=settings.direction,
        load_if_exists=True,
    )
    identity, stored = _identity(settings), study.user_attrs.get("rnnkit")
    if stored is None:
        trials = Path(settings.out) / "trials"
        if study.trials:
            raise ConfigError(
                f"study {settings.study!r} in {settings.storage} was not made by rnnkit; pick another --study"
            )
        if trials.is_dir() and any(trials.iterdir()):
            raise ConfigError(f"{trials} holds trials of another study; pick another --out (or --study of that one)")
        study.set_user_attr("rnnkit", identity)
        return study
    if study.direction.name.lower() != settings.direction:
        was = study.direction.name.lower()
        raise ConfigError(f"study {settings.study!r} was made to {was} its metric, this one would {settings.direction}")
    changed = _differences(stored, identity)
    if changed:
        raise ConfigError(
            f"study {settings.study!r} in {settings.storage} was started with other settings "
            f"({'; '.join(changed[:5])}); rerun it as it was, or pick a new --study and --out"
        )
    return study


def _differences(before: Any, now: Any, where: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(now, dict):
        keys = sorted(set(before) | set(now))
        return [d for k in keys for d in _differences(before.get(k), now.get(k), f"{where}.{k}" if where else k)]
    return [] if before == now else [f"{where}: {before!r} then, {now!r} now"]


def release_interrupted(study: optuna.Study, settings: Settings, log: Callable[[str], None]) -> int:
    """Mark failed (not counted) the RUNNING trials whose process on this host is gone; Optuna's
    heartbeat check does the same for others once they are stale. Returns how many."""
    host, released = socket.gethostname(), 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") != host or not isinstance(pid, int) or _alive(pid):
            continue
        if study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
            released += 1
            parent.end_interrupted(settings, t.user_attrs.get("out"))
            log(f"trial {t.number}: its process ({pid}) is gone; marked failed, not counted")
    with _experimental_ok():
        optuna.storages.fail_stale_trials(study)
    return released


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def work(settings: Settings, worker: int = 0, log: Callable[[str], None] = print) -> None:
    """Run trials until the study holds `settings.trials` (finished or running) or the deadline
    passes. One of the --jobs processes (or the only one, in the command's own process)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = open_storage(settings.storage)
    known = len(optuna.load_study(study_name=settings.study, storage=storage).trials)
    # seeded by --seed, and apart for each worker and call (a fresh sampler repeats its draws)
    seed = (settings.seed * 1_000_003 + worker * 10_007 + known) % 2**32
    with _experimental_ok():  # constant_liar: parallel workers do not all sample next to a running trial
        sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=settings.jobs > 1)
    pruner = optuna.pruners.MedianPruner(
        n_startup_trials=settings.pruner_startup, n_warmup_steps=settings.pruner_warmup
    )
    study = optuna.load_study(study_name=settings.study, storage=storage, sampler=sampler, pruner=pruner)
    objective = Objective(settings, log)
    while settings.deadline is None or time.time() < settings.deadline:
        counts = count(study)
        if counts.counted + counts.running >= settings.trials:
            break
        study.optimize(objective, n_trials=1, catch=(Failed, TimedOut), gc_after_trial=False)
        if objective.failures >= GIVE_UP_AFTER and count(study).complete == 0:
            raise RnnkitError(
                f"{objective.failures} trials in a row failed and none completed (last: {objective.last_failure}); "
                "check the base config and the space"
            )


def run_workers(settings: Settings, jobs: int, log: Callable[[str], None]) -> None:
    """`jobs` worker processes on the same storage, each with its share of the cores for torch;
    one job runs in this process."""
    if jobs <= 1:
        work(settings, 0, log)
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // jobs)
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():  # a cap the user set stays a cap
        threads = max(1, min(threads, int(os.environ["OMP_NUM_THREADS"])))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    message = json.dumps({"settings": settings.to_dict(), "threads": threads})
    workers = []
    for worker in range(jobs):
        command = [sys.executable, "-m", "toolkit.tune.worker", str(worker)]
        process = subprocess.Popen(command, stdin=subprocess.PIPE, env=env, text=True)
        process.stdin.write(message)
        process.stdin.close()
        workers.append(process)
    codes = []
    try:
        codes = [p.wait() for p in workers]
    except KeyboardInterrupt:  # Ctrl-C reached the workers too: let them end their trials' runs
        for p in workers:
            p.wait()
        raise
    if 130 in codes:
        raise KeyboardInterrupt
    if any(codes):
        failed = ", ".join(f"worker {i} exit {c}" for i, c in enumerate(codes) if c)
        raise RnnkitError(f"tuning workers failed ({failed}); their errors are above")


def best_of(study: optuna.Study) -> dict[str, Any] | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    t = study.best_trial
    return {
        "trial": t.number,
        "value": t.value,
        "monitor": t.user_attrs.get("monitor"),
        "params": t.params,
        "epoch": t.user_attrs.get("best_epoch"),
        "run_dir": t.user_attrs.get("out"),
        "mlflow_run_id": parent.run_of(Path(t.user_attrs["out"])) if t.user_attrs.get("out") else None,
    }


@dataclass
class Outcome:
    summary: dict[str, Any]
    export: Any = None  # toolkit.export.exporter.ExportResult of the best trial
    passed: bool = True  # the best bundle's parity certificate


def tune(
    settings: Settings,
    register: str | None = None,
    aliases: tuple[str, ...] = (),
    log: Callable[[str], None] = print,
) -> Outcome:
    """Run the study as `settings` say (resuming it when it exists), then export the best trial's
    model with its certificate to OUT/best/bundle, log it to the parent run, and register it."""
    study = prepare(settings)
    release_interrupted(study, settings, log)
    counts = count(study)
    if settings.tracking_uri is not None:
        _start_parent(study, settings, log)
    left = settings.trials - counts.counted - counts.running
    done = f"{counts.counted} of {settings.trials} trials finished"
    log(f"study {settings.study!r} in {settings.storage}: {done}; {max(left, 0)} to run, {settings.jobs} at a time")
    try:
        if left > 0:
            run_workers(settings, min(settings.jobs, left), log)
    except (KeyboardInterrupt, pipeline.Interrupted):
        if settings.parent_run_id:
            parent.end(settings, settings.parent_run_id, "KILLED")
        raise pipeline.Interrupted("finished trials are kept in the study; rerun the same command to go on") from None
    except BaseException:
        if settings.parent_run_id:
            parent.end(settings, settings.parent_run_id, "FAILED")
        raise
    return _conclude(study, settings, register, aliases, log)


def _start_parent(study: optuna.Study, settings: Settings, log) -> None:
    previous = study.user_attrs.get("rnnkit.mlflow") or {}
    same_store = previous.get("tracking_uri") == settings.tracking_uri
    try:
        settings.parent_run_id = parent.start(settings, previous.get("run_id") if same_store else None)
    except Exception as e:
        problem = f"{type(e).__name__}: {first_line(e)}"
        log(f"warning: MLflow at {settings.tracking_uri} failed ({problem}); the study goes on without it")
        settings.tracking_uri = None
        return
    study.set_user_attr("rnnkit.mlflow", {"run_id": settings.parent_run_id, "tracking_uri": settings.tracking_uri})
    log(f"MLflow: parent run {settings.parent_run_id} in experiment {settings.experiment!r} at {settings.tracking_uri}")


def _conclude(study, settings: Settings, register, aliases, log) -> Outcome:
    counts = count(study)
    best = best_of(study)
    trials = {"wanted": settings.trials, **{k: getattr(counts, k) for k in ("complete", "pruned", "failed")}}
    summary: dict[str, Any] = {
        "study": settings.study,
        "storage": settings.storage,
        "out": settings.out,
        "direction": settings.direction,
        "trials": {**trials, "not_counted": counts.not_counted},
        "best": best,
        "bundle": None,
    }
    outcome = Outcome(summary)
    logged = _best_bundle(settings, outcome, log) if best is not None else None
    if settings.tracking_uri is None or not settings.parent_run_id:
        if register and summary["bundle"]:
            raise pipeline.NotRegistered(f"not registered: MLflow failed; the bundle {summary['bundle']} is kept")
        return outcome
    summary["mlflow"] = record = {
        "tracking_uri": settings.tracking_uri,
        "experiment": settings.experiment,
        "parent_run_id": settings.parent_run_id,
        "model_uri": logged,
    }
    fresh = Path(summary["bundle"]) if summary["bundle"] and logged is None else None
    try:
        info = parent.finish(settings, settings.parent_run_id, summary, fresh, (best or {}).get("epoch") or 0)
    except Exception as e:  # the trials and the bundle are kept; `rnnkit register BUNDLE` records it later
        record["failed"] = f"{type(e).__name__}: {first_line(e)}"
        log(f"warning: MLflow failed recording the study's outcome ({record['failed']})")
        parent.end(settings, settings.parent_run_id, "FAILED")
        if register and summary["bundle"]:
            raise pipeline.NotRegistered(
                f"not registered: MLflow failed; once it works: rnnkit register {summary['bundle']} --name {register}"
            ) from None
        return outcome
    if info is not None:  # what the next call needs to keep this bundle and model if the best stays
        record["model_uri"] = info.model_uri
        kept = {**best, "model_uri": info.model_uri, "parent": settings.parent_run_id}
        atomic_write_json(Path(settings.out) / "best" / "trial.json", kept)
    if register and record["model_uri"]:
        bundle = Path(summary["bundle"])
        summary["registered"] = pipeline.register_logged(record["model_uri"], bundle, register, aliases)
    return outcome


def _best_bundle(settings: Settings, outcome: Outcome, log) -> str | None:
    """Export the best trial's model with its certificate to OUT/best/bundle. When an earlier call
    exported and logged this same trial, its bundle and MLflow model are kept: returns that model's
    URI (else None)."""
    from toolkit.core.bundle import BundleError, read_manifest

    summary, best = outcome.summary, outcome.summary["best"]
    best_dir = Path(settings.out) / "best"
    kept = _read_json(best_dir / "trial.json")
    if kept.get("trial") == best["trial"] and kept.get("model_uri") and kept.get("parent") == settings.parent_run_id:
        try:
            parity = read_manifest(best_dir / "bundle")["parity"]
        except BundleError:
            parity = {}
        if parity.get("passed"):
            summary["bundle"], summary["parity"] = str(best_dir / "bundle"), parity
            log(f"best trial {best['trial']} unchanged: keeping {best_dir / 'bundle'} and its MLflow model")
            return kept["model_uri"]
    from toolkit.export.exporter import export

    atomic_write_json(best_dir / "trial.json", best)
    outcome.export = export(best["run_dir"], best_dir / "bundle")
    outcome.passed = outcome.export.report.passed
    summary["parity"] = outcome.export.report.summary()
    if outcome.passed:
        summary["bundle"] = str(outcome.export.out)
    return None


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
