"""SPEC §4.4: message size limit (1009), invalid UTF-8 (1007), protocol errors (1002),
heartbeat (ping every 1 s, pong wait 2 s here)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect

from tests.e2e.helpers import (
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    RawWS,
    expect_close,
    metric,
    parse_close,
    publish_ok,
    recv_json,
    recv_text,
    ws_path,
)
from tests.support import ServerProcess, wait_for

LIMIT = 4096
PING = 1
PONG_WAIT = 2
WRITE_TIMEOUT = 1
PONG_TIMEOUT_FRAME = b'{"type":"error","payload":{"code":"InternalServerError","message":"Pong timeout","details":"No pong responses received"}}'


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    proc = ServerProcess(
        env={
            "DAISI_WS_APP_MAX_MESSAGE_BYTES": str(LIMIT),
            "DAISI_WS_APP_PING_INTERVAL_SECONDS": str(PING),
            "DAISI_WS_APP_PONG_WAIT_SECONDS": str(PONG_WAIT),
            "DAISI_WS_APP_WRITE_TIMEOUT_SECONDS": str(WRITE_TIMEOUT),
        }
    ).start()
    try:
        yield proc
    finally:
        proc.stop(10)
        proc.kill()


def ready_of_size(n: int) -> str:
    """A valid `ready` message of exactly n bytes."""
    head, tail = '{"type":"ready","payload":"', '"}'
    return head + "x" * (n - len(head) - len(tail)) + tail


# --- size limit --------------------------------------------------------------------------------
async def test_message_at_the_limit_is_fine(server: ServerProcess) -> None:
    async with connect(server.user_url("lim", "a", "u1"), ping_interval=None) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        msg = ready_of_size(LIMIT)
        await ws.send(msg)
        assert await recv_text(ws) == msg  # the echo is the same bytes


async def test_message_over_the_limit_closes_1009(server: ServerProcess) -> None:
    async with connect(server.user_url("lim", "a", "u2"), ping_interval=None) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        await ws.send(ready_of_size(LIMIT + 1))
        assert await expect_close(ws) == (1009, "Message too big")


async def test_limit_applies_after_reassembly(server: ServerProcess) -> None:
    async with connect(server.user_url("lim", "a", "u3"), ping_interval=None) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        msg = ready_of_size(LIMIT + 500)
        await ws.send([msg[:1500], msg[1500:3000], msg[3000:]])  # each fragment is small
        assert await expect_close(ws) == (1009, "Message too big")


async def test_binary_over_the_limit_closes_too(server: ServerProcess) -> None:
    async with connect(server.user_url("lim", "a", "u4"), ping_interval=None) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        await ws.send(b"\x00" * (LIMIT + 1))
        assert await expect_close(ws) == (1009, "Message too big")


async def test_oversize_socket_is_deregistered_and_others_unaffected(server: ServerProcess) -> None:
    async with (
        connect(server.user_url("lim2", "a", "big"), ping_interval=None) as big,
        connect(server.user_url("lim2", "a", "ok"), ping_interval=None) as ok,
    ):
        assert await recv_text(big) == '{"type":"ready"}'
        assert await recv_text(ok) == '{"type":"ready"}'
        await big.send(ready_of_size(LIMIT * 3))
        assert (await expect_close(big))[0] == 1009
        assert wait_for(lambda: publish_ok(server, "websocket.lim2.a.chats", {"n": 1}) == 1)
        assert (await recv_json(ok))["payload"]["n"] == 1


def test_tcp_dropped_when_peer_never_answers_the_close(server: ServerProcess) -> None:
    """After its close frame the server waits at most write_timeout for the peer's."""
    with RawWS(server.port, ws_path("lim", "a", server.keys.user_token("lim", "a", "mute"), server.keys.api)) as ws:
        assert ws.recv_json() == {"type": "ready"}
        ws.send_text(ready_of_size(LIMIT + 1))
        op, data = ws.recv_data()
        assert op == OP_CLOSE and parse_close(data) == (1009, "Message too big")
        closed_at = time.monotonic()
        with pytest.raises(ConnectionError):  # never answer: the server drops TCP
            ws.recv_frame(timeout=WRITE_TIMEOUT + 3)
        assert time.monotonic() - closed_at <= WRITE_TIMEOUT + 2  # the sweep runs every second


# --- invalid UTF-8 and protocol errors ----------------------------------------------------------------
@pytest.mark.parametrize("data", [b"\xff", b'{"type":"ready","payload":"\xc3"}', b"\xed\xa0\x80", b"ok\xc0\xaf"])
async def test_invalid_utf8_closes_1007(server: ServerProcess, data: bytes) -> None:
    async with connect(server.user_url("utf", "a", "u"), ping_interval=None) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        await ws.send(data, text=True)
        code, _ = await expect_close(ws)
        assert code == 1007


async def test_invalid_utf8_across_fragments_closes_1007(server: ServerProcess) -> None:
    async with connect(server.user_url("utf", "a", "u2"), ping_interval=None) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        await ws.send([b'{"type":"ready","payload":"\xc3', b'x"}'], text=True)
        code, _ = await expect_close(ws)
        assert code == 1007


def test_unmasked_client_frame_closes_1002(server: ServerProcess) -> None:
    with RawWS(server.port, ws_path("pe", "a", server.keys.user_token("pe", "a", "u"), server.keys.api)) as ws:
        assert ws.recv_json() == {"type": "ready"}
        ws.send_frame(OP_TEXT, b'{"type":"ready"}', mask=False)
        op, data = ws.recv_data()
        assert op == OP_CLOSE
        assert parse_close(data)[0] == 1002


def test_continuation_without_start_closes_1002(server: ServerProcess) -> None:
    with RawWS(server.port, ws_path("pe", "a", server.keys.user_token("pe", "a", "u2"), server.keys.api)) as ws:
        assert ws.recv_json() == {"type": "ready"}
        ws.send_frame(0, b"orphan")
        op, data = ws.recv_data()
        assert op == OP_CLOSE
        assert parse_close(data)[0] == 1002


# --- heartbeat ---------------------------------------------------------------------------------
def silent_client(server: ServerProcess) -> tuple[float, int, bytes, tuple[int, str]]:
    """Complete the handshake, never answer a ping; returns (seconds to close, pings, error frame, close)."""
    path = ws_path("hb", "a", server.keys.user_token("hb", "a", "silent"), server.keys.api)
    started = time.monotonic()
    with RawWS(server.port, path) as ws:
        pings = 0
        frames: list[tuple[int, bytes]] = []
        while True:
            op, _fin, data = ws.recv_frame(timeout=PONG_WAIT + 4)
            if op == OP_PING:
                pings += 1
                continue
            frames.append((op, data))
            if op == OP_CLOSE:
                break
        elapsed = time.monotonic() - started
    assert [op for op, _ in frames] == [OP_TEXT, OP_TEXT, OP_CLOSE], frames
    assert frames[0][1] == b'{"type":"ready"}'
    return elapsed, pings, frames[1][1], parse_close(frames[2][1])


async def test_heartbeat(server: ServerProcess) -> None:
    """A client that answers pings stays open; one that does not gets 1011 after pong_wait."""
    closed0 = metric(server, "dws_messages_sent_total", message_type="error")
    silent = asyncio.create_task(asyncio.to_thread(silent_client, server))
    # ping_interval=None: this client never pings on its own, it only answers the server
    async with connect(server.user_url("hb", "a", "polite"), ping_interval=None) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ws.recv(), PONG_WAIT + 2.5)  # well past pong_wait: nothing happens
        await ws.send('{"type":"ready"}')
        assert await recv_text(ws) == '{"type":"ready"}'
        elapsed, pings, error, close = await silent
        assert pings >= 1
        assert error == PONG_TIMEOUT_FRAME
        assert close == (1011, "Pong timeout")
        assert PONG_WAIT <= elapsed <= PONG_WAIT + 2 + 0.5, elapsed
        assert metric(server, "dws_messages_sent_total", message_type="error") >= closed0 + 1
        # the polite socket is still registered and receiving
        assert publish_ok(server, "websocket.hb.a.chats", {"alive": True}) == 1
        assert await recv_json(ws) == {"type": "event", "payload": {"event_type": "chat", "alive": True}}
