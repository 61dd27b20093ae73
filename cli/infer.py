"""`rnnkit infer`: full-sequence batch inference on a file. ONNX Runtime and NumPy only."""

from __future__ import annotations

import json

import click

from cli.main import engine_options, local_bundle, model_argument, search_options, user_errors


@click.command()
@model_argument
@click.option("--input", "input_path", required=True, help="Data file in a training format (labels optional).")
@click.option("--output", "output_path", required=True, help="JSON Lines to write: one result per sequence.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True, help="Sequences per call.")
@engine_options
@search_options
@click.option(
    "--engine",
    type=click.Choice(["onnxruntime", "spark"]),
    default="onnxruntime",
    show_default=True,
    help="spark: score on Apache Spark through the MLflow model (JSON Lines or Parquet in and out).",
)
@click.option("--master", default="local[2]", show_default=True, help="With --engine spark: the Spark master URL.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@user_errors
def infer(
    model, input_path, output_path, batch_size, device, threads, allow_unverified, search, engine, master, as_json
):
    """Run MODEL on every sequence of a file (bidirectional models included); metrics if labelled.

    A seq2seq model decodes each source (greedy, or --beam N with --nbest K) and writes
    {"prediction": [...], "score": ..., "nbest": [...]} per source.

    MODEL is a bundle directory or an MLflow model: models:/NAME/VERSION, models:/NAME@ALIAS,
    runs:/RUN_ID/model (downloaded once, then run from the local cache).
    """
    if engine == "spark":
        _spark(model, input_path, output_path, batch_size, master, as_json)
        return
    from tqdm import tqdm

    from toolkit.core.atomic import atomic_write_bytes
    from toolkit.runtime.engine import Engine
    from toolkit.runtime.infer import infer_file

    bundle = local_bundle(model, allow_unverified)
    engine = Engine(bundle, device=device, threads=threads, allow_unverified=allow_unverified)
    if engine.translator is None and search != type(search)():
        task = engine.manifest["task"]
        raise click.UsageError(
            f"--beam, --nbest, --length-penalty and --max-len-* decode seq2seq models; {model} is {task}"
        )
    # On a terminal only, and only once a run has taken half a second: small inputs stay quiet.
    with tqdm(desc="infer", unit="seq", disable=None, delay=0.5, leave=False) as bar:
        results, metrics = infer_file(engine, input_path, batch_size=batch_size, progress=bar, search=search)
    atomic_write_bytes(output_path, "".join(json.dumps(r) + "\n" for r in results).encode("utf-8"))
    summary = {"sequences": len(results), "output": output_path, "provider": engine.provider, "metrics": metrics}
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo(f"{len(results)} sequences -> {output_path} ({engine.provider})")
    for key, value in (metrics or {}).items():
        click.echo(f"  {key:<16} {value:.4f}")


def _spark(model: str, input_path: str, output_path: str, batch_size: int, master: str, as_json: bool) -> None:
    """`--engine spark`: the rows of a JSON Lines or Parquet file scored on Spark (toolkit.tracking.spark)."""
    from toolkit.tracking.spark import score

    bundle = local_bundle(model)  # its manifest (a URI's bundle is downloaded once into the cache)
    summary = score(model, bundle, input_path, output_path, master=master, batch_size=batch_size)
    shown = f"{summary['sequences']} sequences -> {output_path} (spark {master})"
    click.echo(json.dumps(summary) if as_json else shown)
