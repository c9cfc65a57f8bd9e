"""Hostile bytes in a request never make a server error: every answer is a 4xx (or the
handshake succeeds), nothing is logged at error level, and the server keeps serving.
Property tests over header values, handshake headers and JSON bodies, on a real server."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.helpers import RawWS, client_frame, raw_request, ws_path
from tests.support import ServerProcess

# Header value bytes as a client could send them: anything but CR, LF (which end the line).
header_value = st.binary(min_size=0, max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
HANDSHAKE_HEADERS = ("Upgrade", "Connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version",
                     "Sec-WebSocket-Protocol", "Sec-WebSocket-Extensions", "Origin", "X-Request-ID", "X-Other")
COMMON = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def upgrade_request(server: ServerProcess, name: str, value: bytes) -> bytes:
    token = server.keys.user_token("hostile", "a", "u")
    headers = {
        "Upgrade": b"websocket",
        "Connection": b"Upgrade",
        "Sec-WebSocket-Key": b"dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": b"13",
        name: value,
    }
    lines = b"".join(k.encode() + b": " + v + b"\r\n" for k, v in headers.items())
    return f"GET {ws_path('hostile', 'a', token, server.keys.api)} HTTP/1.1\r\nHost: x\r\n".encode() + lines + b"\r\n"


@COMMON
@given(name=st.sampled_from(HANDSHAKE_HEADERS), value=header_value)
def test_any_handshake_header_value_gets_101_or_4xx(server: ServerProcess, name: str, value: bytes) -> None:
    before = len(server.stderr)
    status, _, _ = raw_request(server.port, upgrade_request(server, name, value))
    assert status == 101 or 400 <= status < 500, (name, value, status)
    assert len(server.stderr) == before, server.stderr[before:]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10,
)
FIELDS = ("company_id", "agent_id", "user_id", "admin_id", "expires_in_seconds", "subject", "payload",
          "subscribed_company_id", "subscribed_agent_id", "company_id_restriction")


@COMMON
@given(
    path=st.sampled_from(["/generate-token", "/admin/generate-token", "/api/publish"]),
    body=st.one_of(
        st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=6).map(lambda d: json.dumps(d).encode()),
        JSON_VALUES.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=60),
    ),
)
def test_any_json_body_gets_200_or_4xx(server: ServerProcess, path: str, body: bytes) -> None:
    key = server.keys.api if path == "/generate-token" else server.keys.admin_api
    request = f"POST {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    before = len(server.stderr)
    status, _, reply = raw_request(server.port, request)
    assert status == 200 or 400 <= status < 500, (path, body, status, reply)
    json.loads(reply)  # every answer of these endpoints is a JSON body
    assert len(server.stderr) == before, server.stderr[before:]


# Frames after a good handshake: any opcode (reserved ones too), fin, RSV bits, masked or not,
# JSON-ish or random payloads. The server may close the socket (1002/1007/1009 and friends) but
# never logs an error, and the next socket still gets `ready`.
FRAME = st.tuples(
    st.sampled_from([0x0, 0x1, 0x2, 0x3, 0x8, 0x9, 0xA, 0xB, 0xF]),
    st.booleans(),  # fin
    st.sampled_from([0, 0, 0, 1, 4]),  # RSV bits
    st.sampled_from([True, True, True, False]),  # masked
    st.one_of(
        st.binary(max_size=200),
        st.sampled_from([b'{"type":"select_chat","chat_id":"c1","id":1}', b'{"type":"select_chat","payload":{"chat_id":""}}', b"{}", b"[]", b"\xff\xfe"]),
    ),
)


@COMMON
@given(frames=st.lists(FRAME, min_size=1, max_size=6))
def test_any_frames_never_log_an_error_and_the_next_socket_is_served(
    server: ServerProcess, frames: list[tuple[int, bool, int, bool, bytes]]
) -> None:
    before = len(server.stderr)
    path = ws_path("frames", "a", server.keys.user_token("frames", "a", "u"), server.keys.api)
    with RawWS(server.port, path) as ws:
        assert ws.status == 101
        try:
            ws.sock.sendall(b"".join(client_frame(op, payload, fin=fin, mask=mask, rsv=rsv) for op, fin, rsv, mask, payload in frames))
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed on an earlier frame
    with RawWS(server.port, path) as fresh:
        assert fresh.status == 101
        assert fresh.recv_json() == {"type": "ready"}
    assert len(server.stderr) == before, server.stderr[before:]
