"""SPEC §4.5: a client that stops reading. Memory stays bounded, drops are counted, other
sockets keep receiving; the `close`, `drop_newest` and `block` policies.

The slow client is a raw socket with a 4 KiB receive buffer that reads nothing until the
publishing is over; what it then finds tells exactly which frames the server kept.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

from websockets.asyncio.client import connect

from tests.e2e.helpers import (
    OP_CLOSE,
    OP_TEXT,
    RawWS,
    eventually,
    metric,
    parse_close,
    publish_pipelined,
    recv_text,
    ws_path,
)
from tests.support import ServerProcess, rss_kib, wait_for

EVENTS = 20_000
PAD = "x" * 2000  # ~2 KiB per event: 20,000 of them would be ~40 MiB if the server kept them
RSS_BOUND_KIB = 20 * 1024


def slow_client(server: ServerProcess, company: str, user: str) -> RawWS:
    path = ws_path(company, "a", server.keys.user_token(company, "a", user), server.keys.api)
    ws = RawWS(server.port, path, rcvbuf=4096)
    assert ws.status == 101
    return ws


def read_events(ws: RawWS, until_seq: int | None = None, timeout: float = 10.0) -> tuple[list[int], tuple[int, str] | None]:
    """Read data frames: event seqs until `until_seq` is seen, or until a close frame."""
    seqs: list[int] = []
    deadline = time.monotonic() + timeout
    while True:
        op, data = ws.recv_data(timeout=max(0.1, deadline - time.monotonic()), pong=True)
        if op == OP_CLOSE:
            return seqs, parse_close(data)
        assert op == OP_TEXT
        frame = json.loads(data)
        assert frame["type"] == "event", frame  # never an error frame here
        seqs.append(frame["payload"]["seq"])
        if until_seq is not None and seqs[-1] == until_seq:
            return seqs, None


def items(subject: str, start: int, count: int) -> Iterator[tuple[str, bytes]]:
    for seq in range(start, start + count):
        yield subject, b'{"seq":%d,"t":%r,"pad":"%s"}' % (seq, time.monotonic(), PAD.encode())


def dropped(server: ServerProcess, reason: str) -> float:
    return metric(server, "dws_websocket_messages_dropped_total", reason=reason)


# --- drop_oldest (default), 20,000 events ----------------------------------------------------------
async def test_slow_consumer_bounded_memory_and_others_unaffected(server: ServerProcess) -> None:
    slow = slow_client(server, "slow", "sleeper")
    try:
        assert slow.recv_json() == {"type": "ready"}
        async with connect(server.user_url("slow", "a", "reader"), max_queue=None, ping_interval=None) as fast:
            assert await recv_text(fast) == '{"type":"ready"}'
            lags: list[float] = []
            fast_seqs: list[int] = []

            async def read_fast() -> None:
                while len(fast_seqs) < 1000 + EVENTS:
                    payload = json.loads(await asyncio.wait_for(fast.recv(), 10))["payload"]
                    lags.append(time.monotonic() - payload["t"])
                    fast_seqs.append(payload["seq"])

            # warm up allocator and code paths, then measure
            reader = asyncio.create_task(read_fast())
            assert await publish_pipelined(server, items("websocket.slow.a.chats", -1000, 1000)) == 1000
            assert await eventually(lambda: len(fast_seqs) == 1000, timeout=10)
            rss_before = rss_kib(server.pid)
            dropped_before = dropped(server, "buffer_full_dropped_oldest")

            started = time.monotonic()
            assert await publish_pipelined(server, items("websocket.slow.a.chats", 0, EVENTS)) == EVENTS
            publish_seconds = time.monotonic() - started
            await asyncio.wait_for(reader, 5)  # the fast socket has everything promptly
            rss_after = rss_kib(server.pid)

            assert fast_seqs == list(range(-1000, EVENTS))
            assert max(lags) < 2.0, f"fast socket lagged {max(lags):.2f}s (publishing took {publish_seconds:.1f}s)"
            # Bound: the ring (100 frames) + the transport's 64 KiB high-water mark for the
            # slow socket, plus allocator noise, is well under 20 MiB; keeping every frame
            # would take ~40 MiB.
            assert rss_after - rss_before < RSS_BOUND_KIB, (rss_before, rss_after)

        # The slow socket kept its beginning (already in the socket buffers) and the newest
        # 100 frames (its ring); everything between was dropped as `oldest`.
        seqs, close = read_events(slow, until_seq=EVENTS - 1)
        assert close is None
        start = seqs.index(0)
        seqs = seqs[start:]
        assert seqs[-100:] == list(range(EVENTS - 100, EVENTS))
        head = seqs[:-100]
        assert head == list(range(len(head)))
        assert len(seqs) < EVENTS // 4
        assert dropped(server, "buffer_full_dropped_oldest") - dropped_before == EVENTS - len(seqs)
        # and it still works once it reads again
        slow.send_text('{"type":"ready","payload":"awake"}')
        assert slow.recv_json() == {"type": "ready", "payload": "awake"}
    finally:
        slow.close()


# --- close, drop_newest, block ------------------------------------------------------------------
async def fill_until(server: ServerProcess, subject: str, done: object, batch: int = 50, limit: int = 4000) -> int:
    """Publish batches until done() is true; returns the number of events published."""
    sent = 0
    while not done():  # type: ignore[operator]
        assert sent < limit, "the server never pushed back"
        await publish_pipelined(server, items(subject, sent, batch))
        sent += batch
    return sent


async def test_close_policy() -> None:
    env = {"DAISI_WS_APP_WEBSOCKET_BACKPRESSURE_DROP_POLICY": "close", "DAISI_WS_APP_WEBSOCKET_MESSAGE_BUFFER_SIZE": "10"}
    with ServerProcess(env=env) as server:
        slow = slow_client(server, "cl", "sleeper")
        try:
            assert slow.recv_json() == {"type": "ready"}
            async with connect(server.user_url("cl", "a", "other"), max_queue=None) as other:
                assert await recv_text(other) == '{"type":"ready"}'
                sent = await fill_until(server, "websocket.cl.a.chats", lambda: metric(server, "dws_websocket_slow_clients_disconnected_total") >= 1)
                assert dropped(server, "buffer_full_closed") >= 11  # the queued 10 and the new one
                seqs, close = read_events(slow)
                assert close == (1008, "Slow consumer")
                assert seqs == list(range(len(seqs)))  # in order, no error frame before the close
                assert len(seqs) < sent
                # the other socket of the pair got everything
                got = [json.loads(await recv_text(other))["payload"]["seq"] for _ in range(sent)]
                assert got == list(range(sent))
                assert wait_for(lambda: metric(server, "dws_active_connections") == 1)
        finally:
            slow.close()


async def test_drop_newest_policy() -> None:
    env = {"DAISI_WS_APP_WEBSOCKET_BACKPRESSURE_DROP_POLICY": "drop_newest", "DAISI_WS_APP_WEBSOCKET_MESSAGE_BUFFER_SIZE": "10"}
    with ServerProcess(env=env) as server:
        slow = slow_client(server, "dn", "sleeper")
        try:
            assert slow.recv_json() == {"type": "ready"}
            sent = await fill_until(server, "websocket.dn.a.chats", lambda: dropped(server, "buffer_full_dropped_newest") > 0)
            await publish_pipelined(server, items("websocket.dn.a.chats", sent, 200))  # all of these are dropped
            sent += 200
            # what the server kept is a contiguous prefix: every frame after the first drop
            # was dropped too (the client still reads nothing)
            kept = sent - int(dropped(server, "buffer_full_dropped_newest"))
            seqs, close = read_events(slow, until_seq=kept - 1)
            assert close is None
            assert seqs == list(range(kept))
            assert metric(server, "dws_websocket_slow_clients_disconnected_total") == 0
            # still open, and new frames flow again now that it reads
            slow.send_text('{"type":"ready"}')
            assert slow.recv_data(pong=True) == (OP_TEXT, b'{"type":"ready"}')
        finally:
            slow.close()


async def test_block_policy_closes_after_write_timeout() -> None:
    env = {
        "DAISI_WS_APP_WEBSOCKET_BACKPRESSURE_DROP_POLICY": "block",
        "DAISI_WS_APP_WEBSOCKET_MESSAGE_BUFFER_SIZE": "10",
        "DAISI_WS_APP_WRITE_TIMEOUT_SECONDS": "1",
    }
    with ServerProcess(env=env) as server:
        slow = slow_client(server, "bl", "sleeper")
        try:
            assert slow.recv_json() == {"type": "ready"}
            sent = await fill_until(server, "websocket.bl.a.chats", lambda: metric(server, "dws_websocket_buffer_used_count") >= 10, batch=20)
            assert metric(server, "dws_websocket_slow_clients_disconnected_total") == 0  # not at once
            assert wait_for(lambda: metric(server, "dws_websocket_slow_clients_disconnected_total") == 1, timeout=4)
            assert dropped(server, "buffer_full_block_timeout") >= 10
            seqs, close = read_events(slow)
            assert close == (1008, "Slow consumer")
            assert seqs == list(range(len(seqs)))  # nothing dropped before the close
            assert len(seqs) < sent
        finally:
            slow.close()
