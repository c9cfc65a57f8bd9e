"""SPEC §1.7: POST /api/publish (embedded bus: synchronous, delivered_local counts)."""

from __future__ import annotations

import json

import pytest
from websockets.asyncio.client import connect

from tests.e2e.helpers import (
    UUID4,
    assert_json_error,
    post,
    publish,
    publish_ok,
    recv_json,
    recv_text,
)
from tests.support import ServerProcess

BAD_SUBJECT = "subject must be websocket.<company_id>.<agent_id>.<type>[.<chat_id>]"
NOT_OBJECT = "payload must be a JSON object."


def raw_publish(server: ServerProcess, body: bytes) -> tuple[int, dict[str, str], bytes]:
    return post(server, "/api/publish", body, server.keys.admin_api)


@pytest.mark.parametrize(
    "subject",
    [
        "",
        "websocket",
        "websocket.c.a",
        "websocket.c.a.",
        "ws.c.a.chats",
        "Websocket.c.a.chats",
        "websocket..a.chats",
        "websocket.c..chats",
        "websocket.c.a.messages",
        "websocket.c.a.messages.",
        "websocket.c.a.messages.x.y",
        "websocket.c.a.chats.extra",
        "websocket.c.a.agents.x",
        "websocket.c.a.ch*ts",
        "websocket.c.a.>",
        "websocket.c.a.*",
        "websocket.c.a.ch ts",
        "websocket.c.a.chats\t",
        "websocket.*.a.chats",
        "websocket.c.>.chats",
        "websocket.c:x.a.chats",
        "websocket.c x.a.chats",
        "websocket.c\x01.a.chats",
        "websocket.c.a.messages.a:b",
        "websocket.c.a.messages.a b",
        "websocket.c.a.messages.*",
        "websocket." + "x" * 129 + ".a.chats",
        " websocket.c.a.chats",
    ],
)
def test_bad_subjects(server: ServerProcess, subject: str) -> None:
    reply = publish(server, subject, {"a": 1})
    assert_json_error(reply, 400, "BadRequest", "Invalid payload", BAD_SUBJECT)


def test_missing_subject(server: ServerProcess) -> None:
    reply = raw_publish(server, b'{"payload":{}}')
    assert_json_error(reply, 400, "BadRequest", "Invalid payload", BAD_SUBJECT)


@pytest.mark.parametrize("subject", [1, True, ["websocket.c.a.chats"], {"s": 1}])
def test_subject_of_wrong_type(server: ServerProcess, subject: object) -> None:
    reply = raw_publish(server, json.dumps({"subject": subject, "payload": {}}).encode())
    assert_json_error(reply, 400, "BadRequest", "Invalid request payload")


@pytest.mark.parametrize("raw", [b"", b"nope", b"{", b"[]", b'"x"', b"1", b"null"])
def test_not_json_object(server: ServerProcess, raw: bytes) -> None:
    assert_json_error(raw_publish(server, raw), 400, "BadRequest", "Invalid request payload")


@pytest.mark.parametrize("payload", ["[1]", '"s"', "1", "1.5", "true", "null", "[]"])
def test_payload_not_an_object(server: ServerProcess, payload: str) -> None:
    body = b'{"subject":"websocket.c.a.chats","payload":' + payload.encode() + b"}"
    assert_json_error(raw_publish(server, body), 400, "BadRequest", "Invalid payload", NOT_OBJECT)


def test_payload_missing(server: ServerProcess) -> None:
    reply = raw_publish(server, b'{"subject":"websocket.c.a.chats"}')
    assert_json_error(reply, 400, "BadRequest", "Invalid payload", NOT_OBJECT)


@pytest.mark.parametrize(
    "subject",
    [
        "websocket.c.a.chats",
        "websocket.c.a.agents",
        "websocket.c.a.contacts",
        "websocket.c.a.messages.chat-1",
        "websocket.c.a.custom_type",
        "websocket.c.a.x-y",
        "websocket.\u00e9.a.chats",
        "websocket." + "x" * 128 + ".a.chats",
    ],
)
def test_good_subjects(server: ServerProcess, subject: str) -> None:
    status, headers, body = publish(server, subject, {"n": 1})
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    assert body == b'{"delivered_local":0}\n'


def test_request_id_echoed(server: ServerProcess) -> None:
    _, headers, _ = publish(server, "websocket.c.a.chats", {}, {"X-Request-ID": "pub-7"})
    assert headers["x-request-id"] == "pub-7"
    _, headers, _ = publish(server, "websocket.c.a.chats", {})
    assert UUID4.match(headers["x-request-id"])


def test_unknown_fields_ignored(server: ServerProcess) -> None:
    reply = raw_publish(server, b'{"subject":"websocket.c.a.chats","payload":{},"extra":[1,2]}')
    assert reply[0] == 200, reply[2]


async def test_delivered_local_counts(server: ServerProcess) -> None:
    s = server
    async with (
        connect(s.user_url("dc", "a", "u1")) as u1,
        connect(s.user_url("dc", "a", "u2")) as u2,
        connect(s.user_url("dc", "b", "u3")) as other_agent,
        connect(s.admin_url("all")) as adm_all,
        connect(s.admin_url("mine", "dc", "a")) as adm_mine,
        connect(s.admin_url("theirs", "zz")) as adm_theirs,
    ):
        for ws in (u1, u2, other_agent, adm_all, adm_mine, adm_theirs):
            assert await recv_text(ws) == '{"type":"ready"}'
        assert publish_ok(s, "websocket.dc.a.chats", {"n": 1}) == 2
        assert publish_ok(s, "websocket.dc.a.contacts", {"n": 2}) == 2
        assert publish_ok(s, "websocket.dc.a.agents", {"n": 3}) == 4  # 2 users + 2 matching admins
        assert publish_ok(s, "websocket.dc.a.messages.x", {"n": 4}) == 0  # nobody selected x
        await u1.send('{"type":"select_chat","chat_id":"x","id":1}')
        assert await recv_json(u1) == {"type": "event", "payload": {"event_type": "chat", "n": 1}}
        assert await recv_json(u1) == {"type": "event", "payload": {"event_type": "contact", "n": 2}}
        assert await recv_json(u1) == {"type": "event", "payload": {"event_type": "agent", "n": 3}}
        assert await recv_json(u1) == {"type": "ack", "id": 1}
        assert publish_ok(s, "websocket.dc.a.messages.x", {"n": 5}) == 1
        assert await recv_json(u1) == {"type": "event", "payload": {"event_type": "message", "n": 5}}
        assert publish_ok(s, "websocket.dc.nobody.chats", {}) == 0
        assert publish_ok(s, "websocket.zz.q.agents", {"n": 6}) == 2  # adm_all + adm_theirs
    # everyone gone: nothing is counted
    assert publish_ok(s, "websocket.dc.a.chats", {}) == 0


async def test_published_payload_is_unchanged(server: ServerProcess) -> None:
    """The payload goes out byte for byte: key order, spacing, number spelling, escapes."""
    payload = b'{ "z" : 1,"a":[1, 2 ,3],  "n":{"y":null,"b":1.50,"e":1E+2},"s":"\\u00e9\\n","big":123456789012345678901234567890 }'
    body = b'{"subject":"websocket.vb.a.chats","payload":' + payload + b"}"
    async with connect(server.user_url("vb", "a", "u")) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        status, _, out = raw_publish(server, body)
        assert status == 200, out
        frame = await recv_text(ws)
    assert frame == '{"type":"event","payload":{"event_type":"chat", "z" : 1,"a":[1, 2 ,3],  "n":{"y":null,"b":1.50,"e":1E+2},"s":"\\u00e9\\n","big":123456789012345678901234567890 }}'


async def test_published_payload_with_whitespace_around_and_event_type(server: ServerProcess) -> None:
    body = b'{"payload" : \n {"event_type":"custom","x":[ ]} \n, "subject":"websocket.vb2.a.messages.c1"}'
    async with connect(server.user_url("vb2", "a", "u")) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        await ws.send('{"type":"select_chat","chat_id":"c1","id":"s"}')
        assert await recv_text(ws) == '{"type":"ack","id":"s"}'
        status, _, out = raw_publish(server, body)
        assert status == 200 and out == b'{"delivered_local":1}\n', out
        assert await recv_text(ws) == '{"type":"event","payload":{"event_type":"custom","x":[ ]}}'
