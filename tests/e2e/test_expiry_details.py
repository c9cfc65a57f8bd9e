"""SPEC §2.4: an expired token's details name its expiry as Go prints it, down to the
nanoseconds Go's encoding/json writes (`expires_at` of a token minted by a Go pod)."""

from __future__ import annotations

import json

import pytest

from daisi_ws.auth.tokens import TokenCipher, parse_aes_key
from tests.e2e.helpers import admin_path, assert_json_error, ws_path
from tests.support import ServerProcess, http_request


@pytest.mark.parametrize(
    ("expires_at", "shown"),
    [
        ("2021-06-07T08:09:10.123456789Z", "2021-06-07 08:09:10.123456789 +0000 UTC"),
        ("2021-06-07T08:09:10.0000005Z", "2021-06-07 08:09:10.0000005 +0000 UTC"),
        ("2021-06-07T10:09:10.987654321+02:00", "2021-06-07 08:09:10.987654321 +0000 UTC"),
        ("2021-06-07T08:09:10.5Z", "2021-06-07 08:09:10.5 +0000 UTC"),
    ],
)
def test_expired_details_keep_nanoseconds(server: ServerProcess, expires_at: str, shown: str) -> None:
    user = {"company_id": "c", "agent_id": "a", "user_id": "u", "expires_at": expires_at}
    token = TokenCipher(parse_aes_key(server.keys.aes)).seal(json.dumps(user).encode())
    reply = http_request(server.http + ws_path("c", "a", token, server.keys.api))
    assert_json_error(reply, 403, "InvalidToken", "Company token has expired.", f"token has expired: token expired at {shown}")
    admin = {"admin_id": "adm", "expires_at": expires_at}
    token = TokenCipher(parse_aes_key(server.keys.admin_aes)).seal(json.dumps(admin).encode())
    reply = http_request(server.http + admin_path(token, server.keys.admin_api))
    assert_json_error(reply, 403, "InvalidToken", "Admin token has expired.", f"token has expired: admin token expired at {shown}")
