"""`rnnkit stream`: JSON Lines in on stdin, one JSON line out per message, flushed, so it can sit
in a Unix pipe. Imports ONNX Runtime and NumPy only."""

from __future__ import annotations

import json
import sys

import click

from cli.main import engine_options, local_bundle, model_argument, user_errors


@click.command()
@model_argument
@engine_options
@click.option(
    "--max-chunk", type=click.IntRange(min=1), default=4096, show_default=True, help="Most steps one message may carry."
)
@user_errors
def stream(model, device, threads, max_chunk, allow_unverified):
    """Stream inference: read messages from stdin, answer each on stdout.

    \b
    {"stream": "a", "tokens": [...]}  or  {"stream": "a", "features": [[...], ...]}
    {"stream": "a", "reset": true}     {"stream": "a", "end": true}

    Each chunk is answered with {"stream", "step" (index of its first step), "outputs",
    "predictions"}; a bad line with {"line", "error"} (other streams go on). Exit code 1 if any
    line failed.

    MODEL is a bundle directory or an MLflow model: models:/NAME/VERSION, models:/NAME@ALIAS,
    runs:/RUN_ID/model (downloaded once, then run from the local cache).
    """
    from toolkit.export.bundle import BundleError
    from toolkit.runtime.engine import Engine, InputError
    from toolkit.runtime.messages import Codec, MessageError

    bundle = local_bundle(model, allow_unverified)
    engine = Engine(bundle, device=device, threads=threads, allow_unverified=allow_unverified)
    if engine.step is None:
        raise BundleError(
            f"{bundle} holds a bidirectional model: its backward direction needs each whole sequence, so it "
            f"cannot be streamed; run whole sequences with `rnnkit infer {bundle} --input FILE`"
        )
    click.echo(f"streaming {bundle} on {engine.provider}", err=True)
    codec = Codec(engine.manifest, max_chunk=max_chunk)
    streams = {}
    failed = 0
    for number, line in enumerate(sys.stdin, start=1):
        if not line.strip():
            continue
        try:
            msg = codec.parse(line)
        except MessageError as e:
            failed += 1
            _send({"line": number, "error": str(e)})
            continue
        if msg.kind == "end":
            closed = streams.pop(msg.stream, None)
            _send({"stream": msg.stream, "end": True, "steps": closed.steps if closed else 0})
        elif msg.kind == "reset":
            if msg.stream in streams:
                streams[msg.stream].reset()
            _send({"stream": msg.stream, "reset": True})
        else:
            s = streams.get(msg.stream) or streams.setdefault(msg.stream, engine.stream())
            start = s.steps
            try:
                outputs = s.push(msg.chunk)
            except InputError as e:  # the codec checks first; this is the engine's own guard
                failed += 1
                _send({"line": number, "error": str(e)})
                continue
            _send(codec.reply(msg.stream, start, codec.present(outputs[None])[0], msg.unknown))
    sys.exit(1 if failed else 0)


def _send(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
