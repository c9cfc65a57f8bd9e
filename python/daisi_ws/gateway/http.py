"""Plain HTTP on the gateway's one port (h11), and the WebSocket opening handshake.

One `HttpProtocol` per TCP connection parses requests with h11 (keep-alive, pipelining,
1 MiB body cap). A request for `/ws/...` that passes SPEC §3.1's checks is answered with
101 and the transport is handed to a `Connection`.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

import h11
import orjson
from websockets.datastructures import Headers
from websockets.exceptions import InvalidHeader
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.http11 import Request as WsRequest
from websockets.http11 import Response as WsResponse
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from daisi_ws.auth import AuthError
from daisi_ws.auth.apikeys import check_api_key, extract_api_key
from daisi_ws.gateway.connection import ADMIN, USER, WS_LOGGER, Connection, FrameProtocol
from daisi_ws.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from daisi_ws.protocol import (
    ADMIN_KEY_MISSING,
    BAD_REQUEST,
    FORBIDDEN,
    INTERNAL_SERVER_ERROR,
    INVALID_API_KEY,
    admin_session_key,
    user_session_key,
)

if TYPE_CHECKING:
    from daisi_ws.gateway.server import Gateway

MAX_BODY = 1 << 20
# Request line + header fields. h11 enforces it only while a request is incomplete; a complete
# request read in one chunk is checked after parsing, so the answer never depends on how the
# bytes were split.
MAX_HEADER_BYTES = 16 * 1024
LINGER_SECONDS = 2.0
SUBPROTOCOL = Subprotocol("json.v1")
JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"


class HttpReply:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers or []


def json_reply(status: int, obj: Any) -> HttpReply:
    return HttpReply(status, orjson.dumps(obj) + b"\n", [(b"content-type", JSON)])


def error_reply(status: int, code: str, message: str, details: str = "") -> HttpReply:
    body: dict[str, str] = {"code": code, "message": message}
    if details:
        body["details"] = details
    return json_reply(status, body)


def text_reply(status: int, text: str, headers: list[tuple[bytes, bytes]] | None = None) -> HttpReply:
    return HttpReply(status, text.encode(), [(b"content-type", TEXT), *(headers or [])])


def not_found() -> HttpReply:
    return text_reply(404, "404 page not found\n")


def method_not_allowed(allow: str) -> HttpReply:
    return text_reply(405, "Method Not Allowed\n", [(b"allow", allow.encode())])


def body_too_large() -> HttpReply:
    return error_reply(413, BAD_REQUEST, "Request body too large", "Maximum is 1048576 bytes.")


# --- API keys (SPEC §1.2) ------------------------------------------------------------------
GENERAL_KEY_ERRORS = {
    "missing": (401, INVALID_API_KEY, "API key is required", "Provide API key in X-API-Key header or x-api-key query parameter."),
    "wrong": (401, INVALID_API_KEY, "Invalid API key", "The provided API key is not valid."),
    "unset": (500, INTERNAL_SERVER_ERROR, "Server configuration error", "API authentication cannot be performed."),
}
ADMIN_KEY_ERRORS = {
    "missing": (401, ADMIN_KEY_MISSING, "Admin API key is required", "Provide admin API key in X-API-Key header or x-api-key query parameter."),
    "wrong": (403, FORBIDDEN, "Invalid admin API key", "The provided admin API key is not valid."),
    "unset": (500, INTERNAL_SERVER_ERROR, "Server configuration error", "Admin auth cannot be performed."),
}


class Req:
    """One parsed HTTP request."""

    __slots__ = ("body", "headers", "http_version", "method", "path", "query", "raw_headers", "request_id", "target")

    def __init__(self, event: h11.Request) -> None:
        self.method = event.method.decode("ascii", "replace")
        self.target = event.target.decode("latin-1")
        self.http_version = event.http_version.decode("ascii", "replace")
        self.raw_headers: list[tuple[bytes, bytes]] = list(event.headers)
        headers: dict[str, str] = {}
        for name, value in self.raw_headers:
            headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
        self.headers = headers
        path, _, query = self.target.partition("?")
        if path[:7].lower() == "http://" or path[:8].lower() == "https://":
            # absolute-form target (RFC 9112 §3.2.2): servers must accept it
            slash = path.find("/", path.index("//") + 2)
            path = path[slash:] if slash != -1 else "/"
        self.path = path
        self.query: dict[str, str] = {}
        if query:
            for k, v in parse_qsl(query, keep_blank_values=True):
                self.query.setdefault(k, v)
        rid = headers.get("x-request-id", "")
        self.request_id = rid if 1 <= len(rid) <= 128 and all(0x21 <= ord(c) <= 0x7E for c in rid) else str(uuid.uuid4())
        self.body = b""


def check_key(req: Req, expected: str, errors: dict[str, tuple[int, str, str, str]]) -> HttpReply | None:
    header = req.headers.get("x-api-key")
    # The header as the bytes sent (Req decoded them as latin-1); the query as decoded UTF-8.
    provided = header.encode("latin-1") if header else extract_api_key(None, req.query.get("x-api-key"))
    if not expected:
        problem = "unset"
    elif provided is None:
        problem = "missing"
    elif check_api_key(provided, expected):
        return None
    else:
        problem = "wrong"
    return error_reply(*errors[problem])


def auth_error_reply(exc: AuthError) -> HttpReply:
    return error_reply(exc.status, exc.code, exc.message, exc.details)


# --- routing (SPEC §1.1) -------------------------------------------------------------------
GET_HEAD = "GET, HEAD"


def route(gw: Gateway, req: Req, too_large: bool = False) -> HttpReply | Upgrade | Awaitable[HttpReply]:
    """A reply, an awaitable of one, or an Upgrade for a WebSocket that passed steps 1-7.

    `too_large`: the body is over 1 MiB and was not read. Every check that comes first (path,
    method, API key, and for sockets the token and Origin) answers as usual, a route that
    ignores bodies too; what would use the body (or open a socket) gets 413.
    """
    path, method = req.path, req.method
    if path in ("/health", "/healthz", "/ready", "/metrics"):
        if method not in ("GET", "HEAD"):
            return method_not_allowed(GET_HEAD)
        if path == "/metrics":
            return HttpReply(200, gw.metrics.exposition(), [(b"content-type", METRICS_CONTENT_TYPE.encode())])
        if path == "/ready":
            return ready(gw)
        return json_reply(200, {"status": "OK"})
    post = POST_ROUTES.get(path)
    if post is not None:
        if method != "POST":
            return method_not_allowed("POST")
        admin, handle = post
        auth = gw.settings.auth
        if admin:
            denied = check_key(req, auth.admin_secret_token, ADMIN_KEY_ERRORS)
        else:
            denied = check_key(req, auth.secret_token, GENERAL_KEY_ERRORS)
        return denied or (body_too_large() if too_large else handle(gw, req))
    if path.startswith("/ws/"):
        segments = path[4:].split("/")
        if segments == ["admin"]:
            kind = ADMIN
        elif len(segments) == 2 and segments[0] and segments[1] and segments[0] != "admin":
            kind = USER
        else:
            return not_found()
        if method != "GET":
            return method_not_allowed("GET")
        result = websocket_request(gw, req, kind, segments)
        return body_too_large() if too_large and isinstance(result, Upgrade) else result
    return not_found()


async def ready(gw: Gateway) -> HttpReply:
    deps = await gw.backend.readiness()
    ok = all(v in ("connected", "embedded") for v in deps.values())
    return json_reply(200 if ok else 503, {"status": "READY" if ok else "NOT_READY", "dependencies": deps})


def mint(gw: Gateway, req: Req, admin: bool) -> HttpReply:
    try:
        token = gw.auth.mint_admin(req.body) if admin else gw.auth.mint_user(req.body)
    except AuthError as exc:
        return auth_error_reply(exc)
    return json_reply(200, {"token": token})


PUBLISH_SUBJECT_TEXT = "subject must be websocket.<company_id>.<agent_id>.<type>[.<chat_id>]"


def publish_subject_ok(subject: str) -> bool:
    from daisi_ws.protocol import is_valid_id

    parts = subject.split(".")
    if len(parts) not in (4, 5) or parts[0] != "websocket":
        return False
    company, agent, kind = parts[1], parts[2], parts[3]
    if not (is_valid_id(company) and is_valid_id(agent)):
        return False
    if not kind or "*" in kind or ">" in kind or any(c.isspace() for c in kind):
        return False
    if kind == "messages":
        return len(parts) == 5 and is_valid_id(parts[4])
    return len(parts) == 4


async def publish_async(gw: Gateway, subject: str, payload: bytes, request_id: str) -> HttpReply:
    try:
        delivered = await gw.publish(subject, payload, request_id)
    except Exception as exc:
        return error_reply(500, INTERNAL_SERVER_ERROR, "Publish failed", str(exc) or type(exc).__name__)
    return json_reply(200, {"delivered_local": delivered})


def publish(gw: Gateway, req: Req) -> HttpReply | Awaitable[HttpReply]:
    try:
        body = orjson.loads(req.body)
    except orjson.JSONDecodeError as exc:
        return error_reply(400, BAD_REQUEST, "Invalid request payload", str(exc))
    if not isinstance(body, dict):
        return error_reply(400, BAD_REQUEST, "Invalid request payload", "request body must be a JSON object")
    subject = body.get("subject")
    if subject is not None and not isinstance(subject, str):
        return error_reply(400, BAD_REQUEST, "Invalid request payload", "subject must be a string")
    if not subject or not publish_subject_ok(subject):
        return error_reply(400, BAD_REQUEST, "Invalid payload", PUBLISH_SUBJECT_TEXT)
    payload = body.get("payload")
    if not isinstance(payload, dict):
        return error_reply(400, BAD_REQUEST, "Invalid payload", "payload must be a JSON object.")
    try:
        raw = raw_member(req.body, "payload")  # published unchanged (SPEC §1.7), never re-serialised
    except (ValueError, IndexError, RecursionError):  # too deep for the stdlib scanner
        raw = None
    return publish_async(gw, subject, raw if raw is not None else orjson.dumps(payload), req.request_id)


_JSON_SCANNER = json.JSONDecoder()
_JSON_WS = re.compile(r"[ \t\n\r]*")


def _skip(text: str, idx: int) -> int:
    m = _JSON_WS.match(text, idx)
    assert m is not None  # "*" always matches
    return m.end()


def raw_member(body: bytes, name: str) -> bytes | None:
    """The exact bytes of the last top-level member `name` of a JSON object body.

    The body must already be known to be a valid JSON object (orjson parsed it); the stdlib
    scanner is only used to find where each top-level value starts and ends.
    """
    text = body.decode("utf-8")
    skip = _skip
    idx = skip(text, skip(text, 0) + 1)  # past "{"
    found: tuple[int, int] | None = None
    while text[idx] == '"':
        key, idx = _JSON_SCANNER.raw_decode(text, idx)
        start = skip(text, skip(text, idx) + 1)  # past ":"
        _, idx = _JSON_SCANNER.raw_decode(text, start)
        if key == name:
            found = (start, idx)
        idx = skip(text, idx)
        if text[idx] != ",":
            break
        idx = skip(text, idx + 1)
    return text[found[0] : found[1]].encode("utf-8") if found is not None else None


# POST endpoints: (needs the admin key, handler). The key is checked before the body is used.
POST_ROUTES: dict[str, tuple[bool, Callable[[Gateway, Req], HttpReply | Awaitable[HttpReply]]]] = {
    "/generate-token": (False, lambda gw, req: mint(gw, req, admin=False)),
    "/admin/generate-token": (True, lambda gw, req: mint(gw, req, admin=True)),
    "/api/publish": (True, publish),
}


# --- WebSocket handshake (SPEC §3) ---------------------------------------------------------
def _select_subprotocol(protocol: ServerProtocol, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    return SUBPROTOCOL if SUBPROTOCOL in offered else None


def websocket_request(gw: Gateway, req: Req, kind: str, segments: list[str]) -> HttpReply | Upgrade:
    auth = gw.settings.auth
    if kind == USER:
        denied = check_key(req, auth.secret_token, GENERAL_KEY_ERRORS)
    else:
        denied = check_key(req, auth.admin_secret_token, ADMIN_KEY_ERRORS)
    if denied is not None:
        return denied
    token = req.query.get("token")
    try:
        if kind == USER:
            claims: Any = gw.auth.validate_user_token(token)
            gw.auth.check_path(claims, unquote(segments[0]), unquote(segments[1]))
            session_key = user_session_key(claims.company_id, claims.agent_id, claims.user_id)
        else:
            claims = gw.auth.validate_admin_token(token)
            session_key = admin_session_key(claims.admin_id)
    except AuthError as exc:
        return auth_error_reply(exc)
    origins = gw.allowed_origins
    if origins:
        origin = req.headers.get("origin")
        if origin is not None and origin.lower() not in origins:
            return error_reply(403, FORBIDDEN, "Origin not allowed", "The request Origin is not in the allowed list.")
    hs = ServerProtocol(
        logger=WS_LOGGER,
        extensions=gw.deflate_factories,
        select_subprotocol=_select_subprotocol,
        max_size=gw.settings.app.max_message_bytes,
    )
    try:
        # websockets' Headers refuses values that h11 lets through (control characters)
        headers = Headers(
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in req.raw_headers
        )
    except InvalidHeader as exc:
        # the same answer websockets' accept() gives for any other malformed handshake header
        return text_reply(400, f"Failed to open a WebSocket connection: {exc}.\n")
    protocol = "HTTP/1.1" if req.http_version == "1.1" else f"HTTP/{req.http_version}"
    response = hs.accept(WsRequest(req.target, headers, "GET", protocol))
    if response.status_code != 101:
        status = response.status_code
        extra: list[tuple[bytes, bytes]] = []
        if status == 426:
            extra.append((b"upgrade", b"websocket"))
        else:
            status = 400
            failure = hs.handshake_exc
            if isinstance(failure, InvalidHeader) and failure.name == "Sec-WebSocket-Version":
                extra.append((b"sec-websocket-version", b"13"))
        return text_reply(status, bytes(response.body).decode("utf-8", "replace"), extra)
    return Upgrade(kind, claims, session_key, response, hs)


class Upgrade:
    """A handshake that passed steps 1-7; the session lock (step 8) comes next."""

    __slots__ = ("claims", "hs", "kind", "response", "session_key")

    def __init__(self, kind: str, claims: Any, session_key: str, response: WsResponse, hs: ServerProtocol) -> None:
        self.kind = kind
        self.claims = claims
        self.session_key = session_key
        self.response = response
        self.hs = hs


def deflate_bits(hs: ServerProtocol) -> int:
    for ext in hs.extensions:
        if isinstance(ext, PerMessageDeflate):
            return ext.local_max_window_bits or 15
    return 0


def header_block_size(event: h11.Request) -> int:
    """Bytes of the request line and header fields as sent (give or take optional whitespace)."""
    size = len(event.method) + len(event.target) + len(b"  HTTP/1.1\r\n\r\n")
    for name, value in event.headers:
        size += len(name) + len(value) + 4  # ": " and CRLF
    return size


# --- the per-TCP-connection protocol -------------------------------------------------------
class HttpProtocol(asyncio.Protocol):
    __slots__ = (
        "_body",
        "_busy",
        "_draining",
        "_idle",
        "_req",
        "_timer",
        "_write_paused",
        "conn",
        "gw",
        "lost",
        "transport",
        "upgraded",
    )

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.transport: Any = None
        self._req: Req | None = None
        self._body = bytearray()
        self._busy = False
        self._timer: asyncio.TimerHandle | None = None
        self._idle = False  # the timer is the idle timeout: no byte of a next request yet
        self.lost = False
        self.upgraded = False
        # The body is over 1 MiB: after the answer, discard the rest of it, then close.
        self._draining = False
        # The transport's buffer is over its high-water mark (the client does not read our
        # answers): no further request is answered and nothing more is read until it drains.
        self._write_paused = False

    # asyncio callbacks
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.gw.http_conns.add(self)
        self._arm(self.gw.settings.app.read_timeout_seconds)

    def data_received(self, data: bytes) -> None:
        if self.upgraded or self._draining:
            return
        if self._idle:  # the first bytes of the next request: the read timeout applies now
            self._arm(self.gw.settings.app.read_timeout_seconds)
        try:
            self.conn.receive_data(data)
        except RuntimeError:
            return  # data after a close we asked for
        self._pump()

    def eof_received(self) -> bool | None:
        if not self.upgraded and not self._draining:
            try:
                self.conn.receive_data(b"")
            except RuntimeError:
                pass
            if not self._busy:
                self._pump()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._cancel_timer()
        self.gw.http_conns.discard(self)

    # Backpressure: a client that pipelines requests and does not read the answers would
    # otherwise make us buffer answers without bound. While the transport is paused no request
    # is answered and the socket is not read; the read/idle timer keeps running and ends it.
    def pause_writing(self) -> None:
        self._write_paused = True
        if not self._draining:  # a lingering close keeps discarding what arrives
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if not self._busy and not self.lost:
            # Not from inside the transport's write callback: an answer that closes the
            # connection there would have asyncio end the connection twice.
            asyncio.get_running_loop().call_soon(self._resume)

    def _resume(self) -> None:
        if self._write_paused or self._busy or self.lost:
            return
        self.transport.resume_reading()
        self._pump()

    # Timers: the read timeout from the first byte of a request until it is read (the first
    # request: from the connection on), the idle timeout between requests (as Go's server).
    def _arm(self, seconds: float, idle: bool = False) -> None:
        self._cancel_timer()
        self._idle = idle
        self._timer = asyncio.get_running_loop().call_later(seconds, self._timed_out)

    def _cancel_timer(self) -> None:
        self._idle = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _reading_if_buffered(self) -> None:
        """Bytes of the next request already buffered or parsed (pipelined, or waiting for the
        client to read our answers): the read timeout applies to it, not the idle timeout."""
        if self._idle and (self.conn.trailing_data[0] or self.conn.their_state is h11.SEND_BODY):
            self._arm(self.gw.settings.app.read_timeout_seconds)

    def _timed_out(self) -> None:
        self._timer = None
        if not self.upgraded and not self._busy:
            if self.transport.get_write_buffer_size():
                # close() would wait for a client that does not read: it could wait forever
                self.transport.abort()
            else:
                self.transport.close()

    def close_idle(self) -> None:
        """Shutdown: close keep-alive connections that are between requests."""
        if not self.upgraded and not self._busy:
            self.transport.close()

    # request processing
    def _pump(self) -> None:
        """Answer the requests h11 has buffered, one after the other, until one is answered
        asynchronously (or hands the connection over) or more bytes are needed.

        A loop, never recursion: a client may pipeline thousands of requests in one write.
        """
        conn = self.conn
        transport = self.transport
        while not (self._busy or self._draining or self.lost or transport.is_closing()):
            if self._write_paused:
                self._reading_if_buffered()
                return
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._protocol_error(exc)
                return
            if event is h11.NEED_DATA:
                self._reading_if_buffered()
                return
            if event is h11.PAUSED:
                return
            etype = type(event)
            if etype is h11.Request:
                if header_block_size(event) > MAX_HEADER_BYTES:  # type: ignore[arg-type]
                    self._protocol_error(h11.RemoteProtocolError("header block too large", 431))
                    return
                self._req = Req(event)  # type: ignore[arg-type]
                self._body = bytearray()
                length = self._req.headers.get("content-length")
                if length is not None and length.isdigit() and int(length) > MAX_BODY:
                    self._oversize(self._req)  # answered before the body is sent
                    return
                if conn.they_are_waiting_for_100_continue:  # e.g. curl: do not make it wait
                    self.transport.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
            elif etype is h11.Data:
                data = event.data  # type: ignore[union-attr]
                if len(self._body) + len(data) > MAX_BODY:  # chunked: the length was not known
                    assert self._req is not None
                    self._oversize(self._req)
                    return
                self._body += data
            elif etype is h11.EndOfMessage:
                req = self._req
                assert req is not None
                req.body = bytes(self._body)
                self._body = bytearray()
                self._handle(req)  # a reply written at once ends the cycle: the loop goes on
            elif etype is h11.ConnectionClosed:
                self.transport.close()
                return

    def _protocol_error(self, exc: h11.RemoteProtocolError) -> None:
        self._req = None  # the failed request is not a HEAD whose answer has no body
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            status = exc.error_status_hint if 400 <= exc.error_status_hint < 600 else 400
            body = b"Request Header Fields Too Large\n" if status == 431 else b"Bad Request\n"
            self._send(HttpReply(status, body, [(b"content-type", TEXT)]), str(uuid.uuid4()), close=True)
        else:
            self.transport.close()

    def _oversize(self, req: Req) -> None:
        """The body is over 1 MiB: never buffered, and not needed for the checks that come
        first (SPEC §1.2: the API key before anything else), so the request is answered
        without it (route(too_large=True)), then the connection is closed.

        Lingering close: closing with the client's body still arriving would reset the
        connection before it reads the answer. Answer, send FIN, discard input for a while.
        """
        self._draining = True
        self._body = bytearray()
        self._handle(req, too_large=True)

    def _handle(self, req: Req, too_large: bool = False) -> None:
        self._busy = True
        self._cancel_timer()
        try:
            result = route(self.gw, req, too_large)
        except Exception as exc:
            self.gw.log.error("request failed", request_id=req.request_id, error=repr(exc), path=req.path)
            result = error_reply(500, INTERNAL_SERVER_ERROR, "An unexpected error occurred.", "Internal server error.")
        if isinstance(result, HttpReply):
            self._send(result, req.request_id)
        elif isinstance(result, Upgrade):
            self.gw.upgrade(self, req, result)
        else:
            self.transport.pause_reading()
            self.gw.spawn(self._finish(req, result))

    async def _finish(self, req: Req, pending: Awaitable[HttpReply]) -> None:
        try:
            reply = await pending
        except Exception as exc:
            self.gw.log.error("request failed", request_id=req.request_id, error=repr(exc), path=req.path)
            reply = error_reply(500, INTERNAL_SERVER_ERROR, "An unexpected error occurred.", "Internal server error.")
        if self.lost:
            return
        self._send(reply, req.request_id)
        if not self._write_paused:
            self.transport.resume_reading()
            self._pump()  # requests pipelined behind this one

    def _send(self, reply: HttpReply, request_id: str, close: bool = False) -> None:
        if self.lost:
            return
        conn = self.conn
        close = close or self._draining
        headers = [
            *reply.headers,
            (b"content-length", str(len(reply.body)).encode()),
        ]
        if request_id:
            headers.append((b"x-request-id", request_id.encode()))
        if close:
            headers.append((b"connection", b"close"))
        try:
            data = conn.send(h11.Response(status_code=reply.status, headers=headers))
            if reply.body and not (self._req is not None and self._req.method == "HEAD"):
                data += conn.send(h11.Data(data=reply.body)) or b""
            data += conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            self.transport.close()
            return
        self.transport.write(data or b"")
        self._busy = False
        if self._draining and self.transport.can_write_eof():
            self.transport.write_eof()
            self._arm(LINGER_SECONDS)  # _timed_out closes it
            return
        if close or conn.our_state is h11.MUST_CLOSE:
            self.transport.close()
            if self.transport.get_write_buffer_size():
                self._arm(self.gw.settings.app.idle_timeout_seconds)  # then abort, if still unread
            return
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()  # the caller pumps the next request, if any
            self._arm(self.gw.settings.app.idle_timeout_seconds, idle=True)
        elif conn.their_state is h11.MIGHT_SWITCH_PROTOCOL:
            # an upgrade request answered without 101: no further requests on this connection
            self.transport.close()

    # upgrade
    def reply_and_close(self, reply: HttpReply, request_id: str) -> None:
        self._send(reply, request_id, close=True)

    def switch(self, upgrade: Upgrade, request_id: str) -> Connection | None:
        """Answer 101 and hand the transport to a new Connection (SPEC §3.4)."""
        if self.lost or self.transport.is_closing():
            return None
        gw = self.gw
        response = upgrade.response
        response.headers["X-Request-ID"] = request_id
        trailing, _closed = self.conn.trailing_data
        self.upgraded = True
        self._cancel_timer()
        gw.http_conns.discard(self)
        transport = self.transport
        proto = FrameProtocol(state=State.OPEN, max_size=gw.settings.app.max_message_bytes, logger=WS_LOGGER)
        proto.extensions = upgrade.hs.extensions
        proto.subprotocol = upgrade.hs.subprotocol
        bits = deflate_bits(upgrade.hs)
        if bits:
            gw.hub.compression_used = True
        conn = Connection(gw, proto, upgrade.kind, upgrade.session_key, upgrade.claims, request_id, bits)
        transport.set_protocol(conn)
        conn.connection_made(transport)
        if self._write_paused:
            # the transport tells only its current protocol when its buffer drains: the socket
            # starts paused, and its resume_writing() will come
            conn.pause_writing()
        self.conn = None  # type: ignore[assignment]
        # The 101 goes through the socket's queue: it leaves with the ready frame in one write.
        gw.hub.send(conn, response.serialize())
        gw.register(conn)
        if trailing:
            conn.flush()  # the 101 and ready precede anything the early frames make us send
            conn.data_received(bytes(trailing))
        if not conn._read_blocked:  # paused by its own backpressure: it resumes reading itself
            transport.resume_reading()
        return conn


def make_deflate_factories(mode: str) -> list[ServerPerMessageDeflateFactory] | None:
    if mode != "no_context_takeover":
        return None
    return [ServerPerMessageDeflateFactory(server_no_context_takeover=True, client_no_context_takeover=True)]

