"""uvicorn's websockets-sansio WebSocket protocol (`serve --ws-protocol websockets-sansio`, and
every WebSocket path but /v1/streams under picows), with a message split over frames bounded as
on picows (`toolkit.runtime.fastws`) and the close handshake bounded by CLOSE_TIMEOUT.

websockets' `max_size` counts payload bytes only, and uvicorn keeps a bytes object per frame: a
message of 20 M empty continuation frames counted nothing while it took memory and, parsing
frame by frame, the event loop from every other stream. Here each frame of such a message counts
FRAME_COST besides its payload against --max-message-bytes. Past it, the connection fails with
1009 (RFC 6455 7.1.7, as websockets fails a connection): the close frame, then the end of the
server's half of the socket; what the client still sends is read and dropped unparsed until it
ends its half, or `close_timeout` (CLOSE_TIMEOUT, also for uvicorn's own closes; its default:
10 s). Dropping the socket while the client still sends would answer it with a reset, and the
client might never read its close frame.
"""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame

from toolkit.runtime.connection import CLOSE_TIMEOUT, FRAME_COST


class BoundedSansIOProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.close_timeout = CLOSE_TIMEOUT  # (uvicorn's: 10 s)
        self.message_size = 0  # what the message being received counts so far

    def handle_text(self, event: Frame) -> None:
        self.message_size = 0
        if event.fin or self.counted(event):
            super().handle_text(event)

    def handle_bytes(self, event: Frame) -> None:
        self.message_size = 0
        if event.fin or self.counted(event):
            super().handle_bytes(event)

    def handle_cont(self, event: Frame) -> None:
        if self.counted(event):
            super().handle_cont(event)

    def counted(self, event: Frame) -> bool:
        """Count a frame of a message split over several: False once that message is over the
        limit (the connection is then closed) or the connection is closing."""
        if self.close_sent:  # closing: messages are discarded
            self.frames = []
            return False
        self.message_size += len(event.data) + FRAME_COST
        limit = self.config.ws_max_size
        if self.message_size <= limit:
            return True
        self.frames = []
        self.refuse(1009, f"message over the limit of {limit} bytes ({FRAME_COST} a frame besides data)")
        return False

    def refuse(self, code: int, reason: str) -> None:
        """Fail the connection: the app sees the disconnect, the client the close frame and the
        end of the server's half of the socket; what it still sends is dropped unparsed (websockets'
        `fail` discards it) until it ends its half, at most `close_timeout`."""
        if self.transport.is_closing():
            return
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.conn.fail(code, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.close_sent = True
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(self.close_timeout, self.transport.close)
