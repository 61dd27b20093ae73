"""The stream WebSocket (/v1/streams) on picows rather than through ASGI (`serve --ws-protocol picows`).

uvicorn still accepts every connection and parses every request, so the HTTP part, the port and
the request deadline stay as they are; an upgrade request for /v1/streams is handed, with its
socket, to picows' WebSocket protocol (frames parsed in Cython), whose listener feeds each
message to the `Connection` straight from the socket's read callback and writes replies to the
socket at once: no ASGI messages, no task switch per message, no reply queue.

The handshake is answered as the ASGI front end (uvicorn's websockets-sansio) answers it: the
request uvicorn parsed is checked by the same code, websockets' `ServerProtocol` (header limits
431, malformed or repeated WebSocket headers 400), then `Guard.check` (Host, Origin, token) and
`Hub.refusal` (draining, limits) on the headers exactly as received, refused with the same HTTP
statuses and JSON bodies; picows is handed a request reduced to what it needs.

A close is a handshake: after its close frame the server ends its half of the socket and reads
on, dropping what the client still sends (its close frame included), until the client ends its
own half, or CLOSE_TIMEOUT. Dropping the socket at once made the kernel answer a client still
sending with a reset, and the client lost the replies, notices and close frame it had not read.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import orjson
from picows import (
    WSAutoPingStrategy,
    WSCloseCode,
    WSListener,
    WSMsgType,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
)
from picows.picows import WSProtocol
from websockets.server import ServerProtocol

from toolkit.runtime.connection import CLOSE_TIMEOUT, FRAME_COST, OUTBOX_BYTES, Connection, frames
from toolkit.runtime.guard import Guard, challenge

if TYPE_CHECKING:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from toolkit.runtime.server import Hub

PATH = "/v1/streams"
# picows logs every connection at INFO and every client's protocol error (a frame over the size
# limit, say) at ERROR on its own logger: a hostile client would flood the log, and each is
# already answered with its close code. Our own failures are logged by `Connection`.
quiet = logging.getLogger("rnnkit.serve.picows")
quiet.setLevel(logging.CRITICAL)
DATA = {WSMsgType.TEXT, WSMsgType.BINARY}
# What picows is handed of a handshake `validate` accepted (its own checks differ from websockets'
# and it drops a request over 16 KB without an answer): the rest of the request is not its business.
HANDSHAKE = b"GET %s HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
HANDSHAKE += b"Sec-WebSocket-Key: %s\r\n\r\n"


def upgrade_taker(hub: Hub, guard: Guard):
    """For `with_request_deadline(take_upgrade=...)`: takes the upgrade requests for /v1/streams."""

    def take(http: HttpToolsProtocol) -> bool:
        path, _, query = http.url.partition(b"?")  # (the scope has no path yet for an upgrade)
        if path != PATH.encode():
            return False
        http.connections.discard(http)  # as uvicorn does when it upgrades: no longer its HTTP connection
        request = [http.scope["method"].encode(), b" ", http.url, b" HTTP/1.1\r\n"]
        for name, value in http.scope["headers"]:
            request += [name, b": ", value, b"\r\n"]
        request.append(b"\r\n")
        key, refusal = validate(b"".join(request))
        if refusal is not None:
            http.transport.write(refusal)
            http.transport.close()
            return True
        scope = {"type": "websocket", "path": PATH, "query_string": query, "headers": list(http.scope["headers"])}
        protocol = WSProtocol(
            None,  # host and port, path: a client's
            None,
            False,  # the server side
            lambda upgrade: listen(hub, guard, scope),
            quiet,
            False,  # an exception in a listener callback does not disconnect (ours answer 500 themselves)
            hub.settings.request_timeout,
            False,  # no pings from the server (clients may ping; they get pongs)
            20.0,
            20.0,
            WSAutoPingStrategy.PING_WHEN_IDLE,
            True,
            hub.settings.max_message_bytes,
            None,
            16 * 1024,
        )
        http.transport.set_protocol(protocol)
        protocol.connection_made(http.transport)
        feed(protocol, HANDSHAKE % (PATH.encode(), key))
        return True

    return take


def validate(request: bytes) -> tuple[bytes, bytes | None]:
    """A handshake request checked as uvicorn's websockets-sansio protocol checks it (the same
    websockets code, the same answers): (its Sec-WebSocket-Key, None), or (b"", the HTTP refusal)."""
    conn = ServerProtocol(logger=logging.getLogger("uvicorn.error"))
    conn.receive_data(request)
    if conn.handshake_exc is not None:  # not parsed: websockets answers 414/431 for its limits, else 400
        refusal = b"".join(conn.data_to_send())
        return b"", refusal or conn.reject(400, "Failed to open a WebSocket connection: invalid request.\n").serialize()
    [event] = conn.events_received()
    response = conn.accept(event)
    if response.status_code != 101:
        conn.send_response(response)
        return b"", b"".join(conn.data_to_send())
    return event.headers["Sec-WebSocket-Key"].encode(), None


def feed(protocol: WSProtocol, data: bytes) -> None:
    """Hand bytes already read from the socket to a buffered protocol."""
    while data:
        buffer = protocol.get_buffer(len(data))
        n = min(len(buffer), len(data))
        buffer[:n] = data[:n]
        protocol.buffer_updated(n)
        data = data[n:]


def listen(hub: Hub, guard: Guard, scope: dict) -> WSListener | WSUpgradeResponseWithListener:
    """The handshake: a listener for the new WebSocket, or the HTTP refusal (`scope`: the request
    as uvicorn parsed it, as the ASGI app would see it)."""
    refusal = guard.check(scope) or hub.refusal()
    if refusal is None:
        return Listener(PicowsConnection(hub))
    status, reason = refusal
    extra = {"Content-Type": "application/json", **(challenge(status) or {})}
    response = WSUpgradeResponse.create_error_response(status, orjson.dumps({"error": reason}), extra)
    return WSUpgradeResponseWithListener(response, None)


class PicowsConnection(Connection):
    """Replies go to the socket as they come (one write each); on a connection that sends array
    frames they wait for the end of the event loop's turn and go out as one array frame."""

    def __init__(self, hub: Hub):
        super().__init__(hub)
        self.transport = None  # picows' WSTransport, once connected
        self.pending: list = []  # replies of an array connection waiting for the flush
        self.paused: set[str] = set()  # why the socket is not read: "writing" (replies unsent), "backlog"
        self.first_message: asyncio.TimerHandle | None = None  # for a connection that never sends
        self.closing: asyncio.TimerHandle | None = None  # our close frame is out: the client's end is awaited

    def pause(self, why: str) -> None:
        if self.closing is not None:  # what the client still sends is read (and dropped) to its end
            return
        if not self.paused:
            self.transport.underlying_transport.pause_reading()
        self.paused.add(why)

    def resume(self, why: str) -> None:
        self.paused.discard(why)
        if not self.paused and not self.transport.is_disconnected:
            self.transport.underlying_transport.resume_reading()

    def answered(self) -> None:
        if "backlog" in self.paused and not self.backlogged:
            self.resume("backlog")

    def write(self, item: str | bytes | tuple[int, str]) -> None:
        if not self.writable:
            return
        if not self.arrays and not self.pending and not isinstance(item, tuple):
            return self._send(item)
        if not self.pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self.pending.append(item)

    @property
    def writable(self) -> bool:
        """Connected and no close frame sent (nothing may follow one)."""
        t = self.transport
        return t is not None and not t.is_disconnected and not t.is_close_frame_sent

    def flush(self) -> None:
        ready, self.pending = self.pending, []
        if not self.writable:
            return
        sends, close = frames(ready, self.arrays)
        for frame in sends:
            self._send(frame)
        if close:
            self.close(*close)

    def close(self, code: int, reason: str) -> None:
        """Send a close frame (unless one went out) and end the sending half of the socket after
        it; read on, dropping what the client still sends unparsed (its close frame included),
        until the client ends its half, or CLOSE_TIMEOUT (then the socket is dropped). Dropping
        the socket while the client still sends would make the kernel answer with a reset, and
        the client lose the replies, notices and close frame it had not read yet."""
        if not self.writable:
            return
        self.transport.send_close(WSCloseCode(code), reason.encode())
        socket = self.transport.underlying_transport
        if socket.is_closing():
            return
        socket.set_protocol(Discard(self))
        if socket.can_write_eof():
            socket.write_eof()  # once the replies and the close frame are written
        if self.paused:
            self.paused.clear()
            socket.resume_reading()
        self.closing = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, socket.abort)

    def disconnected(self) -> None:
        for timer in (self.first_message, self.closing):
            if timer is not None:
                timer.cancel()
        self.closed()
        if self.finished is not None and not self.finished.done():
            self.finished.set_result(None)

    def _send(self, frame: str | bytes) -> None:
        if isinstance(frame, str):
            self.transport.send(WSMsgType.TEXT, frame.encode())
        else:
            self.transport.send(WSMsgType.BINARY, frame)


class Discard(asyncio.Protocol):
    """The socket of a connection whose close frame is out (`PicowsConnection.close`): what the
    client still sends is read and dropped, unparsed, until it ends its half of the socket."""

    def __init__(self, connection: PicowsConnection):
        self.connection = connection

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> None:  # (None: the transport closes)
        pass

    def connection_lost(self, exc) -> None:
        self.connection.disconnected()


class Listener(WSListener):
    """picows' callbacks for one WebSocket: messages to the connection, in the socket's read
    callback; a message split over frames is put together (up to --max-message-bytes)."""

    def __init__(self, connection: PicowsConnection):
        super().__init__()
        self.connection = connection
        self.parts = bytearray()  # the payload of a message split over several frames, so far
        self.frames = 0  # its frames so far
        self.kind = WSMsgType.TEXT  # the first frame's type of that message
        self.size = 0  # what it counts against --max-message-bytes: payload, and FRAME_COST a frame

    def on_ws_connected(self, transport) -> None:
        connection = self.connection
        connection.transport = transport
        connection.finished = asyncio.get_running_loop().create_future()
        connection.opened()
        # Replies unsent past this, the socket is not read (pause_writing): as the ASGI path's outbox.
        transport.underlying_transport.set_write_buffer_limits(high=OUTBOX_BYTES)
        wait = connection.hub.settings.first_message_timeout
        connection.first_message = asyncio.get_running_loop().call_later(
            wait, connection.close, 1008, f"no message within {wait:g} s of connecting"
        )

    def on_ws_frame(self, transport, frame) -> None:
        kind = frame.msg_type
        if transport.is_close_frame_sent:  # (the rest of a read that held what made us close)
            return
        if kind in DATA and frame.fin and not self.frames:  # the common case: a message in one frame
            self.message(kind, frame.get_payload_as_bytes())
        elif kind in DATA or kind == WSMsgType.CONTINUATION:
            self.part(kind, frame)
        elif kind == WSMsgType.CLOSE:  # answered
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()

    def part(self, kind: WSMsgType, frame) -> None:
        """A frame of a message split over several: each counts its payload and FRAME_COST
        against the limit (an empty frame is not free: millions of them once took memory and
        time from every stream while counting nothing)."""
        if (kind == WSMsgType.CONTINUATION) != bool(self.frames):
            return self.refuse(1002, "a continuation frame must follow an unfinished message, and only then")
        if kind != WSMsgType.CONTINUATION:
            self.kind = kind
        self.frames += 1
        self.size += frame.payload_size + FRAME_COST
        limit = self.connection.hub.settings.max_message_bytes
        if self.size > limit:
            return self.refuse(1009, f"message over the limit of {limit} bytes ({FRAME_COST} a frame besides data)")
        self.parts += frame.get_payload_as_memoryview()
        if frame.fin:
            data = bytes(self.parts)
            self.parts, self.frames, self.size = bytearray(), 0, 0
            self.message(self.kind, data)

    def refuse(self, code: int, reason: str) -> None:
        self.parts, self.frames, self.size = bytearray(), 0, 0
        self.connection.close(code, reason)

    def message(self, kind: WSMsgType, data: bytes) -> None:
        connection = self.connection
        if connection.first_message is not None:
            connection.first_message.cancel()
            connection.first_message = None
        if kind == WSMsgType.BINARY:
            connection.dispatch(None, data)
        else:
            try:
                text = data.decode()
            except UnicodeDecodeError:
                return self.connection.close(1007, "a text message must be UTF-8")
            connection.dispatch(text)
        if connection.backlogged:
            connection.pause("backlog")

    def on_ws_disconnected(self, transport) -> None:
        self.connection.disconnected()

    def pause_writing(self) -> None:  # the client does not read its replies: do not read its messages
        self.connection.pause("writing")

    def resume_writing(self) -> None:
        self.connection.resume("writing")
