"""`rnnkit register` and `rnnkit models`: the MLflow Model Registry from the command line."""

from __future__ import annotations

import json
import time

import click

from cli.main import user_errors

tracking_option = click.option(
    "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)."
)


def _connect(tracking_uri: str | None) -> None:
    from toolkit.core.mlflow_env import apply_defaults

    apply_defaults()  # a dead server is reported in seconds, not minutes
    if tracking_uri:
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)


@click.command()
@click.argument("source")
@click.option("--name", required=True, help="Registered model name (created if new).")
@click.option("--alias", "aliases", multiple=True, help="Point this alias (e.g. champion) at the new version.")
@click.option("--experiment", default="rnnkit", show_default=True, help="Experiment for a bundle logged here.")
@tracking_option
@click.option("--json", "as_json", is_flag=True, help="Print the new version as one JSON object.")
@user_errors
def register(source, name, aliases, experiment, tracking_uri, as_json):
    """Register SOURCE as a new version of model NAME.

    SOURCE is a bundle directory (logged as an MLflow model first, linked to its training run when
    that run is in this store), runs:/RUN_ID/PATH, models:/m-<id>, or a run id (its `model`).
    Only rnnkit models that passed their parity check are registered.
    """
    import mlflow

    from toolkit.tracking.registry import register_source

    _connect(tracking_uri)
    version = register_source(source, name, aliases, experiment)
    out = {"name": name, "version": int(version.version), "aliases": list(aliases), "source": version.source}
    if as_json:
        click.echo(json.dumps(out))
        return
    shown = f" (alias {', '.join(aliases)})" if aliases else ""
    click.echo(f"registered models:/{name}/{version.version}{shown} at {mlflow.get_tracking_uri()}")


@click.group()
def models():
    """Registered models: list versions, move aliases."""


@models.command("list")
@click.argument("name", required=False)
@tracking_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@user_errors
def list_command(name, tracking_uri, as_json):
    """List registered models, or NAME's versions with aliases, parity and metrics."""
    from toolkit.tracking import registry

    _connect(tracking_uri)
    if name is None:
        rows = registry.list_models()
        if as_json:
            click.echo(json.dumps({"models": rows}))
            return
        if not rows:
            click.echo("no registered models (register one with `rnnkit register` or `rnnkit train --register`)")
        for r in rows:
            aliases = ", ".join(f"@{a} -> {v}" for a, v in sorted(r["aliases"].items()))
            click.echo(f"{r['name']:<24} latest {r['latest']}  {aliases}".rstrip())
        return
    rows = registry.list_versions(name)
    if as_json:
        click.echo(json.dumps({"name": name, "versions": rows}))
        return
    click.echo(f"{'version':<8} {'aliases':<16} {'parity':<16} {'created':<17} metrics")
    # parity: the verdict and the closest case's margin (error / budget; <= 1 passes)
    for r in rows:
        if r["parity_passed"] is None:
            parity = "unknown"
        else:
            verdict = "passed" if r["parity_passed"] else "FAILED"
            margin = r.get("parity_margin")
            parity = f"{verdict} {margin:.2f}" if margin is not None else f"{verdict} {r['parity_max_abs'] or 0:.1e}"
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"] / 1000))
        metrics = "  ".join(f"{k}={v:.4g}" for k, v in sorted(r["metrics"].items()))
        aliases = ",".join(r["aliases"]) or "-"
        click.echo(f"{r['version']:<8} {aliases:<16} {parity:<16} {created:<17} {metrics}".rstrip())


@models.command("alias")
@click.argument("name")
@click.argument("version", type=click.IntRange(min=1))
@click.argument("alias")
@tracking_option
@user_errors
def alias_command(name, version, alias, tracking_uri):
    """Point ALIAS (e.g. champion) of model NAME at VERSION; models:/NAME@ALIAS then loads it."""
    from toolkit.tracking.registry import move_alias

    _connect(tracking_uri)
    before = move_alias(name, str(version), alias)
    moved = "" if before is None else f" (was version {before})"
    click.echo(f"models:/{name}@{alias} -> version {version}{moved}")
