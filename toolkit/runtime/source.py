"""Where a MODEL argument's bundle lies: a bundle directory as given, or an MLflow model URI
downloaded once into a local cache.

    runs/x/bundle                a bundle directory
    models:/NAME/VERSION         a registered version
    models:/NAME@ALIAS           the version an alias points at (looked up on every start)
    models:/m-<id>               a logged model (MLflow 3 model id)
    runs:/RUN_ID/PATH            a model logged in a run (PATH is `model` for `rnnkit train`)

The cache holds the bundle only (not MLflow's copy of the code), one directory per tracking
store and model version: `CACHE/<store>/models/NAME/VERSION/bundle`. Versions, model ids and run
artifacts do not change once written, so a cached entry is used without asking MLflow, and a
version-pinned start (or a runs:/ or model-id one) imports no MLflow at all. An alias moves, so
it is resolved to a version through MLflow each time; the download still happens once per
version. CACHE is $RNNKIT_CACHE, else $XDG_CACHE_HOME/rnnkit, else ~/.cache/rnnkit.

The tracking store is $MLFLOW_TRACKING_URI, else MLflow's default `sqlite:///mlflow.db` in the
working directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from toolkit.core.bundle import MANIFEST
from toolkit.core.errors import RegistryError, first_line
from toolkit.core.mlflow_env import apply_defaults

ARTIFACT = "bundle"  # the key of the bundle directory among a logged model's artifacts
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow 3's own default
FORMS = "a bundle directory, models:/NAME/VERSION, models:/NAME@ALIAS, models:/m-<id> or runs:/RUN_ID/PATH"

_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)/?$")
_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)/?$")
_MODEL_ID = re.compile(r"^models:/(?P<id>m-[0-9a-f]+)/?$")
_RUN = re.compile(r"^runs:/(?P<run>[0-9a-zA-Z]+)/(?P<path>.+?)/?$")


def is_uri(model: str) -> bool:
    return model.startswith(("models:/", "runs:/"))


def tracking_uri() -> str:
    """The tracking store MLflow would use here, with a relative SQLite path made absolute (the
    same relative path in another directory is another store)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    return uri


def cache_root() -> Path:
    if os.environ.get("RNNKIT_CACHE"):
        return Path(os.environ["RNNKIT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rnnkit"


@dataclass
class Resolved:
    bundle: Path  # the bundle directory to run
    source: str  # what was asked for
    version: str | None = None  # "NAME/VERSION" for a registered model
    downloaded: bool = False  # False: used as given or found in the cache


def resolve(model: str, allow_unverified: bool = False, log: Callable[[str], None] | None = None) -> Resolved:
    """The local bundle for MODEL (see the module doc); raises RegistryError for a URI that
    cannot be resolved and BundleError-style messages for a directory that is not a bundle."""
    if not is_uri(model):
        return Resolved(Path(model), model)
    store = tracking_uri()
    if m := _VERSION.match(model):
        key = ("models", m["name"], m["version"])
        hit = _cached(store, key)
        if hit:
            return Resolved(hit, model, f"{m['name']}/{m['version']}")
        return _download(store, key, model, m["name"], m["version"], allow_unverified, log)
    if m := _ALIAS.match(model):
        version = _alias_version(store, m["name"], m["alias"])
        key = ("models", m["name"], version)
        hit = _cached(store, key)
        if hit:
            return Resolved(hit, model, f"{m['name']}/{version}")
        return _download(store, key, model, m["name"], version, allow_unverified, log)
    if m := _MODEL_ID.match(model):
        key = ("logged-models", m["id"])
    elif m := _RUN.match(model):
        key = ("runs", m["run"], *m["path"].split("/"))
    else:
        raise RegistryError(f"{model!r} is not a model URI rnnkit reads; accepted: {FORMS}")
    return Resolved(_cached(store, key) or _fetch(store, key, model, log), model)


def _entry(store: str, key: tuple[str, ...]) -> Path:
    digest = hashlib.sha256(store.encode()).hexdigest()[:16]
    return cache_root() / digest / Path(*(quote(part, safe="") for part in key))


def _cached(store: str, key: tuple[str, ...]) -> Path | None:
    bundle = _entry(store, key) / ARTIFACT
    return bundle if (bundle / MANIFEST).is_file() else None


def _mlflow(store: str):
    apply_defaults()  # capped retries: a dead server is an error in seconds; no progress bars
    import mlflow

    mlflow.set_tracking_uri(store)
    return mlflow


def _alias_version(store: str, name: str, alias: str) -> str:
    mlflow = _mlflow(store)
    try:
        return str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException as e:
        raise RegistryError(
            f"models:/{name}@{alias}: {first_line(e)} (tracking store {store}); "
            f"see the model's versions and aliases with `rnnkit models list {name}`"
        ) from None


def _download(store, key, model, name, version, allow_unverified, log) -> Resolved:
    mlflow = _mlflow(store)
    try:
        tags = mlflow.MlflowClient().get_model_version(name, version).tags
    except mlflow.exceptions.MlflowException as e:
        raise RegistryError(
            f"{model}: {first_line(e)} (tracking store {store}); list versions with `rnnkit models list {name}`"
        ) from None
    if tags.get("parity_passed") == "false" and not allow_unverified:
        raise RegistryError(
            f"{model}: version {version} of {name!r} failed its parity check "
            f"(max abs error {tags.get('parity_max_abs', '?')}); pass --allow-unverified to run it anyway"
        )
    return Resolved(_fetch(store, key, f"models:/{name}/{version}", log), model, f"{name}/{version}", True)


def _fetch(store: str, key: tuple[str, ...], uri: str, log) -> Path:
    """Download `uri` and move its bundle into the cache entry in one rename, so a half-finished
    download is never used and two processes racing for one entry both end with a whole one."""
    mlflow = _mlflow(store)
    entry = _entry(store, key)
    entry.parent.mkdir(parents=True, exist_ok=True)
    if log:
        log(f"downloading {uri} from {store} into {entry}")
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=entry.parent))
    try:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(staging / "download"))
        except mlflow.exceptions.MlflowException as e:
            raise RegistryError(f"{uri}: {first_line(e)} (tracking store {store}); accepted: {FORMS}") from None
        (staging / "entry").mkdir()
        shutil.move(str(bundle_dir_of(local)), staging / "entry" / ARTIFACT)
        (staging / "entry" / "source.json").write_text(json.dumps({"uri": uri, "tracking_uri": store}) + "\n")
        if entry.exists() and _cached(store, key) is None:  # damaged (e.g. files removed by hand)
            shutil.rmtree(entry, ignore_errors=True)
        try:
            os.rename(staging / "entry", entry)
        except OSError:  # another process finished the same entry first: use theirs
            if _cached(store, key) is None:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return entry / ARTIFACT


def bundle_dir_of(local_model_path: str | os.PathLike) -> Path:
    """Where the bundle files lie inside a downloaded pyfunc model (e.g. the directory
    `mlflow.artifacts.download_artifacts(model_uri)` returns), so rnnkit can run them directly.
    A bundle directory is returned as it is. Reads the MLmodel file only (no MLflow call)."""
    import yaml

    path = Path(local_model_path)
    if (path / MANIFEST).is_file():
        return path
    mlmodel = path / "MLmodel"
    if not mlmodel.is_file():
        raise RegistryError(f"{path}: neither an rnnkit bundle (no {MANIFEST}) nor an MLflow model (no MLmodel)")
    try:
        conf = yaml.safe_load(mlmodel.read_text(encoding="utf-8")) or {}
        relative = conf["flavors"]["python_function"]["artifacts"][ARTIFACT]["path"]
    except (yaml.YAMLError, OSError, KeyError, TypeError):
        relative = f"artifacts/{ARTIFACT}"
    bundle = path / relative
    if not (bundle / MANIFEST).is_file():
        raise RegistryError(f"{path}: an MLflow model that is not an rnnkit model (no {relative}/{MANIFEST})")
    return bundle
