"""SPEC §2.4, §2.5, §3.1-§3.3: token errors at connect, check order, Origin, sub-protocol,
handshake errors."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from daisi_ws.auth.tokens import TokenCipher, mint_admin_token, mint_user_token, parse_aes_key
from tests.e2e.helpers import (
    RawWS,
    admin_path,
    assert_json_error,
    publish_ok,
    raw_request,
    recv_json,
    recv_text,
    ws_path,
)
from tests.support import Keys, ServerProcess, http_request

UTC = timezone.utc
ORIGINS = "https://app.example.com, https://Other.Example"

USER_MISSING = ("InvalidToken", "Company token is required", "Provide 'token' in query parameter.")
USER_INVALID = ("InvalidToken", "Company token is invalid or malformed.", "Token format or content error.")
ADMIN_MISSING = ("InvalidToken", "Admin token is required", "Provide 'token' in query parameter.")
ADMIN_INVALID = ("InvalidToken", "Admin token is invalid or malformed.", "Token format or content error.")
MISMATCH = (
    "InvalidToken",
    "Token does not match the requested company or agent.",
    "Path company/agent must equal the token's company_id and agent_id.",
)
ORIGIN_DENIED = ("E4003", "Origin not allowed", "The request Origin is not in the allowed list.")
WRONG_KEY = ("InvalidAPIKey", "Invalid API key", "The provided API key is not valid.")


@pytest.fixture(scope="module")
def origin_server() -> Iterator[ServerProcess]:
    proc = ServerProcess(env={"DAISI_WS_APP_ALLOWED_ORIGINS": ORIGINS}).start()
    try:
        yield proc
    finally:
        proc.stop(10)
        proc.kill()


def user_cipher(server: ServerProcess) -> TokenCipher:
    return TokenCipher(parse_aes_key(server.keys.aes))


def admin_cipher(server: ServerProcess) -> TokenCipher:
    return TokenCipher(parse_aes_key(server.keys.admin_aes))


def get_user(server: ServerProcess, company: str, agent: str, token: str | None, key: str | None = "", headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    k = server.keys.api if key == "" else key
    return http_request(server.http + ws_path(company, agent, token, k), headers=headers)


def get_admin(server: ServerProcess, token: str | None, key: str | None = "", headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    k = server.keys.admin_api if key == "" else key
    return http_request(server.http + admin_path(token, k), headers=headers)


# --- §2.4 user token errors --------------------------------------------------------------------
def test_user_token_missing(server: ServerProcess) -> None:
    assert_json_error(get_user(server, "c", "a", None), 403, *USER_MISSING)
    assert_json_error(get_user(server, "c", "a", ""), 403, *USER_MISSING)


@pytest.mark.parametrize(
    ("expires", "shown"),
    [
        (datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC), "2020-01-02 03:04:05 +0000 UTC"),
        (datetime(2021, 6, 7, 8, 9, 10, 500000, tzinfo=UTC), "2021-06-07 08:09:10.5 +0000 UTC"),
        (datetime(2021, 6, 7, 8, 9, 10, 123450, tzinfo=UTC), "2021-06-07 08:09:10.12345 +0000 UTC"),
    ],
)
def test_user_token_expired(server: ServerProcess, expires: datetime, shown: str) -> None:
    token = mint_user_token(user_cipher(server), "c", "a", "u", expires)
    reply = get_user(server, "c", "a", token)
    assert_json_error(reply, 403, "InvalidToken", "Company token has expired.", f"token has expired: token expired at {shown}")


def test_user_token_just_expired(server: ServerProcess) -> None:
    expires = (datetime.now(UTC) - timedelta(seconds=2)).replace(microsecond=0)
    token = mint_user_token(user_cipher(server), "c", "a", "u", expires)
    shown = expires.strftime("%Y-%m-%d %H:%M:%S +0000 UTC")
    assert_json_error(get_user(server, "c", "a", token), 403, "InvalidToken", "Company token has expired.", f"token has expired: token expired at {shown}")


def padded_token(cipher: TokenCipher) -> str:
    """A valid token whose base64 ends in '=' (its length depends on the claims)."""
    expires = datetime(2099, 1, 1, tzinfo=UTC)
    for user in ("u", "uu", "uuu"):
        token = mint_user_token(cipher, "c", "a", user, expires)
        if token.endswith("="):
            return token
    raise AssertionError("unreachable: one of three lengths needs padding")


def bad_user_tokens(server: ServerProcess) -> dict[str, str]:
    c = user_cipher(server)
    good = server.keys.user_token("c", "a", "u")
    future = "2099-01-01T00:00:00Z"
    return {
        "garbage": "not-a-token",
        "jwt-shaped": "a.b.c",
        "too-short": base64.urlsafe_b64encode(b"x" * 27).decode(),
        "unpadded": padded_token(c).rstrip("="),
        "std-alphabet": good.replace("-", "+").replace("_", "/") if ("-" in good or "_" in good) else good + "+",
        "tampered": good[:20] + ("A" if good[20] != "A" else "B") + good[21:],
        "wrong-key": Keys().user_token("c", "a", "u"),
        "admin-token": server.keys.admin_token("adm"),
        "not-object": c.seal(b'["c","a","u"]'),
        "not-json": c.seal(b"company_id=c"),
        "missing-user": c.seal(json.dumps({"company_id": "c", "agent_id": "a", "expires_at": future}).encode()),
        "missing-expiry": c.seal(json.dumps({"company_id": "c", "agent_id": "a", "user_id": "u"}).encode()),
        "zero-expiry": c.seal(json.dumps({"company_id": "c", "agent_id": "a", "user_id": "u", "expires_at": "0001-01-01T00:00:00Z"}).encode()),
        "bad-expiry": c.seal(json.dumps({"company_id": "c", "agent_id": "a", "user_id": "u", "expires_at": "2099-01-01 00:00:00"}).encode()),
        "int-user": c.seal(json.dumps({"company_id": "c", "agent_id": "a", "user_id": 5, "expires_at": future}).encode()),
        "null-user": c.seal(json.dumps({"company_id": "c", "agent_id": "a", "user_id": None, "expires_at": future}).encode()),
        "empty-user": c.seal(json.dumps({"company_id": "c", "agent_id": "a", "user_id": "", "expires_at": future}).encode()),
        "id-rule": c.seal(json.dumps({"company_id": "c", "agent_id": "a", "user_id": "u:1", "expires_at": future}).encode()),
        "reserved": c.seal(json.dumps({"company_id": "admin", "agent_id": "a", "user_id": "u", "expires_at": future}).encode()),
    }


BAD_USER = [
    "garbage", "jwt-shaped", "too-short", "unpadded", "std-alphabet", "tampered", "wrong-key", "admin-token",
    "not-object", "not-json", "missing-user", "missing-expiry", "zero-expiry", "bad-expiry", "int-user",
    "null-user", "empty-user", "id-rule", "reserved",
]


@pytest.mark.parametrize("case", BAD_USER)
def test_user_token_invalid(server: ServerProcess, case: str) -> None:
    token = bad_user_tokens(server)[case]
    reply = get_user(server, "c", "a", token)
    assert_json_error(reply, 403, *USER_INVALID)


def test_claim_names_are_case_insensitive(server: ServerProcess) -> None:
    token = user_cipher(server).seal(
        json.dumps({"Company_ID": "c", "AGENT_ID": "a", "user_id": "u", "Expires_At": "2099-01-01T00:00:00Z"}).encode()
    )
    assert get_user(server, "c", "a", token)[0] == 426  # valid: only the handshake is missing


@pytest.mark.parametrize(("company", "agent"), [("c1", "a2"), ("c2", "a1"), ("C1", "a1"), ("c1", "A1"), ("c1 ", "a1"), ("a1", "c1")])
def test_path_must_equal_claims(server: ServerProcess, company: str, agent: str) -> None:
    token = server.keys.user_token("c1", "a1", "u1")
    assert_json_error(get_user(server, company, agent, token), 403, *MISMATCH)


async def test_query_user_parameter_is_ignored(server: ServerProcess) -> None:
    url = server.user_url("qu", "a", "real") + "&user=someone-else"
    async with connect(url) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        async with connect(server.user_url("qu", "a", "someone-else")) as other:
            assert await recv_text(other) == '{"type":"ready"}'
            # both stay: different users, so no takeover happened
            assert publish_ok(server, "websocket.qu.a.chats", {}) == 2
            assert (await recv_json(ws))["type"] == "event"
            assert (await recv_json(other))["type"] == "event"


async def test_token_errors_reach_a_real_websocket_client(server: ServerProcess) -> None:
    token = mint_user_token(user_cipher(server), "c", "a", "u", datetime(2020, 1, 1, tzinfo=UTC))
    with pytest.raises(InvalidStatus) as info:
        async with connect(server.ws + ws_path("c", "a", token, server.keys.api)):
            pass
    response = info.value.response
    assert response.status_code == 403
    assert response.headers["Content-Type"] == "application/json"
    assert json.loads(response.body)["message"] == "Company token has expired."


# --- §2.4 admin wording ------------------------------------------------------------------------
def test_admin_token_missing(server: ServerProcess) -> None:
    assert_json_error(get_admin(server, None), 403, *ADMIN_MISSING)
    assert_json_error(get_admin(server, ""), 403, *ADMIN_MISSING)


def test_admin_token_expired(server: ServerProcess) -> None:
    token = mint_admin_token(admin_cipher(server), "adm", datetime(2020, 1, 2, 3, 4, 5, 250000, tzinfo=UTC))
    assert_json_error(
        get_admin(server, token),
        403,
        "InvalidToken",
        "Admin token has expired.",
        "token has expired: admin token expired at 2020-01-02 03:04:05.25 +0000 UTC",
    )


@pytest.mark.parametrize("case", ["garbage", "wrong-key", "user-token", "bad-filter", "int-admin", "not-object"])
def test_admin_token_invalid(server: ServerProcess, case: str) -> None:
    c = admin_cipher(server)
    future = "2099-01-01T00:00:00Z"
    token = {
        "garbage": "!!!",
        "wrong-key": Keys().admin_token("adm"),
        "user-token": server.keys.user_token("c", "a", "u"),
        "bad-filter": c.seal(json.dumps({"admin_id": "adm", "subscribed_company_id": "a.b", "expires_at": future}).encode()),
        "int-admin": c.seal(json.dumps({"admin_id": 1, "expires_at": future}).encode()),
        "not-object": c.seal(b"null"),
    }[case]
    assert_json_error(get_admin(server, token), 403, *ADMIN_INVALID)


# --- §3.1 order of checks ----------------------------------------------------------------------
def test_order_path_before_everything(server: ServerProcess) -> None:
    status, _, body = http_request(server.http + "/ws/a/b/c?token=x&x-api-key=nope", "POST", b"")
    assert status == 404 and body == b"404 page not found\n"


def test_order_method_before_key(server: ServerProcess) -> None:
    status, headers, _ = http_request(server.http + "/ws/c/a?token=x&x-api-key=nope", "POST", b"")
    assert status == 405 and headers["allow"] == "GET"


def test_order_key_before_token(server: ServerProcess) -> None:
    assert_json_error(get_user(server, "c", "a", "garbage", key="nope"), 401, *WRONG_KEY)
    assert_json_error(
        get_user(server, "c", "a", None, key=None),
        401,
        "InvalidAPIKey",
        "API key is required",
        "Provide API key in X-API-Key header or x-api-key query parameter.",
    )
    assert_json_error(get_admin(server, "garbage", key="nope"), 403, "E4003", "Invalid admin API key", "The provided admin API key is not valid.")


def test_order_key_before_path_mismatch(server: ServerProcess) -> None:
    token = server.keys.user_token("c1", "a1", "u")
    assert_json_error(get_user(server, "c2", "a1", token, key="nope"), 401, *WRONG_KEY)


def test_order_token_before_origin(origin_server: ServerProcess) -> None:
    evil = {"Origin": "https://evil.example"}
    assert_json_error(get_user(origin_server, "c", "a", "garbage", headers=evil), 403, *USER_INVALID)
    assert_json_error(get_admin(origin_server, None, headers=evil), 403, *ADMIN_MISSING)


def test_order_path_mismatch_before_origin(origin_server: ServerProcess) -> None:
    token = origin_server.keys.user_token("c1", "a1", "u")
    reply = get_user(origin_server, "c1", "zz", token, headers={"Origin": "https://evil.example"})
    assert_json_error(reply, 403, *MISMATCH)


def test_order_origin_before_handshake(origin_server: ServerProcess) -> None:
    # no Upgrade/Connection/Sec-WebSocket-* headers at all: the Origin error wins
    token = origin_server.keys.user_token("c", "a", "u")
    reply = get_user(origin_server, "c", "a", token, headers={"Origin": "https://evil.example"})
    assert_json_error(reply, 403, *ORIGIN_DENIED)
    reply = get_admin(origin_server, origin_server.keys.admin_token("adm"), headers={"Origin": "https://evil.example"})
    assert_json_error(reply, 403, *ORIGIN_DENIED)


def test_order_handshake_after_everything(server: ServerProcess) -> None:
    token = server.keys.user_token("c", "a", "u")
    status, headers, body = get_user(server, "c", "a", token)
    assert status == 426
    assert headers["upgrade"].lower() == "websocket"
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert headers["x-request-id"]
    assert body


# --- §3.2 Origin ---------------------------------------------------------------------------------
@pytest.mark.parametrize("origin", ["https://app.example.com", "HTTPS://APP.EXAMPLE.COM", "https://other.example", "https://OTHER.example"])
async def test_allowed_origins_case_insensitive(origin_server: ServerProcess, origin: str) -> None:
    async with connect(origin_server.user_url("o", "a", "u"), origin=origin) as ws:  # type: ignore[arg-type]
        assert await recv_text(ws) == '{"type":"ready"}'


async def test_missing_origin_passes(origin_server: ServerProcess) -> None:
    async with connect(origin_server.user_url("o", "a", "u2")) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
    async with connect(origin_server.admin_url("adm-o")) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'


@pytest.mark.parametrize(
    "origin",
    ["https://evil.example", "https://app.example.com.evil", "http://app.example.com", "https://app.example.com:443", "null", "*"],
)
async def test_other_origins_rejected(origin_server: ServerProcess, origin: str) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with connect(origin_server.user_url("o", "a", "u3"), origin=origin):  # type: ignore[arg-type]
            pass
    assert info.value.response.status_code == 403
    assert json.loads(info.value.response.body) == dict(zip(("code", "message", "details"), ORIGIN_DENIED, strict=True))


async def test_any_origin_when_list_is_empty(server: ServerProcess) -> None:
    async with connect(server.user_url("o", "a", "u"), origin="https://anything.example") as ws:  # type: ignore[arg-type]
        assert await recv_text(ws) == '{"type":"ready"}'


# --- §3.3 sub-protocol ----------------------------------------------------------------------------
@pytest.mark.parametrize("offered", [["json.v1"], ["chat", "json.v1"], ["json.v1", "chat"]])
async def test_json_v1_selected(server: ServerProcess, offered: list[str]) -> None:
    async with connect(server.user_url("sp", "a", "u"), subprotocols=offered) as ws:  # type: ignore[arg-type]
        assert ws.subprotocol == "json.v1"
        assert ws.response.headers["Sec-WebSocket-Protocol"] == "json.v1"
        assert await recv_text(ws) == '{"type":"ready"}'


@pytest.mark.parametrize("offered", [None, ["chat"], ["json.v2", "JSON.V1"]])
def test_other_protocols_accepted_without_header(server: ServerProcess, offered: list[str] | None) -> None:
    headers = {"Sec-WebSocket-Protocol": ", ".join(offered)} if offered else {}
    with RawWS(server.port, ws_path("sp", "a", server.keys.user_token("sp", "a", "u2"), server.keys.api), headers) as ws:
        assert ws.status == 101
        assert "sec-websocket-protocol" not in ws.headers
        assert ws.recv_json() == {"type": "ready"}


def test_no_compression_when_disabled(server: ServerProcess) -> None:
    headers = {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}
    with RawWS(server.port, ws_path("nc", "a", server.keys.user_token("nc", "a", "u"), server.keys.api), headers) as ws:
        assert ws.status == 101
        assert "sec-websocket-extensions" not in ws.headers


# --- §3.1 step 7: handshake errors ------------------------------------------------------------------
def handshake(server: ServerProcess, lines: list[str], version: str = "HTTP/1.1", company: str = "hs") -> tuple[int, dict[str, str], bytes]:
    token = server.keys.user_token(company, "a", "u")
    path = ws_path(company, "a", token, server.keys.api)
    request = f"GET {path} {version}\r\nHost: 127.0.0.1\r\n" + "".join(line + "\r\n" for line in lines) + "\r\n"
    return raw_request(server.port, request.encode())


KEY = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="
GOOD = ["Upgrade: websocket", "Connection: Upgrade", KEY, "Sec-WebSocket-Version: 13"]


def without(prefix: str) -> list[str]:
    return [line for line in GOOD if not line.startswith(prefix)]


def test_good_raw_handshake(server: ServerProcess) -> None:
    status, headers, _ = handshake(server, GOOD)
    assert status == 101
    assert headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize(
    "lines",
    [
        [*without("Connection:"), "Connection: keep-alive, Upgrade"],  # Firefox
        [*without("Upgrade:"), "Upgrade: WebSocket"],
        [*without("Connection:"), "Connection: upgrade"],
    ],
    ids=["keep-alive-upgrade", "mixed-case-upgrade", "lower-case-connection"],
)
def test_browser_handshake_variants(server: ServerProcess, lines: list[str]) -> None:
    assert handshake(server, lines)[0] == 101


@pytest.mark.parametrize(
    "lines",
    [
        without("Upgrade:"),
        [*without("Upgrade:"), "Upgrade: h2c"],
        without("Connection:"),
        [*without("Connection:"), "Connection: keep-alive"],
    ],
    ids=["no-upgrade", "upgrade-h2c", "no-connection", "connection-keep-alive"],
)
def test_bad_upgrade_is_426(server: ServerProcess, lines: list[str]) -> None:
    status, headers, body = handshake(server, lines)
    assert status == 426
    assert headers["upgrade"].lower() == "websocket"
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert headers["x-request-id"]
    assert body


@pytest.mark.parametrize("version", ["8", "12", "14", "abc"])
def test_bad_version_is_400_with_version_header(server: ServerProcess, version: str) -> None:
    status, headers, body = handshake(server, [*without("Sec-WebSocket-Version:"), f"Sec-WebSocket-Version: {version}"])
    assert status == 400
    assert headers["sec-websocket-version"] == "13"
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert headers["x-request-id"]
    assert body


@pytest.mark.parametrize(
    "lines",
    [
        without("Sec-WebSocket-Version:"),
        without("Sec-WebSocket-Key:"),
        [*without("Sec-WebSocket-Key:"), "Sec-WebSocket-Key: short"],
        [*without("Sec-WebSocket-Key:"), "Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!!!"],
    ],
    ids=["no-version", "no-key", "short-key", "bad-key"],
)
def test_bad_handshake_is_400(server: ServerProcess, lines: list[str]) -> None:
    status, headers, body = handshake(server, lines)
    assert status == 400
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert headers["x-request-id"]
    assert body


@pytest.mark.parametrize(
    "line",
    [b"Connection: \x06Upgrade", b"X-Client: a\x01b"],
    ids=["control-char-in-connection", "control-char-in-other-header"],
)
def test_control_character_in_a_header_is_400_not_500(server: ServerProcess, line: bytes) -> None:
    """h11 lets some control characters through; websockets' header map refuses them: a
    client error, answered like every other malformed handshake (was: 500, logged as error)."""
    token = server.keys.user_token("hs", "a", "u")
    lines = [x.encode() for x in GOOD if not x.startswith("Connection:")]
    if not line.startswith(b"Connection:"):
        lines.append(b"Connection: Upgrade")
    request = f"GET {ws_path('hs', 'a', token, server.keys.api)} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
    request += b"".join(x + b"\r\n" for x in [*lines, line]) + b"\r\n"
    errors_before = len(server.stderr)
    status, headers, body = raw_request(server.port, request)
    assert status == 400
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert body.startswith(b"Failed to open a WebSocket connection: invalid ")
    assert len(server.stderr) == errors_before  # no error-level log line


def test_http_1_0_is_refused(server: ServerProcess) -> None:
    status, headers, body = handshake(server, GOOD, version="HTTP/1.0")
    assert status == 400
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert headers["x-request-id"]
    assert body


async def test_bad_handshake_never_kicks_a_live_session(server: ServerProcess) -> None:
    """SPEC §12.4: a plain GET with a valid token of a connected user changes nothing."""
    async with connect(server.user_url("live", "a", "u")) as ws:
        assert await recv_text(ws) == '{"type":"ready"}'
        token = server.keys.user_token("live", "a", "u")
        assert http_request(server.http + ws_path("live", "a", token, server.keys.api))[0] == 426
        status, _, _ = handshake(server, without("Sec-WebSocket-Version:"), company="live")
        assert status == 400
        assert publish_ok(server, "websocket.live.a.chats", {"still": "here"}) == 1
        assert await recv_json(ws) == {"type": "event", "payload": {"event_type": "chat", "still": "here"}}
