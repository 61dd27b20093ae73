"""`rnnkit generate`: sample text from a language-model bundle. ONNX Runtime and NumPy only."""

from __future__ import annotations

import json
import sys

import click

from cli.main import engine_options, local_bundle, model_argument, user_errors


@click.command()
@model_argument
@click.option("--prompt", default="", help="Text to continue (default: start a new text).")
@click.option(
    "--max-tokens", type=click.IntRange(min=0), default=200, show_default=True, help="Stop after this many tokens."
)
@click.option(
    "--temperature",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="0 = greedy; higher = more varied.",
)
@click.option("--top-k", type=click.IntRange(min=1), help="Draw only from the K most likely tokens.")
@click.option(
    "--top-p",
    type=click.FloatRange(0, 1, min_open=True),
    help="Draw only from the smallest set of tokens holding this probability mass.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="The same seed gives the same text.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of streaming the text.")
@engine_options
@user_errors
def generate(model, prompt, max_tokens, temperature, top_k, top_p, seed, as_json, device, threads, allow_unverified):
    """Continue --prompt with text drawn from an lm MODEL, printing tokens as they come.

    Generation stops at the end-of-text token or after --max-tokens. The prompt is not echoed.

    MODEL is a bundle directory or an MLflow model: models:/NAME/VERSION, models:/NAME@ALIAS,
    runs:/RUN_ID/model (downloaded once, then run from the local cache).
    """
    from toolkit.core.sampling import Sampling
    from toolkit.runtime.engine import Engine
    from toolkit.runtime.generate import generate as draw
    from toolkit.runtime.generate import text_joiner

    bundle = local_bundle(model, allow_unverified)
    engine = Engine(bundle, device=device, threads=threads, allow_unverified=allow_unverified)
    sep = text_joiner(engine.manifest)
    tokens = draw(engine, prompt, Sampling(max_tokens, temperature, top_k, top_p, seed))
    if as_json:
        out = list(tokens)
        stop = "max_tokens" if len(out) == max_tokens else "eos"
        click.echo(json.dumps({"prompt": prompt, "text": sep.join(out), "tokens": len(out), "stop": stop}))
        return
    for i, token in enumerate(tokens):
        sys.stdout.write((sep if i else "") + token)
        sys.stdout.flush()
    sys.stdout.write("\n")
