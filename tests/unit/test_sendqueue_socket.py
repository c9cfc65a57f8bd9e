"""SendQueue over real loopback TCP and asyncio's selector transport, both twins.

A flush sends straight to the socket while the transport holds nothing; anything it cannot
send at once, and everything after it until the transport has drained, goes through
`transport.write`, so bytes stay in order and asyncio still reports errors and closes.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import pytest

from tests.unit.twins import KINDS, load


@pytest.fixture(params=KINDS)
def sq(request: pytest.FixtureRequest) -> ModuleType:
    return load(request.param, "sendqueue")


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


class Pair:
    """One accepted server-side transport and its client socket (blocking, for reading)."""

    def __init__(self, transport: Any, protocol: Recorder, client: socket.socket) -> None:
        self.transport = transport
        self.protocol = protocol
        self.client = client
        self.writes: list[bytes] = []
        real_write = transport.write

        def spy(data: bytes) -> None:  # an instance attribute shadows the method
            self.writes.append(bytes(data))
            real_write(data)

        transport.write = spy

    async def read(self, n: int) -> bytes:
        loop = asyncio.get_running_loop()
        out = bytearray()
        while len(out) < n:
            chunk = await asyncio.wait_for(loop.sock_recv(self.client, 1 << 16), 5)
            if not chunk:
                break
            out += chunk
        return bytes(out)


def connect(small_buffers: bool = False) -> tuple[socket.socket, socket.socket]:
    """A connected (listener, client); the server side is accept()ed later."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.socket()
    if small_buffers:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(listener.getsockname())
    client.setblocking(False)
    return listener, client


async def open_pair(small_buffers: bool = False, connected: tuple[socket.socket, socket.socket] | None = None) -> Pair:
    listener, client = connected or connect(small_buffers)
    with listener:
        server, _ = listener.accept()
    if small_buffers:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    transport, protocol = await asyncio.get_running_loop().connect_accepted_socket(Recorder, server)
    return Pair(transport, protocol, client)


@pytest.fixture
async def pairs() -> AsyncIterator[list[Pair]]:
    opened: list[Pair] = []
    yield opened
    for p in opened:
        p.transport.abort()
        p.client.close()
    await asyncio.sleep(0)


def queue(sq: ModuleType, transport: Any) -> Any:
    q = sq.SendQueue(64, sq.POLICIES["drop_oldest"], sq.SendStats())
    q.transport = transport
    return q


async def test_flush_sends_straight_to_the_socket(sq: ModuleType, pairs: list[Pair]) -> None:
    pairs.append(p := await open_pair())
    q = queue(sq, p.transport)
    dirty: list[Any] = []
    for frame in (b"one|", b"two|", b"three|"):
        q.push(frame, dirty)
    sq.flush_dirty(dirty)
    assert q.stats.writes == 1  # one write of three frames
    assert p.writes == [], "an idle selector transport is bypassed"
    assert await p.read(14) == b"one|two|three|"
    assert q.transport is p.transport


async def test_partial_send_goes_through_the_transport_in_order(sq: ModuleType, pairs: list[Pair]) -> None:
    pairs.append(p := await open_pair(small_buffers=True))
    q = queue(sq, p.transport)
    big = bytes(range(256)) * 2048  # 512 KiB: far more than the socket buffers take
    dirty: list[Any] = []
    q.push(big, dirty)
    sq.flush_dirty(dirty)
    assert len(p.writes) == 1 and 0 < len(p.writes[0]) < len(big), "the unsent rest is the transport's"
    assert big.endswith(p.writes[0])
    assert p.transport.get_write_buffer_size() > 0
    # While the transport still holds bytes, later frames must queue behind them.
    for frame in (b"after-1|", b"after-2|"):
        q.push(frame, dirty)
    sq.flush_dirty(dirty)
    assert p.writes[1:] == [b"after-1|after-2|"]
    expected = big + b"after-1|after-2|"
    assert await p.read(len(expected)) == expected
    # Drained: the next flush goes direct again.
    for _ in range(100):
        if p.transport.get_write_buffer_size() == 0:
            break
        await asyncio.sleep(0.01)
    q.push(b"direct-again|", dirty)
    sq.flush_dirty(dirty)
    assert len(p.writes) == 2
    assert await p.read(13) == b"direct-again|"


async def test_closed_transport_never_writes_to_a_reused_descriptor(sq: ModuleType, pairs: list[Pair]) -> None:
    pairs.append(old := await open_pair())
    q = queue(sq, old.transport)
    old_fd = old.transport.get_extra_info("socket").fileno()
    connected = connect()
    old.transport.close()
    assert await asyncio.wait_for(old.protocol.lost, 5) is None  # asyncio closed the socket
    pairs.append(new := await open_pair(connected=connected))  # accept() takes the lowest free fd
    assert new.transport.get_extra_info("socket").fileno() == old_fd, "the lowest free descriptor is reused"
    dirty: list[Any] = []
    q.push(b"for-the-old-peer|", dirty)
    sq.flush_dirty(dirty)  # must neither raise nor reach the new peer
    loop = asyncio.get_running_loop()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(loop.sock_recv(new.client, 100), 0.2)


async def test_peer_reset_reaches_connection_lost(sq: ModuleType, pairs: list[Pair]) -> None:
    pairs.append(p := await open_pair())
    q = queue(sq, p.transport)
    p.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    p.client.close()  # RST; the loop has not run, so asyncio has not read it yet
    dirty: list[Any] = []
    q.push(b"to-a-reset-peer|", dirty)
    sq.flush_dirty(dirty)  # the send fails; the transport's own write reports it
    exc = await asyncio.wait_for(p.protocol.lost, 5)
    assert isinstance(exc, (ConnectionResetError, BrokenPipeError))

