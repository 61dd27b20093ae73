"""One WebSocket connection of `rnnkit serve`: its streams, the messages it reads and the replies
it writes. A message or a reply that fails is answered or logged here and never touches another
stream or connection; the server-wide parts (model, scheduler, limits) are the Hub's
(`toolkit.runtime.server`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING

import orjson
from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect

from toolkit.runtime import binary
from toolkit.runtime.messages import Message, MessageError, control_reply, loads, unknown_stream
from toolkit.runtime.scheduler import Job, ServedStream, TooManyStreams

if TYPE_CHECKING:
    from toolkit.runtime.server import Hub

log = logging.getLogger("rnnkit.serve")
MAX_PENDING = 64  # chunks one stream may have waiting: beyond it the client must read its replies
OUTBOX_BYTES = 8 * 2**20  # replies waiting to be sent on one connection before it stops reading
MAX_UNANSWERED = 65_536  # steps accepted on one connection, not answered yet, before it stops reading
EVICTED_MEMORY = 4096  # evicted stream names remembered per connection, to say so if they come back
# Transports (toolkit.runtime.fastws, toolkit.runtime.sansio): after the server's close frame, how
# long the client has to answer with its own before the socket is dropped; and what each frame
# of a message split over several counts against --max-message-bytes besides its payload.
CLOSE_TIMEOUT = 5.0
FRAME_COST = 64


def cost(job: Job) -> int:
    """What a job counts against MAX_UNANSWERED: its steps (a reset or an end: 1)."""
    return 1 if job.chunk is None else len(job.chunk)


class Connection:
    """One WebSocket: its streams, its replies in order, refusals for this connection only. The
    transport is a subclass's: `AsgiConnection` (uvicorn and the ASGI app) or `toolkit.runtime.
    fastws` (picows, no ASGI); it feeds `dispatch` each message and writes what `write` is given."""

    def __init__(self, hub: Hub):
        self.hub = hub
        self.streams: dict[str, ServedStream] = {}
        # Replies owed per stream name, in its messages' order: a Job not answered yet, or a reply
        # ready to go (a refusal, a notice) that waits for the replies before it. Keyed by name so
        # that a stream reopened after its end answers after that end.
        self.owed: dict[str, list] = {}
        self.ready: dict[Job, dict | bytes] = {}  # replies of answered jobs still behind others
        self.evicted: OrderedDict[str, int] = OrderedDict()  # name -> steps it had
        self.messages = 0
        self.unanswered = 0  # steps (1 for a reset or end) handed to the scheduler and not answered yet
        self.arrays = False  # the client sends array frames, so replies go out as arrays
        self.finished: asyncio.Future | None = None  # done once the last reply is written (drain waits)

    # ---- what a transport calls ----------------------------------------------------------------
    def opened(self) -> None:
        self.hub.connections.add(self)
        self.hub.telemetry.connections.inc()

    def dispatch(self, text: str | None, data: bytes | None = None) -> None:
        """One message: a text frame (`text`) or a binary one (`data`)."""
        counted = self.messages
        try:
            if text is None:
                self.receive_binary(data or b"")
            else:
                self.receive(text)
        except Exception:  # a bug must not take the connection's other streams with it
            self.messages = max(self.messages, counted + 1)
            log.exception("message %d on a connection", self.messages)
            self.refuse(None, "internal error on this message (logged by the server); not run", 500)

    def closed(self) -> None:
        """The client is gone: its streams go with it."""
        hub = self.hub
        if self not in hub.connections:
            return
        hub.connections.discard(self)
        hub.telemetry.connections.dec()
        for stream in self.streams.values():
            hub.scheduler.close(stream)
        self.streams.clear()
        self.owed.clear()
        self.ready.clear()

    def answered(self) -> None:
        """A job was answered (a transport that stopped reading for the backlog may read again)."""

    def write(self, item: str | bytes | tuple[int, str]) -> None:
        """Queue a text frame, a binary frame or (code, reason): close after what is queued."""
        raise NotImplementedError

    def receive(self, text: str) -> None:
        if text[:1] == "[":
            return self.handle_frame(text)
        self.messages += 1
        try:
            msg = self.hub.codec.parse(text)
        except MessageError as e:
            return self.refuse(e.stream, str(e), e.code)
        self.handle(msg)

    def receive_binary(self, data: bytes) -> None:
        """A binary message (toolkit.runtime.binary): answered in binary, refused in JSON."""
        self.messages += 1
        codec = self.hub.codec
        try:
            msg = binary.parse(data, codec.input, codec.max_chunk)
        except MessageError as e:
            return self.refuse(e.stream, str(e), e.code)
        self.handle(msg)

    def handle_frame(self, text: str) -> None:
        """An array of messages in one frame (a gateway multiplexing many streams): each is
        handled as if it came alone, and from now on replies go out as arrays too."""
        self.arrays = True
        try:
            items = loads(text)
        except MessageError as e:
            self.messages += 1
            return self.refuse(None, str(e), e.code)
        if not items:
            self.messages += 1
            return self.refuse(None, "an array frame must hold at least one message", 400)
        for msg in self.hub.codec.messages(items):
            self.messages += 1
            if isinstance(msg, MessageError):
                self.refuse(msg.stream, str(msg), msg.code)
            else:
                self.handle(msg)

    def handle(self, msg: Message) -> None:
        hub = self.hub
        hub.telemetry.messages[msg.kind].inc()
        name = msg.stream
        if hub.draining:
            return self.refuse(name, "the server is shutting down; this message was not run", 503)
        stream = self.streams.get(name)
        if stream is None:
            if name in self.evicted:
                if msg.kind == "chunk":
                    return self.refuse(
                        name,
                        f"stream {name!r} was closed after {hub.settings.idle_timeout:g} s idle, at step "
                        f'{self.evicted[name]}; its state is gone: send {{"stream": "{name}", "reset": true}} to '
                        "start it again from the initial state",
                        410,
                    )
                steps = self.evicted.pop(name)  # reset or end of an evicted stream: acknowledged
                if msg.binary:
                    return self.reply(name, binary.reply(msg.kind, name, steps, hub.engine.no_outputs(1)[0], 0, 0))
                return self.reply(name, control_reply(name, msg.kind, steps))
            if msg.kind != "chunk":
                return self.refuse(name, unknown_stream(name, msg.kind, " on this connection"), 404)
            if len(self.streams) >= hub.settings.max_streams_per_connection:
                return self.refuse(
                    name,
                    f"this connection holds its limit of {hub.settings.max_streams_per_connection} streams "
                    "(--max-streams-per-connection); end one of them first",
                    429,
                )
            try:
                stream = self.streams[name] = hub.scheduler.open(name)
            except TooManyStreams:
                return self.refuse(
                    name,
                    f"the server holds its limit of {hub.settings.max_streams} streams; end a stream or retry later",
                    429,
                )
        if msg.kind == "chunk" and len(stream.pending) >= MAX_PENDING:
            return self.refuse(name, f"stream {name!r} has {MAX_PENDING} chunks waiting; read their replies first", 429)
        if msg.kind == "end":  # a chunk after the end opens a new stream of that name
            del self.streams[name]
        job = Job(msg.kind, self._done, chunk=msg.chunk, unknown=msg.unknown, binary=msg.binary)
        self.unanswered += cost(job)
        queue = self.owed.get(name)
        if queue is None:
            queue = self.owed[name] = []
        queue.append(job)
        hub.scheduler.submit(stream, job)

    @property
    def backlogged(self) -> bool:
        """Too much accepted and not answered: stop reading this client until its replies go out
        (a client that floods the server waits in TCP, not in the server's memory)."""
        return self.unanswered > MAX_UNANSWERED

    def _done(self, stream: ServedStream, job: Job) -> None:
        self.unanswered -= cost(job)
        self.answered()
        queue = self.owed.get(stream.name)
        if queue is None:  # the connection closed while the job ran
            return
        if queue[0] is job:  # the common case: nothing owed before it
            del queue[0]
            self.send(self._answer(stream.name, job))
        else:
            self.ready[job] = self._answer(stream.name, job)
        self._release(stream.name)

    def _answer(self, name: str, job: Job) -> dict | bytes:
        if job.error:
            return self._refusal(name, job.error, job.code)
        if job.binary:
            outputs = job.outputs if job.outputs is not None else self.hub.engine.no_outputs(1)[0]
            return binary.reply(job.kind, name, job.start, outputs, job.frame, job.waiting)
        if job.kind == "reset":
            return control_reply(name, job.kind, job.start)
        codec = self.hub.codec
        if job.kind == "end":  # outputs: the last frame's, when steps waited for it (else none)
            presented = job.outputs if job.outputs is not None else codec.present(self.hub.engine.no_outputs(1))[0]
            return control_reply(name, job.kind, job.start, codec.tail(job.frame, job.waiting, presented))
        return codec.reply(name, job.start, job.outputs, job.unknown, job.frame, job.waiting)

    def _release(self, name: str) -> None:
        """Send the stream's replies that are ready, in order, up to its first unanswered job."""
        queue = self.owed.get(name)
        while queue:
            head = queue[0]
            if isinstance(head, Job):
                if head not in self.ready:
                    return
                head = self.ready.pop(head)
            del queue[0]
            self.send(head)
        self.owed.pop(name, None)

    def reply(self, name: str | None, obj: dict | bytes) -> None:
        """A reply that is not a job's (a refusal, a notice): after the stream's owed replies."""
        queue = self.owed.get(name) if name is not None else None
        if queue:
            queue.append(obj)
        else:
            self.send(obj)

    def evict(self, stream: ServedStream, reason: str) -> None:
        self.hub.scheduler.close(stream)
        del self.streams[stream.name]
        self.evicted[stream.name] = stream.steps
        if len(self.evicted) > EVICTED_MEMORY:
            self.evicted.popitem(last=False)
        self.hub.telemetry.evictions.inc()
        self.reply(stream.name, {"stream": stream.name, "evicted": True, "reason": reason, "steps": stream.steps})

    def shutdown(self, reason: str) -> None:
        """The drain's last word: what is ready goes out in each stream's order (a job the drain
        gave up on is not waited for), then each open stream's notice, then close code 1001."""
        for queue in self.owed.values():
            for item in queue:
                if not isinstance(item, Job):
                    self.send(item)
                elif item in self.ready:
                    self.send(self.ready.pop(item))
        self.owed.clear()
        for stream in self.streams.values():
            self.send({"stream": stream.name, "closed": True, "reason": reason, "steps": stream.steps})
        self.write((1001, reason))

    def refuse(self, stream: str | None, error: str, code: int) -> None:
        self.reply(stream, self._refusal(stream, error, code))

    def _refusal(self, stream: str | None, error: str, code: int) -> dict:
        self.hub.telemetry.errors.labels(str(code)).inc()
        return {"message": self.messages, "stream": stream, "error": error, "code": code}

    def send(self, obj: dict | bytes) -> None:
        if isinstance(obj, bytes):  # a binary reply, sent as it is
            return self.write(obj)
        try:
            text = orjson.dumps(obj).decode()
        except (TypeError, orjson.JSONEncodeError):  # a bug upstream: say so rather than lose the reply
            log.exception("a reply could not be encoded as JSON")
            text = orjson.dumps(
                {
                    "message": self.messages,
                    "stream": None,
                    "error": "internal error: the reply could not be encoded",
                    "code": 500,
                }
            ).decode()
        self.write(text)


class AsgiConnection(Connection):
    """A WebSocket through uvicorn and the ASGI app: a task reads messages, another writes the
    outbox."""

    def __init__(self, hub: Hub, ws: WebSocket):
        super().__init__(hub)
        self.ws = ws
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.outbox_bytes = 0  # of the replies in the outbox

    def write(self, item: str | bytes | tuple[int, str]) -> None:
        if not isinstance(item, tuple):
            self.outbox_bytes += len(item)
        self.outbox.put_nowait(item)

    async def serve(self) -> None:
        hub = self.hub
        self.opened()
        sender = self.finished = asyncio.create_task(self._send())
        try:
            while True:
                while (self.outbox_bytes > OUTBOX_BYTES or self.backlogged) and not sender.done():
                    await asyncio.sleep(0.005)  # a client that does not read is not read
                if sender.done():  # the client is gone (a send failed): end the connection
                    break
                if self.messages:
                    message = await self.ws.receive()
                else:  # a connection that never sends would hold its socket for good
                    wait = hub.settings.first_message_timeout
                    try:
                        message = await asyncio.wait_for(self.ws.receive(), wait)
                    except asyncio.TimeoutError:
                        await self.ws.close(1008, f"no message within {wait:g} s of connecting")
                        break
                if message["type"] == "websocket.disconnect":
                    break
                self.dispatch(message.get("text"), message.get("bytes"))
        except WebSocketDisconnect:
            pass
        finally:
            self.closed()
            if not hub.draining:  # else drain() lets the sender flush and close
                sender.cancel()

    async def _send(self) -> None:
        """Replies in order, whatever is ready at once grouped by `frames`."""
        outbox, ws = self.outbox, self.ws
        with contextlib.suppress(Exception):  # the client went away: the receiving side ends the connection
            while True:
                ready = [await outbox.get()]
                while not outbox.empty():
                    ready.append(outbox.get_nowait())
                self.outbox_bytes -= sum(len(item) for item in ready if not isinstance(item, tuple))
                sends, close = frames(ready, self.arrays)
                for frame in sends:
                    await (ws.send_text(frame) if isinstance(frame, str) else ws.send_bytes(frame))
                if close:
                    await ws.close(*close)
                    return


def frames(ready: list, arrays: bool) -> tuple[list[str | bytes], tuple[int, str] | None]:
    """Queued replies -> the frames to send, in order, and the close (code, reason) that ends
    them if one is queued (nothing after it goes out). On a connection that sends array frames,
    consecutive JSON replies go out as one array frame (all replies of a batch, typically);
    a binary reply is a frame of its own."""
    close = next((item for item in ready if isinstance(item, tuple)), None)
    if close:
        ready = ready[: ready.index(close)]
    if not arrays:
        return ready, close
    out: list[str | bytes] = []
    texts: list[str] = []
    for item in [*ready, None]:
        if isinstance(item, str):
            texts.append(item)
            continue
        if texts:
            out.append("[" + ",".join(texts) + "]")
            texts = []
        if item is not None:
            out.append(item)
    return out, close
