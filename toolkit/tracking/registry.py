"""The MLflow Model Registry for rnnkit models: register a logged model as a new version, with
its parity verdict as version tags, and point aliases (not the deprecated stages) at it."""

from __future__ import annotations

from toolkit.errors import RnnkitError


class RegistryError(RnnkitError):
    """The registry refused or could not be reached (says which and what to do)."""


def register(model_uri: str, name: str, aliases=(), parity: dict | None = None):
    """A new version of registered model `name` from `model_uri`; returns MLflow's ModelVersion."""
    import mlflow
    from mlflow import MlflowClient

    try:
        version = mlflow.register_model(model_uri, name)
        client = MlflowClient()
        if parity is not None:
            client.set_model_version_tag(name, version.version, "parity_passed", str(bool(parity["passed"])).lower())
            client.set_model_version_tag(name, version.version, "parity_max_abs", f"{parity['max_abs']:.3g}")
        for alias in aliases:
            client.set_registered_model_alias(name, alias, version.version)
    except mlflow.exceptions.MlflowException as e:
        raise RegistryError(f"registering {model_uri} as {name!r} at {mlflow.get_tracking_uri()} failed: {e}") from None
    return version
