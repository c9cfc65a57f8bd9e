"""SPEC §1.2: API keys on every authenticated endpoint (header, query fallback, wording).

The "not configured" column can only happen in shared mode (embedded mode generates the
keys it lacks), so it has no test here.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from tests.e2e.helpers import admin_path, assert_json_error, raw_request, ws_path
from tests.support import ServerProcess, http_request

GENERAL_MISSING = ("InvalidAPIKey", "API key is required", "Provide API key in X-API-Key header or x-api-key query parameter.")
GENERAL_WRONG = ("InvalidAPIKey", "Invalid API key", "The provided API key is not valid.")
ADMIN_MISSING = ("E4001", "Admin API key is required", "Provide admin API key in X-API-Key header or x-api-key query parameter.")
ADMIN_WRONG = ("E4003", "Invalid admin API key", "The provided admin API key is not valid.")

MINT_USER = json.dumps({"company_id": "c", "agent_id": "a", "user_id": "u", "expires_in_seconds": 60}).encode()
MINT_ADMIN = json.dumps({"admin_id": "adm", "expires_in_seconds": 60}).encode()
PUBLISH = json.dumps({"subject": "websocket.c.a.chats", "payload": {}}).encode()


def call(server: ServerProcess, endpoint: str, *, header: dict[str, str] | None = None, query: str = "") -> tuple[int, dict[str, str], bytes]:
    """One request to an endpoint family with the key given by header and/or query."""
    h = dict(header or {})
    sep = "?" + query if query else ""
    if endpoint == "generate-token":
        return http_request(server.http + "/generate-token" + sep, "POST", MINT_USER, h)
    if endpoint == "admin-generate-token":
        return http_request(server.http + "/admin/generate-token" + sep, "POST", MINT_ADMIN, h)
    if endpoint == "publish":
        return http_request(server.http + "/api/publish" + sep, "POST", PUBLISH, h)
    if endpoint == "ws-user":
        # a valid token, no upgrade headers: key problems come first, a good key gets 426
        path = ws_path("c", "a", server.keys.user_token("c", "a", "u"), None)
        return http_request(server.http + path + ("&" + query if query else ""), headers=h)
    assert endpoint == "ws-admin"
    path = admin_path(server.keys.admin_token("adm"), None)
    return http_request(server.http + path + ("&" + query if query else ""), headers=h)


GENERAL = ["generate-token", "ws-user"]
ADMIN = ["admin-generate-token", "publish", "ws-admin"]
OK_STATUS = {"generate-token": 200, "admin-generate-token": 200, "publish": 200, "ws-user": 426, "ws-admin": 426}


def good_key(server: ServerProcess, endpoint: str) -> str:
    return server.keys.api if endpoint in GENERAL else server.keys.admin_api


def other_key(server: ServerProcess, endpoint: str) -> str:
    return server.keys.admin_api if endpoint in GENERAL else server.keys.api


def missing(endpoint: str) -> tuple[int, tuple[str, str, str]]:
    return (401, GENERAL_MISSING) if endpoint in GENERAL else (401, ADMIN_MISSING)


def wrong(endpoint: str) -> tuple[int, tuple[str, str, str]]:
    return (401, GENERAL_WRONG) if endpoint in GENERAL else (403, ADMIN_WRONG)


@pytest.mark.parametrize("endpoint", GENERAL + ADMIN)
def test_missing_key(server: ServerProcess, endpoint: str) -> None:
    status, err = missing(endpoint)
    assert_json_error(call(server, endpoint), status, *err)
    assert_json_error(call(server, endpoint, header={"X-API-Key": ""}), status, *err)
    assert_json_error(call(server, endpoint, query="x-api-key="), status, *err)


@pytest.mark.parametrize("endpoint", GENERAL + ADMIN)
def test_wrong_key(server: ServerProcess, endpoint: str) -> None:
    status, err = wrong(endpoint)
    assert_json_error(call(server, endpoint, header={"X-API-Key": "nope"}), status, *err)
    assert_json_error(call(server, endpoint, query="x-api-key=nope"), status, *err)
    # a prefix or a different case of the right key is still wrong
    key = good_key(server, endpoint)
    assert_json_error(call(server, endpoint, header={"X-API-Key": key[:-1]}), status, *err)
    assert_json_error(call(server, endpoint, header={"X-API-Key": key.upper()}), status, *err)


@pytest.mark.parametrize("endpoint", GENERAL + ADMIN)
def test_keys_never_open_each_others_endpoints(server: ServerProcess, endpoint: str) -> None:
    status, err = wrong(endpoint)
    assert_json_error(call(server, endpoint, header={"X-API-Key": other_key(server, endpoint)}), status, *err)
    assert_json_error(call(server, endpoint, query="x-api-key=" + other_key(server, endpoint)), status, *err)


@pytest.mark.parametrize("endpoint", GENERAL + ADMIN)
def test_header_key(server: ServerProcess, endpoint: str) -> None:
    status, _, body = call(server, endpoint, header={"X-API-Key": good_key(server, endpoint)})
    assert status == OK_STATUS[endpoint], body


@pytest.mark.parametrize("name", ["x-api-key", "X-API-KEY", "x-Api-kEy"])
@pytest.mark.parametrize("endpoint", GENERAL + ADMIN)
def test_header_name_is_case_insensitive(server: ServerProcess, endpoint: str, name: str) -> None:
    status, _, body = call(server, endpoint, header={name: good_key(server, endpoint)})
    assert status == OK_STATUS[endpoint], body


@pytest.mark.parametrize("endpoint", GENERAL + ADMIN)
def test_query_fallback(server: ServerProcess, endpoint: str) -> None:
    key = good_key(server, endpoint)
    status, _, body = call(server, endpoint, query="x-api-key=" + key)
    assert status == OK_STATUS[endpoint], body
    # an empty header falls back to the query parameter
    status, _, body = call(server, endpoint, header={"X-API-Key": ""}, query="x-api-key=" + key)
    assert status == OK_STATUS[endpoint], body


@pytest.mark.parametrize("endpoint", GENERAL + ADMIN)
def test_non_empty_header_wins_over_query(server: ServerProcess, endpoint: str) -> None:
    key = good_key(server, endpoint)
    status, err = wrong(endpoint)
    assert_json_error(call(server, endpoint, header={"X-API-Key": "nope"}, query="x-api-key=" + key), status, *err)
    got, _, body = call(server, endpoint, header={"X-API-Key": key}, query="x-api-key=nope")
    assert got == OK_STATUS[endpoint], body


@pytest.mark.parametrize("endpoint", ["generate-token", "publish"])
def test_first_query_occurrence_counts(server: ServerProcess, endpoint: str) -> None:
    key = good_key(server, endpoint)
    got, _, body = call(server, endpoint, query=f"x-api-key={key}&x-api-key=nope")
    assert got == 200, body
    status, err = wrong(endpoint)
    assert_json_error(call(server, endpoint, query=f"x-api-key=nope&x-api-key={key}"), status, *err)


def test_query_parameter_name_is_exact(server: ServerProcess) -> None:
    """Only `x-api-key` is the query fallback (the header name is case-insensitive)."""
    status, err = missing("generate-token")
    assert_json_error(call(server, "generate-token", query="X-API-Key=" + server.keys.api), status, *err)


def test_key_is_checked_before_the_body(server: ServerProcess) -> None:
    """Authenticated endpoints answer a bad key before looking at a bad body."""
    reply = http_request(server.http + "/generate-token", "POST", b"not json", {"X-API-Key": "nope"})
    assert_json_error(reply, 401, *GENERAL_WRONG)
    reply = http_request(server.http + "/api/publish", "POST", b"not json")
    assert_json_error(reply, 401, *ADMIN_MISSING)


# --- keys beyond ASCII: compared as bytes, as the Go service does ---------------------------------
UNICODE_API = "clé-secrète"
UNICODE_ADMIN = "ädmin-ключ"


@pytest.fixture(scope="module")
def unicode_server() -> Iterator[ServerProcess]:
    proc = ServerProcess({"DAISI_WS_AUTH_SECRET_TOKEN": UNICODE_API, "DAISI_WS_AUTH_ADMIN_SECRET_TOKEN": UNICODE_ADMIN}).start()
    try:
        yield proc
    finally:
        proc.stop(10)
        proc.kill()


def raw_call(server: ServerProcess, endpoint: str, key_header: bytes | None = None, query: str = "") -> tuple[int, dict[str, str], bytes]:
    """`call` with the X-API-Key header given as raw bytes (http.client would send latin-1)."""
    header = b"X-API-Key: " + key_header + b"\r\n" if key_header is not None else b""
    sep = "?" + query if query else ""
    if endpoint == "ws-user":
        target = ws_path("c", "a", server.keys.user_token("c", "a", "u"), None) + ("&" + query if query else "")
        return raw_request(server.port, f"GET {target} HTTP/1.1\r\nHost: x\r\n".encode() + header + b"\r\n")
    if endpoint == "ws-admin":
        target = admin_path(server.keys.admin_token("adm"), None) + ("&" + query if query else "")
        return raw_request(server.port, f"GET {target} HTTP/1.1\r\nHost: x\r\n".encode() + header + b"\r\n")
    path, body = {"generate-token": ("/generate-token", MINT_USER), "admin-generate-token": ("/admin/generate-token", MINT_ADMIN),
                  "publish": ("/api/publish", PUBLISH)}[endpoint]
    head = f"POST {path}{sep} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n".encode()
    return raw_request(server.port, head + header + b"\r\n" + body)


@pytest.mark.parametrize("endpoint", GENERAL + ADMIN)
def test_a_non_ascii_key_works_in_the_header_as_its_utf8_bytes(unicode_server: ServerProcess, endpoint: str) -> None:
    """The header's bytes are compared with the key's UTF-8 bytes (they were decoded as
    latin-1 and re-encoded as UTF-8: the right bytes were refused, the latin-1 ones accepted)."""
    key = UNICODE_API if endpoint in GENERAL else UNICODE_ADMIN
    status, _, body = raw_call(unicode_server, endpoint, key.encode("utf-8"))
    assert status == OK_STATUS[endpoint], body
    status, _, body = raw_call(unicode_server, endpoint, query="x-api-key=" + quote(key))
    assert status == OK_STATUS[endpoint], body
    code, err = wrong(endpoint)
    nfd = unicodedata.normalize("NFD", key).encode("utf-8")  # the same text, other bytes
    for other in (key.encode("latin-1", "replace"), nfd, key.encode("utf-8")[:-1]):
        assert_json_error(raw_call(unicode_server, endpoint, other), code, *err)
