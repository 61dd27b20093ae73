"""`rnnkit export` and `rnnkit verify`: bundles with a parity certificate."""

from __future__ import annotations

import json
import sys

import click

from cli.main import local_bundle, model_argument, user_errors

# The choices, kept here so that `rnnkit --help` imports no onnx (toolkit.export.precision does).
PRECISIONS = ("fp32", "int8", "fp16", "bf16")


def print_report(report, as_json: bool, extra: dict | None = None) -> None:
    if as_json:
        click.echo(json.dumps({**report.to_dict(), **(extra or {})}))
        return
    width = max(10, *(len(c.graph) for c in report.cases))
    head = f"{'case':<44} {'graph':<{width}} {'provider':<8} {'max abs':>8} {'fp32 err':>8} {'budget':>8} {'margin':>6}"
    click.echo(head + "  result")
    for c in report.cases:
        provider = c.provider.removesuffix("ExecutionProvider")
        verdict = "pass" if c.passed else "FAIL"
        click.echo(
            f"{c.name:<44} {c.graph:<{width}} {provider:<8} {c.max_abs:8.1e} {c.noise:8.1e} {c.budget:8.1e} "
            f"{c.margin:6.3f}  {verdict}"
        )
    summary, rule = report.summary(), report.rule
    click.echo(
        f"{summary['cases'] - summary['failed']}/{summary['cases']} cases within budget (seed {report.seed}); "
        f"worst {summary['worst_case']}: margin {summary['worst_margin']:.3f}"
    )
    ulp = "float16 ulp" if rule.precision == "fp16" else "float32 ulp"
    click.echo(
        f"budget = {rule.factor:g} x {rule.precision} err ({rule.noise}) + {rule.floor_ulps:g} {ulp} of "
        "max|reference|; margin = max abs / budget, pass <= 1"
    )
    metric = report.metric
    if metric is not None:
        verdict = "pass" if metric.passed else "FAIL"
        click.echo(
            f"task metric on {metric.data} ({metric.sequences} sequences): {metric.metric} fp32 {metric.fp32:.4f}, "
            f"{rule.precision} {metric.reduced:.4f}, drop {metric.drop:+.4f} (max {metric.max_drop:.4f})  {verdict}"
        )
    for name, value in (extra or {}).items():
        click.echo(f"{name}: {value}")


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Bundle directory to write.")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset of the graphs.")
@click.option("--sample", type=click.Path(dir_okay=False), help="Your own inputs to include in the parity check.")
@click.option("--seed", type=int, help="Seed of the random parity inputs (default: fresh, recorded in the report).")
@click.option("--force", is_flag=True, help="Write the bundle even if parity fails (marked failed).")
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="fp32",
    show_default=True,
    help="Arithmetic of the bundle: int8 (CPU, LSTM), bf16 (CPU via OpenVINO, GRU/RNN), fp16 (CUDA); "
    "certified against the fp32 model.",
)
@click.option(
    "--eval-data",
    type=click.Path(dir_okay=False),
    help="Labelled file the reduced-precision metric check scores (default: the run's validation data).",
)
@click.option(
    "--max-metric-drop",
    type=click.FloatRange(min=0),
    help="Largest loss of the task metric a reduced bundle may have "
    "(default: 0.005 accuracy/F1, 0.01 nats cross-entropy, 1%% of RMSE).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@user_errors
def export(run_dir, out, opset, sample, seed, force, precision, eval_data, max_metric_drop, as_json):
    """Export the best model of RUN_DIR to an ONNX bundle and certify its parity with torch."""
    from toolkit.export.exporter import export as run_export

    result = run_export(
        run_dir,
        out,
        opset=opset,
        sample=sample,
        seed=seed,
        force=force,
        precision=precision,
        eval_data=eval_data,
        max_metric_drop=max_metric_drop,
    )
    written = {"bundle": str(result.out) if result.written else None, "report": str(result.report_path)}
    print_report(result.report, as_json, written)
    if not result.report.passed:
        failed = "; ".join(result.report.reasons)
        click.echo(
            f"error: parity failed: {failed}" + ("; bundle written marked failed (--force)" if force else ""), err=True
        )
        sys.exit(1)


@click.command()
@model_argument
@click.option("--checkpoint", type=click.Path(file_okay=False), help="Run directory: also check torch vs ONNX.")
@click.option("--seed", type=int, help="Seed of the random inputs (default: fresh).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@user_errors
def verify(model, checkpoint, seed, as_json):
    """Check a bundle: manifest, graph hashes, ONNX validity, step-vs-full parity (and torch parity).

    MODEL is a bundle directory or an MLflow model: models:/NAME/VERSION, models:/NAME@ALIAS,
    runs:/RUN_ID/model (downloaded once, then run from the local cache).
    """
    from toolkit.export.verify import verify as run_verify

    report = run_verify(local_bundle(model, allow_unverified=True), checkpoint=checkpoint, seed=seed)
    print_report(report, as_json)
    if not report.passed:
        failed = "; ".join(report.reasons)
        click.echo(f"error: verification failed: {failed}", err=True)
        sys.exit(1)
