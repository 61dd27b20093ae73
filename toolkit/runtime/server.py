"""`rnnkit serve`: streams over WebSocket, batched across streams; full sequences over HTTP.

    WS   /v1/streams     messages as `rnnkit stream`'s, one JSON object per text frame; any number
                         of streams per connection; state lives here, per stream, until the stream
                         ends, idles past the timeout or its connection closes
    POST /v1/infer       {"sequences": [...]} -> {"results": [...]} (bidirectional models too; seq2seq
                         models decode, with "beam", "nbest", ... optional: `InferRequest`); parsed,
                         run and rendered off the event loop, bounded (Settings.max_infer_*: 413)
    GET  /v1/model       the bundle's manifest
    GET  /health         liveness and readiness (/health/live, /health/ready for probes)
    GET  /metrics        Prometheus text format
    GET  /openapi.json   OpenAPI description of the HTTP part (/docs renders it)

Replies on a stream: {"stream", "step", "outputs", "predictions"} per chunk, {"stream", "reset": true},
{"stream", "end": true, "steps"}; refusals {"message": N, "stream", "error", "code"} where code is
HTTP-style (400 bad message, 404 unknown stream, 410 evicted, 413 too many steps, 429 too many
streams or chunks waiting, 500 an unexpected failure, 503 shutting down) and N counts the
connection's messages from 1. A refusal never touches the state of any stream. Notices:
{"stream", "evicted": true, "reason", "steps"} and, on shutdown, {"stream", "closed": true,
"reason", "steps"} before close code 1001.

This module holds the server-wide parts (settings, the Hub with the model and the batcher, the
HTTP routes, uvicorn); one WebSocket's protocol is `toolkit.runtime.connection`, served on
picows by `toolkit.runtime.fastws` (the default) or through the ASGI app; Host/Origin/token
checks and timeouts are `toolkit.runtime.guard`. ONNX Runtime, NumPy, Starlette/FastAPI and
uvicorn only: no torch, no mlflow.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import orjson
import uvicorn
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from toolkit.core.search import RANGES, SETTINGS, Search, out_of_range
from toolkit.core.versions import installed
from toolkit.runtime import WS_PROTOCOLS
from toolkit.runtime.connection import CLOSE_TIMEOUT, AsgiConnection, Connection
from toolkit.runtime.engine import Engine, InputError
from toolkit.runtime.guard import AUTHENTICATED, TIMED_OUT, Guard, deny, with_request_deadline
from toolkit.runtime.infer import result
from toolkit.runtime.messages import Codec, MessageError, loads
from toolkit.runtime.sansio import BoundedSansIOProtocol
from toolkit.runtime.scheduler import Scheduler
from toolkit.runtime.telemetry import CONTENT_TYPE, Telemetry

log = logging.getLogger("rnnkit.serve")
FATAL_EXIT = 3  # the server stopped because it could not go on (see Hub._task_ended)


@dataclass
class Settings:
    max_batch: int = 256
    max_delay_ms: float = 2.0
    max_streams: int = 10_000
    max_streams_per_connection: int = 1_000  # so that one client cannot take every stream
    idle_timeout: float = 300.0
    token: str | None = None
    max_chunk: int = 4096
    max_message_bytes: int = 4 * 2**20
    drain_timeout: float = 30.0
    allow_hosts: list[str] = field(default_factory=lambda: ["*"])  # Host names answered ("*": any)
    allow_origins: list[str] = field(default_factory=list)  # browser origins besides the server's own
    request_timeout: float = 10.0  # to send a whole request, headers and body (a WebSocket handshake included)
    first_message_timeout: float = 60.0  # for a new WebSocket to send its first message
    max_connections: int | None = None  # beyond it, 503 (WebSockets here; HTTP: uvicorn's limit_concurrency)
    ws_protocol: str = WS_PROTOCOLS[0]  # of /v1/streams (toolkit.runtime.WS_PROTOCOLS)
    max_infer_sequences: int = 4096  # per POST /v1/infer (413 beyond)
    max_infer_steps: int = 262_144  # per POST /v1/infer, all its sequences together (413 beyond)


class Hub:
    """The model, the scheduler and every open connection; one per server."""

    def __init__(self, engine: Engine, settings: Settings, source: str):
        self.engine, self.settings, self.source = engine, settings, source
        self.codec = Codec(engine.manifest, max_chunk=settings.max_chunk)
        self.telemetry = Telemetry(settings.max_batch)
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rnnkit-onnxruntime")
        # Whole sequences (POST /v1/infer) run on their own thread: a large request must not hold
        # up the batcher's steps (ONNX Runtime sessions take concurrent runs).
        self.infer_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rnnkit-infer")
        self.scheduler: Scheduler | None = None  # None: the model reads whole sequences only
        self.connections: set[Connection] = set()
        self.ready = False
        self.draining = False
        self.failed: str | None = None  # why the server cannot go on (its batcher ended)
        self.on_fatal = lambda: None  # set by Server: begin shutting down
        self.started = time.time()
        self._tasks: list[asyncio.Task] = []
        self._stopping = False

    async def start(self) -> None:
        if self.engine.step is not None:
            s = self.settings
            self.scheduler = Scheduler(
                self.engine,
                s.max_batch,
                s.max_delay_ms / 1e3,
                s.max_streams,
                self.telemetry,
                self.worker,
                present=self.codec.present,
            )
            self.telemetry.active_streams.set_function(lambda: self.scheduler.open_streams)
            self._tasks = [asyncio.create_task(self.scheduler.run()), asyncio.create_task(self._evict_idle())]
            for task in self._tasks:
                task.add_done_callback(self._task_ended)
        self.ready = True

    def _task_ended(self, task: asyncio.Task) -> None:
        """The batcher and the evictor run for the server's life; either ending is fatal: the
        server stops being ready, answers what waits with 503 and exits non-zero (see `serve`), so
        a supervisor restarts it rather than leaving a process that accepts and never answers."""
        if self._stopping:
            return
        why = "cancelled" if task.cancelled() else repr(task.exception())
        self.failed = f"{task.get_coro().__qualname__} ended ({why})"
        log.critical("%s: the server is no longer ready and shuts down", self.failed)
        self.ready = False
        self.scheduler.fail_all("the server's batcher stopped; this chunk was not run (the server is restarting)")
        self.on_fatal()

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        self.worker.shutdown(wait=True)
        self.infer_worker.shutdown(wait=True)

    async def drain(self) -> None:
        """SIGTERM: refuse new messages, answer every accepted chunk, then close each stream with
        a notice and each connection with code 1001, and wait for them to be written (picows:
        until the client ends its half of the socket, or CLOSE_TIMEOUT; ASGI: `Server.shutdown`)."""
        self.draining, self.ready = True, False
        timeout = self.settings.drain_timeout
        if self.scheduler is not None and not self.failed:
            try:
                await asyncio.wait_for(self.scheduler.idle(), timeout)
            except asyncio.TimeoutError:
                log.error("drain: chunks still queued after %g s; closing anyway", timeout)
        connections = list(self.connections)
        for connection in connections:
            connection.shutdown("server shutting down")
        finishing = [c.finished for c in connections if c.finished is not None]
        if finishing:
            await asyncio.wait(finishing, timeout=timeout)

    async def _evict_idle(self) -> None:
        timeout = self.settings.idle_timeout
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            deadline = time.monotonic() - timeout
            for connection in list(self.connections):
                for stream in list(connection.streams.values()):
                    if stream.last_active < deadline and not self.scheduler.busy(stream):
                        connection.evict(stream, f"idle for more than {timeout:g} s")

    def refusal(self) -> tuple[int, str] | None:
        """Why a new WebSocket cannot be taken now (HTTP status, reason; counted), else None."""
        s, refusal = self.settings, None
        if self.draining:
            refusal = (503, "the server is shutting down")
        elif self.scheduler is None:
            refusal = (409, f"this model cannot stream: {self.engine.why_not_streaming}")
        elif s.max_connections and len(self.connections) >= s.max_connections:
            refusal = (503, f"the server holds its limit of {s.max_connections} connections; retry later")
        elif self.scheduler.open_streams >= s.max_streams:
            refusal = (429, f"the server holds its limit of {s.max_streams} streams; retry later")
        if refusal:
            self.telemetry.errors.labels(str(refusal[0])).inc()
        return refusal

    def health(self) -> dict:
        return {
            "live": True,
            "ready": self.ready,
            "draining": self.draining,
            "model": self.source,
            "task": self.engine.manifest["task"],
            "provider": self.engine.provider,
            "streaming": self.engine.step is not None,
            "streams": self.scheduler.open_streams if self.scheduler else 0,
            "connections": len(self.connections),
            "uptime_s": round(time.time() - self.started, 1),
        }


# ---- HTTP ------------------------------------------------------------------------------------------
def search_field(name: str, description: str):
    """A decoding setting of `InferRequest`: Search's default, within its range (`RANGES`)."""
    low, high = RANGES[name]
    finite = {} if isinstance(low, int) else {"allow_inf_nan": False}
    return Field(getattr(Search(), name), ge=low, le=high, description=description, **finite)


class InferRequest(BaseModel):
    sequences: list[list[str]] | list[list[list[float]]] = Field(
        description="Sequences to run whole: lists of tokens (strings) for a token model, lists of steps "
        "(each a list of `num_features` numbers) for a feature model. Each gets its own result. At most "
        "`--max-infer-sequences` sequences and `--max-infer-steps` steps in all (413 beyond)."
    )
    beam: int = search_field("beam", "seq2seq: beam size (1: greedy)")
    nbest: int = search_field("nbest", "seq2seq: hypotheses per source (<= beam)")
    length_penalty: float = search_field("length_penalty", "seq2seq: GNMT length penalty alpha")
    max_len_a: float = search_field("max_len_a", "seq2seq: at most a x source length + b tokens")
    max_len_b: int = search_field("max_len_b", "seq2seq: see max_len_a")


class InferResponse(BaseModel):
    results: list[dict] = Field(
        description='Per sequence, in order: classify {"prediction", "scores"}; tag / lm {"predictions"} per step; '
        'regress {"values"}; seq2seq {"prediction", "score", "nbest"}.'
    )
    provider: str


def create_app(engine: Engine, settings: Settings, source: str) -> FastAPI:
    hub = Hub(engine, settings, source)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await hub.start()
        yield
        await hub.stop()

    app = FastAPI(
        title="rnnkit serve",
        version=installed("rnnkit") or "0",
        description=__doc__.split("\n\n")[0] + "\n\nWebSocket streams: `/v1/streams` (see the README).",
        lifespan=lifespan,
    )
    app.state.hub = hub
    app.add_middleware(Guard, hosts=settings.allow_hosts, origins=settings.allow_origins, token=settings.token)

    @app.websocket("/v1/streams")
    async def streams(ws: WebSocket):
        refusal = hub.refusal()
        if refusal:
            await deny(ws, *refusal)
            return
        await ws.accept()
        await AsgiConnection(hub, ws).serve()

    @app.post(
        "/v1/infer",
        response_model=InferResponse,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": InferRequest.model_json_schema()}},
            }
        },
        responses={
            400: {"description": "Malformed request"},
            408: {"description": "The body did not arrive within --request-timeout"},
            413: {"description": "Too large: over --max-message-bytes, --max-infer-sequences or --max-infer-steps"},
        },
    )
    async def infer(request: Request):
        """Full-sequence inference on a batch of sequences (bidirectional models included)."""
        hub.telemetry.requests.labels("infer").inc()
        body = await read_body(request, settings.max_message_bytes)
        if body is None:  # the client went away mid-body: there is nobody to answer
            return Response(status_code=400)
        if not isinstance(body, Response):
            # Everything after reading the body (parsing, running, building and rendering the
            # results) is done on the infer thread: the event loop only moves bytes, and a 4 MB
            # body once held every stream's replies for seconds.
            run = functools.partial(answer, body)
            body = await asyncio.get_running_loop().run_in_executor(hub.infer_worker, run)
        if body.status_code != 200:
            hub.telemetry.errors.labels(str(body.status_code)).inc()
        return body

    def answer(body: bytes) -> Response:
        """The response to a POST /v1/infer body (on the infer thread). This thread still shares
        the GIL with the event loop: what holds it in one piece is kept short (no collection
        meanwhile, rendered by orjson: a 4096 x 64-step request once held it for 0.3 s at a time).
        Every object of the request is gone before collection resumes (nothing left to traverse)."""
        with collection_paused():
            return respond(body)

    def respond(body: bytes) -> Response:
        try:
            limits = (settings.max_infer_sequences, settings.max_infer_steps)
            sequences, search = parse_sequences(hub.codec, body, engine.translator is not None, *limits)
            outputs = engine.infer(sequences, search=search)
            content = {"results": [result(engine.manifest, y) for y in outputs], "provider": engine.provider}
            return Response(orjson.dumps(content), media_type="application/json")
        except MessageError as e:
            return JSONResponse({"error": str(e)}, status_code=e.code)
        except InputError as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        except Exception:  # a bug or an ONNX Runtime failure: a JSON 500, logged, and the server goes on
            log.exception("POST /v1/infer failed")
            return JSONResponse({"error": "internal error on this request (logged by the server)"}, status_code=500)

    @app.get("/v1/model")
    async def model() -> dict:
        """The bundle's manifest: input and output specs, labels, state, parity summary."""
        return {"source": source, "provider": engine.provider, "manifest": engine.manifest}

    @app.get("/health")
    async def health(request: Request):
        """Liveness and readiness, with a summary for authenticated clients (all, without a token);
        503 while starting or shutting down."""
        summary = hub.health()
        if not request.scope.get(AUTHENTICATED):
            summary = {key: summary[key] for key in ("live", "ready", "draining")}
        return JSONResponse(summary, status_code=200 if hub.ready else 503)

    @app.get("/health/live")
    async def live():
        return {"live": True}

    @app.get("/health/ready")
    async def ready():
        return JSONResponse({"ready": hub.ready}, status_code=200 if hub.ready else 503)

    @app.get("/metrics")
    async def metrics():
        """Prometheus text format."""
        return Response(hub.telemetry.render(), media_type=CONTENT_TYPE)

    return app


@contextlib.contextmanager
def collection_paused():
    """No cyclic garbage collection meanwhile (in the whole process). A request's hundreds of
    thousands of new lists trigger full collections of the heap again and again (five while
    orjson parses one 4 MB body, which then held the GIL for 0.43 s rather than 0.1 s), each
    holding the GIL, and so the event loop, for ~0.1 s; they hold no cycles and are freed by
    reference counting anyway. For the infer thread only, where no two requests overlap."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


async def read_body(request: Request, limit: int) -> bytes | Response | None:
    """The request body, or a 413 response once it passes `limit` bytes (before reading it all;
    the connection is then closed, rather than left to a body nobody reads). A body that missed
    its deadline was answered 408 by `with_request_deadline`: a 408 response here too (counted,
    never sent). A client that went away mid-body: None. Either costs one line at INFO, not a
    traceback."""
    declared = request.headers.get("content-length")
    too_large = JSONResponse(
        {"error": f"request body over the limit of {limit} bytes; send fewer sequences per request"},
        status_code=413,
        headers={"Connection": "close"},
    )
    if declared and declared.isdigit() and int(declared) > limit:
        return too_large
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return too_large
            chunks.append(chunk)
    except ClientDisconnect:
        late = request.scope.get(TIMED_OUT)
        why = "its body missed the request deadline (answered 408)" if late else "the client went away"
        who = f"{request.client.host}:{request.client.port}" if request.client else "a client"
        log.info("POST %s from %s: %s after %d bytes of its body", request.url.path, who, why, size)
        return Response(status_code=408) if late else None
    return b"".join(chunks)


def parse_sequences(
    codec: Codec, body: bytes, seq2seq: bool = False, max_sequences: int | None = None, max_steps: int | None = None
) -> tuple[list, Search | None]:
    """The sequences of a POST /v1/infer body, and for a seq2seq model its decoding settings
    (`InferRequest`'s beam, nbest, length_penalty, max_len_a, max_len_b; greedy by default).
    More than `max_sequences` sequences or `max_steps` steps in all (a seq2seq source counts its
    length plus `beam` x its longest output): 413, before any sequence is converted."""
    obj = loads(body)
    settings = set(SETTINGS) if seq2seq else set()
    if not isinstance(obj, dict) or "sequences" not in obj or not set(obj) <= {"sequences", *settings}:
        more = f" and optionally {', '.join(SETTINGS)}" if seq2seq else ""
        raise MessageError(f'the body must be a JSON object {{"sequences": [...]}}{more}')
    sequences = obj["sequences"]
    if not isinstance(sequences, list) or not sequences:
        raise MessageError('"sequences" must be a non-empty list')
    if max_sequences is not None and len(sequences) > max_sequences:
        raise MessageError(
            f"{len(sequences)} sequences; at most {max_sequences} sequences per request (--max-infer-sequences)",
            code=413,
        )
    search = None
    if seq2seq:
        try:
            given = InferRequest.model_validate(
                {"sequences": [], **{k: obj[k] for k in settings & set(obj)}}, strict=True
            )
            search = Search(**{k: getattr(given, k) for k in SETTINGS}).check()
        except (ValidationError, ValueError) as e:
            first = e.errors()[0] if isinstance(e, ValidationError) else None
            why = str(e)
            if first:  # a range is named as Search.check names it; a wrong type as pydantic does
                name = first["loc"][0]
                ranged = first["type"] in ("greater_than_equal", "less_than_equal", "finite_number")
                why = (ranged and out_of_range(name, first["input"])) or f"{name}: {first['msg']}"
            raise MessageError(f"decoding settings: {why}") from None
    lengths = [len(s) for s in sequences if isinstance(s, list)]
    steps = sum(lengths)
    if search is not None:  # and the decoder's: `beam` rows for up to a source's longest output
        steps += search.beam * sum(map(search.max_length, lengths))
    if max_steps is not None and steps > max_steps:
        decoded = " (a seq2seq source counts its length plus beam x its longest output)" if search else ""
        raise MessageError(
            f"{steps} steps in all{decoded}; at most {max_steps} steps per request (--max-infer-steps): send "
            "fewer or shorter sequences per request",
            code=413,
        )
    kind = codec.input["kind"]
    parsed = []
    for i, values in enumerate(sequences):
        try:
            parsed.append(codec.steps(kind, values)[0])
        except MessageError as e:
            raise MessageError(f"sequences[{i}]: {e}", code=e.code) from None
    return parsed, search


class Server(uvicorn.Server):
    """uvicorn, with SIGTERM draining the streams before uvicorn closes the connections."""

    def __init__(self, config: uvicorn.Config, hub: Hub):
        super().__init__(config)
        self.hub = hub
        hub.on_fatal = lambda: setattr(self, "should_exit", True)

    async def shutdown(self, sockets=None) -> None:
        for server in getattr(self, "servers", []):
            server.close()  # stop accepting
        await self.hub.drain()
        # uvicorn's shutdown drops every connection at once, WebSockets whose close frame is out
        # included: a client still sending would get a reset and lose what it had not read yet.
        # The ASGI front end's WebSockets first finish their close handshake (the client's close
        # frame, or CLOSE_TIMEOUT); picows' are out of uvicorn's hands, and drain waited for them.
        deadline = time.monotonic() + CLOSE_TIMEOUT + 1
        while time.monotonic() < deadline and any(
            not isinstance(c, HttpToolsProtocol) for c in self.server_state.connections
        ):
            await asyncio.sleep(0.05)
        await super().shutdown(sockets)


def serve(app: FastAPI, host: str, port: int, log_level: str = "info", access_log=False):
    hub = app.state.hub
    settings = hub.settings
    take_upgrade = None
    if settings.ws_protocol == "picows":  # /v1/streams bypasses ASGI; uvicorn's protocol keeps the other paths
        from toolkit.runtime.fastws import upgrade_taker

        guard = Guard(None, hosts=settings.allow_hosts, origins=settings.allow_origins, token=settings.token)
        take_upgrade = upgrade_taker(hub, guard)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        # (every WebSocket path but /v1/streams under picows; toolkit.runtime.sansio bounds its frames)
        ws=BoundedSansIOProtocol if settings.ws_protocol in ("picows", "websockets-sansio") else settings.ws_protocol,
        ws_max_size=settings.max_message_bytes,
        ws_per_message_deflate=False,  # compressing small JSON frames costs more CPU than it saves on a LAN
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=int(settings.drain_timeout),
        http=with_request_deadline(settings.request_timeout, take_upgrade),
        limit_concurrency=settings.max_connections,
    )
    # uvicorn drains on SIGTERM, restores the handler it found and raises the signal again; with
    # this one in place, a drained server exits with status 0 rather than "killed by SIGTERM".
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(FATAL_EXIT if hub.failed else 0))
    # What exists by now (modules, the model's sessions) lives as long as the process: out of the
    # collector's reach, a full collection no longer walks it each time (80 ms on a 2-core machine,
    # the event loop and every stream held meanwhile; now about 1 ms).
    gc.freeze()
    Server(config, hub).run()
    if hub.failed:
        sys.exit(FATAL_EXIT)
