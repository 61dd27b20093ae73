"""The study in MLflow: one parent run for the whole study (every call of the command continues
it), each trial a child run under it (tag mlflow.parentRunId) with its state in the tag
`rnnkit.trial_state`, and the best trial's certified bundle as the parent's logged model.

As in training, MLflow is a record, never a condition: each function here reports a failure
(returns or logs it) instead of raising, and the study goes on with its run directories.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

from toolkit.core.errors import first_line
from toolkit.core.mlflow_env import apply_defaults
from toolkit.tune.space import SECTIONS

STATE_TAG = "rnnkit.trial_state"
NOTE_TAG = "rnnkit.trial_note"
MAX_TAG = 5000  # characters MLflow keeps of a tag value


def _client(uri: str):
    apply_defaults()
    from mlflow import MlflowClient

    return MlflowClient(uri)


def _experiment_id(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment is not None else client.create_experiment(name)


def start(settings, previous: str | None) -> str:
    """The study's parent run, RUNNING: `previous` (the run an earlier call started, if it is in
    this store) or a new one with the study's fixed params and its space as `space.json`."""
    from mlflow.exceptions import MlflowException

    from toolkit.tracking.training import flat_params

    client = _client(settings.tracking_uri)
    if previous:
        try:
            client.update_run(previous, status="RUNNING")
            return previous
        except MlflowException:  # deleted, or recorded in another store: start a new one
            pass
    tags = {"rnnkit.study": settings.study, "rnnkit.kind": "study", "task": settings.base.get("task", "")}
    run = client.create_run(_experiment_id(client, settings.experiment), run_name=settings.study, tags=tags)
    run_id = run.info.run_id
    # the same for every trial (searched keys vary, and the out directory is each trial's own)
    varied = {f"{SECTIONS[key][0]}.{key}" for key in settings.space}
    fixed = {k: v for k, v in flat_params(settings.config()).items() if k not in varied and k != "train.out"}
    study = {"study": settings.study, "direction": settings.direction, "storage": settings.storage}
    _log_params(client, run_id, {**fixed, **study})
    client.log_dict(run_id, settings.space, "space.json")
    return run_id


def _log_params(client, run_id: str, values: dict[str, str]) -> None:
    from mlflow.entities import Param

    params = [Param(k, v) for k, v in values.items()]
    for i in range(0, len(params), 100):  # MLflow takes at most 100 params per call
        client.log_batch(run_id, params=params[i : i + 100])


def end(settings, run_id: str, status: str) -> None:
    """End the parent run without a model (an interrupted call, or no trial completed)."""
    with contextlib.suppress(Exception):  # reported when it started failing; this is the last, best-effort call
        _client(settings.tracking_uri).set_terminated(run_id, status)


def mark_trial(settings, number: int, out: Path, state: str, note: str, config=None) -> str | None:
    """Tag trial `number`'s child run with how it ended; a trial that failed before its run began
    (a config the trainer refused) gets a FAILED child run of its own, with its params. Returns
    what went wrong with MLflow, or None."""
    try:
        client = _client(settings.tracking_uri)
        run_id = run_of(out)
        if run_id is None:
            run_id = _failed_run(client, settings, number, config)
        client.set_tag(run_id, STATE_TAG, state)
        if state != "complete":
            client.set_tag(run_id, NOTE_TAG, note[:MAX_TAG])
    except Exception as e:  # the store may fail in any way
        return f"{type(e).__name__}: {first_line(e)}"
    return None


def _failed_run(client, settings, number: int, config) -> str:
    from toolkit.tracking.training import flat_params

    tags = {
        "mlflow.parentRunId": settings.parent_run_id,
        "rnnkit.study": settings.study,
        "rnnkit.trial": str(number),
    }
    run = client.create_run(
        _experiment_id(client, settings.experiment),
        run_name=f"trial-{number:04d}",
        tags={k: v for k, v in tags.items() if v},
    )
    if config is not None:
        _log_params(client, run.info.run_id, flat_params(config))
    client.set_terminated(run.info.run_id, "FAILED")
    return run.info.run_id


def end_interrupted(settings, out: str | None) -> None:
    """A trial whose process died: its child run (if it began) ends KILLED, tagged interrupted."""
    run_id = run_of(Path(out)) if out else None
    if run_id is None or settings.tracking_uri is None:
        return
    with contextlib.suppress(Exception):  # a record only: the study goes on
        client = _client(settings.tracking_uri)
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, "KILLED")
        client.set_tag(run_id, STATE_TAG, "interrupted")


def run_of(out: Path) -> str | None:
    link = out / "mlflow.json"
    if not link.is_file():
        return None
    try:
        return json.loads(link.read_text(encoding="utf-8")).get("run_id")
    except (OSError, ValueError):
        return None


def finish(settings, run_id: str, summary: dict[str, Any], bundle: Path | None, best_epoch: int):
    """Record the outcome on the parent run (trial counts and the best value as metrics, the best
    trial and its params as tags), log `bundle` as its model, and end it FINISHED. Returns
    MLflow's ModelInfo of the logged model (None without a bundle)."""
    import mlflow
    from mlflow.entities import Metric

    client = _client(settings.tracking_uri)
    trials, best = summary["trials"], summary.get("best")
    step = trials["complete"] + trials["pruned"] + trials["failed"]
    values = {f"trials_{k}": float(trials[k]) for k in ("complete", "pruned", "failed")}
    if best:
        values[f"best_{best['monitor']}"] = float(best["value"])
        tags = {"best_trial": str(best["trial"]), **{f"best.{k}": str(v) for k, v in best["params"].items()}}
        for key, value in tags.items():
            client.set_tag(run_id, key, value[:MAX_TAG])
    metrics = [Metric(k, v, int(time.time() * 1000), step) for k, v in values.items()]
    client.log_batch(run_id, metrics=metrics)
    if bundle is None:
        client.set_terminated(run_id, "FINISHED")
        return None
    from toolkit.tracking.pyfunc import log_bundle

    mlflow.set_tracking_uri(settings.tracking_uri)  # log_model works on the active (fluent) run
    with mlflow.start_run(run_id=run_id):
        info = log_bundle(bundle, name="model", step=best_epoch)
        if best:
            mlflow.log_metrics({best["monitor"]: float(best["value"])}, step=best_epoch, model_id=info.model_id)
    return info
