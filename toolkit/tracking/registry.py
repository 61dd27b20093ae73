"""The MLflow Model Registry for rnnkit models: register a logged model (or a bundle directory,
logging it first) as a new version with its parity verdict as version tags, point aliases (not
the deprecated stages) at versions, and list versions with their aliases, parity and metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from toolkit.core.bundle import read_manifest
from toolkit.core.errors import RegistryError
from toolkit.runtime.source import is_uri

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
SOURCES = "a bundle directory, runs:/RUN_ID/PATH, models:/m-<id> or a run id"


def _failed(what: str, e: Exception) -> RegistryError:
    first = (getattr(e, "message", None) or str(e)).strip().splitlines()[0]
    return RegistryError(f"{what} failed at {mlflow.get_tracking_uri()}: {first}")


def register(model_uri: str, name: str, aliases=(), parity: dict | None = None):
    """A new version of registered model `name` from `model_uri`; returns MLflow's ModelVersion."""
    try:
        version = mlflow.register_model(model_uri, name)
        client = MlflowClient()
        if parity is not None:
            client.set_model_version_tag(name, version.version, "parity_passed", str(bool(parity["passed"])).lower())
            client.set_model_version_tag(name, version.version, "parity_max_abs", f"{parity['max_abs']:.3g}")
            if parity.get("worst_margin") is not None:  # error / budget of the closest case
                client.set_model_version_tag(name, version.version, "parity_margin", f"{parity['worst_margin']:.3g}")
        for alias in aliases:
            client.set_registered_model_alias(name, alias, version.version)
    except MlflowException as e:
        raise _failed(f"registering {model_uri} as {name!r}", e) from None
    return version


def register_source(source: str, name: str, aliases=(), experiment: str = "rnnkit"):
    """Register SOURCE (see SOURCES) as a new version of `name`. A bundle directory is first
    logged as a model; when it lies in a run directory whose MLflow run is in this store, the
    model is linked to that run. Refuses anything that is not an rnnkit model or failed parity."""
    if not is_uri(source) and Path(source).is_dir():
        info = _log_directory(Path(source), experiment)
        return register(info.model_uri, name, aliases, info.metadata["rnnkit"]["parity"])
    if is_uri(source):
        uri = source
    elif RUN_ID.match(source):
        uri = f"runs:/{source}/model"
    else:
        raise RegistryError(f"{source!r}: no such directory, and not a model URI or run id; accepted: {SOURCES}")
    try:
        info = mlflow.models.get_model_info(uri)
    except (MlflowException, OSError) as e:
        raise _failed(f"reading {uri}", e) from None
    parity = (info.metadata or {}).get("rnnkit", {}).get("parity")
    if parity is None:
        raise RegistryError(f"{uri} is not an rnnkit model (no rnnkit metadata); log bundles with `rnnkit train`")
    if not parity.get("passed"):
        raise RegistryError(f"{uri} failed its parity check ({parity.get('worst_case')}); export it again")
    return register(f"models:/{info.model_id}" if info.model_id else uri, name, aliases, parity)


def _log_directory(bundle: Path, experiment: str):
    from toolkit.tracking.pyfunc import log_bundle

    read_manifest(bundle)  # a clear error for a directory that is not a bundle
    run_id = _run_of(bundle.parent)
    client = MlflowClient()
    try:
        run = client.get_run(run_id) if run_id else None
    except MlflowException:  # the run was recorded in another store, or never reached this one
        run = None
    try:
        if run is not None:
            experiment_id = run.info.experiment_id
        else:
            found = client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        model = mlflow.initialize_logged_model(
            name="model", source_run_id=run.info.run_id if run else None, experiment_id=experiment_id
        )
        info = log_bundle(bundle, model_id=model.model_id)
        best = _best_epoch(bundle.parent)
        if run is not None and best:  # the run's best epoch, shown on the model as for `train --register`
            step = int(best.pop("epoch"))
            mlflow.log_metrics(best, step=step, run_id=run.info.run_id, model_id=info.model_id)
        return info
    except MlflowException as e:
        raise _failed(f"logging {bundle}", e) from None


def _run_of(run_dir: Path) -> str | None:
    """The MLflow run `rnnkit train` recorded for a run directory (its mlflow.json), if any."""
    try:
        return json.loads((run_dir / "mlflow.json").read_text(encoding="utf-8")).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def _best_epoch(run_dir: Path) -> dict[str, float]:
    """The best epoch's record from a run directory's metrics.json ({} when there is none)."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        best = metrics["summary"]["best_epoch"]
        record = next(r for r in metrics["history"] if r["epoch"] == best)
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        return {}
    return {k: float(v) for k, v in record.items() if isinstance(v, int | float)}


def move_alias(name: str, version: str, alias: str) -> str | None:
    """Point `alias` of `name` at `version`; returns the version it pointed at before (or None)."""
    client = MlflowClient()
    try:
        client.get_model_version(name, version)
        before = client.get_registered_model(name).aliases.get(alias)
        client.set_registered_model_alias(name, alias, version)
    except MlflowException as e:
        raise _failed(f"models:/{name}/{version}", e) from None
    return None if before is None else str(before)


def list_models() -> list[dict[str, Any]]:
    """Every registered model: name, latest version, aliases (alias -> version)."""
    try:
        models = MlflowClient().search_registered_models()
    except MlflowException as e:
        raise _failed("listing registered models", e) from None
    rows = []
    for m in models:
        latest = max((int(v.version) for v in m.latest_versions or []), default=None)
        rows.append({"name": m.name, "latest": latest, "aliases": {a: int(v) for a, v in m.aliases.items()}})
    return rows


def list_versions(name: str) -> list[dict[str, Any]]:
    """The versions of `name`, newest first: aliases, parity (version tags), the logged model's
    metrics, run and model ids."""
    client = MlflowClient()
    try:
        aliases = client.get_registered_model(name).aliases
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException as e:
        raise _failed(f"listing versions of {name!r}", e) from None
    rows = []
    for v in sorted(versions, key=lambda v: -int(v.version)):
        model_id = v.model_id or (v.source[len("models:/") :] if v.source.startswith("models:/m-") else None)
        metrics = {}
        if model_id:
            try:
                metrics = {m.key: m.value for m in client.get_logged_model(model_id).metrics or []}
            except MlflowException:  # a version from before MLflow 3, or a deleted logged model
                metrics = {}
        rows.append(
            {
                "version": int(v.version),
                "aliases": sorted(a for a, target in aliases.items() if str(target) == str(v.version)),
                "parity_passed": {"true": True, "false": False}.get(v.tags.get("parity_passed")),
                "parity_max_abs": float(v.tags["parity_max_abs"]) if "parity_max_abs" in v.tags else None,
                "parity_margin": float(v.tags["parity_margin"]) if "parity_margin" in v.tags else None,
                "metrics": metrics,
                "run_id": v.run_id,
                "model_id": model_id,
                "created": v.creation_timestamp,
            }
        )
    return rows
