"""`rnnkit train`: parse flags over an optional config file, run `toolkit.pipeline`, print, exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import click

from cli.export import PRECISIONS
from cli.main import set_torch_threads, user_errors
from toolkit.core.config import (
    ATTENTIONS,
    CELLS,
    FORMATS,
    LEVELS,
    MERGES,
    NORMALIZATIONS,
    OPTIMIZERS,
    POOLS,
    SCHEDULES,
    TASKS,
    Config,
)
from toolkit.core.devices import TRAIN_DEVICES, default_threads


def _choice(values):
    return click.Choice(values, case_sensitive=False)


# The flags that set a config value: name -> (config section, None = top level; click type, or
# "--on/--off" for a switch; help). The config key is the flag's name.
FLAGS = {
    "task": (None, _choice(TASKS), " | ".join(TASKS)),
    "data": ("data", str, "Training data file (a directory of .txt/.md files for lm)."),
    "val": ("data", str, "Validation file (default: hold out --val-fraction of --data)."),
    "format": ("data", _choice(FORMATS), "Data format (default: from the file suffix)."),
    "val_fraction": ("data", float, "Share of --data held out for validation when no --val (0.1)."),
    "level": ("data", _choice(LEVELS), "Text tokens (lm; seq2seq source): char or word."),
    "target_level": ("data", _choice(LEVELS), "seq2seq target tokens: char or word (char)."),
    "lowercase": ("data", "--lowercase/--no-lowercase", "Lower-case text before building the vocabulary."),
    "min_freq": ("data", int, "Vocabulary: minimum token count."),
    "max_vocab": ("data", int, "Vocabulary: maximum size, specials included."),
    "target_columns": ("data", str, "CSV series: comma-separated columns to forecast (default all)."),
    "horizon": ("data", int, "CSV series: forecast this many steps ahead (1)."),
    "cell": ("model", _choice(CELLS), "Recurrent cell (lstm)."),
    "nonlinearity": ("model", _choice(("tanh", "relu")), "Elman RNN activation (tanh)."),
    "hidden_size": ("model", int, "Hidden units per direction (128)."),
    "num_layers": ("model", int, "Stacked layers (1)."),
    "bidirectional": ("model", "--bidirectional/--unidirectional", "Run a backward direction too."),
    "merge": ("model", _choice(MERGES), "Combine directions by concat or sum."),
    "dropout": ("model", float, "Dropout between stacked layers (0)."),
    "residual": ("model", "--residual/--no-residual", "Skip connections between layers of equal width."),
    "embedding_dim": ("model", int, "Token embedding width (64)."),
    "normalize": (
        "model",
        _choice(NORMALIZATIONS),
        "Feature inputs: by the training set's mean/std (dataset) or each sequence's own (sequence; no streaming).",
    ),
    "pool": (
        "model",
        _choice(POOLS),
        "classify/regress summary over time: last (final states) | mean | max | attention (over every real "
        "step; no streaming).",
    ),
    "frame_stack": (
        "model",
        int,
        "classify/regress on features: read K steps at a time, concatenated (1; long series: 4-16; no streaming).",
    ),
    "attention": ("model", _choice(ATTENTIONS), "seq2seq: none | additive | multiplicative (none)."),
    "decoder_cell": ("model", _choice(CELLS), "seq2seq decoder cell (default: --cell)."),
    "decoder_layers": ("model", int, "seq2seq decoder layers (default: --num-layers)."),
    "epochs": ("train", int, "Epochs to train (30); with --resume, the new total."),
    "batch_size": ("train", int, "Sequences (or parallel streams) per batch (16)."),
    "lr": ("train", float, "Learning rate (1e-3)."),
    "optimizer": ("train", _choice(OPTIMIZERS), "adam | adamw | sgd"),
    "weight_decay": ("train", float, "Weight decay (0)."),
    "schedule": ("train", _choice(SCHEDULES), "Learning-rate schedule (cosine)."),
    "clip": ("train", float, "Clip gradients to this global norm (1.0); 0 disables."),
    "bptt": ("train", int, "Truncated-BPTT window for lm and CSV series (64)."),
    "patience": ("train", int, "Early stop after this many epochs without improvement."),
    "monitor": ("train", str, "Validation metric for best-model selection and early stopping."),
    "min_delta": ("train", float, "The monitored metric must gain more than this to count as better (0)."),
    "warmup": ("train", float, "Ramp the learning rate up linearly over this many epochs (1)."),
    "max_time": ("train", float, "Time budget in seconds: stop before an epoch that would overrun it."),
    "class_weight": ("train", str, "classify/tag loss weights: none | balanced | FILE (JSON {label: weight})."),
    "seed": ("train", int, "Random seed (0)."),
    "device": ("train", _choice(TRAIN_DEVICES), "auto | cpu | cuda"),
    "amp": ("train", "--amp/--no-amp", "Mixed precision on CUDA (on)."),
    "out": ("train", click.Path(file_okay=False), "Run directory to write (runs/latest)."),
    "label_smoothing": ("train", float, "seq2seq: label smoothing of the cross-entropy (0)."),
    "time_warp": (
        "train",
        float,
        "Classify / per-sequence regress on features: warp each training series' time axis at random, "
        "segment speeds e^(S N(0,1)) (0: off; 0.2 helped small archive sets).",
    ),
}


def config_options(fn):
    """One click option per FLAGS entry; unset flags arrive as None and leave the config alone."""
    for name, (_, kind, text) in reversed(FLAGS.items()):
        if isinstance(kind, str) and kind.startswith("--"):
            fn = click.option(kind, name, default=None, help=text)(fn)
        else:
            fn = click.option("--" + name.replace("_", "-"), name, type=kind, help=text)(fn)
    return fn


@click.command()
@click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), help="YAML or JSON config; flags override it."
)
@click.option(
    "--resume", type=click.Path(file_okay=False), help="Continue the run in this directory from its last epoch."
)
@config_options
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bars (default: when stderr is a terminal, else --progress-every lines); --no-progress: neither.",
)
@click.option(
    "--progress-every",
    type=click.FloatRange(min=0),
    default=30,
    show_default=True,
    metavar="SECONDS",
    help="Without bars (stderr not a terminal): one progress line at most this often; 0 disables.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="torch intra-op threads (default: all cores available, at most OMP_NUM_THREADS; with --nproc N, "
    "cores // N per process).",
)
@click.option(
    "--export/--no-export", "do_export", default=True, help="End with a verified ONNX bundle in OUT/bundle (on)."
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="fp32",
    show_default=True,
    help="Export the bundle at this precision (int8: CPU, LSTM; bf16: CPU via OpenVINO, GRU/RNN; fp16: CUDA).",
)
@click.option("--mlflow/--no-mlflow", "use_mlflow", default=True, help="Record the run and its model in MLflow (on).")
@click.option("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).")
@click.option("--experiment", help="MLflow experiment (default: MLFLOW_EXPERIMENT_NAME, else rnnkit).")
@click.option("--register", "register_name", help="Register the model under this name (needs MLflow and export).")
@click.option("--alias", "aliases", multiple=True, help="With --register: point this alias at the new version.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary as the last line of stdout.")
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    help="Train data-parallel in N processes on this machine (torchrun; gloo on CPU, NCCL on CUDA).",
)
@user_errors
def train(
    nproc,
    config_file,
    resume,
    progress,
    progress_every,
    threads,
    do_export,
    precision,
    use_mlflow,
    tracking_uri,
    experiment,
    register_name,
    aliases,
    as_json,
    **flags,
):
    """Train a recurrent model and write a run directory (checkpoint, config, vocabulary, labels).

    The run is recorded in MLflow (params, per-epoch metrics, artifacts, the bundle as a logged
    model) unless --no-mlflow; if MLflow fails, training goes on and says so.
    """
    if nproc and nproc > 1 and "RANK" not in os.environ:
        sys.exit(_launch(nproc, threads))
    from toolkit import pipeline

    if register_name and not (use_mlflow and do_export):
        raise click.UsageError("--register needs MLflow and the export (drop --no-mlflow / --no-export)")
    if aliases and not register_name:
        raise click.UsageError("--alias needs --register NAME")
    if resume:
        config = pipeline.resume_config(resume)
        unexpected = [k for k, v in flags.items() if v is not None and k != "epochs"]
        if unexpected or config_file:
            raise click.UsageError("--resume continues a run as it was configured; only --epochs may change")
    else:
        config = Config.load(config_file) if config_file else Config()
    if flags.get("target_columns"):
        flags["target_columns"] = [c.strip() for c in flags["target_columns"].split(",") if c.strip()]
    if flags.get("clip") == 0:
        flags["clip"] = None
        config.train.clip = None
    for name, value in flags.items():
        config.override(FLAGS[name][0], name, value)
    threads = set_torch_threads(threads)
    bars = sys.stderr.isatty() if progress is None else progress
    try:
        outcome = pipeline.run(
            config,
            resume=bool(resume),
            export=do_export,
            precision=precision,
            mlflow=use_mlflow,
            tracking_uri=tracking_uri,
            experiment=experiment,
            register=register_name,
            aliases=aliases,
            progress=bars,
            progress_every=progress_every if progress is None and not bars else 0.0,  # lines instead of bars
            log=lambda m: click.echo(m, err=True),
            on_trained=_print_scores,
        )
    except pipeline.Interrupted as e:
        click.echo(f"\ninterrupted: {e}", err=True)
        sys.exit(130)
    if not outcome.main:  # another rank of a distributed run: rank 0 reports and writes
        # Nothing is left to do here, and skipping the interpreter's teardown spares this rank
        # torch's C++ teardown of gloo threads, which aborted ("terminate called without an
        # active exception") once in `make ddp-test` on 2 cores.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    if outcome.export is not None:
        parity, report = outcome.export.report.summary(), outcome.export.report_path
        if not outcome.passed:
            failed = "; ".join(outcome.export.report.reasons)
            click.echo(f"error: parity failed ({failed}); report {report}; training is complete", err=True)
            if as_json:  # the run itself finished: its summary is still what a script reads
                click.echo(json.dumps({**outcome.summary(), "threads": threads}))
            sys.exit(1)
        click.echo(
            f"bundle: {outcome.bundle} ({parity['precision']}, {parity['cases']} parity cases passed, worst at "
            f"{parity['worst_margin']:.2f} of its budget, max abs error {parity['max_abs']:.1e})"
        )
        if "metric" in parity:
            m = parity["metric"]
            click.echo(f"  {m['metric']} fp32 {m['fp32']:.4f}, {parity['precision']} {m['reduced']:.4f} on {m['data']}")
    if outcome.mlflow and outcome.mlflow.get("run_id") and not outcome.mlflow.get("failed"):
        model = outcome.mlflow["model_uri"] or "no model logged (no bundle)"
        click.echo(f"MLflow run {outcome.mlflow['run_id']}: model {model}")
    if outcome.registered:
        shown = f" (alias {', '.join(aliases)})" if aliases else ""
        click.echo(f"registered models:/{register_name}/{outcome.registered['version']}{shown}")
    if as_json:
        click.echo(json.dumps({**outcome.summary(), "threads": threads}))


def _print_scores(result) -> None:
    stop = f", stopped by {result.stop_reason}" if result.stop_reason else ""
    click.echo(f"best epoch {result.best_epoch}/{result.epochs_run}{stop}, chosen by {result.selection}:")
    for key, value in result.best.items():
        click.echo(f"  {key:<16} {value:.4f}")
    if result.sample is not None:
        click.echo("sample from the best model:")
        click.echo("  " + result.sample.replace("\n", "\n  "))
    click.echo(f"run directory: {result.out} (checkpoint model.pt, config.json, spec.json, metrics.json)")


def _launch(nproc: int, threads: int | None) -> int:
    """This same command in `nproc` processes under torchrun (single node), without --nproc; its exit
    status. torchrun stops every process when one fails. OMP_NUM_THREADS, unless set already, is each
    process's share of the cores (torchrun would set it to 1)."""
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    command += ["-m", "cli.main", *args]
    env = {**os.environ}
    env.setdefault("OMP_NUM_THREADS", str(threads or default_threads(nproc)))
    launcher = subprocess.Popen(command, env=env)
    # SIGTERM (and a SIGINT sent to this process alone) reach torchrun, which stops every rank
    forward = lambda signum, frame: launcher.send_signal(signum)  # noqa: E731
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    return launcher.wait()
