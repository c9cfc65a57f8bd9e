"""SPEC §2.3: HS256 JWTs at connect when auth.jwt_secret is set (AES tokens keep working)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import jwt
import pytest
from websockets.asyncio.client import connect

from tests.e2e.helpers import (
    admin_path,
    assert_json_error,
    publish_ok,
    recv_json,
    recv_text,
    ws_path,
)
from tests.support import ServerProcess, http_request

SECRET = "e2e-jwt-secret-" * 5  # >= 64 bytes: no key-length warnings, even for HS512
OTHER = "other-jwt-secret-" * 4
USER_INVALID = ("InvalidToken", "Company token is invalid or malformed.", "Token format or content error.")
ADMIN_INVALID = ("InvalidToken", "Admin token is invalid or malformed.", "Token format or content error.")


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    proc = ServerProcess(env={"DAISI_WS_AUTH_JWT_SECRET": SECRET}).start()
    try:
        yield proc
    finally:
        proc.stop(10)
        proc.kill()


def user_jwt(claims: dict[str, Any], secret: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode({"exp": int(time.time()) + 3600, **claims}, secret, algorithm=alg)


def get_user(server: ServerProcess, company: str, agent: str, token: str) -> tuple[int, dict[str, str], bytes]:
    return http_request(server.http + ws_path(company, agent, token, server.keys.api))


async def test_user_jwt_connects(server: ServerProcess) -> None:
    token = user_jwt({"company_id": "jc", "agent_id": "ja", "user_id": "ju"})
    async with connect(server.ws + ws_path("jc", "ja", token, server.keys.api)) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        assert publish_ok(server, "websocket.jc.ja.chats", {"n": 1}) == 1
        assert await recv_json(ws) == {"type": "event", "payload": {"event_type": "chat", "n": 1}}


async def test_sub_is_the_user_id_fallback(server: ServerProcess) -> None:
    token = user_jwt({"company_id": "js", "agent_id": "ja", "sub": "subject-user"})
    async with connect(server.ws + ws_path("js", "ja", token, server.keys.api)) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        # same user by AES token: a takeover proves the JWT session was subject-user's
        async with connect(server.user_url("js", "ja", "subject-user")) as again:
            assert await recv_text(again) == '{"type":"ready"}'
            assert (await recv_json(ws))["payload"]["code"] == "SessionConflict"


async def test_aes_tokens_still_work(server: ServerProcess) -> None:
    async with connect(server.user_url("jaes", "a", "u")) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'


def test_expired_jwt(server: ServerProcess) -> None:
    exp = int(datetime(2021, 3, 4, 5, 6, 7, tzinfo=timezone.utc).timestamp())
    token = user_jwt({"company_id": "c", "agent_id": "a", "user_id": "u", "exp": exp})
    reply = get_user(server, "c", "a", token)
    assert_json_error(reply, 403, "InvalidToken", "Company token has expired.", "token has expired: token expired at 2021-03-04 05:06:07 +0000 UTC")


@pytest.mark.parametrize(
    "case",
    ["wrong-secret", "alg-none", "hs512", "no-exp", "string-exp", "future-nbf", "missing-agent", "bad-id", "garbage"],
)
def test_invalid_jwts(server: ServerProcess, case: str) -> None:
    base = {"company_id": "c", "agent_id": "a", "user_id": "u"}
    token = {
        "wrong-secret": lambda: user_jwt(base, secret=OTHER),
        "alg-none": lambda: jwt.encode({"exp": int(time.time()) + 60, **base}, None, algorithm="none"),
        "hs512": lambda: user_jwt(base, alg="HS512"),
        "no-exp": lambda: jwt.encode(base, SECRET, algorithm="HS256"),
        "string-exp": lambda: jwt.encode({**base, "exp": "tomorrow"}, SECRET, algorithm="HS256"),
        "future-nbf": lambda: user_jwt({**base, "nbf": int(time.time()) + 600}),
        "missing-agent": lambda: user_jwt({"company_id": "c", "user_id": "u"}),
        "bad-id": lambda: user_jwt({**base, "user_id": "u u"}),
        "garbage": lambda: "aaa.bbb.ccc",
    }[case]()
    assert_json_error(get_user(server, "c", "a", token), 403, *USER_INVALID)


def test_jwt_path_must_match_claims(server: ServerProcess) -> None:
    token = user_jwt({"company_id": "c", "agent_id": "a", "user_id": "u"})
    assert_json_error(
        get_user(server, "c", "other", token),
        403,
        "InvalidToken",
        "Token does not match the requested company or agent.",
        "Path company/agent must equal the token's company_id and agent_id.",
    )


async def test_admin_jwt(server: ServerProcess) -> None:
    token = jwt.encode({"admin_id": "jadm", "subscribed_company_id": "jco", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    async with connect(server.ws + admin_path(token, server.keys.admin_api)) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        assert publish_ok(server, "websocket.zz.a.agents", {}) == 0
        assert publish_ok(server, "websocket.jco.a.agents", {"n": 1}) == 1
        assert await recv_json(ws) == {"type": "event", "payload": {"event_type": "agent", "n": 1}}
    bad = jwt.encode({"admin_id": "jadm", "exp": int(time.time()) + 60}, OTHER, algorithm="HS256")
    assert_json_error(http_request(server.http + admin_path(bad, server.keys.admin_api)), 403, *ADMIN_INVALID)
