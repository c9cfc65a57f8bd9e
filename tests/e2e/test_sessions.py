"""SPEC §3.4 step 2, §4.7, §5.5 on one pod: a second login of the same user or admin
replaces the first (SessionConflict frame, close 4402); the old socket's end touches nothing."""

from __future__ import annotations

import json

from websockets.asyncio.client import connect

from tests.e2e.helpers import eventually, expect_close, metric, publish_ok, recv_json, recv_text
from tests.support import ServerProcess

USER_CONFLICT = '{"type":"error","payload":{"code":"SessionConflict","message":"Session conflict","details":"Session taken over by another connection"}}'
ADMIN_CONFLICT = '{"type":"error","payload":{"code":"SessionConflict","message":"Session conflict","details":"Admin session taken over by another connection"}}'
USER_REASON = "SessionConflict: Session taken over by another connection"
ADMIN_REASON = "AdminSessionConflict: Session taken over by another connection"


async def test_same_user_takeover(server: ServerProcess) -> None:
    conflicts0 = metric(server, "dws_session_conflicts_total", user_type="user")
    active0 = metric(server, "dws_active_connections")
    async with connect(server.user_url("to", "a", "u")) as old:
        assert await recv_text(old) == '{"type":"ready"}'
        await old.send('{"type":"select_chat","chat_id":"c1","id":1}')
        assert await recv_text(old) == '{"type":"ack","id":1}'
        async with connect(server.user_url("to", "a", "u")) as new:
            assert await recv_text(new) == '{"type":"ready"}'
            assert await recv_text(old) == USER_CONFLICT
            assert await expect_close(old) == (4402, USER_REASON)
            assert metric(server, "dws_session_conflicts_total", user_type="user") == conflicts0 + 1
            # only the new socket is registered: events reach it once
            assert publish_ok(server, "websocket.to.a.chats", {"n": 1}) == 1
            assert await recv_json(new) == {"type": "event", "payload": {"event_type": "chat", "n": 1}}
            assert await eventually(lambda: metric(server, "dws_active_connections") == active0 + 1)
            # the old socket's deregistration did not take the session or routes with it
            await new.send('{"type":"select_chat","chat_id":"c2","id":2}')
            assert await recv_text(new) == '{"type":"ack","id":2}'
            assert publish_ok(server, "websocket.to.a.messages.c2", {"n": 2}) == 1
            assert await recv_json(new) == {"type": "event", "payload": {"event_type": "message", "n": 2}}
            # a third login replaces the second in turn
            async with connect(server.user_url("to", "a", "u")) as third:
                assert await recv_text(third) == '{"type":"ready"}'
                assert await recv_text(new) == USER_CONFLICT
                assert await expect_close(new) == (4402, USER_REASON)
                assert publish_ok(server, "websocket.to.a.chats", {"n": 3}) == 1
                assert await recv_json(third) == {"type": "event", "payload": {"event_type": "chat", "n": 3}}


async def test_different_users_do_not_conflict(server: ServerProcess) -> None:
    async with connect(server.user_url("nc", "a", "u1")) as u1, connect(server.user_url("nc", "a", "u2")) as u2, connect(server.user_url("nc", "b", "u1")) as u1b:
        for ws in (u1, u2, u1b):
            assert await recv_text(ws) == '{"type":"ready"}'
        assert publish_ok(server, "websocket.nc.a.chats", {"n": 1}) == 2
        assert publish_ok(server, "websocket.nc.b.chats", {"n": 2}) == 1
        assert (await recv_json(u1))["payload"]["n"] == 1
        assert (await recv_json(u2))["payload"]["n"] == 1
        assert (await recv_json(u1b))["payload"]["n"] == 2


async def test_queued_events_precede_the_conflict_frame(server: ServerProcess) -> None:
    async with connect(server.user_url("qe", "a", "u")) as old:
        assert await recv_text(old) == '{"type":"ready"}'
        for n in range(5):
            publish_ok(server, "websocket.qe.a.chats", {"n": n})
        async with connect(server.user_url("qe", "a", "u")) as new:
            assert await recv_text(new) == '{"type":"ready"}'
            got = [json.loads(await recv_text(old)) for _ in range(6)]
            assert [g["payload"]["n"] for g in got[:5]] == list(range(5))
            assert json.dumps(got[5], separators=(",", ":")) == USER_CONFLICT
            assert await expect_close(old) == (4402, USER_REASON)


async def test_admin_takeover(server: ServerProcess) -> None:
    conflicts0 = metric(server, "dws_session_conflicts_total", user_type="admin")
    async with connect(server.admin_url("boss")) as old:
        assert await recv_text(old) == '{"type":"ready"}'
        # a new login with a different filter still takes the same admin session
        async with connect(server.admin_url("boss", "co")) as new:
            assert await recv_text(new) == '{"type":"ready"}'
            assert await recv_text(old) == ADMIN_CONFLICT
            assert await expect_close(old) == (4402, ADMIN_REASON)
            assert metric(server, "dws_session_conflicts_total", user_type="admin") == conflicts0 + 1
            assert publish_ok(server, "websocket.co.x.agents", {"n": 1}) == 1
            assert await recv_json(new) == {"type": "event", "payload": {"event_type": "agent", "n": 1}}
            assert publish_ok(server, "websocket.other.x.agents", {"n": 2}) == 0  # the old filter is gone


async def test_user_and_admin_with_same_id_do_not_conflict(server: ServerProcess) -> None:
    async with connect(server.admin_url("same")) as adm, connect(server.user_url("same", "same", "same")) as user:
        assert await recv_text(adm) == '{"type":"ready"}'
        assert await recv_text(user) == '{"type":"ready"}'
        assert publish_ok(server, "websocket.same.same.agents", {"n": 1}) == 2
        assert (await recv_json(adm))["payload"]["n"] == 1
        assert (await recv_json(user))["payload"]["n"] == 1


async def test_new_socket_inherits_the_selected_chat(server: ServerProcess) -> None:
    async with connect(server.user_url("inh", "a", "u")) as old:
        assert await recv_text(old) == '{"type":"ready"}'
        await old.send('{"type":"select_chat","chat_id":"kept","id":1}')
        assert await recv_text(old) == '{"type":"ack","id":1}'
        async with connect(server.user_url("inh", "a", "u")) as new:
            assert await recv_text(new) == '{"type":"ready"}'
            assert (await recv_json(old))["payload"]["code"] == "SessionConflict"
            await new.send('{"type":"ready"}')  # orders us after the restore
            assert await recv_text(new) == '{"type":"ready"}'
            assert publish_ok(server, "websocket.inh.a.messages.kept", {"n": 1}) == 1
            assert await recv_json(new) == {"type": "event", "payload": {"event_type": "message", "n": 1}}
