"""Shared helpers for the end-to-end suite: HTTP shortcuts, metrics, a raw WebSocket client.

Every helper talks to a real `daisi-ws serve` subprocess over loopback sockets.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import struct
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

from prometheus_client.parser import text_string_to_metric_families

from tests.support import ServerProcess, http_request

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
READY = '{"type":"ready"}'

Reply = tuple[int, dict[str, str], bytes]


# --- HTTP -------------------------------------------------------------------------------------
def post(server: ServerProcess, path: str, body: Any, key: str | None, headers: Mapping[str, str] | None = None) -> Reply:
    """POST a JSON body (bytes are sent as they are) with an optional X-API-Key."""
    data = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
    h = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        h["X-API-Key"] = key
    return http_request(server.http + path, "POST", data, h)


def publish(server: ServerProcess, subject: str, payload: Any, headers: Mapping[str, str] | None = None) -> Reply:
    return post(server, "/api/publish", {"subject": subject, "payload": payload}, server.keys.admin_api, headers)


def publish_ok(server: ServerProcess, subject: str, payload: Any) -> int:
    """Publish and return delivered_local (asserting 200)."""
    status, _, body = publish(server, subject, payload)
    assert status == 200, body
    return int(json.loads(body)["delivered_local"])


def error_body(code: str, message: str, details: str = "") -> bytes:
    obj = {"code": code, "message": message}
    if details:
        obj["details"] = details
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def error_frame(code: str, message: str, details: str = "") -> dict[str, Any]:
    payload = {"code": code, "message": message}
    if details:
        payload["details"] = details
    return {"type": "error", "payload": payload}


def assert_json_error(reply: Reply, status: int, code: str, message: str, details: str | None = None) -> None:
    """Status, content type and body; `details=None` means "any non-empty text"."""
    got_status, headers, body = reply
    assert got_status == status, body
    assert headers["content-type"] == "application/json"
    assert headers.get("x-request-id"), "every response carries X-Request-ID"
    assert body.endswith(b"\n")
    obj = json.loads(body)
    if details is None:
        assert list(obj) == ["code", "message", "details"], obj
        assert obj["code"] == code and obj["message"] == message, obj
        assert isinstance(obj["details"], str) and obj["details"], obj
    else:
        assert body == error_body(code, message, details), body


# --- URLs -------------------------------------------------------------------------------------
def ws_path(company: str, agent: str, token: str | None, key: str | None, **extra: str) -> str:
    params = []
    if token is not None:
        params.append(f"token={quote(token, safe='')}")
    if key is not None:
        params.append(f"x-api-key={quote(key, safe='')}")
    params += [f"{k}={quote(v, safe='')}" for k, v in extra.items()]
    path = f"/ws/{quote(company, safe='')}/{quote(agent, safe='')}"
    return path + ("?" + "&".join(params) if params else "")


def admin_path(token: str | None, key: str | None) -> str:
    params = []
    if token is not None:
        params.append(f"token={quote(token, safe='')}")
    if key is not None:
        params.append(f"x-api-key={quote(key, safe='')}")
    return "/ws/admin" + ("?" + "&".join(params) if params else "")


# --- metrics ----------------------------------------------------------------------------------
def metric(server: ServerProcess, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels` (0 if none)."""
    status, _, body = http_request(server.http + "/metrics")
    assert status == 200
    total = 0.0
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


# --- websockets client shortcuts ----------------------------------------------------------------
async def recv_json(ws: Any, timeout: float = 5.0) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_text(ws: Any, timeout: float = 5.0) -> str:
    msg = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(msg, str), msg
    return msg


async def expect_close(ws: Any, timeout: float = 5.0) -> tuple[int | None, str | None]:
    """Wait for the server's close; any data frame first is a failure."""
    from websockets.exceptions import ConnectionClosed

    try:
        msg = await asyncio.wait_for(ws.recv(), timeout)
    except ConnectionClosed as exc:
        rcvd = exc.rcvd
        return (rcvd.code, rcvd.reason) if rcvd is not None else (None, None)
    raise AssertionError(f"expected a close, got a frame: {msg!r}")


# --- pipelined publishing (fast: one keep-alive connection, many requests in flight) ----------
async def publish_pipelined(server: ServerProcess, items: Iterable[tuple[str, bytes]], window: int = 256) -> int:
    """POST /api/publish for every (subject, payload JSON bytes); returns 200 answers seen."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    head = (
        "POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"X-API-Key: {server.keys.admin_api}\r\nContent-Length: "
    ).encode()
    sent = 0
    answered = 0
    ok = 0
    buf = b""

    async def read_some() -> None:
        nonlocal answered, ok, buf
        data = await asyncio.wait_for(reader.read(1 << 16), 30)
        if not data:
            raise ConnectionError("server closed the publish connection")
        buf += data
        answered += buf.count(b"HTTP/1.1 ")
        ok += buf.count(b"HTTP/1.1 200 ")
        cut = buf.rfind(b"HTTP/1.1 ")
        buf = buf[cut + 9 :] if cut >= 0 else buf[-8:]

    try:
        for subject, payload in items:
            body = b'{"subject":"' + subject.encode() + b'","payload":' + payload + b"}"
            writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
            sent += 1
            if sent - answered >= window:
                await writer.drain()
                while sent - answered >= window // 2:
                    await read_some()
        await writer.drain()
        while answered < sent:
            await read_some()
    finally:
        writer.close()
    return ok


# --- a raw WebSocket client: full control over frames, pongs and reading ------------------------
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


def client_frame(opcode: int, payload: bytes, fin: bool = True, mask: bool = True, rsv: int = 0) -> bytes:
    """One frame as a client sends it (masked unless told otherwise); any opcode and RSV bits,
    so tests can also build what a well-behaved client never would."""
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    m = 0x80 if mask else 0
    if n < 126:
        header = struct.pack("!BB", b0, m | n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", b0, m | 126, n)
    else:
        header = struct.pack("!BBQ", b0, m | 127, n)
    if not mask:
        return header + payload
    key = os.urandom(4)
    return header + key + bytes(b ^ key[i & 3] for i, b in enumerate(payload))


class RawWS:
    """Blocking socket client; never answers pings by itself and reads only when asked."""

    def __init__(
        self,
        port: int,
        path: str,
        headers: Mapping[str, str] | None = None,
        rcvbuf: int | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in (headers or {}).items()),
        ]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed during handshake: {self.buf!r}")
            self.buf += chunk
        self.rsv1 = False
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}

    def _read(self, n: int, deadline: float) -> bytes:
        while len(self.buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no frame in time")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("peer closed the TCP connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def recv_frame(self, timeout: float = 5.0) -> tuple[int, bool, bytes]:
        deadline = time.monotonic() + timeout
        b0, b1 = self._read(2, deadline)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._read(2, deadline))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._read(8, deadline))
        assert not b1 & 0x80, "server frames are never masked"
        self.rsv1 = bool(b0 & 0x40)  # permessage-deflate: this frame is compressed
        return b0 & 0x0F, bool(b0 & 0x80), self._read(n, deadline)

    def recv_data(self, timeout: float = 5.0, pong: bool = False) -> tuple[int, bytes]:
        """The next data or close frame, skipping pings (answered only if `pong`)."""
        deadline = time.monotonic() + timeout
        while True:
            op, _fin, data = self.recv_frame(max(0.0, deadline - time.monotonic()))
            if op == OP_PING:
                if pong:
                    self.send_frame(OP_PONG, data)
                continue
            if op == OP_PONG:
                continue
            return op, data

    def recv_json(self, timeout: float = 5.0) -> Any:
        op, data = self.recv_data(timeout)
        assert op == OP_TEXT, (op, data)
        return json.loads(data)

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True, mask: bool = True) -> None:
        self.sock.sendall(client_frame(opcode, payload, fin=fin, mask=mask))

    def send_text(self, text: str) -> None:
        self.send_frame(OP_TEXT, text.encode())

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> RawWS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_close(data: bytes) -> tuple[int, str]:
    (code,) = struct.unpack("!H", data[:2])
    return code, data[2:].decode()


def raw_http(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes (or timeout); for HEAD/HTTP-1.0 checks."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            out += chunk
        return out


def split_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
    return int(status_line.split()[1]), headers, body


def raw_request(port: int, request: bytes, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes and read exactly one response (headers + Content-Length body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        status, headers, body = split_response(buf)
        length = 0 if status == 101 else int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        return status, headers, body


async def eventually(predicate: Any, timeout: float = 5.0, interval: float = 0.02) -> bool:
    """wait_for for async tests: the event loop (and its clients) keeps running meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return bool(predicate())


def push_until_blocked(sock: socket.socket, blob: bytes, limit: int, stall: float = 2.0) -> int:
    """Send `blob` repeatedly until `limit` bytes or until the peer takes nothing for `stall` s."""
    sock.setblocking(False)
    sent = 0
    view = memoryview(blob)
    offset = 0
    last_progress = time.monotonic()
    while sent < limit and time.monotonic() - last_progress < stall:
        try:
            n = sock.send(view[offset:])
        except BlockingIOError:
            time.sleep(0.01)
            continue
        sent += n
        offset = (offset + n) % len(blob)
        last_progress = time.monotonic()
    return sent
