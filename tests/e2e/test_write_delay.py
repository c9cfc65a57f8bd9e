"""app.websocket_write_delay_ms: a socket written less than the delay ago holds its events for
the window and takes them in one write; a quiet socket and replies do not wait; a reload
applies the new delay at once."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from websockets.asyncio.client import connect

from tests.e2e.helpers import READY, publish_ok, recv_json, recv_text
from tests.support import ServerProcess, wait_for

DELAY_S = 1.0  # long, so "held" and "not held" stay apart on a busy machine


async def publish_at(server: ServerProcess, payload: dict[str, str], recipients: int = 1) -> float:
    """Publish from a thread (the client's loop keeps reading); returns when it was sent."""
    sent = time.monotonic()
    assert await asyncio.to_thread(publish_ok, server, "websocket.wd.a.chats", payload) == recipients
    return sent


async def test_events_are_held_together_and_replies_are_not(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"app:\n  websocket_write_delay_ms: {int(DELAY_S * 1000)}\n")
    with ServerProcess(env={"DAISI_WS_CONFIG": str(config)}) as server:
        async with connect(server.user_url("wd", "a", "u1")) as ws:
            assert await recv_text(ws) == READY
            await publish_at(server, {"event_id": "1"})
            await asyncio.sleep(0.1)
            await publish_at(server, {"event_id": "2"})

            # a reply is not held, and it takes the held events along, in order
            asked = time.monotonic()
            await ws.send("not json")
            frames = [await recv_json(ws) for _ in range(3)]
            replied = time.monotonic()
            assert [f["type"] for f in frames] == ["event", "event", "error"], frames
            assert [f["payload"]["event_id"] for f in frames[:2]] == ["1", "2"]
            assert replied - asked < DELAY_S / 2, replied - asked

            # quiet for longer than the delay: the next event is written at once; events that
            # follow it within the delay wait for the window and leave together
            await asyncio.sleep(DELAY_S + 0.4)
            sent = await publish_at(server, {"event_id": "3"})
            assert (await recv_json(ws))["payload"]["event_id"] == "3"
            assert time.monotonic() - sent < DELAY_S / 2
            sent = await publish_at(server, {"event_id": "4"})
            await asyncio.sleep(0.1)
            await publish_at(server, {"event_id": "5"})
            fourth = await recv_json(ws)
            fourth_at = time.monotonic()
            fifth = await recv_json(ws)
            assert [fourth["payload"]["event_id"], fifth["payload"]["event_id"]] == ["4", "5"]
            assert fourth_at - sent >= DELAY_S * 0.9, fourth_at - sent
            assert time.monotonic() - fourth_at < 0.05  # the same write, not the next window

            # a reload applies at once: no delay from now on
            config.write_text("app:\n  websocket_write_delay_ms: 0\n")
            server.signal(signal.SIGHUP)
            assert wait_for(lambda: len(server.logged("config reloaded")) >= 1, timeout=5)
            sent = await publish_at(server, {"event_id": "6"})
            assert (await recv_json(ws))["payload"]["event_id"] == "6"
            assert time.monotonic() - sent < DELAY_S / 2


async def test_a_reply_does_not_end_other_sockets_windows(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"app:\n  websocket_write_delay_ms: {int(DELAY_S * 1000)}\n")
    with ServerProcess(env={"DAISI_WS_CONFIG": str(config)}) as server:
        async with connect(server.user_url("wd", "a", "asker")) as asker, connect(server.user_url("wd", "a", "waiter")) as waiter:
            assert await recv_text(asker) == READY
            assert await recv_text(waiter) == READY
            sent = await publish_at(server, {"event_id": "1"}, recipients=2)
            await asker.send("not json")
            assert [f["type"] for f in [await recv_json(asker) for _ in range(2)]] == ["event", "error"]
            assert time.monotonic() - sent < DELAY_S / 2
            assert (await recv_json(waiter))["payload"]["event_id"] == "1"
            assert time.monotonic() - sent >= DELAY_S * 0.9, "the asker's reply flushed the waiter's window"
