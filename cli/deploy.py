"""`rnnkit deploy triton`: a model repository for NVIDIA Triton Inference Server."""

from __future__ import annotations

import dataclasses
import json
import re

import click

from cli.main import local_bundle, model_argument, user_errors
from toolkit.triton.options import Options


@click.group()
def deploy() -> None:
    """Write deployment artifacts for a bundle (see also deploy/ in the source tree)."""


def _default_name(model: str) -> str:
    """models:/NAME/... -> NAME; a bundle directory -> its name; made a valid Triton model name."""
    base = model.split("/")[1].split("@")[0] if model.startswith("models:/") else model.rstrip("/").split("/")[-1]
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", base).lstrip(".-")[:64]
    return name.removesuffix("_python") or "rnnkit"


# Flags that set a toolkit.triton.options.Options field (defaults come from Options): field ->
# (flag, click type, help).
OPTIONS = {
    "max_batch_size": ("--max-batch-size", click.IntRange(1, 65536), "Largest batch Triton forms."),
    "max_queue_delay_us": (
        "--max-queue-delay-us",
        click.IntRange(0),
        "How long Triton may hold a request to batch it with others.",
    ),
    "max_sequences": (
        "--max-sequences",
        click.IntRange(1),
        "Streams with state held at once per model instance (sequence batcher, oldest strategy).",
    ),
    "idle_timeout_s": (
        "--idle-timeout",
        click.FloatRange(0.001),
        "Seconds after which a silent stream is ended and its state dropped.",
    ),
    "instances": ("--instances", click.IntRange(1, 64), "Instances per device."),
    "device": (
        "--device",
        click.Choice(["auto", "cpu", "cuda"]),
        "Where the onnxruntime-backend model runs (KIND_AUTO, KIND_CPU, KIND_GPU).",
    ),
    "max_steps": ("--max-steps", click.IntRange(1), "Longest chunk (or sequence) the Python-backend model accepts."),
}


def triton_options(fn):
    defaults = {f.name: f.default for f in dataclasses.fields(Options)}
    for name, (flag, kind, text) in reversed(OPTIONS.items()):
        fn = click.option(flag, name, type=kind, default=defaults[name], show_default=True, help=text)(fn)
    return fn


@deploy.command()
@model_argument
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Model repository to write.")
@click.option("--name", help="Triton model name (default: the bundle's directory or registered name).")
@triton_options
@click.option("--allow-unverified", is_flag=True, help="Deploy a bundle whose parity check failed.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as one JSON object.")
@user_errors
def triton(model, out, name, as_json, allow_unverified, **options):
    """Write a Triton model repository for MODEL: an onnxruntime-backend model (streams: the step
    graph with implicit state under the sequence batcher; bidirectional and frame-stacked: model.onnx
    under the dynamic batcher) and a Python-backend model running the same graph, both with the same
    inputs and outputs.

    MODEL is a bundle directory or an MLflow model URI (models:/NAME/VERSION, models:/NAME@ALIAS).
    """
    from toolkit.triton.repository import write_repository

    opts = Options(**options)
    bundle = local_bundle(model, allow_unverified)
    written = write_repository(bundle, out, name or _default_name(model), opts, allow_unverified)
    cert = written.certificate
    if as_json:
        click.echo(json.dumps({"repository": str(written.out), "models": written.models, "certificate": cert}))
        return
    for model_name, backend in written.models.items():
        click.echo(f"{written.out / model_name}: {backend} backend")
    if cert is not None:
        click.echo(
            f"Triton step graph vs step.onnx: {sum(c['passed'] for c in cert['cases'])}/{len(cert['cases'])} cases "
            f"within budget; max abs {cert['max_abs']:.3g} (seed {cert['seed']})"
        )
    click.echo(f"run: tritonserver --model-repository={written.out}")
