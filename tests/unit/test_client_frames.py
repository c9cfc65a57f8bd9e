"""One socket in process (real handshake, recording transport): what the server writes when
the client's frames end the connection or ask for an echo it cannot give (SPEC §4.2, §4.5)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import orjson
import pytest
from websockets.frames import Close, Frame, Opcode
from websockets.streams import StreamReader

from daisi_ws.gateway.connection import Connection
from daisi_ws.gateway.server import Gateway
from tests.unit.fakes import RecordingTransport
from tests.unit.test_upgrade import gateway, handshake, user_token


def client_frame(opcode: Opcode, data: bytes) -> bytes:
    return Frame(opcode, data).serialize(mask=True, extensions=[])


def server_frames(transport: RecordingTransport) -> list[tuple[Opcode, bytes]]:
    """Every frame written after the 101, parsed by websockets."""
    stream = b"".join(transport.writes)
    reader = StreamReader()
    reader.feed_data(stream.partition(b"\r\n\r\n")[2])
    reader.feed_eof()
    out = []
    while True:
        parser = Frame.parse(reader.read_exact, mask=False)
        try:
            next(parser)
        except StopIteration as stop:
            out.append((stop.value.opcode, bytes(stop.value.data)))
        except EOFError:
            return out


def counted(child: Any) -> float:
    return float(child._value.get())


async def tick() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def open_socket(gw: Gateway, user: str) -> tuple[Connection, RecordingTransport]:
    from daisi_ws.gateway.http import HttpProtocol

    http = HttpProtocol(gw)
    transport = RecordingTransport()
    http.connection_made(transport)
    http.data_received(handshake(user_token(user)))
    await tick()
    conn = transport.protocol
    assert isinstance(conn, Connection)
    assert server_frames(transport) == [(Opcode.TEXT, b'{"type":"ready"}')]
    return conn, transport


@pytest.fixture
def gw() -> Gateway:
    return gateway()


async def test_frames_queued_before_the_peers_close_precede_the_close_echo(gw: Gateway) -> None:
    """RFC 6455 §5.5.1: nothing follows a close frame. The echo of a `ready` that arrived in
    the same read as the close leaves before the close echo (it used to follow it)."""
    conn, transport = await open_socket(gw, "u1")
    ready = client_frame(Opcode.TEXT, b'{"type":"ready","payload":"before-close"}')
    close = client_frame(Opcode.CLOSE, Close(1000, "bye").serialize())
    conn.data_received(ready + close)
    await tick()
    frames = server_frames(transport)
    assert frames[-2:] == [
        (Opcode.TEXT, b'{"type":"ready","payload":"before-close"}'),
        (Opcode.CLOSE, Close(1000, "bye").serialize()),
    ]


async def test_frames_the_transport_cannot_take_at_the_close_are_discarded_and_counted(gw: Gateway) -> None:
    conn, transport = await open_socket(gw, "u2")
    conn.pause_writing()  # the peer stopped reading
    gw.deliver("websocket.c1.a1.chats", b'{"event_id":"e1"}')
    await tick()
    dropped = gw.send_stats.socket_closed
    conn.data_received(client_frame(Opcode.CLOSE, Close(1000, "").serialize()))
    await tick()
    assert gw.send_stats.socket_closed == dropped + 1
    assert len(conn) == 0
    assert server_frames(transport)[-1] == (Opcode.CLOSE, Close(1000, "").serialize())
    conn.resume_writing()
    await tick()
    assert server_frames(transport)[-1][0] == Opcode.CLOSE


async def test_the_write_a_resumed_socket_makes_is_counted(gw: Gateway) -> None:
    """dws_websocket_writes_total counts every write of queued frames, not the hub's only."""
    conn, transport = await open_socket(gw, "u4")
    conn.pause_writing()  # the peer stopped reading
    gw.deliver("websocket.c1.a1.chats", b'{"event_id":"e1"}')
    gw.deliver("websocket.c1.a1.chats", b'{"event_id":"e2"}')
    await tick()
    writes = gw.send_stats.writes
    conn.resume_writing()
    assert gw.send_stats.writes == writes + 1
    events = [orjson.loads(data)["payload"]["event_id"] for _, data in server_frames(transport)[-2:]]
    assert events == ["e1", "e2"]


async def test_an_echo_the_drop_policy_refuses_is_not_counted_as_sent() -> None:
    gw = gateway()
    app = replace(gw.settings.app, websocket_message_buffer_size=1, websocket_backpressure_drop_policy="drop_newest")
    gw.apply_settings(replace(gw.settings, app=app))
    conn, _ = await open_socket(gw, "u3")
    conn.pause_writing()
    gw.deliver("websocket.c1.a1.chats", b'{"event_id":"fills-the-ring"}')
    sent, dropped = counted(gw.metrics.sent_ready), gw.send_stats.newest
    conn.data_received(client_frame(Opcode.TEXT, b'{"type":"ready"}'))
    await tick()
    assert gw.send_stats.newest == dropped + 1
    assert counted(gw.metrics.sent_ready) == sent


@pytest.mark.parametrize("depth", [300, 1000])
async def test_a_ready_payload_too_deep_to_echo_gets_one_error_frame(gw: Gateway, depth: int) -> None:
    """orjson reads up to 1024 levels but writes only 255: the echo cannot be built. One error
    frame, the socket stays open (it used to be dropped from inside data_received)."""
    conn, transport = await open_socket(gw, "u4")
    errors = counted(gw.metrics.sent_error)
    deep = b'{"type":"ready","payload":' + b"[" * depth + b"]" * depth + b"}"
    conn.data_received(client_frame(Opcode.TEXT, deep))
    await tick()
    (opcode, data), = server_frames(transport)[1:]
    assert opcode == Opcode.TEXT
    assert data.startswith(b'{"type":"error","payload":{"code":"BadRequest","message":"Invalid message format","details":')
    assert counted(gw.metrics.sent_error) == errors + 1
    assert not conn.ended
    conn.data_received(client_frame(Opcode.TEXT, b'{"type":"ready"}'))
    await tick()
    assert server_frames(transport)[-1] == (Opcode.TEXT, b'{"type":"ready"}')
