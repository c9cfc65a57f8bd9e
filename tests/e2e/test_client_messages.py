"""SPEC §3.4 (ready first), §4.2 (client messages on user sockets), §4.3 (admin sockets).

"Exactly one error frame" is checked by sending a `ready` right after the bad message:
the next two frames must be the error and then the ready echo, nothing in between.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.e2e.helpers import error_frame, eventually, metric, publish_ok, recv_json, recv_text
from tests.support import ServerProcess, http_request

INVALID_FORMAT = "Invalid message format"
UNHANDLED = "Unhandled message type"
VIOLATION = "chat_id must be 1-128 characters without ':', '.', '*', '>', whitespace or control characters."


async def opened(server: ServerProcess, company: str, user: str = "u", agent: str = "a") -> ClientConnection:
    ws = await connect(server.user_url(company, agent, user))
    assert await recv_text(ws) == '{"type":"ready"}'
    return ws


async def roundtrip(ws: ClientConnection) -> None:
    """Prove nothing else is queued: a ready echo comes back next."""
    await ws.send('{"type":"ready"}')
    assert await recv_text(ws) == '{"type":"ready"}'


async def expect_one_error(ws: ClientConnection, message: str, code: str = "BadRequest", details: str | None = None) -> None:
    frame = await recv_json(ws)
    assert frame["type"] == "error", frame
    payload = frame["payload"]
    assert payload["code"] == code and payload["message"] == message, frame
    if details is None:
        assert isinstance(payload["details"], str) and payload["details"], frame
    else:
        assert frame == error_frame(code, message, details)
    assert "id" not in frame and "id" not in payload
    await roundtrip(ws)


async def current_chat_gets(server: ServerProcess, ws: ClientConnection, company: str, chat: str) -> None:
    """A message event for `chat` reaches ws (and is the next frame)."""
    assert publish_ok(server, f"websocket.{company}.a.messages.{chat}", {"probe": chat}) >= 1
    assert await recv_json(ws) == {"type": "event", "payload": {"event_type": "message", "probe": chat}}


# --- §3.4 ready first --------------------------------------------------------------------------
async def test_ready_is_first_even_under_a_publish_storm(server: ServerProcess) -> None:
    stop = threading.Event()
    failures: list[object] = []

    def storm() -> None:
        while not stop.is_set():
            try:
                status, _, _ = http_request(
                    server.http + "/api/publish",
                    "POST",
                    b'{"subject":"websocket.storm.a.chats","payload":{"x":1}}',
                    {"X-API-Key": server.keys.admin_api},
                    timeout=5,
                )
            except OSError as exc:
                failures.append(exc)
                return
            if status != 200:
                failures.append(status)

    threads = [threading.Thread(target=storm, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(15):
            async with connect(server.user_url("storm", "a", f"u{i}")) as ws:
                assert await recv_text(ws) == '{"type":"ready"}'
                assert json.loads(await recv_text(ws))["type"] == "event"  # the storm does reach it
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not failures


# --- malformed messages: one error frame, socket stays -------------------------------------------
@pytest.mark.parametrize("text", ["{bad", "", " ", "{'type':'ready'}", '{"type":"ready"', "nul", '{"a":1}{"b":2}'])
async def test_invalid_json(server: ServerProcess, text: str) -> None:
    ws = await opened(server, "msg")
    try:
        await ws.send(text)
        await expect_one_error(ws, INVALID_FORMAT)
    finally:
        await ws.close()


@pytest.mark.parametrize("text", ["[1,2]", '"ready"', "42", "null", "true", "[]"])
async def test_not_an_object(server: ServerProcess, text: str) -> None:
    async with connect(server.user_url("msg", "a", "u")) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        await ws.send(text)
        await expect_one_error(ws, INVALID_FORMAT)


@pytest.mark.parametrize("type_value", ["1", "true", '["ready"]', '{"t":"ready"}', "1.5"])
async def test_type_not_a_string(server: ServerProcess, type_value: str) -> None:
    async with connect(server.user_url("msg", "a", "u")) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        await ws.send('{"type":' + type_value + "}")
        await expect_one_error(ws, INVALID_FORMAT)


@pytest.mark.parametrize(
    ("text", "details"),
    [
        ("{}", "Type: "),
        ('{"payload":{"chat_id":"x"}}', "Type: "),
        ('{"type":""}', "Type: "),
        ('{"type":"foo"}', "Type: foo"),
        ('{"type":"READY"}', "Type: READY"),
        ('{"type":"select-chat"}', "Type: select-chat"),
        ('{"type":"ack","id":1}', "Type: ack"),
        ('{"type":"\\u00e9 x"}', "Type: \u00e9 x"),
    ],
)
async def test_missing_or_unknown_type(server: ServerProcess, text: str, details: str) -> None:
    async with connect(server.user_url("msg", "a", "u")) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        await ws.send(text)
        await expect_one_error(ws, UNHANDLED, details=details)


async def test_many_errors_in_a_row_then_normal_service(server: ServerProcess) -> None:
    async with connect(server.user_url("msg2", "a", "u")) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        for text in ("{bad", "[]", '{"type":7}', '{"type":"nope"}') * 5:
            await ws.send(text)
        for _ in range(20):
            assert (await recv_json(ws))["type"] == "error"
        await roundtrip(ws)
        assert publish_ok(server, "websocket.msg2.a.chats", {"ok": True}) == 1
        assert await recv_json(ws) == {"type": "event", "payload": {"event_type": "chat", "ok": True}}


# --- ready echo ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sent", "echo"),
    [
        ('{"type":"ready"}', '{"type":"ready"}'),
        ('{"type":"ready","payload":null}', '{"type":"ready"}'),
        ('{"type":"ready","payload":{"x":1,"y":[true,null]}}', '{"type":"ready","payload":{"x":1,"y":[true,null]}}'),
        ('{"type":"ready","payload":"s"}', '{"type":"ready","payload":"s"}'),
        ('{"type":"ready","payload":0}', '{"type":"ready","payload":0}'),
        ('{"type":"ready","payload":false}', '{"type":"ready","payload":false}'),
        ('{"type":"ready","payload":[]}', '{"type":"ready","payload":[]}'),
        ('{"payload":{"a":1},"type":"ready","other":1}', '{"type":"ready","payload":{"a":1}}'),
    ],
)
async def test_ready_echo(server: ServerProcess, sent: str, echo: str) -> None:
    async with connect(server.user_url("rd", "a", "u")) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        await ws.send(sent)
        assert await recv_text(ws) == echo


# --- select_chat ------------------------------------------------------------------------------
async def test_select_chat_payload_form(server: ServerProcess) -> None:
    async with connect(server.user_url("sc1", "a", "u")) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        await ws.send('{"type":"select_chat","payload":{"chat_id":"c1"}}')
        await roundtrip(ws)  # success is silent
        await current_chat_gets(server, ws, "sc1", "c1")


async def test_select_chat_top_level_form(server: ServerProcess) -> None:
    async with connect(server.user_url("sc2", "a", "u")) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        await ws.send('{"type":"select_chat","chat_id":"c2"}')
        await roundtrip(ws)
        await current_chat_gets(server, ws, "sc2", "c2")


async def test_select_chat_payload_takes_precedence(server: ServerProcess) -> None:
    async with connect(server.user_url("sc3", "a", "u")) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        await ws.send('{"type":"select_chat","chat_id":"top","payload":{"chat_id":"inner"},"id":1}')
        assert await recv_text(ws) == '{"type":"ack","id":1}'
        assert publish_ok(server, "websocket.sc3.a.messages.top", {}) == 0
        await current_chat_gets(server, ws, "sc3", "inner")
        # a null payload does not count: the top-level chat_id is used
        await ws.send('{"type":"select_chat","chat_id":"top","payload":null,"id":2}')
        assert await recv_text(ws) == '{"type":"ack","id":2}'
        await current_chat_gets(server, ws, "sc3", "top")
        # a non-null payload without chat_id does not fall back to the top level
        await ws.send('{"type":"select_chat","chat_id":"other","payload":{},"id":3}')
        await expect_one_error(ws, "Invalid select_chat payload", details="chat_id is missing")
        await current_chat_gets(server, ws, "sc3", "top")


@pytest.mark.parametrize(
    ("text", "message", "details"),
    [
        ('{"type":"select_chat","payload":"c1"}', "Invalid select_chat payload structure", "Expected a JSON object"),
        ('{"type":"select_chat","payload":["c1"]}', "Invalid select_chat payload structure", "Expected a JSON object"),
        ('{"type":"select_chat","payload":5}', "Invalid select_chat payload structure", "Expected a JSON object"),
        ('{"type":"select_chat","payload":false}', "Invalid select_chat payload structure", "Expected a JSON object"),
        ('{"type":"select_chat"}', "Invalid select_chat payload", "chat_id is missing"),
        ('{"type":"select_chat","payload":{}}', "Invalid select_chat payload", "chat_id is missing"),
        ('{"type":"select_chat","payload":{"chat":"x"}}', "Invalid select_chat payload", "chat_id is missing"),
        ('{"type":"select_chat","chat_id":5}', "Invalid select_chat payload", "chat_id must be a non-empty string"),
        ('{"type":"select_chat","chat_id":""}', "Invalid select_chat payload", "chat_id must be a non-empty string"),
        ('{"type":"select_chat","payload":{"chat_id":true}}', "Invalid select_chat payload", "chat_id must be a non-empty string"),
        ('{"type":"select_chat","payload":{"chat_id":["x"]}}', "Invalid select_chat payload", "chat_id must be a non-empty string"),
        ('{"type":"select_chat","chat_id":"a.b"}', "Invalid select_chat payload", VIOLATION),
        ('{"type":"select_chat","chat_id":"a:b"}', "Invalid select_chat payload", VIOLATION),
        ('{"type":"select_chat","chat_id":"a b"}', "Invalid select_chat payload", VIOLATION),
        ('{"type":"select_chat","chat_id":"*"}', "Invalid select_chat payload", VIOLATION),
        ('{"type":"select_chat","chat_id":">"}', "Invalid select_chat payload", VIOLATION),
        ('{"type":"select_chat","chat_id":"a\\u0000"}', "Invalid select_chat payload", VIOLATION),
        ('{"type":"select_chat","payload":{"chat_id":"' + "x" * 129 + '"}}', "Invalid select_chat payload", VIOLATION),
    ],
)
async def test_select_chat_errors_leave_the_chat_unchanged(server: ServerProcess, text: str, message: str, details: str) -> None:
    async with connect(server.user_url("scerr", "a", "u")) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        await ws.send('{"type":"select_chat","chat_id":"keep","id":"k"}')
        assert await recv_text(ws) == '{"type":"ack","id":"k"}'
        # with an id: error frames never carry it, and no ack follows
        with_id = text[:-1] + ',"id":99}'
        await ws.send(with_id)
        await expect_one_error(ws, message, details=details)
        await current_chat_gets(server, ws, "scerr", "keep")


@pytest.mark.parametrize(
    ("id_json", "ack"),
    [
        ('"r1"', '{"type":"ack","id":"r1"}'),
        ('""', '{"type":"ack","id":""}'),
        ("7", '{"type":"ack","id":7}'),
        ("0", '{"type":"ack","id":0}'),
        ("-3", '{"type":"ack","id":-3}'),
        ("9007199254740993", '{"type":"ack","id":9007199254740993}'),
        ("7.5", '{"type":"ack","id":7.5}'),
    ],
)
async def test_ack_echoes_the_id(server: ServerProcess, id_json: str, ack: str) -> None:
    async with connect(server.user_url("ack", "a", "u")) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        await ws.send('{"type":"select_chat","chat_id":"c","id":' + id_json + "}")
        assert await recv_text(ws) == ack
        ack_obj: Any = json.loads(ack)
        if "." not in id_json:
            assert isinstance(ack_obj["id"], (str, int))  # integers stay integers


@pytest.mark.parametrize("id_json", [None, "null", "true", "{}", "[1]"])
async def test_no_ack_without_a_string_or_number_id(server: ServerProcess, id_json: str | None) -> None:
    async with connect(server.user_url("noack", "a", "u")) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        extra = "" if id_json is None else ',"id":' + id_json
        await ws.send('{"type":"select_chat","chat_id":"c"' + extra + "}")
        await roundtrip(ws)
        await current_chat_gets(server, ws, "noack", "c")


async def test_reselecting_the_current_chat(server: ServerProcess) -> None:
    async with connect(server.user_url("resel", "a", "u")) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        await ws.send('{"type":"select_chat","chat_id":"c","id":1}')
        assert await recv_text(ws) == '{"type":"ack","id":1}'
        await ws.send('{"type":"select_chat","chat_id":"c","id":2}')
        assert await recv_text(ws) == '{"type":"ack","id":2}'
        await ws.send('{"type":"select_chat","chat_id":"c"}')
        await roundtrip(ws)
        await current_chat_gets(server, ws, "resel", "c")
        assert publish_ok(server, "websocket.resel.a.messages.c", {}) == 1  # counted once


async def test_switching_chats_moves_the_subscription(server: ServerProcess) -> None:
    async with connect(server.user_url("sw", "a", "u")) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        await ws.send('{"type":"select_chat","chat_id":"one","id":1}')
        assert await recv_text(ws) == '{"type":"ack","id":1}'
        await ws.send('{"type":"select_chat","chat_id":"two","id":2}')
        assert await recv_text(ws) == '{"type":"ack","id":2}'
        assert publish_ok(server, "websocket.sw.a.messages.one", {}) == 0
        await current_chat_gets(server, ws, "sw", "two")


async def test_messages_are_handled_in_order(server: ServerProcess) -> None:
    """A burst of select_chats (asynchronous route work) keeps order with other messages."""
    async with connect(server.user_url("ord", "a", "u")) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        for i in range(10):
            await ws.send(json.dumps({"type": "select_chat", "chat_id": f"c{i}", "id": i}))
            await ws.send(json.dumps({"type": "ready", "payload": i}))
        for i in range(10):
            assert await recv_json(ws) == {"type": "ack", "id": i}
            assert await recv_json(ws) == {"type": "ready", "payload": i}
        await current_chat_gets(server, ws, "ord", "c9")


# --- frames -----------------------------------------------------------------------------------
async def test_binary_frames_are_ignored(server: ServerProcess) -> None:
    async with connect(server.user_url("bin", "a", "u")) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        await ws.send(b'{"type":"ready"}')
        await ws.send(b"\xff\x00")
        await ws.send([b"frag", b"mented"])  # a fragmented binary message, too
        await ws.send('{"type":"ready","payload":"after"}')
        assert await recv_text(ws) == '{"type":"ready","payload":"after"}'


async def test_fragmented_text_is_reassembled(server: ServerProcess) -> None:
    async with connect(server.user_url("frag", "a", "u")) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        await ws.send(['{"type":', '"select_chat",', '"chat_id":"fc",', '"id":"f"}'])
        assert await recv_text(ws) == '{"type":"ack","id":"f"}'
        await ws.send(["{bad", " json"])
        await expect_one_error(ws, INVALID_FORMAT)
        # a multi-byte character split across fragments
        await ws.send([b'{"type":"ready","payload":"\xc3', b'\xa9"}'], text=True)
        assert await recv_text(ws) == '{"type":"ready","payload":"\u00e9"}'


async def test_client_close_is_echoed(server: ServerProcess) -> None:
    active = metric(server, "dws_active_connections")
    ws = await connect(server.user_url("bye", "a", "u"))
    assert await recv_text(ws) == '{"type":"ready"}'
    assert metric(server, "dws_active_connections") == active + 1
    await asyncio.wait_for(ws.close(1000, "bye"), 5)
    assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1000
    assert await eventually(lambda: metric(server, "dws_active_connections") == active)
    assert publish_ok(server, "websocket.bye.a.chats", {}) == 0


async def test_client_pings_get_pongs(server: ServerProcess) -> None:
    async with connect(server.user_url("png", "a", "u")) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        waiter = await ws.ping(b"hello")
        await asyncio.wait_for(waiter, 5)


# --- §4.3 admin sockets ignore everything ----------------------------------------------------------
async def test_admin_client_messages_are_ignored(server: ServerProcess) -> None:
    async with connect(server.admin_url("quiet")) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        for text in ('{"type":"ready"}', "{bad", "[]", '{"type":"foo"}', '{"type":"select_chat","chat_id":"c","id":1}'):
            await ws.send(text)
        await ws.send(b"\x00binary")
        await ws.send(["frag", "mented"])
        assert publish_ok(server, "websocket.q.q.agents", {"n": 1}) == 1
        assert await recv_json(ws) == {"type": "event", "payload": {"event_type": "agent", "n": 1}}
