"""SPEC §4.6: permessage-deflate with app.websocket_compression_mode=no_context_takeover."""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from tests.e2e.helpers import (
    OP_TEXT,
    RawWS,
    expect_close,
    publish_ok,
    recv_json,
    recv_text,
    ws_path,
)
from tests.support import ServerProcess

THRESHOLD = 128


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    proc = ServerProcess(env={"DAISI_WS_APP_WEBSOCKET_COMPRESSION_MODE": "no_context_takeover"}).start()
    try:
        yield proc
    finally:
        proc.stop(10)
        proc.kill()


def inflate(data: bytes, wbits: int = 15) -> bytes:
    return zlib.decompressobj(-wbits).decompress(data + b"\x00\x00\xff\xff")


def big_row(n: int) -> dict[str, object]:
    return {"text": "hello world " * n, "n": list(range(50))}


async def test_negotiated_and_events_decode(server: ServerProcess) -> None:
    async with connect(server.user_url("cz", "a", "u")) as ws:  # offers permessage-deflate
        ext = ws.response.headers["Sec-WebSocket-Extensions"]
        assert ext.startswith("permessage-deflate")
        assert "server_no_context_takeover" in ext and "client_no_context_takeover" in ext
        assert await recv_text(ws) == '{"type":"ready"}'
        for n in (1, 20, 5000, 3):  # small (plain), big (compressed), very big, small
            assert publish_ok(server, "websocket.cz.a.chats", {"row_data": big_row(n)}) == 1
            assert await recv_json(ws) == {"type": "event", "payload": {"event_type": "chat", "row_data": big_row(n)}}


def test_frames_over_the_threshold_are_compressed(server: ServerProcess) -> None:
    path = ws_path("cr", "a", server.keys.user_token("cr", "a", "u"), server.keys.api)
    with RawWS(server.port, path, {"Sec-WebSocket-Extensions": "permessage-deflate"}) as ws:
        assert ws.headers["sec-websocket-extensions"].startswith("permessage-deflate")
        op, fin, data = ws.recv_frame()
        assert (op, fin, ws.rsv1, data) == (OP_TEXT, True, False, b'{"type":"ready"}')  # below threshold
        small = {"s": 1}
        big = {"row_data": big_row(30)}
        publish_ok(server, "websocket.cr.a.chats", small)
        publish_ok(server, "websocket.cr.a.chats", big)
        op, _, data = ws.recv_frame()
        assert op == OP_TEXT and not ws.rsv1
        assert json.loads(data) == {"type": "event", "payload": {"event_type": "chat", **small}}
        op, _, data = ws.recv_frame()
        assert op == OP_TEXT and ws.rsv1
        plain = inflate(data)
        assert len(plain) >= THRESHOLD and len(data) < len(plain)
        assert json.loads(plain) == {"type": "event", "payload": {"event_type": "chat", **big}}
        # the same event twice compresses to the same bytes: no context is carried over
        publish_ok(server, "websocket.cr.a.chats", big)
        _, _, again = ws.recv_frame()
        assert ws.rsv1 and again == data


async def test_mixed_recipients_get_the_same_event(server: ServerProcess) -> None:
    async with (
        connect(server.user_url("cm", "a", "z1")) as z1,
        connect(server.user_url("cm", "a", "z2")) as z2,
        connect(server.user_url("cm", "a", "plain"), compression=None) as plain,
        connect(server.admin_url("cm-admin")) as admin,
    ):
        assert "Sec-WebSocket-Extensions" not in plain.response.headers
        for ws in (z1, z2, plain, admin):
            assert await recv_text(ws) == '{"type":"ready"}'
        payload = {"row_data": big_row(100)}
        assert publish_ok(server, "websocket.cm.a.agents", payload) == 4
        texts = [await recv_text(ws) for ws in (z1, z2, plain, admin)]
        assert len(set(texts)) == 1
        assert json.loads(texts[0]) == {"type": "event", "payload": {"event_type": "agent", **payload}}


async def test_requested_server_window_bits_are_honoured(server: ServerProcess) -> None:
    factory = ClientPerMessageDeflateFactory(server_max_window_bits=10, client_max_window_bits=True)
    async with connect(server.user_url("cw", "a", "u"), extensions=[factory]) as ws:
        ext = ws.response.headers["Sec-WebSocket-Extensions"]
        assert "server_max_window_bits=10" in ext
        assert await recv_text(ws) == '{"type":"ready"}'
        payload = {"row_data": big_row(2000)}
        assert publish_ok(server, "websocket.cw.a.chats", payload) == 1
        assert await recv_json(ws) == {"type": "event", "payload": {"event_type": "chat", **payload}}


async def test_ready_ack_and_error_frames_work_compressed(server: ServerProcess) -> None:
    async with connect(server.user_url("cx", "a", "u")) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        long_id = "i" * 300
        await ws.send(json.dumps({"type": "select_chat", "chat_id": "c", "id": long_id}))
        assert await recv_json(ws) == {"type": "ack", "id": long_id}
        await ws.send(json.dumps({"type": "x" * 300}))
        assert await recv_json(ws) == {"type": "error", "payload": {"code": "BadRequest", "message": "Unhandled message type", "details": "Type: " + "x" * 300}}
        await ws.send(json.dumps({"type": "ready", "payload": big_row(10)}))
        assert await recv_json(ws) == {"type": "ready", "payload": big_row(10)}


async def test_client_compressed_messages_are_read(server: ServerProcess) -> None:
    async with connect(server.user_url("cc", "a", "u")) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        msg = json.dumps({"type": "ready", "payload": "y" * 5000}, separators=(",", ":"))
        await ws.send(msg)  # the client compresses it
        assert await recv_text(ws) == msg


async def test_size_limit_applies_after_decompression(server: ServerProcess) -> None:
    async with connect(server.user_url("cb", "a", "u")) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        await ws.send(json.dumps({"type": "ready", "payload": " " * 100_000}))  # ~100 bytes on the wire
        assert await expect_close(ws) == (1009, "Message too big")
