"""SPEC §7.2-§7.3 on one pod: who receives what, and the exact event frame.

Negative checks ("X does not get it") use a later marker event that X does get: frames
arrive in this pod's receive order, so if the marker is the next frame, nothing came
before it.
"""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.e2e.helpers import post, publish_ok, recv_json, recv_text
from tests.support import ServerProcess


async def open_user(stack: AsyncExitStack, server: ServerProcess, company: str, agent: str, user: str, chat: str | None = None) -> ClientConnection:
    ws = await stack.enter_async_context(connect(server.user_url(company, agent, user)))
    assert await recv_text(ws) == '{"type":"ready"}'
    if chat is not None:
        await ws.send(json.dumps({"type": "select_chat", "chat_id": chat, "id": "sel"}))
        assert await recv_text(ws) == '{"type":"ack","id":"sel"}'
    return ws


async def open_admin(stack: AsyncExitStack, server: ServerProcess, admin_id: str, company: str = "", agent: str = "") -> ClientConnection:
    ws = await stack.enter_async_context(connect(server.admin_url(admin_id, company, agent)))
    assert await recv_text(ws) == '{"type":"ready"}'
    return ws


def event(event_type: str, **fields: Any) -> dict[str, Any]:
    return {"type": "event", "payload": {"event_type": event_type, **fields}}


# --- messages go only to the selected chat -----------------------------------------------------
async def test_messages_only_to_sockets_selecting_the_chat(server: ServerProcess) -> None:
    async with AsyncExitStack() as stack:
        s1 = await open_user(stack, server, "dm", "a", "u1", chat="c1")
        s2 = await open_user(stack, server, "dm", "a", "u2", chat="c2")
        s3 = await open_user(stack, server, "dm", "a", "u3")
        s4 = await open_user(stack, server, "dm", "a", "u4", chat="c1")
        other_agent = await open_user(stack, server, "dm", "b", "u5", chat="c1")
        assert publish_ok(server, "websocket.dm.a.messages.c1", {"n": 1}) == 2
        assert publish_ok(server, "websocket.dm.a.messages.c2", {"n": 2}) == 1
        assert publish_ok(server, "websocket.dm.a.messages.c3", {"n": 3}) == 0
        assert publish_ok(server, "websocket.dm.a.chats", {"n": 4}) == 4
        assert publish_ok(server, "websocket.dm.b.chats", {"n": 5}) == 1
        assert [await recv_json(s1), await recv_json(s1)] == [event("message", n=1), event("chat", n=4)]
        assert [await recv_json(s4), await recv_json(s4)] == [event("message", n=1), event("chat", n=4)]
        assert [await recv_json(s2), await recv_json(s2)] == [event("message", n=2), event("chat", n=4)]
        assert await recv_json(s3) == event("chat", n=4)
        assert await recv_json(other_agent) == event("chat", n=5)


async def test_chat_selection_is_per_socket_and_moves(server: ServerProcess) -> None:
    async with AsyncExitStack() as stack:
        s1 = await open_user(stack, server, "mv", "a", "u1", chat="c1")
        s2 = await open_user(stack, server, "mv", "a", "u2", chat="c1")
        await s1.send('{"type":"select_chat","chat_id":"c2","id":1}')
        assert await recv_text(s1) == '{"type":"ack","id":1}'
        assert publish_ok(server, "websocket.mv.a.messages.c1", {"n": 1}) == 1
        assert publish_ok(server, "websocket.mv.a.messages.c2", {"n": 2}) == 1
        assert await recv_json(s1) == event("message", n=2)
        assert await recv_json(s2) == event("message", n=1)


async def test_selected_chat_is_restored_on_reconnect(server: ServerProcess) -> None:
    async with AsyncExitStack() as stack:
        await open_user(stack, server, "rs", "a", "u1", chat="keep")
    async with AsyncExitStack() as stack:
        again = await open_user(stack, server, "rs", "a", "u1")
        # the restore runs right after the upgrade; a round trip orders us after it
        await again.send('{"type":"ready"}')
        assert await recv_text(again) == '{"type":"ready"}'
        assert publish_ok(server, "websocket.rs.a.messages.keep", {"n": 1}) == 1
        assert await recv_json(again) == event("message", n=1)


# --- other types go to every user socket of (C, A) ----------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "event_type"),
    [("chats", "chat"), ("agents", "agent"), ("contacts", "contact"), ("custom", "custom"), ("x-y_z", "x-y_z"), ("Chats", "Chats")],
)
async def test_other_types_reach_all_user_sockets_of_the_pair(server: ServerProcess, kind: str, event_type: str) -> None:
    async with AsyncExitStack() as stack:
        mine = [
            await open_user(stack, server, "ot", "a", "u1"),
            await open_user(stack, server, "ot", "a", "u2", chat="c1"),
        ]
        others = [
            await open_user(stack, server, "ot", "b", "u3"),
            await open_user(stack, server, "ou", "a", "u4"),
        ]
        assert publish_ok(server, f"websocket.ot.a.{kind}", {"k": kind}) == 2
        for ws in mine:
            assert await recv_json(ws) == event(event_type, k=kind)
        assert publish_ok(server, "websocket.ot.b.chats", {"m": 1}) == 1
        assert publish_ok(server, "websocket.ou.a.chats", {"m": 2}) == 1
        assert await recv_json(others[0]) == event("chat", m=1)
        assert await recv_json(others[1]) == event("chat", m=2)


# --- the frame: event_type insertion, payload verbatim ----------------------------------------------
async def test_spec_example_frame(server: ServerProcess) -> None:
    async with AsyncExitStack() as stack:
        ws = await open_user(stack, server, "acme", "agent-7", "u", chat="c9")
        body = b'{"subject":"websocket.acme.agent-7.messages.c9","payload":{"event_id":"e1","chat_id":"c9","row_data":{"b":1,"a":2}}}'
        assert post(server, "/api/publish", body, server.keys.admin_api)[0] == 200
        assert await recv_text(ws) == '{"type":"event","payload":{"event_type":"message","event_id":"e1","chat_id":"c9","row_data":{"b":1,"a":2}}}'


@pytest.mark.parametrize(
    ("kind", "payload", "frame_payload"),
    [
        ("chats", "{}", '{"event_type":"chat"}'),
        ("agents", '{"a":1}', '{"event_type":"agent","a":1}'),
        ("contacts", '{"a":1}', '{"event_type":"contact","a":1}'),
        ("weird", '{"a":1}', '{"event_type":"weird","a":1}'),
        ("chats", '{"event_type":"custom","a":1}', '{"event_type":"custom","a":1}'),
        ("chats", '{"a":1,"event_type":"later"}', '{"a":1,"event_type":"later"}'),
        ("chats", '{"event_type":5}', '{"event_type":5}'),
        ("chats", '{"event_type":null}', '{"event_type":null}'),
        ("chats", '{"nested":{"event_type":"x"}}', '{"event_type":"chat","nested":{"event_type":"x"}}'),
        ("chats", '{"z":1,"a":{"y":[3,2,1],"b":"\\u00e9"}}', '{"event_type":"chat","z":1,"a":{"y":[3,2,1],"b":"\\u00e9"}}'),
        ("chats", '{ "spaced" : [ 1 , 2 ] }', '{"event_type":"chat", "spaced" : [ 1 , 2 ] }'),
    ],
)
async def test_event_frames(server: ServerProcess, kind: str, payload: str, frame_payload: str) -> None:
    async with AsyncExitStack() as stack:
        ws = await open_user(stack, server, "fr", "a", "u")
        body = b'{"subject":"websocket.fr.a.' + kind.encode() + b'","payload":' + payload.encode() + b"}"
        status, _, out = post(server, "/api/publish", body, server.keys.admin_api)
        assert status == 200 and out == b'{"delivered_local":1}\n', out
        assert await recv_text(ws) == '{"type":"event","payload":' + frame_payload + "}"


async def test_large_event_arrives_intact(server: ServerProcess) -> None:
    async with AsyncExitStack() as stack:
        ws = await stack.enter_async_context(connect(server.user_url("big", "a", "u"), max_size=2**20))
        assert await recv_text(ws) == '{"type":"ready"}'
        row = {"text": "x" * 200_000, "list": list(range(1000))}
        assert publish_ok(server, "websocket.big.a.chats", {"row_data": row}) == 1
        assert await recv_json(ws) == event("chat", row_data=row)


async def test_order_is_kept(server: ServerProcess) -> None:
    async with AsyncExitStack() as stack:
        ws = await open_user(stack, server, "seq", "a", "u", chat="c")
        for i in range(50):
            kind = "messages.c" if i % 2 else "chats"
            publish_ok(server, f"websocket.seq.a.{kind}", {"i": i})
        got = [(await recv_json(ws))["payload"]["i"] for _ in range(50)]
        assert got == list(range(50))


# --- admin sockets: agents events by filter, nothing else -------------------------------------------
ADMINS = {
    # admin_id: (subscribed_company_id, subscribed_agent_id)
    "all": ("", ""),
    "star": ("*", "*"),
    "co": ("fc", ""),
    "co-star": ("fc", "*"),
    "pair": ("fc", "fa"),
    "other-co": ("zz", ""),
    "agent-only": ("", "fa2"),
    "other-pair": ("fc", "fa2"),
}


def matches(flt: tuple[str, str], company: str, agent: str) -> bool:
    cf = flt[0] or "*"
    af = flt[1] or "*"
    return cf in ("*", company) and af in ("*", agent)


async def test_admin_filters(server: ServerProcess) -> None:
    async with AsyncExitStack() as stack:
        admins = {name: await open_admin(stack, server, f"adm-{name}", *flt) for name, flt in ADMINS.items()}
        user = await open_user(stack, server, "fc", "fa", "u", chat="c1")
        published: list[tuple[int, str, str]] = []  # (n, company, agent) of agents events

        def pub(subject: str, n: int) -> int:
            parts = subject.split(".")
            if parts[3] == "agents":
                published.append((n, parts[1], parts[2]))
            return publish_ok(server, subject, {"n": n})

        # non-agents types never reach admins
        assert pub("websocket.fc.fa.chats", 1) == 1
        assert pub("websocket.fc.fa.contacts", 2) == 1
        assert pub("websocket.fc.fa.messages.c1", 3) == 1
        assert pub("websocket.fc.fa.custom", 4) == 1
        # agents events by filter (delivered_local also counts the pair's user socket)
        for n, (company, agent) in enumerate([("fc", "fa"), ("fc", "fa2"), ("zz", "fa"), ("qq", "fa2"), ("qq", "qq")], start=10):
            count = sum(matches(f, company, agent) for f in ADMINS.values()) + ((company, agent) == ("fc", "fa"))
            assert pub(f"websocket.{company}.{agent}.agents", n) == count, (company, agent)
        # one final marker per admin, then read each admin up to its own marker
        markers = {}
        for i, (name, flt) in enumerate(ADMINS.items()):
            company = flt[0] if flt[0] not in ("", "*") else "mk"
            agent = flt[1] if flt[1] not in ("", "*") else "mk"
            markers[name] = 100 + i
            pub(f"websocket.{company}.{agent}.agents", 100 + i)
        for name, ws in admins.items():
            want = [n for n, c, a in published if matches(ADMINS[name], c, a)]
            want = want[: want.index(markers[name]) + 1]
            got: list[int] = []
            while not got or got[-1] != markers[name]:
                frame = await recv_json(ws)
                assert frame["type"] == "event" and frame["payload"]["event_type"] == "agent", (name, frame)
                got.append(frame["payload"]["n"])
            assert got == want, name
        # the user socket got its pair's events only
        got = [(await recv_json(user))["payload"]["n"] for _ in range(5)]
        assert got == [1, 2, 3, 4, 10]


async def test_admin_and_user_sockets_share_one_frame(server: ServerProcess) -> None:
    async with AsyncExitStack() as stack:
        adm = await open_admin(stack, server, "both-adm")
        user = await open_user(stack, server, "both", "a", "u")
        assert publish_ok(server, "websocket.both.a.agents", {"row_data": {"z": 1, "a": 2}}) == 2
        a, u = await recv_text(adm), await recv_text(user)
        assert a == u == '{"type":"event","payload":{"event_type":"agent","row_data":{"z":1,"a":2}}}'
