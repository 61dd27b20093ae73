"""The `rnnkit` command. Subcommands live in their own modules and are imported lazily, so
`rnnkit <serving command> --help` never pays for torch or mlflow."""

from __future__ import annotations

import functools
import sys

import click

from cli.lazy import LazyGroup
from toolkit.core.devices import RUNTIME_DEVICES


@click.group(
    cls=LazyGroup,
    lazy_commands={
        "train": ("cli.train", "train"),
        "tune": ("cli.tune", "tune"),
        "evaluate": ("cli.evaluate", "evaluate"),
        "export": ("cli.export", "export"),
        "verify": ("cli.export", "verify"),
        "stream": ("cli.stream", "stream"),
        "infer": ("cli.infer", "infer"),
        "generate": ("cli.generate", "generate"),
        "serve": ("cli.serve", "serve"),
        "register": ("cli.registry", "register"),
        "models": ("cli.registry", "models"),
        "deploy": ("cli.deploy", "deploy"),
    },
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="rnnkit")
def cli() -> None:
    """Train recurrent sequence models, export them to ONNX with a parity certificate, and serve them."""


def user_errors(fn):
    """Turn RnnkitError into one 'error: ...' line on stderr and its exit code (2 for bad
    input, 1 otherwise); Ctrl-C exits 130. Other exceptions are bugs and keep their traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from toolkit.core.errors import RnnkitError

        try:
            return fn(*args, **kwargs)
        except RnnkitError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)

    return wrapper


def engine_options(fn):
    """--device, --threads and --allow-unverified, shared by the commands that run a bundle."""
    for option in reversed(
        [
            click.option(
                "--device",
                type=click.Choice(RUNTIME_DEVICES),
                default="auto",
                show_default=True,
                help="Execution provider; auto takes CUDA only where it works and says which runs.",
            ),
            click.option("--threads", type=int, help="ONNX Runtime intra-op threads (default: all cores)."),
            click.option("--allow-unverified", is_flag=True, help="Run a bundle whose parity check failed."),
        ]
    ):
        fn = option(fn)
    return fn


def search_options(fn):
    """--beam, --nbest, --length-penalty, --max-len-a, --max-len-b (seq2seq decoding), passed to
    the command as one `search` (toolkit.core.search.Search), each within its range (`RANGES`)."""
    from toolkit.core.search import RANGES

    def within(name: str):
        low, high = RANGES[name]
        return click.IntRange(low, high) if isinstance(low, int) else click.FloatRange(low, high)

    options = [
        click.option(
            "--beam", type=within("beam"), default=1, show_default=True, help="seq2seq: beam size (1: greedy)."
        ),
        click.option("--nbest", type=within("nbest"), default=1, help="seq2seq: hypotheses per input (<= beam)."),
        click.option(
            "--length-penalty",
            type=within("length_penalty"),
            default=1.0,
            help="seq2seq: GNMT length penalty alpha (0: the plain sum of log-probabilities).",
        ),
        click.option(
            "--max-len-a", type=within("max_len_a"), default=2.0, help="seq2seq: at most A x |source| + B tokens."
        ),
        click.option("--max-len-b", type=within("max_len_b"), default=10, help="seq2seq: see --max-len-a."),
    ]

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from toolkit.core.search import SETTINGS, Search

        search = Search(**{name: kwargs.pop(name) for name in SETTINGS})
        try:
            search.check()
        except ValueError as e:
            raise click.UsageError(str(e)) from None
        return fn(*args, search=search, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def message_size_option(what: str):
    """--max-message-bytes, for the commands that read stream messages."""
    return click.option(
        "--max-message-bytes", type=click.IntRange(min=1024), default=4 * 2**20, show_default=True, help=what
    )


def set_torch_threads(threads: int | None) -> int:
    """Give torch `threads` intra-op threads (train, evaluate), by default this process's share of
    the cores (a torchrun rank shares the machine with LOCAL_WORLD_SIZE processes); the number set."""
    import os

    import torch

    from toolkit.core.devices import default_threads

    threads = threads or default_threads(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    torch.set_num_threads(threads)
    return threads


def model_argument(fn):
    """The MODEL argument: a bundle directory or an MLflow model URI (toolkit.runtime.source)."""
    return click.argument("model", metavar="MODEL")(fn)


def local_bundle(model: str, allow_unverified: bool = False) -> str:
    """MODEL's bundle directory on this machine: downloaded once into the cache for a URI (MLflow
    is imported only to resolve an alias or to download; a cached version needs neither)."""
    from toolkit.runtime.source import resolve

    resolved = resolve(model, allow_unverified, log=lambda m: click.echo(m, err=True))
    if resolved.version:
        name, version = resolved.version.split("/")
        click.echo(f"{model}: version {version} of {name!r}, from {resolved.bundle}", err=True)
    return str(resolved.bundle)


def main() -> None:
    cli(prog_name="rnnkit")


if __name__ == "__main__":
    main()
