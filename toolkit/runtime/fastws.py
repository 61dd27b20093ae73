"""The stream WebSocket (/v1/streams) on picows rather than through ASGI (`serve --ws-protocol picows`).

uvicorn still accepts every connection and parses every request, so the HTTP part, the port and
the request deadline stay as they are; an upgrade request for /v1/streams is handed, with its
socket, to picows' WebSocket protocol (frames parsed in Cython), whose listener feeds each
message to the `Connection` straight from the socket's read callback and writes replies to the
socket at once: no ASGI messages, no task switch per message, no reply queue. The handshake
gets the checks the ASGI path makes: `Guard.check` (Host, Origin, token) and `Hub.refusal`
(draining, limits), refused with the same HTTP statuses and JSON bodies.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

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

from toolkit.runtime.connection import OUTBOX_BYTES, Connection, frames
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


def upgrade_taker(hub: Hub, guard: Guard):
    """For `with_request_deadline(take_upgrade=...)`: takes the upgrade requests for /v1/streams."""

    def take(http: HttpToolsProtocol) -> bool:
        if http.url.partition(b"?")[0] != PATH.encode():  # (the scope has no path yet for an upgrade)
            return False
        http.connections.discard(http)  # as uvicorn does when it upgrades: no longer its HTTP connection
        request = [http.scope["method"].encode(), b" ", http.url, b" HTTP/1.1\r\n"]
        for name, value in http.scope["headers"]:
            request += [name, b": ", value, b"\r\n"]
        request.append(b"\r\n")
        protocol = WSProtocol(
            None,  # host and port, path: a client's
            None,
            False,  # the server side
            lambda upgrade: listen(hub, guard, upgrade),
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
        feed(protocol, b"".join(request))
        return True

    return take


def feed(protocol: WSProtocol, data: bytes) -> None:
    """Hand bytes already read from the socket to a buffered protocol."""
    while data:
        buffer = protocol.get_buffer(len(data))
        n = min(len(buffer), len(data))
        buffer[:n] = data[:n]
        protocol.buffer_updated(n)
        data = data[n:]


def listen(hub: Hub, guard: Guard, upgrade) -> WSListener | WSUpgradeResponseWithListener:
    """The handshake: a listener for the new WebSocket, or the HTTP refusal."""
    target = urlsplit(upgrade.path.decode("latin-1"))
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in upgrade.headers.items()]
    scope = {"type": "websocket", "path": target.path, "query_string": target.query.encode("latin-1")}
    refusal = guard.check({**scope, "headers": headers}) or hub.refusal()
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

    def pause(self, why: str) -> None:
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
        """Send a close frame (unless one went out) and drop the socket once its replies are written."""
        if self.writable:
            self.transport.send_close(WSCloseCode(code), reason.encode())
            self.transport.disconnect(graceful=True)

    def _send(self, frame: str | bytes) -> None:
        if isinstance(frame, str):
            self.transport.send(WSMsgType.TEXT, frame.encode())
        else:
            self.transport.send(WSMsgType.BINARY, frame)


class Listener(WSListener):
    """picows' callbacks for one WebSocket: messages to the connection, in the socket's read
    callback; a message split over frames is put together (up to --max-message-bytes)."""

    def __init__(self, connection: PicowsConnection):
        super().__init__()
        self.connection = connection
        self.parts: list[bytes] = []  # of a message split over several frames
        self.kind = WSMsgType.TEXT  # the first frame's type of that message
        self.size = 0
        self.first_message = None  # the timer for a connection that never sends

    def on_ws_connected(self, transport) -> None:
        connection = self.connection
        connection.transport = transport
        connection.finished = asyncio.get_running_loop().create_future()
        connection.opened()
        # Replies unsent past this, the socket is not read (pause_writing): as the ASGI path's outbox.
        transport.underlying_transport.set_write_buffer_limits(high=OUTBOX_BYTES)
        wait = connection.hub.settings.first_message_timeout
        self.first_message = asyncio.get_running_loop().call_later(
            wait, connection.close, 1008, f"no message within {wait:g} s of connecting"
        )

    def on_ws_frame(self, transport, frame) -> None:
        kind = frame.msg_type
        if kind in DATA and frame.fin and not self.parts:  # the common case: a message in one frame
            self.message(kind, frame.get_payload_as_bytes())
        elif kind in DATA or kind == WSMsgType.CONTINUATION:
            self.part(kind, frame)
        elif kind == WSMsgType.CLOSE:  # answered, unless it answers ours
            if not transport.is_close_frame_sent:
                transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()

    def part(self, kind: WSMsgType, frame) -> None:
        if (kind == WSMsgType.CONTINUATION) != bool(self.parts):
            return self.connection.close(1002, "a continuation frame must follow an unfinished message, and only then")
        if kind != WSMsgType.CONTINUATION:
            self.kind = kind
        self.size += frame.payload_size
        limit = self.connection.hub.settings.max_message_bytes
        if self.size > limit:
            return self.connection.close(1009, f"message over the limit of {limit} bytes")
        self.parts.append(frame.get_payload_as_bytes())
        if frame.fin:
            data = b"".join(self.parts)
            self.parts, self.size = [], 0
            self.message(self.kind, data)

    def message(self, kind: WSMsgType, data: bytes) -> None:
        if self.first_message is not None:
            self.first_message.cancel()
            self.first_message = None
        connection = self.connection
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
        if self.first_message is not None:
            self.first_message.cancel()
        self.connection.closed()
        if not self.connection.finished.done():
            self.connection.finished.set_result(None)

    def pause_writing(self) -> None:  # the client does not read its replies: do not read its messages
        self.connection.pause("writing")

    def resume_writing(self) -> None:
        self.connection.resume("writing")
