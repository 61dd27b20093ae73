"""`rnnkit stream`: JSON Lines in on stdin, one JSON line out per message, flushed, so it can sit
in a Unix pipe. Imports ONNX Runtime and NumPy only."""

from __future__ import annotations

import json
import sys

import click

from cli.main import engine_options, local_bundle, message_size_option, model_argument, user_errors


@click.command()
@model_argument
@engine_options
@click.option(
    "--max-chunk", type=click.IntRange(min=1), default=4096, show_default=True, help="Most steps one message may carry."
)
@message_size_option("Longest line read; a longer one is refused unread.")
@user_errors
def stream(model, device, threads, max_chunk, max_message_bytes, allow_unverified):
    """Stream inference: read messages from stdin, answer each on stdout.

    \b
    {"stream": "a", "tokens": [...]}  or  {"stream": "a", "features": [[...], ...]}
    {"stream": "a", "reset": true}     {"stream": "a", "end": true}

    Each chunk is answered with {"stream", "step" (index of its first step), "outputs",
    "predictions"}; a bad line with {"line", "error"} (other streams go on), a reset or end of a
    stream that is not open too. Exit code 1 if any line failed.

    A frame-stacked model (--frame-stack K) answers once per K steps: a reply holds an output for
    each frame the chunk completed (maybe none), "frame" (the index of the first) and "buffered"
    (steps waiting for their frame); an end answers the waiting steps with one last output.

    MODEL is a bundle directory or an MLflow model: models:/NAME/VERSION, models:/NAME@ALIAS,
    runs:/RUN_ID/model (downloaded once, then run from the local cache).
    """
    from toolkit.core.bundle import BundleError
    from toolkit.runtime.engine import Engine, InputError
    from toolkit.runtime.messages import Codec, MessageError, control_reply, unknown_stream

    bundle = local_bundle(model, allow_unverified)
    engine = Engine(bundle, device=device, threads=threads, allow_unverified=allow_unverified)
    if engine.step is None:
        raise BundleError(f"{bundle} cannot be streamed: {engine.why_not_streaming}")
    click.echo(f"streaming {bundle} on {engine.provider}", err=True)
    codec = Codec(engine.manifest, max_chunk=max_chunk)
    streams = {}
    failed = 0
    for number, line in enumerate(bounded_lines(sys.stdin.buffer, max_message_bytes), start=1):
        if line is None:
            failed += 1
            _send(
                {"line": number, "error": f"line longer than {max_message_bytes} bytes (--max-message-bytes); not read"}
            )
            continue
        if not line.strip():
            continue
        try:
            msg = codec.parse(line)
        except MessageError as e:
            failed += 1
            _send({"line": number, "error": str(e)})
            continue
        if msg.kind != "chunk" and msg.stream not in streams:  # as `rnnkit serve` answers (404)
            failed += 1
            _send({"line": number, "stream": msg.stream, "error": unknown_stream(msg.stream, msg.kind)})
        elif msg.kind in ("reset", "end"):
            s = streams.pop(msg.stream) if msg.kind == "end" else streams[msg.stream]
            tail = codec.tail(s.frames, s.waiting, codec.present(s.tail()[None])[0]) if msg.kind == "end" else None
            _send(control_reply(msg.stream, msg.kind, s.steps, tail))
            s.reset()
        else:
            s = streams.get(msg.stream) or streams.setdefault(msg.stream, engine.stream())
            start, frame = s.steps, s.frames
            try:
                outputs = s.push(msg.chunk)
            except InputError as e:  # the codec checks first; this is the engine's own guard
                failed += 1
                _send({"line": number, "error": str(e)})
                continue
            presented = codec.present(outputs[None])[0]
            _send(codec.reply(msg.stream, start, presented, msg.unknown, frame, s.waiting))
    sys.exit(1 if failed else 0)


def bounded_lines(stream, limit: int):
    """Lines of a binary stream, each as bytes (orjson checks the UTF-8), or None for a line over
    `limit` bytes, which is skipped without being held in memory."""
    while line := stream.readline(limit + 1):
        if line.endswith(b"\n") or len(line) <= limit:
            yield line
            continue
        while line and not line.endswith(b"\n"):  # the rest of the long line
            line = stream.readline(limit)
        yield None


def _send(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
