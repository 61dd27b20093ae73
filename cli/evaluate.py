"""`rnnkit evaluate`: metrics of a trained run on a labelled file."""

from __future__ import annotations

import json

import click

from cli.main import set_torch_threads, user_errors
from toolkit.core.devices import TRAIN_DEVICES


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--data", required=True, help="Labelled file in a training format (e.g. a held-out test set).")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--device", type=click.Choice(TRAIN_DEVICES), default="auto", show_default=True)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="torch intra-op threads (default: all cores available, at most OMP_NUM_THREADS).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as one JSON object.")
@user_errors
def evaluate(run_dir, data, batch_size, device, threads, as_json):
    """Score the best model of RUN_DIR on a labelled data file."""
    from toolkit.train.evaluate import evaluate as run_evaluate

    set_torch_threads(threads)
    metrics = run_evaluate(run_dir, data, batch_size=batch_size, device=device)
    if as_json:
        click.echo(json.dumps(metrics))
        return
    click.echo(f"{run_dir} on {data}:")
    for key, value in metrics.items():
        click.echo(f"  {key:<16} {value:.4f}")
