"""SPEC §1.1, §1.3, §1.4: routes, 404/405, HEAD, request ids, 413, health, ready, metrics."""

from __future__ import annotations

import http.client
import json
import socket

import pytest
from websockets.asyncio.client import connect

from daisi_ws import hotpath
from tests.e2e.helpers import (
    UUID4,
    assert_json_error,
    metric,
    publish_ok,
    raw_http,
    raw_request,
    recv_text,
    split_response,
    ws_path,
)
from tests.support import ServerProcess, http_request

NOT_FOUND = b"404 page not found\n"
NOT_ALLOWED = b"Method Not Allowed\n"
TEXT = "text/plain; charset=utf-8"


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/nope",
        "/health/",
        "/HEALTH",
        "/ws",
        "/ws/",
        "/ws/a",
        "/ws/a/",
        "/ws//b",
        "/ws/a/b/c",
        "/ws/admin/",
        "/ws/admin/x",
        "/ws/admin/x/y",
        "/ws/admin/generate-token",
        "/generate-token/x",
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_unknown_paths_are_404(server: ServerProcess, path: str, method: str) -> None:
    status, headers, body = http_request(server.http + path, method, b"" if method == "POST" else None)
    assert status == 404
    assert headers["content-type"] == TEXT
    assert body == NOT_FOUND
    assert UUID4.match(headers["x-request-id"])


@pytest.mark.parametrize(
    ("path", "method", "allow"),
    [
        ("/health", "POST", "GET, HEAD"),
        ("/healthz", "PUT", "GET, HEAD"),
        ("/ready", "DELETE", "GET, HEAD"),
        ("/metrics", "POST", "GET, HEAD"),
        ("/generate-token", "GET", "POST"),
        ("/admin/generate-token", "GET", "POST"),
        ("/api/publish", "GET", "POST"),
        ("/api/publish", "PUT", "POST"),
        ("/ws/c/a", "POST", "GET"),
        ("/ws/admin", "POST", "GET"),
        ("/ws/admin", "DELETE", "GET"),
    ],
)
def test_wrong_method_is_405_with_allow(server: ServerProcess, path: str, method: str, allow: str) -> None:
    # no API key: the method is checked before any credential (SPEC §3.1 steps 2-3)
    status, headers, body = http_request(server.http + path, method, b"{}" if method in ("POST", "PUT") else None)
    assert status == 405
    assert headers["content-type"] == TEXT
    assert headers["allow"] == allow
    assert body == NOT_ALLOWED
    assert "x-request-id" in headers


@pytest.mark.parametrize("path", ["/ws/c/a", "/generate-token"])
def test_head_on_non_get_route_is_405_without_body(server: ServerProcess, path: str) -> None:
    raw = raw_http(server.port, f"HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    status, headers, body = split_response(raw)
    assert status == 405
    assert headers["allow"] == ("GET" if path.startswith("/ws/") else "POST")
    assert body == b""


@pytest.mark.parametrize("path", ["/health", "/healthz", "/ready", "/metrics"])
def test_head_has_headers_but_no_body(server: ServerProcess, path: str) -> None:
    raw = raw_http(server.port, f"HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    status, headers, body = split_response(raw)
    assert status == 200
    assert "x-request-id" in headers
    assert headers["content-type"]
    assert body == b""  # nothing after the header block


def test_head_keeps_the_connection_usable(server: ServerProcess) -> None:
    """A HEAD answer without body must not desynchronise keep-alive."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("HEAD", "/health")
        r1 = conn.getresponse()
        assert r1.status == 200 and r1.read() == b""
        conn.request("GET", "/health")
        r2 = conn.getresponse()
        assert r2.status == 200 and r2.read() == b'{"status":"OK"}\n'
    finally:
        conn.close()


@pytest.mark.parametrize("path", ["/health", "/healthz"])
def test_health(server: ServerProcess, path: str) -> None:
    status, headers, body = http_request(server.http + path)
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert body == b'{"status":"OK"}\n'


def test_ready_embedded(server: ServerProcess) -> None:
    status, headers, body = http_request(server.http + "/ready")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert body == b'{"status":"READY","dependencies":{"nats":"embedded","redis":"embedded"}}\n'


def test_query_string_does_not_change_the_route(server: ServerProcess) -> None:
    status, _, body = http_request(server.http + "/health?x=1&y=%20")
    assert status == 200 and body == b'{"status":"OK"}\n'


# --- request ids -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "rid",
    ["abc", "A-b_c.d:e/f=g+h", "x" * 128, "!~", '{"quoted"}'],
)
def test_valid_request_id_is_echoed(server: ServerProcess, rid: str) -> None:
    for path in ("/health", "/nope"):
        _, headers, _ = http_request(server.http + path, headers={"X-Request-ID": rid})
        assert headers["x-request-id"] == rid


@pytest.mark.parametrize("rid", ["", "x" * 129, "has space", "tab\there", "caf\xe9"])
def test_invalid_request_id_is_replaced_by_uuid4(server: ServerProcess, rid: str) -> None:
    _, headers, _ = http_request(server.http + "/health", headers={"X-Request-ID": rid})
    assert headers["x-request-id"] != rid
    assert UUID4.match(headers["x-request-id"])


def test_missing_request_ids_are_fresh_uuid4s(server: ServerProcess) -> None:
    seen = {http_request(server.http + "/health")[1]["x-request-id"] for _ in range(3)}
    assert len(seen) == 3
    assert all(UUID4.match(r) for r in seen)


def test_request_id_on_error_responses(server: ServerProcess) -> None:
    rid = "req-err-1"
    status, headers, _ = http_request(server.http + "/generate-token", "POST", b"{}", {"X-Request-ID": rid})
    assert status == 401 and headers["x-request-id"] == rid
    status, headers, _ = http_request(server.http + "/health", "POST", b"", {"X-Request-ID": rid})
    assert status == 405 and headers["x-request-id"] == rid


async def test_request_id_on_101(server: ServerProcess) -> None:
    url = server.user_url("rid", "a", "u")
    async with connect(url, additional_headers={"X-Request-ID": "upgrade-42"}) as ws:
        assert ws.response.status_code == 101
        assert ws.response.headers["X-Request-ID"] == "upgrade-42"
    async with connect(url, additional_headers={"X-Request-ID": "bad id"}) as ws:
        assert UUID4.match(ws.response.headers["X-Request-ID"])
    async with connect(url) as ws:
        assert UUID4.match(ws.response.headers["X-Request-ID"])


# --- body limit --------------------------------------------------------------------------------
TOO_LARGE = ("BadRequest", "Request body too large", "Maximum is 1048576 bytes.")


@pytest.mark.parametrize("path", ["/api/publish", "/generate-token", "/admin/generate-token"])
def test_body_over_1_mib_is_413(server: ServerProcess, path: str) -> None:
    key = server.keys.api if path == "/generate-token" else server.keys.admin_api
    reply = http_request(server.http + path, "POST", b" " * (1024 * 1024 + 1), {"X-API-Key": key, "X-Request-ID": "big-1"})
    assert_json_error(reply, 413, *TOO_LARGE)
    assert reply[1]["x-request-id"] == "big-1"


def test_chunked_body_over_1_mib_is_413(server: ServerProcess) -> None:
    def chunks():  # http.client sends a generator with Transfer-Encoding: chunked
        for _ in range(17):
            yield b" " * 65536

    reply = http_request(server.http + "/api/publish", "POST", chunks(), {"X-API-Key": server.keys.admin_api})  # type: ignore[arg-type]
    assert_json_error(reply, 413, *TOO_LARGE)


def test_body_of_exactly_1_mib_is_read(server: ServerProcess) -> None:
    body = json.dumps({"subject": "websocket.c.a.chats", "payload": {"pad": ""}}).encode()
    body += b" " * (1024 * 1024 - len(body))
    assert len(body) == 1024 * 1024
    status, _, out = http_request(server.http + "/api/publish", "POST", body, {"X-API-Key": server.keys.admin_api})
    assert status == 200, out
    assert out == b'{"delivered_local":0}\n'
    assert http_request(server.http + "/health")[0] == 200


GENERAL_MISSING = ("InvalidAPIKey", "API key is required", "Provide API key in X-API-Key header or x-api-key query parameter.")
GENERAL_WRONG = ("InvalidAPIKey", "Invalid API key", "The provided API key is not valid.")
ADMIN_MISSING = ("E4001", "Admin API key is required", "Provide admin API key in X-API-Key header or x-api-key query parameter.")
ADMIN_WRONG = ("E4003", "Invalid admin API key", "The provided admin API key is not valid.")
HANDSHAKE = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"


def announce_big_body(server: ServerProcess, request_line: str, headers: str = "", chunked: bool = False) -> tuple[int, dict[str, str], bytes]:
    """A request announcing a body over 1 MiB: Content-Length 2000000 and no body at all, or
    chunked with 1 MiB + 1 byte sent. The answer must come (and the server close) all the same."""
    if chunked:
        piece = b"%x\r\n" % 65536 + b" " * 65536 + b"\r\n"
        body = b"Transfer-Encoding: chunked\r\n\r\n" + piece * 16 + b"1\r\n \r\n"
    else:
        body = b"Content-Length: 2000000\r\n\r\n"
    raw = raw_http(server.port, f"{request_line} HTTP/1.1\r\nHost: x\r\n{headers}".encode() + body, timeout=5)
    assert raw, "no answer"
    status, response_headers, reply = split_response(raw)
    assert response_headers["connection"] == "close"
    return status, response_headers, reply


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize(
    ("request_line", "key", "expected"),
    [
        ("POST /generate-token", None, (401, *GENERAL_MISSING)),
        ("POST /generate-token", "wrong", (401, *GENERAL_WRONG)),
        ("POST /generate-token", "admin", (401, *GENERAL_WRONG)),
        ("POST /admin/generate-token", None, (401, *ADMIN_MISSING)),
        ("POST /admin/generate-token", "wrong", (403, *ADMIN_WRONG)),
        ("POST /api/publish", None, (401, *ADMIN_MISSING)),
        ("POST /api/publish", "general", (403, *ADMIN_WRONG)),
    ],
)
def test_a_bad_api_key_is_answered_before_a_body_over_1_mib(
    server: ServerProcess, request_line: str, key: str | None, expected: tuple[int, str, str, str], chunked: bool
) -> None:
    """SPEC §1.2: the API key is checked first on every authenticated endpoint (the 413 came
    before it); the body is neither waited for nor buffered."""
    value = {"admin": server.keys.admin_api, "general": server.keys.api}.get(key or "", key)
    headers = f"X-API-Key: {value}\r\nX-Request-ID: big-2\r\n" if value else "X-Request-ID: big-2\r\n"
    reply = announce_big_body(server, request_line, headers, chunked)
    assert_json_error(reply, *expected)
    assert reply[1]["x-request-id"] == "big-2"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize(
    ("request_line", "status", "body"),
    [
        ("POST /nope", 404, NOT_FOUND),
        ("GET /generate-token", 405, NOT_ALLOWED),
        ("PUT /api/publish", 405, NOT_ALLOWED),
        ("POST /health", 405, NOT_ALLOWED),
        ("POST /ws/c/a", 405, NOT_ALLOWED),
        ("GET /health", 200, b'{"status":"OK"}\n'),
        ("HEAD /healthz", 200, b""),
        ("GET /ready", 200, b'{"status":"READY","dependencies":{"nats":"embedded","redis":"embedded"}}\n'),
    ],
)
def test_routes_answer_as_usual_whatever_the_body_size(
    server: ServerProcess, request_line: str, status: int, body: bytes, chunked: bool
) -> None:
    """404/405 come before the body size; the routes that ignore bodies (§1.3: health is
    always 200) answer as they do without one."""
    reply = announce_big_body(server, request_line, chunked=chunked)
    assert (reply[0], reply[2]) == (status, body)


def test_a_big_body_on_a_socket_request_is_checked_after_the_key_and_token(server: ServerProcess) -> None:
    token = server.keys.user_token("c", "a", "u")
    status, _, body = announce_big_body(server, f"GET {ws_path('c', 'a', token, None)}")
    assert status == 401 and json.loads(body)["message"] == "API key is required"
    status, _, body = announce_big_body(server, f"GET {ws_path('c', 'a', 'garbage', server.keys.api)}")
    assert status == 403 and json.loads(body)["message"] == "Company token is invalid or malformed."
    # every check passed: a handshake does not carry a body, and nothing is upgraded
    reply = announce_big_body(server, f"GET {ws_path('c', 'a', token, server.keys.api)}", HANDSHAKE)
    assert_json_error(reply, 413, *TOO_LARGE)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_good_key_and_a_body_over_1_mib_is_413_then_close(server: ServerProcess, chunked: bool) -> None:
    reply = announce_big_body(server, "POST /api/publish", f"X-API-Key: {server.keys.admin_api}\r\n", chunked)
    assert_json_error(reply, 413, *TOO_LARGE)
    assert http_request(server.http + "/health")[0] == 200


# --- percent-decoded path segments (SPEC §1.1) ---------------------------------------------------
@pytest.mark.parametrize(
    ("raw_company", "raw_agent", "company", "agent"),
    [
        ("ac%6De", "ag%65nt", "acme", "agent"),
        ("a%2Fb", "c", "a/b", "c"),  # %2F is part of a segment: split first, decode after
        ("%C3%A9t%C3%A9", "x", "\xe9t\xe9", "x"),
        ("a+b", "c", "a+b", "c"),  # '+' is a space only in query strings
    ],
)
async def test_path_segments_are_percent_decoded(
    server: ServerProcess, raw_company: str, raw_agent: str, company: str, agent: str
) -> None:
    token = server.keys.user_token(company, agent, "u1")
    path = ws_path("X", "Y", token, server.keys.api).replace("/ws/X/Y", f"/ws/{raw_company}/{raw_agent}")
    async with connect(server.ws + path) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        subject = f"websocket.{company}.{agent}.chats"
        assert publish_ok(server, subject, {"n": 1}) == 1
        assert json.loads(await recv_text(ws))["payload"] == {"event_type": "chat", "n": 1}


# --- metrics -------------------------------------------------------------------------------------
def test_metrics_exposition(server: ServerProcess) -> None:
    status, headers, body = http_request(server.http + "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    text = body.decode()
    native = "true" if hotpath.NATIVE else "false"
    build = [line for line in text.splitlines() if line.startswith("dws_build_info{")]
    assert len(build) == 1, build
    assert f'native="{native}"' in build[0]
    assert 'version="' in build[0]
    assert build[0].endswith(" 1.0")
    assert "# TYPE dws_active_connections gauge" in text
    assert "process_resident_memory_bytes" in text  # default process collectors


async def test_metrics_move(server: ServerProcess) -> None:
    active0 = metric(server, "dws_active_connections")
    total0 = metric(server, "dws_connections_total")
    events0 = metric(server, "dws_messages_sent_total", message_type="event")
    ready0 = metric(server, "dws_messages_sent_total", message_type="ready")
    fail0 = metric(server, "dws_auth_failure_total", token_type="company", reason="invalid_format_or_content")
    success0 = metric(server, "dws_auth_success_total", token_type="company")
    received0 = {t: metric(server, "dws_messages_received_total", message_type=t) for t in ("select_chat", "ready", "invalid_json", "unknown")}
    writes0 = metric(server, "dws_websocket_writes_total")
    async with connect(server.user_url("m", "a", "u1")) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        writes1 = metric(server, "dws_websocket_writes_total")
        assert writes1 in (writes0 + 1, writes0 + 2)  # the 101 and ready: one write, or two
        assert metric(server, "dws_active_connections") == active0 + 1
        assert metric(server, "dws_connections_total") == total0 + 1
        assert metric(server, "dws_messages_sent_total", message_type="ready") == ready0 + 1
        assert metric(server, "dws_auth_success_total", token_type="company") == success0 + 1
        assert metric(server, "dws_websocket_buffer_capacity_count") == 100 * (active0 + 1)
        publish_ok(server, "websocket.m.a.chats", {})
        await recv_text(ws)
        assert metric(server, "dws_messages_sent_total", message_type="event") == events0 + 1
        assert metric(server, "dws_websocket_writes_total") == writes1 + 1
        for text in ('{"type":"select_chat","chat_id":"c","id":1}', '{"type":"ready"}', "{bad", '{"type":"x"}'):
            await ws.send(text)
            await recv_text(ws)
        received = {t: metric(server, "dws_messages_received_total", message_type=t) for t in received0}
        assert received == {t: v + 1 for t, v in received0.items()}
    assert metric(server, "dws_connections_total") == total0 + 1
    from tests.support import wait_for

    assert wait_for(lambda: metric(server, "dws_active_connections") == active0)
    http_request(server.http + ws_path("m", "a", "garbage", server.keys.api))
    assert metric(server, "dws_auth_failure_total", token_type="company", reason="invalid_format_or_content") == fail0 + 1


def test_expect_100_continue(server: ServerProcess) -> None:
    """Clients such as curl announce big bodies and wait for `100 Continue` (RFC 9110 §10.1.1)."""
    body = b'{"subject":"websocket.c.a.chats","payload":{}}'
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            b"POST /api/publish HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nX-API-Key: "
            + server.keys.admin_api.encode()
            + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        sock.settimeout(0.9)  # curl waits 1 s before sending anyway
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 ")
        sock.settimeout(5)
        sock.sendall(body)
        answer = b""
        while not answer.endswith(b'{"delivered_local":0}\n'):
            chunk = sock.recv(4096)
            assert chunk, answer
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"\x00\x01\x02garbage\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost x\r\n\r\n",
        b"GET /health HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"POST /api/publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    ],
    ids=["garbage", "bad-request-line", "header-without-colon", "no-host", "bad-chunk", "negative-length"],
)
def test_malformed_http_gets_400_and_the_server_keeps_serving(server: ServerProcess, request_bytes: bytes) -> None:
    status, headers, body = split_response(raw_http(server.port, request_bytes, timeout=3))
    assert status == 400
    assert headers["content-type"] == TEXT
    assert UUID4.match(headers["x-request-id"])
    assert body == b"Bad Request\n"
    assert http_request(server.http + "/health")[0] == 200


@pytest.mark.parametrize("scheme", ["http", "HTTP", "https"])
def test_absolute_form_target_is_routed_by_its_path(server: ServerProcess, scheme: str) -> None:
    """RFC 9112 §3.2.2: a server must accept `GET http://host/path` (proxies send it)."""
    request = f"GET {scheme}://127.0.0.1:{server.port}/health?x=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    status, _headers, body = raw_request(server.port, request.encode())
    assert (status, body) == (200, b'{"status":"OK"}\n')
    status, _headers, body = raw_request(server.port, f"GET {scheme}://h HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert (status, body) == (404, b"404 page not found\n")


# --- header block size: the same answer however the bytes arrive -----------------------------------
HEADER_LIMIT = 16 * 1024


def request_with_headers(total: int) -> bytes:
    """GET /health whose header block (request line to the blank line) is `total` bytes; the
    server closes after answering, so the reader knows where the answer ends."""
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    filler = total - len(head) - len(b"X-Filler: \r\n\r\n")
    return head + b"X-Filler: " + b"a" * filler + b"\r\n\r\n"


def send_in_pieces(port: int, request: bytes, piece: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for i in range(0, len(request), piece):
                s.sendall(request[i : i + piece])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the rest arrived
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            out += chunk
        return out


@pytest.mark.parametrize("piece", [1 << 20, 1000], ids=["one-write", "many-writes"])
def test_header_block_over_the_limit_is_431_however_it_arrives(server: ServerProcess, piece: int) -> None:
    reply = send_in_pieces(server.port, request_with_headers(HEADER_LIMIT + 4096), piece)
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]
    assert reply.endswith(b"\r\n\r\nRequest Header Fields Too Large\n")


@pytest.mark.parametrize("piece", [1 << 20, 1000], ids=["one-write", "many-writes"])
def test_header_block_under_the_limit_is_served(server: ServerProcess, piece: int) -> None:
    reply = send_in_pieces(server.port, request_with_headers(HEADER_LIMIT - 1024), piece)
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:200]
