"""`rnnkit serve`: the streaming server (toolkit.runtime.server). No torch, no mlflow."""

from __future__ import annotations

import click

from cli.main import engine_options, local_bundle, message_size_option, model_argument, user_errors
from toolkit.runtime import WS_PROTOCOLS


def seconds_option(name: str, default: float, what: str):
    seconds = click.FloatRange(min=0, min_open=True)
    return click.option(name, type=seconds, default=default, show_default=True, help=what)


@click.command()
@model_argument
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; 0.0.0.0 for every interface.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@engine_options
@click.option(
    "--max-batch", type=click.IntRange(min=1), default=256, show_default=True, help="Most streams stepped per call."
)
@click.option(
    "--max-delay-ms",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="Longest a chunk waits for its batch to fill.",
)
@click.option("--max-streams", type=click.IntRange(min=1), default=10_000, show_default=True, help="Open streams held.")
@click.option(
    "--max-streams-per-connection",
    type=click.IntRange(min=1),
    default=1_000,
    show_default=True,
    help="Open streams one WebSocket may hold (one client cannot take every stream); beyond it, 429.",
)
@seconds_option("--idle-timeout", 300.0, "Seconds without a message after which a stream is closed.")
@click.option(
    "--token",
    envvar="RNNKIT_SERVE_TOKEN",
    help="Require `Authorization: Bearer TOKEN` (health probes excepted). Also read from $RNNKIT_SERVE_TOKEN, "
    "which keeps it out of the process list.",
)
@click.option(
    "--max-chunk", type=click.IntRange(min=1), default=4096, show_default=True, help="Most steps per message."
)
@message_size_option("Largest WebSocket message or HTTP body.")
@click.option(
    "--allow-host",
    "allow_hosts",
    multiple=True,
    help="A Host name this server answers (repeat; * for any). Default: loopback names when bound to "
    "loopback (against DNS rebinding), any otherwise.",
)
@click.option(
    "--allow-origin",
    "allow_origins",
    multiple=True,
    help="A browser origin (https://app.example.com) allowed to open WebSockets, besides the server's "
    "own (repeat; * for any).",
)
@click.option(
    "--max-connections", type=click.IntRange(min=1), help="Open connections held; beyond it, 503. Default: no cap."
)
@click.option(
    "--max-infer-sequences",
    type=click.IntRange(min=1),
    default=4096,
    show_default=True,
    help="Most sequences per POST /v1/infer (413 beyond).",
)
@click.option(
    "--max-infer-steps",
    type=click.IntRange(min=1),
    default=262_144,
    show_default=True,
    help="Most steps per POST /v1/infer, its sequences together; a seq2seq source counts its length plus "
    "beam x its longest output (413 beyond).",
)
@seconds_option(
    "--request-timeout",
    10.0,
    "Seconds a client has to send a whole request, headers and body (408 for a late body; handshakes included).",
)
@seconds_option("--first-message-timeout", 60.0, "Seconds a new WebSocket has to send its first message.")
@click.option("--access-log", is_flag=True, help="Log every HTTP request.")
@click.option(
    "--ws-protocol",
    type=click.Choice(WS_PROTOCOLS),
    default=WS_PROTOCOLS[0],
    show_default=True,
    help="The WebSocket implementation of /v1/streams: picows, or uvicorn's through the ASGI app "
    "(README, 'Serve benchmark', compares them).",
)
@user_errors
def serve(
    model, host, port, device, threads, allow_unverified, allow_hosts, allow_origins, access_log, ws_protocol, **limits
):
    """Serve MODEL: WebSocket streams batched across streams, HTTP full-sequence inference.

    \b
    WS   /v1/streams    {"stream": "a", "features": [[...], ...]} / "tokens" / "reset" / "end",
                        or an array of such messages per frame (replies then come as arrays),
                        or binary messages (README: "Binary messages"), answered in binary
    POST /v1/infer      {"sequences": [...]}
    GET  /v1/model  /health  /metrics  /openapi.json  /docs

    SIGTERM stops accepting, answers every chunk already received, then closes each stream
    with a notice (WebSocket close code 1001).

    MODEL is a bundle directory or an MLflow model: models:/NAME/VERSION, models:/NAME@ALIAS,
    runs:/RUN_ID/model (downloaded once, then run from the local cache).
    """
    from toolkit.runtime.engine import Engine
    from toolkit.runtime.guard import default_hosts
    from toolkit.runtime.server import Settings, create_app, serve

    bundle = local_bundle(model, allow_unverified)
    engine = Engine(
        bundle, device=device, threads=threads, allow_unverified=allow_unverified, bind_state=False, spin=False
    )
    # The other options are Settings fields of the same names (token, limits and timeouts).
    hosts = list(allow_hosts) or default_hosts(host)
    settings = Settings(allow_hosts=hosts, allow_origins=list(allow_origins), ws_protocol=ws_protocol, **limits)
    app = create_app(engine, settings, source=model)
    mode = (
        "streams and full sequences" if engine.step is not None else "whole sequences only: " + engine.why_not_streaming
    )
    click.echo(f"serving {bundle} on {engine.provider}: {mode}; http://{host}:{port}", err=True)
    serve(app, host, port, access_log=access_log)
