"""SPEC §1.5 / §1.6: POST /generate-token and /admin/generate-token, every row."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from websockets.asyncio.client import connect

from daisi_ws.auth.tokens import TokenCipher, parse_aes_key
from tests.e2e.helpers import (
    admin_path,
    assert_json_error,
    post,
    publish_ok,
    recv_json,
    recv_text,
    ws_path,
)
from tests.support import ServerProcess

USER_REQUIRED = "company_id, agent_id, user_id, and positive expires_in_seconds are required."
ADMIN_REQUIRED = "admin_id and positive expires_in_seconds are required."
TOO_LARGE = "expires_in_seconds is too large."
RESERVED = "company_id 'admin' is reserved."


def violation(field: str) -> str:
    return f"{field} must be 1-128 characters without ':', '.', '*', '>', whitespace or control characters."


def user_body(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"company_id": "c1", "agent_id": "a1", "user_id": "u1", "expires_in_seconds": 3600}
    for k, v in over.items():
        if v is ...:
            body.pop(k)
        else:
            body[k] = v
    return body


def admin_body(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"admin_id": "adm1", "expires_in_seconds": 3600}
    for k, v in over.items():
        if v is ...:
            body.pop(k)
        else:
            body[k] = v
    return body


def mint_user(server: ServerProcess, body: Any) -> tuple[int, dict[str, str], bytes]:
    return post(server, "/generate-token", body, server.keys.api)


def mint_admin(server: ServerProcess, body: Any) -> tuple[int, dict[str, str], bytes]:
    return post(server, "/admin/generate-token", body, server.keys.admin_api)


def open_token(aes_hex: str, token: str) -> bytes:
    from daisi_ws.auth.tokens import TokenCipher

    return TokenCipher(parse_aes_key(aes_hex)).open(token)


# --- wrong JSON: "Invalid request payload" ------------------------------------------------------
BAD_JSON = [
    b"not json",
    b"",
    b"{",
    b"[]",
    b'"a string"',
    b"42",
    b"null",
]


@pytest.mark.parametrize("raw", BAD_JSON)
def test_user_not_a_json_object(server: ServerProcess, raw: bytes) -> None:
    assert_json_error(mint_user(server, raw), 400, "BadRequest", "Invalid request payload")


@pytest.mark.parametrize("raw", BAD_JSON)
def test_admin_not_a_json_object(server: ServerProcess, raw: bytes) -> None:
    assert_json_error(mint_admin(server, raw), 400, "BadRequest", "Invalid request payload")


@pytest.mark.parametrize(
    "over",
    [
        {"expires_in_seconds": 60.0},
        {"expires_in_seconds": 60.5},
        {"expires_in_seconds": 1e3},
        {"expires_in_seconds": True},
        {"expires_in_seconds": False},
        {"expires_in_seconds": "60"},
        {"expires_in_seconds": [60]},
        {"company_id": 1},
        {"agent_id": True},
        {"user_id": ["u"]},
        {"company_id": {"id": "c"}},
    ],
)
def test_user_wrong_json_types(server: ServerProcess, over: dict[str, Any]) -> None:
    assert_json_error(mint_user(server, user_body(**over)), 400, "BadRequest", "Invalid request payload")


@pytest.mark.parametrize(
    "over",
    [
        {"expires_in_seconds": 60.0},
        {"expires_in_seconds": True},
        {"expires_in_seconds": "60"},
        {"admin_id": 7},
        {"subscribed_company_id": 1},
        {"subscribed_agent_id": False},
        {"company_id_restriction": ["x"]},
    ],
)
def test_admin_wrong_json_types(server: ServerProcess, over: dict[str, Any]) -> None:
    assert_json_error(mint_admin(server, admin_body(**over)), 400, "BadRequest", "Invalid request payload")


# --- missing / empty / null / non-positive: "Invalid payload" + required text --------------------
@pytest.mark.parametrize(
    "over",
    [
        {"company_id": ...},
        {"agent_id": ...},
        {"user_id": ...},
        {"expires_in_seconds": ...},
        {"company_id": ""},
        {"agent_id": ""},
        {"user_id": ""},
        {"company_id": None},
        {"agent_id": None},
        {"user_id": None},
        {"expires_in_seconds": None},
        {"expires_in_seconds": 0},
        {"expires_in_seconds": -1},
        {"expires_in_seconds": -(10**12)},
    ],
)
def test_user_required_fields(server: ServerProcess, over: dict[str, Any]) -> None:
    assert_json_error(mint_user(server, user_body(**over)), 400, "BadRequest", "Invalid payload", USER_REQUIRED)


def test_user_empty_object(server: ServerProcess) -> None:
    assert_json_error(mint_user(server, b"{}"), 400, "BadRequest", "Invalid payload", USER_REQUIRED)


@pytest.mark.parametrize(
    "over",
    [
        {"admin_id": ...},
        {"admin_id": ""},
        {"admin_id": None},
        {"expires_in_seconds": ...},
        {"expires_in_seconds": None},
        {"expires_in_seconds": 0},
        {"expires_in_seconds": -5},
    ],
)
def test_admin_required_fields(server: ServerProcess, over: dict[str, Any]) -> None:
    assert_json_error(mint_admin(server, admin_body(**over)), 400, "BadRequest", "Invalid payload", ADMIN_REQUIRED)


# --- §0.1 violations -----------------------------------------------------------------------------
BAD_IDS = ["a:b", "a.b", "a*b", "a>b", "a b", "a\tb", "\u00a0x", "a\u2028b", "a\x01b", "a\x7fb", "x" * 129]


@pytest.mark.parametrize("bad", BAD_IDS)
@pytest.mark.parametrize("field", ["company_id", "agent_id", "user_id"])
def test_user_id_rules(server: ServerProcess, field: str, bad: str) -> None:
    reply = mint_user(server, user_body(**{field: bad}))
    assert_json_error(reply, 400, "BadRequest", "Invalid payload", violation(field))


def test_user_admin_company_is_reserved(server: ServerProcess) -> None:
    assert_json_error(mint_user(server, user_body(company_id="admin")), 400, "BadRequest", "Invalid payload", RESERVED)


def test_user_longest_and_unicode_ids_are_fine(server: ServerProcess) -> None:
    status, _, body = mint_user(server, user_body(company_id="x" * 128, agent_id="\u00e9-\u4e2d", user_id="u/1@x"))
    assert status == 200, body


@pytest.mark.parametrize("bad", ["a:b", "a.b", "a b", "a\x00b", "x" * 129])
def test_admin_id_rules(server: ServerProcess, bad: str) -> None:
    reply = mint_admin(server, admin_body(admin_id=bad))
    assert_json_error(reply, 400, "BadRequest", "Invalid payload", violation("admin_id"))


@pytest.mark.parametrize("field", ["subscribed_company_id", "subscribed_agent_id", "company_id_restriction"])
@pytest.mark.parametrize("bad", ["a.b", "a*", "**", "a b", "x" * 129])
def test_admin_optional_field_rules(server: ServerProcess, field: str, bad: str) -> None:
    reply = mint_admin(server, admin_body(**{field: bad}))
    assert_json_error(reply, 400, "BadRequest", "Invalid payload", violation(field))


# --- expiry too large -----------------------------------------------------------------------------
@pytest.mark.parametrize("seconds", [10**12, 2**63 - 1])
def test_user_expiry_too_large(server: ServerProcess, seconds: int) -> None:
    reply = mint_user(server, json.dumps(user_body(expires_in_seconds=seconds)).encode())
    assert_json_error(reply, 400, "BadRequest", "Invalid payload", TOO_LARGE)


def test_admin_expiry_too_large(server: ServerProcess) -> None:
    assert_json_error(mint_admin(server, admin_body(expires_in_seconds=10**12)), 400, "BadRequest", "Invalid payload", TOO_LARGE)


def test_expiry_up_to_year_9999_is_fine(server: ServerProcess) -> None:
    now = datetime.now(timezone.utc)
    seconds = int((datetime(9999, 12, 1, tzinfo=timezone.utc) - now).total_seconds())
    status, _, body = mint_user(server, user_body(expires_in_seconds=seconds))
    assert status == 200, body
    claims = json.loads(open_token(server.keys.aes, json.loads(body)["token"]))
    assert claims["expires_at"].startswith("9999-11-30T") or claims["expires_at"].startswith("9999-12-01T")


# --- success -----------------------------------------------------------------------------------
def test_user_token_contents(server: ServerProcess) -> None:
    before = datetime.now(timezone.utc).replace(microsecond=0)
    status, headers, body = mint_user(server, user_body(expires_in_seconds=120))
    after = datetime.now(timezone.utc)
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert re.fullmatch(rb'\{"token":"[A-Za-z0-9_=-]+"\}\n', body), body
    token = json.loads(body)["token"]
    plain = open_token(server.keys.aes, token)
    claims = json.loads(plain)
    assert list(claims) == ["company_id", "agent_id", "user_id", "expires_at"]
    assert claims["company_id"] == "c1" and claims["agent_id"] == "a1" and claims["user_id"] == "u1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d*[1-9])?Z", claims["expires_at"])
    expires = datetime.fromisoformat(claims["expires_at"].replace("Z", "+00:00"))
    assert before + timedelta(seconds=120) <= expires <= after + timedelta(seconds=120)
    # compact JSON, not re-indented
    assert b" " not in plain


def test_unknown_fields_are_ignored(server: ServerProcess) -> None:
    status, _, body = mint_user(server, user_body(extra=1, nested={"a": [1]}, role="x"))
    assert status == 200, body
    status, _, body = mint_admin(server, admin_body(extra=None, something="else"))
    assert status == 200, body


def test_admin_token_leaves_out_empty_optional_fields(server: ServerProcess) -> None:
    status, _, body = mint_admin(server, admin_body(subscribed_company_id="", subscribed_agent_id="", company_id_restriction=""))
    assert status == 200, body
    claims = json.loads(open_token(server.keys.admin_aes, json.loads(body)["token"]))
    assert list(claims) == ["admin_id", "expires_at"]
    assert claims["admin_id"] == "adm1"


def test_admin_token_carries_optional_fields(server: ServerProcess) -> None:
    body = admin_body(subscribed_company_id="c1", subscribed_agent_id="*", company_id_restriction="c1")
    status, _, out = mint_admin(server, body)
    assert status == 200, out
    claims = json.loads(open_token(server.keys.admin_aes, json.loads(out)["token"]))
    assert list(claims) == ["admin_id", "company_id_restriction", "subscribed_company_id", "subscribed_agent_id", "expires_at"]
    assert claims["subscribed_company_id"] == "c1"
    assert claims["subscribed_agent_id"] == "*"
    assert claims["company_id_restriction"] == "c1"


def test_tokens_use_their_own_keys(server: ServerProcess) -> None:
    """A user token is sealed with the user key, an admin token with the admin key."""
    from daisi_ws.auth.tokens import TokenInvalid

    user_token = json.loads(mint_user(server, user_body())[2])["token"]
    admin_token = json.loads(mint_admin(server, admin_body())[2])["token"]
    with pytest.raises(TokenInvalid):
        TokenCipher(parse_aes_key(server.keys.admin_aes)).open(user_token)
    with pytest.raises(TokenInvalid):
        TokenCipher(parse_aes_key(server.keys.aes)).open(admin_token)


async def test_minted_user_token_connects(server: ServerProcess) -> None:
    token = json.loads(mint_user(server, user_body(company_id="mc", agent_id="ma", user_id="mu"))[2])["token"]
    async with connect(server.ws + ws_path("mc", "ma", token, server.keys.api)) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        assert publish_ok(server, "websocket.mc.ma.chats", {"k": 1}) == 1
        assert await recv_json(ws) == {"type": "event", "payload": {"event_type": "chat", "k": 1}}


async def test_minted_admin_token_connects(server: ServerProcess) -> None:
    body = admin_body(admin_id="madm", subscribed_company_id="mc2")
    token = json.loads(mint_admin(server, body)[2])["token"]
    async with connect(server.ws + admin_path(token, server.keys.admin_api)) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        assert publish_ok(server, "websocket.mc2.any.agents", {"k": 2}) == 1
        assert await recv_json(ws) == {"type": "event", "payload": {"event_type": "agent", "k": 2}}
