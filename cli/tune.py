"""`rnnkit tune`: parse flags over an optional base config and search space, run `toolkit.tune`, print, exit."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from pathlib import Path

import click

from cli.main import user_errors
from cli.train import FLAGS, config_options
from toolkit.core import tasks
from toolkit.core.config import Config
from toolkit.core.errors import ConfigError
from toolkit.core.metrics import metric_mode
from toolkit.tune.space import default_space, load_space

DEFAULT_OUT = "runs/tune"


@click.command()
@click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), help="Base YAML or JSON config; flags override it."
)
@click.option(
    "--space",
    "space_file",
    type=click.Path(dir_okay=False),
    help="YAML search space, key by key over the task's default (e.g. `lr: {type: float, low: 0.0003, "
    "high: 0.01, log: true}`; `key: null` stops searching a key).",
)
@config_options
@click.option(
    "--trials",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Finished (complete, pruned or failed) trials the study should hold, all calls together: "
    "rerunning the same command resumes and runs only the rest.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds this call may run: no trial starts after it, and one still running stops at its next "
    "epoch (not counted: a rerun runs another).",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Trials at once, each in its own process with cores/J torch threads.",
)
@click.option("--study", "study_name", help="Optuna study name (default: the name of --out's directory).")
@click.option(
    "--storage",
    help="Optuna storage URL (default: optuna.db beside an SQLite MLflow store, else ./optuna.db).",
)
@click.option(
    "--pruner-startup-trials",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Trials that run to the end before the median pruner stops any.",
)
@click.option(
    "--pruner-warmup-epochs",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="Epochs every trial runs before it may be pruned.",
)
@click.option("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).")
@click.option("--experiment", help="MLflow experiment (default: MLFLOW_EXPERIMENT_NAME, else rnnkit).")
@click.option("--register", "register_name", help="Register the best trial's model under this name.")
@click.option("--alias", "aliases", multiple=True, help="With --register: point this alias at the new version.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary as the last line of stdout.")
@user_errors
def tune(
    config_file,
    space_file,
    trials,
    timeout,
    jobs,
    study_name,
    storage,
    pruner_startup_trials,
    pruner_warmup_epochs,
    tracking_uri,
    experiment,
    register_name,
    aliases,
    as_json,
    **flags,
):
    """Search hyperparameters with Optuna: each trial trains the base config (--config and flags)
    with values sampled from the search space (TPE, seeded by --seed) into OUT/trials/NNNN, as an
    MLflow child run of one parent run for the study; trials that fall behind the median of earlier
    ones at the same epoch are pruned. A config flag you give is fixed and leaves the space; the
    --config file's values are the base of the keys the space does not search.

    At the end the best trial's own model (its best epoch; it is not retrained) is exported with
    its parity certificate to OUT/best/bundle, logged as the parent run's model, and registered
    with --register. The study lives in --storage: rerun the command to continue it.
    """
    if aliases and not register_name:
        raise click.UsageError("--alias needs --register NAME")
    out = flags.pop("out") or DEFAULT_OUT
    config = _base_config(config_file, flags, out)
    space = load_space(space_file, config.task) if space_file else default_space(config.task)
    fixed = sorted(k for k, v in flags.items() if v is not None and k in space)
    if fixed:
        click.echo(f"fixed by flags, not searched: {', '.join(fixed)}", err=True)
    space = space.without(fixed)
    direction = _direction(config)
    click.echo(f"search space: {space.describe()}", err=True)

    from toolkit import pipeline
    from toolkit.tune.study import default_storage
    from toolkit.tune.study import tune as run_study
    from toolkit.tune.trial import Settings

    tracking_uri, experiment = _mlflow_target(tracking_uri, experiment)
    settings = Settings(
        base=config.to_dict(),
        space=space.to_dict(),
        out=out,
        study=study_name or Path(out).resolve().name,
        storage=storage or default_storage(tracking_uri),
        direction=direction,
        trials=trials,
        deadline=time.time() + timeout if timeout else None,
        seed=config.train.seed,
        pruner_startup=pruner_startup_trials,
        pruner_warmup=pruner_warmup_epochs,
        tracking_uri=tracking_uri,
        experiment=experiment,
        jobs=jobs,
    )
    try:
        with _sigterm_as_interrupt():
            outcome = run_study(settings, register_name, tuple(aliases), log=lambda m: click.echo(m, err=True))
    except pipeline.Interrupted as e:
        click.echo(f"\ninterrupted: {e}", err=True)
        sys.exit(130)
    _report(outcome, register_name, aliases, as_json)


# The train flags' help, where tuning reads them otherwise.
TUNE_HELP = {
    "out": f"Study directory: trials in OUT/trials/NNNN, the best model in OUT/best ({DEFAULT_OUT}).",
    "seed": "Random seed of every trial and of the sampler (0).",
}
for _param in tune.params:
    _param.help = TUNE_HELP.get(_param.name, _param.help)


def _base_config(config_file, flags: dict, out: str) -> Config:
    """The base config every trial starts from: the file, then the flags given."""
    config = Config.load(config_file) if config_file else Config()
    if flags.get("target_columns"):
        flags["target_columns"] = [c.strip() for c in flags["target_columns"].split(",") if c.strip()]
    if flags.get("clip") == 0:  # 0 disables clipping, as in `rnnkit train`
        flags["clip"] = None
        config.train.clip = None
    for name, value in flags.items():
        config.override(FLAGS[name][0], name, value)
    config.train.out = out
    config.validate()
    if config.data.data is None:
        raise ConfigError("no training data: give --data FILE (or data.data in the config file)")
    if config.data.val is None and config.data.val_fraction == 0:
        raise ConfigError("tuning compares trials on validation data: give --val FILE or a --val-fraction above 0")
    return config


def _direction(config: Config) -> str:
    """maximize or minimize: how the monitored metric (--monitor, else the task's) improves."""
    name = config.train.monitor
    try:
        mode = tasks.of(config.task).monitor[1] if not name else "min" if name == "loss" else metric_mode(name)
    except ValueError:
        raise ConfigError(f"train.monitor {name!r} is not a metric rnnkit reports") from None
    return "maximize" if mode == "max" else "minimize"


def _mlflow_target(tracking_uri: str | None, experiment: str | None) -> tuple[str, str]:
    import os

    from toolkit.core.mlflow_env import apply_defaults

    apply_defaults()
    import mlflow

    return tracking_uri or mlflow.get_tracking_uri(), experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME", "rnnkit")


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM stops the study as Ctrl-C does (trials' runs end KILLED, the study keeps what finished)."""
    try:
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _report(outcome, register_name, aliases, as_json: bool) -> None:
    summary = outcome.summary
    t = summary["trials"]
    finished = t["complete"] + t["pruned"] + t["failed"]
    click.echo(
        f"study {summary['study']}: {finished} of {t['wanted']} trials finished "
        f"({t['complete']} complete, {t['pruned']} pruned, {t['failed']} failed)"
        + (f"; {t['not_counted']} stopped by a timeout or interrupt, not counted" if t["not_counted"] else "")
    )
    best = summary["best"]
    if best is None:
        why = "rerun the same command to run the rest" if finished < t["wanted"] else "see the trials' errors above"
        click.echo(f"error: no trial has completed, so there is no best model yet; {why}", err=True)
        _exit(summary, as_json, 1)
    click.echo(f"best: trial {best['trial']}, {best['monitor']} {best['value']:.4f} at epoch {best['epoch']}")
    for key, value in best["params"].items():
        click.echo(f"  {key:<16} {value:.4g}" if isinstance(value, float) else f"  {key:<16} {value}")
    click.echo(f"  run directory    {best['run_dir']}")
    parity = summary.get("parity")
    if not outcome.passed:
        failed = "; ".join(outcome.export.report.reasons)
        click.echo(f"error: parity failed ({failed}); report {outcome.export.report_path}", err=True)
        _exit(summary, as_json, 1)
    click.echo(
        f"bundle: {summary['bundle']} ({parity['precision']}, {parity['cases']} parity cases passed, worst at "
        f"{parity['worst_margin']:.2f} of its budget, max abs error {parity['max_abs']:.1e})"
    )
    record = summary.get("mlflow")
    if record and not record.get("failed"):
        click.echo(f"MLflow parent run {record['parent_run_id']}: model {record['model_uri']}")
    if summary.get("registered"):
        shown = f" (alias {', '.join(aliases)})" if aliases else ""
        click.echo(f"registered models:/{register_name}/{summary['registered']['version']}{shown}")
    _exit(summary, as_json, 0)


def _exit(summary: dict, as_json: bool, code: int) -> None:
    if as_json:
        click.echo(json.dumps(summary))
    sys.exit(code)
