"""Who may talk to `rnnkit serve`: the checks a web server is expected to make before a request
reaches the model, as one ASGI middleware, and a deadline for clients that never finish a request.

- Host: a request whose `Host` is not one this server answers to is refused (400; a WebSocket
  handshake 403). Bound to loopback, only loopback names are answered by default: a web page
  that re-points its own DNS name at 127.0.0.1 (DNS rebinding) cannot read the server.
- Origin: a WebSocket handshake from a browser page (it carries `Origin`) is accepted only from
  the server's own host or an origin given with `--allow-origin`; non-browser clients send no
  Origin and are not affected. A page on any site can otherwise open a WebSocket anywhere.
- Content type: a POST must say `application/json`. A page can POST `text/plain` anywhere
  without a CORS preflight; a JSON body cannot be sent cross-site without one (which this server
  never grants).
- Token (`--token`): `Authorization: Bearer TOKEN` on every request but the health probes;
  `?token=` only on the WebSocket URL (browsers cannot set headers there), never on HTTP paths,
  where it would end up in logs and browser history.
- One of each: a request with more than one Host, Origin or Authorization header is refused
  (400, a WebSocket handshake too, as websockets refuses two Origins): which one counts would
  otherwise depend on the front end. A Host that is no `host[:port]` (a byte beyond ASCII, a
  port that is no number) is no host this server answers to.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

from fastapi import WebSocket
from fastapi.responses import JSONResponse
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

OPEN_PATHS = ("/health", "/health/live", "/health/ready")  # probes need no token
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
AUTHENTICATED = "rnnkit.authenticated"  # scope key: the request carried the token (or none is set)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_hosts(bind: str) -> list[str]:
    """Bound to loopback: loopback names only. Bound elsewhere: any Host (say which with --allow-host)."""
    return list(LOOPBACK_HOSTS) if is_loopback(bind) else ["*"]


def hostname(value: str) -> str:
    """'example.com:8000' -> 'example.com'; '[::1]:8000' -> '::1'; '' for what is no host[:port]."""
    if not value.isascii():
        return ""
    try:
        parts = urlsplit(f"//{value}")
        parts.port  # noqa: B018 (raises ValueError for a port that is no number, or out of range)
    except ValueError:
        return ""
    return (parts.hostname or "").lower()


def headers_of(scope) -> dict[bytes, bytes]:
    return {key: value for key, value in scope.get("headers", [])}


class Guard:
    """Host, Origin, content type and token checks, in that order, for HTTP and WebSocket."""

    def __init__(self, app, hosts: list[str], origins: list[str], token: str | None):
        self.app = app
        self.hosts = {h.lower() for h in hosts}
        self.origins = {o.rstrip("/").lower() for o in origins}
        self.token = token.encode() if token else None

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        refusal = self.check(scope)
        if refusal is None:
            return await self.app(scope, receive, send)
        status, error = refusal
        if scope["type"] == "http":
            reply = JSONResponse({"error": error}, status_code=status, headers=challenge(status))
            return await reply(scope, receive, send)
        await deny(WebSocket(scope, receive, send), status, error)

    def check(self, scope) -> tuple[int, str] | None:
        """(HTTP status, why) when the request is refused, else None; sets scope[AUTHENTICATED].
        Also used by the WebSocket front end that bypasses ASGI (`toolkit.runtime.fastws`)."""
        names = [key.lower() for key, _ in scope.get("headers", [])]
        for name in (b"host", b"origin", b"authorization"):
            if names.count(name) > 1:
                return 400, f"more than one {name.decode().title()} header"
        headers = headers_of(scope)
        host = headers.get(b"host", b"").decode("latin-1")
        refusal = self._refusal(scope, headers, host)
        if refusal is not None:  # a WebSocket handshake is refused with 403 where HTTP gets 400
            return (403 if refusal[0] == 400 and scope["type"] == "websocket" else refusal[0]), refusal[1]
        scope[AUTHENTICATED] = self._authenticated(scope, headers)
        if self.token is None or scope[AUTHENTICATED] or scope["path"] in OPEN_PATHS:
            return None
        return 401, "missing or wrong token: send the header `Authorization: Bearer TOKEN`"

    def _refusal(self, scope, headers: dict, host: str) -> tuple[int, str] | None:
        if "*" not in self.hosts and hostname(host) not in self.hosts:
            return 400, f"Host {host!r} is not served here; this server answers {sorted(self.hosts)} (--allow-host)"
        if scope["type"] == "websocket":
            origin = headers.get(b"origin", b"").decode("latin-1").rstrip("/").lower()
            if origin and not self._origin_allowed(origin, host):
                return 403, f"WebSocket from origin {origin!r} refused: not this server's own (--allow-origin)"
        elif scope["method"] == "POST":
            kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if kind != b"application/json":
                return 415, "a POST body must be JSON, sent with `Content-Type: application/json`"
        return None

    def _origin_allowed(self, origin: str, host: str) -> bool:
        return "*" in self.origins or origin in self.origins or urlsplit(origin).netloc == host.lower()

    def _authenticated(self, scope, headers: dict) -> bool:
        if self.token is None:
            return True
        given = b""
        value = headers.get(b"authorization", b"")
        if value[:7].lower() == b"bearer ":
            given = value[7:].strip()
        if not given and scope["type"] == "websocket":
            given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0].encode()
        return hmac.compare_digest(given, self.token)


def challenge(status: int) -> dict | None:
    """The header a 401 carries (RFC 6750)."""
    return {"WWW-Authenticate": "Bearer"} if status == 401 else None


async def deny(ws: WebSocket, status: int, reason: str) -> None:
    """Refuse a WebSocket handshake with an HTTP status where the server supports it (uvicorn
    does), else accept-less close code 1008 (policy) / 1013 (try again later)."""
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(JSONResponse({"error": reason}, status_code=status, headers=challenge(status)))
    else:
        await ws.close(1013 if status in (429, 503) else 1008, reason)


#: scope key: the request's body missed its deadline and `with_request_deadline` answered 408
TIMED_OUT = "rnnkit.timed_out"


def with_request_deadline(
    seconds: float, take_upgrade: Callable[[HttpToolsProtocol], bool] | None = None
) -> type[HttpToolsProtocol]:
    """uvicorn's HTTP protocol, with `seconds` for a client to send a whole request, headers and
    body, from the moment it connects or starts a request (its first byte after the first);
    uvicorn itself waits forever, so connections that trickle bytes (or send none) would hold a
    file descriptor each until the process ends. Late headers: the connection is closed (there is
    no request to answer yet). A late body: 408 (unless the app has begun its response), then
    close; the app sees the client go away, with scope[TIMED_OUT] set. The time an app takes to
    answer does not count. A WebSocket handshake has no body: its deadline ends with its headers.
    `take_upgrade(protocol)` may take a WebSocket upgrade request over (True) rather than let
    uvicorn's WebSocket protocol and the ASGI app handle it (`toolkit.runtime.fastws`)."""
    late = {"error": f"the request was not received in full within {seconds:g} s (--request-timeout)"}
    late_body = json.dumps(late).encode()

    class RequestDeadline(HttpToolsProtocol):
        _deadline = None
        _in_body = False  # headers complete, body still coming

        def handle_websocket_upgrade(self) -> None:
            if take_upgrade is None or not take_upgrade(self):
                super().handle_websocket_upgrade()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            if self.parser.should_upgrade() and self._should_upgrade():  # a handshake: no body
                self._disarm()
            else:
                self._in_body = True

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(seconds, self._expire)

        def _disarm(self) -> None:
            self._in_body = False
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            if self.pipeline:  # uvicorn stopped reading a pipelined request until it answers the one before
                self._arm()
                return
            cycle = self.cycle
            if self._in_body and cycle is not None and not cycle.response_started:
                cycle.scope[TIMED_OUT] = True
                cycle.disconnected = True  # the app's own response is not sent; its receive() says so
                cycle.message_event.set()
                self.transport.write(self._response(408, late_body))
            self.transport.close()

        def _response(self, status: int, body: bytes) -> bytes:
            head = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                head += [name, b": ", value, b"\r\n"]
            head += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body)]
            return b"".join([*head, b"connection: close\r\n\r\n", body])

    return RequestDeadline
