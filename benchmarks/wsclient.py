"""A lean asyncio WebSocket client for many sockets in one benchmark process.

One `asyncio.Protocol` per socket, no Task per socket: it does the opening handshake, parses
the server's (unmasked) frames, counts data frames and their payload bytes, answers pings,
and reports to a shared `Tally` so "all N sockets received frame k" is one future.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote

READY = b'{"type":"ready"}'

_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0, 1, 2, 8, 9, 10


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 §5.3)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    return head + mask + masked


class Tally:
    """Counts data frames over many sockets; `wait(total)` resolves when that many arrived."""

    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0
        self._target = 0
        self._waiter: asyncio.Future[float] | None = None

    def add(self, nbytes: int) -> None:
        self.frames += 1
        self.bytes += nbytes
        w = self._waiter
        if w is not None and self.frames >= self._target and not w.done():
            w.set_result(time.perf_counter())

    def expect(self, total: int) -> asyncio.Future[float]:
        """A future resolved (with perf_counter time) once `frames` reaches `total`."""
        loop = asyncio.get_running_loop()
        self._target = total
        self._waiter = loop.create_future()
        if self.frames >= total:
            self._waiter.set_result(time.perf_counter())
        return self._waiter


class WSClient(asyncio.Protocol):
    def __init__(self, path: str, host: str, tally: Tally | None = None, keep: bool = False) -> None:
        self.path = path
        self.host = host
        self.tally = tally
        self.keep = keep  # keep every data frame's payload (for content assertions)
        self.transport: Any = None
        self.upgraded = False
        self.status = 0
        self.buf = bytearray()
        self.frames = 0
        self.payload_bytes = 0
        self.kept: list[bytes] = []
        self.close_code: int | None = None
        self.closed = False
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[int] = loop.create_future()  # 101 status, or HTTP status
        self.ready: asyncio.Future[bool] = loop.create_future()  # first frame == ready
        self.lost: asyncio.Future[None] = loop.create_future()

    # asyncio
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end])
            del buf[: end + 4]
            try:
                self.status = int(head.split(b" ", 2)[1])
            except (IndexError, ValueError):
                self.status = -1
            if not self.opened.done():
                self.opened.set_result(self.status)
            if self.status != 101:
                if not self.ready.done():
                    self.ready.set_result(False)
                self.transport.close()
                return
            self.upgraded = True
        self._parse()

    def _parse(self) -> None:
        buf = self.buf
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            b0 = buf[pos]
            length = buf[pos + 1] & 0x7F
            hdr = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                hdr = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                hdr = 10
            if n - pos < hdr + length:
                break
            opcode = b0 & 0x0F
            start = pos + hdr
            pos = start + length
            if opcode in (_OP_TEXT, _OP_BINARY, _OP_CONT):
                self.frames += 1
                self.payload_bytes += length
                if self.frames == 1 and not self.ready.done():
                    self.ready.set_result(bytes(buf[start:pos]) == READY)
                    continue  # the ready frame is not an event
                if self.keep:
                    self.kept.append(bytes(buf[start:pos]))
                if self.tally is not None:
                    self.tally.add(length)
            elif opcode == _OP_PING:
                self.transport.write(client_frame(_OP_PONG, bytes(buf[start:pos])))
            elif opcode == _OP_CLOSE:
                if length >= 2:
                    self.close_code = int.from_bytes(buf[start : start + 2], "big")
                if not self.closed:
                    self.closed = True
                    self.transport.write(client_frame(_OP_CLOSE, bytes(buf[start : start + 2])))
        if pos:
            del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_result(-1)
        if not self.ready.done():
            self.ready.set_result(False)
        if not self.lost.done():
            self.lost.set_result(None)

    # client actions
    def send_text(self, data: bytes) -> None:
        self.transport.write(client_frame(_OP_TEXT, data))

    def close(self, code: int = 1000) -> None:
        if not self.closed and self.transport is not None and not self.transport.is_closing():
            self.closed = True
            self.transport.write(client_frame(_OP_CLOSE, struct.pack("!H", code)))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def user_path(company: str, agent: str, token: str, api_key: str) -> str:
    return f"/ws/{quote(company, safe='')}/{quote(agent, safe='')}?token={quote(token, safe='')}&x-api-key={quote(api_key, safe='')}"


async def connect(port: int, path: str, tally: Tally | None = None, keep: bool = False, timeout: float = 10.0) -> WSClient:
    """One socket, upgraded, ready frame received (AssertionError otherwise)."""
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(lambda: WSClient(path, f"127.0.0.1:{port}", tally, keep), "127.0.0.1", port)
    ok = await asyncio.wait_for(client.ready, timeout)
    assert ok, f"socket not ready: HTTP {client.status}"
    return client


async def connect_many(
    port: int, paths: Sequence[str], tally: Tally | None = None, concurrency: int = 100, keep: bool = False
) -> list[WSClient]:
    """Open every path with at most `concurrency` handshakes in flight."""
    sem = asyncio.Semaphore(concurrency)

    async def one(path: str) -> WSClient:
        async with sem:
            return await connect(port, path, tally, keep, timeout=30.0)

    return list(await asyncio.gather(*(one(p) for p in paths)))


async def close_all(clients: Iterable[WSClient], timeout: float = 10.0) -> None:
    clients = list(clients)
    for c in clients:
        c.close()
    pending = [c.lost for c in clients if not c.lost.done()]
    if pending:
        _, _still = await asyncio.wait(pending, timeout=timeout)
        for c in clients:
            if not c.lost.done():
                c.abort()


class HttpPublisher:
    """POST /api/publish over one keep-alive connection."""

    def __init__(self, port: int, admin_key: str) -> None:
        self.port = port
        self.admin_key = admin_key
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> HttpPublisher:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    def request(self, subject: str, payload: bytes) -> bytes:
        body = b'{"subject":"' + subject.encode() + b'","payload":' + payload + b"}"
        return (
            b"POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-API-Key: "
            + self.admin_key.encode()
            + b"\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )

    async def publish(self, subject: str, payload: bytes) -> int:
        """Returns delivered_local."""
        assert self.reader is not None and self.writer is not None
        self.writer.write(self.request(subject, payload))
        return await self.read_reply()

    async def read_reply(self) -> int:
        assert self.reader is not None
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        body = await self.reader.readexactly(length)
        assert status == 200, body
        # {"delivered_local":n}\n
        return int(body[body.index(b":") + 1 : body.index(b"}")])

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass
