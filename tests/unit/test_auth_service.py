"""AuthService: connect-time validation (SPEC §2.4-§2.6) and minting (SPEC §1.5, §1.6)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import jwt
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from daisi_ws.auth import (
    AdminClaims,
    AuthError,
    AuthService,
    TokenCipher,
    UserClaims,
    mint_admin_token,
    mint_user_token,
    parse_aes_key,
)
from daisi_ws.auth.tokens import decode_admin_claims, decode_user_claims, format_rfc3339
from daisi_ws.protocol import id_violation_text, is_valid_id

UTC = timezone.utc
USER_KEY = "11" * 32
ADMIN_KEY = "22" * 32
OTHER_KEY = "33" * 32
SECRET = "a-jwt-secret-that-is-at-least-32-bytes-long!"
NOW = 1_900_000_000.0  # 2030-03-17T17:46:40Z
EXP = datetime(2030, 6, 1, tzinfo=UTC)

USER_CIPHER = TokenCipher(parse_aes_key(USER_KEY))
ADMIN_CIPHER = TokenCipher(parse_aes_key(ADMIN_KEY))


def make(**over: Any) -> AuthService:
    kw: dict[str, Any] = {
        "token_aes_key": USER_KEY,
        "admin_token_aes_key": ADMIN_KEY,
        "jwt_secret": "",
        "token_cache_ttl_seconds": 30,
        "admin_token_cache_ttl_seconds": 60,
        "token_cache_max_entries": 1000,
    }
    kw.update(over)
    return AuthService(**kw)


@pytest.fixture
def svc() -> AuthService:
    return make()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Counters:
    """Deltas of the auth metrics over a block."""

    NAMES = (
        "dws_auth_success_total",
        "dws_auth_failure_total",
        "dws_token_cache_hits_total",
        "dws_token_cache_misses_total",
    )
    REASONS = (
        "missing",
        "expired",
        "invalid_format_or_content",
        "claims_mismatch",
        "config_error_aes_key",
        "internal_server_error",
    )

    def __init__(self) -> None:
        self.start = self._read()

    def _read(self) -> dict[tuple[str, ...], float]:
        out: dict[tuple[str, ...], float] = {}
        for t in ("company", "admin"):
            out[("success", t)] = sample("dws_auth_success_total", token_type=t)
            out[("hit", t)] = sample("dws_token_cache_hits_total", token_type=t)
            out[("miss", t)] = sample("dws_token_cache_misses_total", token_type=t)
            for r in self.REASONS:
                out[("failure", t, r)] = sample("dws_auth_failure_total", token_type=t, reason=r)
        return out

    def delta(self) -> dict[tuple[str, ...], float]:
        now = self._read()
        return {k: now[k] - self.start[k] for k in now if now[k] != self.start[k]}


@pytest.fixture
def counters() -> Iterator[Counters]:
    yield Counters()


def user_token(
    exp: datetime = EXP, company: str = "c1", agent: str = "a1", user: str = "u1"
) -> str:
    return mint_user_token(USER_CIPHER, company, agent, user, exp)


def admin_token(exp: datetime = EXP, *optional: str) -> str:
    return mint_admin_token(ADMIN_CIPHER, "boss", exp, *optional)


def err(excinfo: pytest.ExceptionInfo[AuthError]) -> tuple[int, str, str, str, str]:
    e = excinfo.value
    return (e.status, e.code, e.message, e.details, e.reason)


# --- validation: every row of SPEC §2.4 ------------------------------------------------------


def test_valid_user_token(svc: AuthService, counters: Counters) -> None:
    claims = svc.validate_user_token(user_token(), NOW)
    assert claims == UserClaims("c1", "a1", "u1", EXP)
    assert counters.delta() == {("success", "company"): 1, ("miss", "company"): 1}


def test_valid_admin_token(svc: AuthService, counters: Counters) -> None:
    claims = svc.validate_admin_token(admin_token(EXP, "", "c1", "*"), NOW)
    assert claims == AdminClaims("boss", EXP, "", "c1", "*")
    assert counters.delta() == {("success", "admin"): 1, ("miss", "admin"): 1}


@pytest.mark.parametrize("token", [None, ""])
def test_missing_token(svc: AuthService, counters: Counters, token: str | None) -> None:
    with pytest.raises(AuthError) as info:
        svc.validate_user_token(token, NOW)
    assert err(info) == (
        403,
        "InvalidToken",
        "Company token is required",
        "Provide 'token' in query parameter.",
        "missing",
    )
    with pytest.raises(AuthError) as info:
        svc.validate_admin_token(token, NOW)
    assert err(info) == (
        403,
        "InvalidToken",
        "Admin token is required",
        "Provide 'token' in query parameter.",
        "missing",
    )
    assert counters.delta() == {
        ("failure", "company", "missing"): 1,
        ("failure", "admin", "missing"): 1,
    }


def test_expired_token(svc: AuthService, counters: Counters) -> None:
    exp = datetime(2030, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)
    with pytest.raises(AuthError) as info:
        svc.validate_user_token(user_token(exp), exp.timestamp() + 0.25)
    assert err(info) == (
        403,
        "InvalidToken",
        "Company token has expired.",
        "token has expired: token expired at 2030-01-01 00:00:00.5 +0000 UTC",
        "expired",
    )
    with pytest.raises(AuthError) as info:
        svc.validate_admin_token(admin_token(datetime(2030, 1, 1, tzinfo=UTC)), NOW)
    assert err(info) == (
        403,
        "InvalidToken",
        "Admin token has expired.",
        "token has expired: admin token expired at 2030-01-01 00:00:00 +0000 UTC",
        "expired",
    )
    d = counters.delta()
    assert d[("failure", "company", "expired")] == 1
    assert d[("failure", "admin", "expired")] == 1
    assert ("success", "company") not in d


def test_valid_at_exactly_expires_at(svc: AuthService) -> None:
    token = user_token()
    assert svc.validate_user_token(token, EXP.timestamp()).user_id == "u1"
    with pytest.raises(AuthError) as info:
        svc.validate_user_token(token, EXP.timestamp() + 1e-6)
    assert info.value.reason == "expired"


INVALID_USER_TOKENS = [
    "!!!!",
    "AAAA",
    "a+b/" * 40,
    next(t for t in (user_token(user="u" * n) for n in (1, 2, 3)) if t.endswith("=")).rstrip("="),
    user_token()[:-8] + "AAAAAAA=",
    mint_user_token(TokenCipher(parse_aes_key(OTHER_KEY)), "c1", "a1", "u1", EXP),
    USER_CIPHER.seal(b"[1,2]"),
    USER_CIPHER.seal(b'{"company_id":"c1","agent_id":"a1","user_id":"u1"}'),
    user_token(company="a.b"),
    user_token(company="admin"),
    admin_token(),  # an admin token is not a user token (other key)
    "a.b.c",  # JWT-shaped, but no JWT secret: AES-GCM, bad base64
]


@pytest.mark.parametrize("token", INVALID_USER_TOKENS)
def test_invalid_user_token(svc: AuthService, counters: Counters, token: str) -> None:
    with pytest.raises(AuthError) as info:
        svc.validate_user_token(token, NOW)
    assert err(info) == (
        403,
        "InvalidToken",
        "Company token is invalid or malformed.",
        "Token format or content error.",
        "invalid_format_or_content",
    )
    assert counters.delta() == {
        ("failure", "company", "invalid_format_or_content"): 1,
        ("miss", "company"): 1,
    }
    assert len(svc.user_cache) == 0  # failures are never cached


def test_invalid_admin_token(svc: AuthService) -> None:
    for token in (
        user_token(),
        ADMIN_CIPHER.seal(b'{"admin_id":"a b","expires_at":"2031-01-01T00:00:00Z"}'),
    ):
        with pytest.raises(AuthError) as info:
            svc.validate_admin_token(token, NOW)
        assert err(info) == (
            403,
            "InvalidToken",
            "Admin token is invalid or malformed.",
            "Token format or content error.",
            "invalid_format_or_content",
        )


def test_aes_key_not_configured(counters: Counters) -> None:
    svc = make(token_aes_key="", admin_token_aes_key="")
    with pytest.raises(AuthError) as info:
        svc.validate_user_token(user_token(), NOW)
    assert err(info) == (
        500,
        "InternalServerError",
        "Server configuration error processing token.",
        "Internal server error.",
        "config_error_aes_key",
    )
    with pytest.raises(AuthError) as info:
        svc.validate_admin_token(admin_token(), NOW)
    assert err(info) == (
        500,
        "InternalServerError",
        "Server configuration error processing admin token.",
        "Internal server error.",
        "config_error_aes_key",
    )
    # missing still comes first
    with pytest.raises(AuthError) as info:
        svc.validate_user_token("", NOW)
    assert info.value.reason == "missing"
    d = counters.delta()
    assert d[("failure", "company", "config_error_aes_key")] == 1
    assert d[("failure", "admin", "config_error_aes_key")] == 1


def test_unexpected_failure(svc: AuthService, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(plaintext: bytes) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(svc._user, "decode_aes", boom)
    monkeypatch.setattr(svc._admin, "decode_aes", boom)
    with pytest.raises(AuthError) as info:
        svc.validate_user_token(user_token(), NOW)
    assert err(info) == (
        500,
        "InternalServerError",
        "An unexpected error occurred.",
        "Internal server error.",
        "internal_server_error",
    )
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(AuthError) as info:
        svc.validate_admin_token(admin_token(), NOW)
    assert err(info) == (
        500,
        "InternalServerError",
        "An unexpected error occurred while processing admin token.",
        "Internal server error.",
        "internal_server_error",
    )


def test_check_path(svc: AuthService, counters: Counters) -> None:
    claims = svc.validate_user_token(user_token(), NOW)
    svc.check_path(claims, "c1", "a1")
    for company, agent in (("c2", "a1"), ("c1", "a2"), ("C1", "a1"), ("c1", "a1 ")):
        with pytest.raises(AuthError) as info:
            svc.check_path(claims, company, agent)
        assert err(info) == (
            403,
            "InvalidToken",
            "Token does not match the requested company or agent.",
            "Path company/agent must equal the token's company_id and agent_id.",
            "claims_mismatch",
        )
    assert counters.delta()[("failure", "company", "claims_mismatch")] == 4


# --- JWT through the service -----------------------------------------------------------------


def hs256(payload: dict[str, Any]) -> str:
    return jwt.encode(payload, SECRET, algorithm="HS256")


def test_jwt_when_secret_set(counters: Counters) -> None:
    svc = make(jwt_secret=SECRET, token_aes_key="")  # JWTs need no AES key
    payload = {"company_id": "c1", "agent_id": "a1", "sub": "u9", "exp": int(NOW) + 100}
    claims = svc.validate_user_token(hs256(payload), NOW)
    assert (claims.company_id, claims.agent_id, claims.user_id) == ("c1", "a1", "u9")
    # cached: a second validation is a hit
    assert svc.validate_user_token(hs256(payload), NOW + 1) is claims
    # AES tokens still need the AES key
    with pytest.raises(AuthError) as info:
        svc.validate_user_token(user_token(), NOW)
    assert info.value.reason == "config_error_aes_key"
    # expired JWT (no leeway) -> expired wording
    with pytest.raises(AuthError) as info:
        svc.validate_user_token(hs256(payload), NOW + 100.5)
    assert err(info)[2:] == (
        "Company token has expired.",
        "token has expired: token expired at 2030-03-17 17:48:20 +0000 UTC",
        "expired",
    )
    # alg none / wrong secret -> invalid
    for bad in (
        jwt.encode(payload, None, algorithm="none"),
        jwt.encode(payload, SECRET + "x", algorithm="HS256"),
    ):
        with pytest.raises(AuthError) as info:
            svc.validate_user_token(bad, NOW)
        assert info.value.reason == "invalid_format_or_content"
    d = counters.delta()
    assert d[("hit", "company")] == 1
    assert d[("success", "company")] == 2


def test_jwt_admin_through_service() -> None:
    svc = make(jwt_secret=SECRET)
    token = hs256({"admin_id": "boss", "subscribed_company_id": "c1", "exp": int(NOW) + 100})
    claims = svc.validate_admin_token(token, NOW)
    assert (claims.admin_id, claims.subscribed_company_id) == ("boss", "c1")
    # a user-shaped JWT has no admin_id
    with pytest.raises(AuthError):
        svc.validate_admin_token(hs256({"company_id": "c", "exp": int(NOW) + 100}), NOW)


def test_aes_tokens_still_work_with_jwt_secret() -> None:
    svc = make(jwt_secret=SECRET)
    assert svc.validate_user_token(user_token(), NOW).user_id == "u1"


# --- the cache (SPEC §2.6) -------------------------------------------------------------------


class CountingDecoder:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    def __call__(self, plaintext: bytes) -> Any:
        self.calls += 1
        return self.inner(plaintext)


@pytest.fixture
def counting(svc: AuthService, monkeypatch: pytest.MonkeyPatch) -> CountingDecoder:
    dec = CountingDecoder(decode_user_claims)
    monkeypatch.setattr(svc._user, "decode_aes", dec)
    return dec


def test_cache_hit_and_miss_counts(
    svc: AuthService, counting: CountingDecoder, counters: Counters
) -> None:
    token = user_token()
    first = svc.validate_user_token(token, NOW)
    for i in range(5):
        assert svc.validate_user_token(token, NOW + i) is first
    assert counting.calls == 1
    assert (svc.user_cache.hits, svc.user_cache.misses) == (5, 1)
    assert counters.delta() == {
        ("success", "company"): 6,
        ("hit", "company"): 5,
        ("miss", "company"): 1,
    }
    # user and admin caches are separate
    svc.validate_admin_token(admin_token(), NOW)
    assert len(svc.user_cache) == 1 and len(svc.admin_cache) == 1


def test_cache_ttl_bounds_entry(svc: AuthService, counting: CountingDecoder) -> None:
    token = user_token()
    svc.validate_user_token(token, NOW)
    svc.validate_user_token(token, NOW + 29.999)
    assert counting.calls == 1
    svc.validate_user_token(token, NOW + 30)  # ttl elapsed: decoded again, re-cached
    assert counting.calls == 2
    svc.validate_user_token(token, NOW + 59.9)
    assert counting.calls == 2


def test_cache_deadline_capped_at_expiry(svc: AuthService, counting: CountingDecoder) -> None:
    exp = datetime.fromtimestamp(NOW + 10, UTC)
    token = user_token(exp)
    svc.validate_user_token(token, NOW)
    svc.validate_user_token(token, NOW + 9.5)
    assert counting.calls == 1
    # at exactly expires_at: not a cache hit, but still valid
    assert svc.validate_user_token(token, NOW + 10).user_id == "u1"
    assert counting.calls == 2
    assert len(svc.user_cache) == 0  # nothing cached that could only outlive the expiry
    # a hair later: expired, although the TTL (30 s) has not elapsed
    with pytest.raises(AuthError) as info:
        svc.validate_user_token(token, NOW + 10.000001)
    assert info.value.reason == "expired"
    assert len(svc.user_cache) == 0


def test_cache_never_serves_after_expiry_with_long_ttl() -> None:
    svc = make(token_cache_ttl_seconds=10**6, admin_token_cache_ttl_seconds=10**6)
    exp = datetime.fromtimestamp(NOW + 1, UTC)
    utoken, atoken = user_token(exp), admin_token(exp)
    svc.validate_user_token(utoken, NOW)
    svc.validate_admin_token(atoken, NOW)
    assert svc.user_cache.get(utoken, NOW + 0.5) is not None
    assert svc.admin_cache.get(atoken, NOW + 0.5) is not None
    with pytest.raises(AuthError) as info:
        svc.validate_user_token(utoken, NOW + 1.5)
    assert info.value.reason == "expired"
    with pytest.raises(AuthError) as info:
        svc.validate_admin_token(atoken, NOW + 1.5)
    assert info.value.reason == "expired"


def test_ttl_zero_disables_cache(counters: Counters) -> None:
    svc = make(token_cache_ttl_seconds=0, admin_token_cache_ttl_seconds=0)
    dec = CountingDecoder(decode_user_claims)
    svc._user.decode_aes = dec
    token = user_token()
    for _ in range(3):
        svc.validate_user_token(token, NOW)
        svc.validate_admin_token(admin_token(), NOW)
    assert dec.calls == 3
    assert len(svc.user_cache) == 0 and len(svc.admin_cache) == 0
    d = counters.delta()
    assert ("hit", "company") not in d and ("hit", "admin") not in d
    assert d[("success", "company")] == 3


def test_failures_not_cached(svc: AuthService) -> None:
    token = user_token(company="a:b")
    for _ in range(3):
        with pytest.raises(AuthError):
            svc.validate_user_token(token, NOW)
    assert len(svc.user_cache) == 0
    assert svc.user_cache.hits == 0 and svc.user_cache.misses == 3


def test_max_entries_bounded() -> None:
    svc = make(token_cache_max_entries=3)
    tokens = [user_token(user=f"u{i}") for i in range(10)]
    for t in tokens:
        svc.validate_user_token(t, NOW)
        assert len(svc.user_cache) <= 3
    assert len(svc.user_cache) == 3
    # the newest stay cached
    hits = svc.user_cache.hits
    svc.validate_user_token(tokens[-1], NOW)
    assert svc.user_cache.hits == hits + 1


def test_reload_clears_on_key_change_only() -> None:
    base = {
        "token_aes_key": USER_KEY,
        "admin_token_aes_key": ADMIN_KEY,
        "jwt_secret": "",
        "token_cache_ttl_seconds": 30,
        "admin_token_cache_ttl_seconds": 60,
        "token_cache_max_entries": 1000,
    }
    svc = AuthService(**base)

    def fill() -> None:
        svc.validate_user_token(user_token(), NOW)
        svc.validate_admin_token(admin_token(), NOW)

    fill()
    # same keys (hex case does not matter), other TTLs, other max entries: kept
    for change in (
        {},
        {"token_cache_ttl_seconds": 5, "admin_token_cache_ttl_seconds": 7},
        {"token_aes_key": USER_KEY.upper()},
        {"token_cache_max_entries": 1},
    ):
        svc.reload(**{**base, **change})
        assert len(svc.user_cache) == 1 and len(svc.admin_cache) == 1, change
    assert svc._user.ttl == 30 and svc._admin.ttl == 60  # back to base
    # any key change clears both caches
    for change in (
        {"token_aes_key": OTHER_KEY},
        {"admin_token_aes_key": OTHER_KEY},
        {"jwt_secret": SECRET},
    ):
        svc.reload(**base)
        fill()
        svc.reload(**{**base, **change})
        assert len(svc.user_cache) == 0 and len(svc.admin_cache) == 0, change
    # and the new key applies at once
    svc.reload(**{**base, "token_aes_key": OTHER_KEY})
    with pytest.raises(AuthError):
        svc.validate_user_token(user_token(), NOW)


def test_reload_applies_ttl(svc: AuthService, counting: CountingDecoder) -> None:
    svc.reload(
        token_aes_key=USER_KEY,
        admin_token_aes_key=ADMIN_KEY,
        jwt_secret="",
        token_cache_ttl_seconds=0,
        admin_token_cache_ttl_seconds=0,
        token_cache_max_entries=5,
    )
    token = user_token()
    svc.validate_user_token(token, NOW)
    svc.validate_user_token(token, NOW)
    assert counting.calls == 2


def test_malformed_key_rejected() -> None:
    with pytest.raises(ValueError):
        make(token_aes_key="zz")
    svc = make()
    with pytest.raises(ValueError):
        svc.reload(
            token_aes_key=USER_KEY,
            admin_token_aes_key="123",
            jwt_secret="",
            token_cache_ttl_seconds=1,
            admin_token_cache_ttl_seconds=1,
            token_cache_max_entries=1,
        )
    assert svc.admin_key_configured  # nothing applied


# --- minting: every row of SPEC §1.5 / §1.6 --------------------------------------------------

USER_REQ = {"company_id": "c1", "agent_id": "a1", "user_id": "u1", "expires_in_seconds": 3600}
ADMIN_REQ = {"admin_id": "boss", "expires_in_seconds": 3600}
USER_REQUIRED = "company_id, agent_id, user_id, and positive expires_in_seconds are required."
ADMIN_REQUIRED = "admin_id and positive expires_in_seconds are required."


def req(base: dict[str, Any], **over: Any) -> bytes:
    body = {**base, **over}
    return orjson.dumps({k: v for k, v in body.items() if v is not ...})


def mint_err(fn: Any, payload: bytes) -> tuple[int, str, str, str]:
    with pytest.raises(AuthError) as info:
        fn(payload, NOW)
    e = info.value
    return (e.status, e.code, e.message, e.details)


def test_mint_user_ok(svc: AuthService) -> None:
    token = svc.mint_user(req(USER_REQ, extra="ignored", nested={"x": 1}), NOW)
    plaintext = USER_CIPHER.open(token)
    expires = datetime.fromtimestamp(NOW, UTC) + timedelta(seconds=3600)
    assert plaintext == orjson.dumps(
        {
            "company_id": "c1",
            "agent_id": "a1",
            "user_id": "u1",
            "expires_at": format_rfc3339(expires),
        }
    )
    assert plaintext.endswith(b'"expires_at":"2030-03-17T18:46:40Z"}')
    claims = svc.validate_user_token(token, NOW)
    assert claims == UserClaims("c1", "a1", "u1", expires)
    # valid until exactly now + expires_in_seconds
    svc.validate_user_token(token, NOW + 3600)
    with pytest.raises(AuthError):
        svc.validate_user_token(token, NOW + 3600.001)


def test_mint_uses_wall_clock(svc: AuthService) -> None:
    import time

    before = time.time()
    token = svc.mint_user(req(USER_REQ, expires_in_seconds=60))
    claims = decode_user_claims(USER_CIPHER.open(token))
    assert before + 59 <= claims.expires_ts <= time.time() + 61


def test_mint_fraction_in_expiry(svc: AuthService) -> None:
    token = svc.mint_user(req(USER_REQ, expires_in_seconds=1), NOW + 0.25)
    assert USER_CIPHER.open(token).endswith(b'"expires_at":"2030-03-17T17:46:41.25Z"}')


def test_mint_field_names_case_insensitive(svc: AuthService) -> None:
    body = (
        b'{"COMPANY_ID":"c1","Agent_Id":"a1","user_id":"x","USER_ID":"u1","Expires_In_Seconds":5}'
    )
    claims = decode_user_claims(USER_CIPHER.open(svc.mint_user(body, NOW)))
    assert (claims.company_id, claims.agent_id, claims.user_id) == ("c1", "a1", "u1")


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b"{",
        b"[]",
        b"null",
        b'"x"',
        b"5",
        b"\xff\xfe",
        b'{"company_id":"\\ud800"}',
    ],
)
def test_mint_not_a_json_object(svc: AuthService, payload: bytes) -> None:
    status, code, message, details = mint_err(svc.mint_user, payload)
    assert (status, code, message) == (400, "BadRequest", "Invalid request payload")
    assert details  # parser message, not normative
    assert mint_err(svc.mint_admin, payload)[:3] == (400, "BadRequest", "Invalid request payload")


@pytest.mark.parametrize(
    "over",
    [
        {"company_id": 5},
        {"agent_id": True},
        {"user_id": ["u"]},
        {"company_id": {"a": 1}},
        {"user_id": 1.5},
        {"expires_in_seconds": "60"},
        {"expires_in_seconds": 60.0},
        {"expires_in_seconds": 1.5},
        {"expires_in_seconds": True},
        {"expires_in_seconds": False},
        {"expires_in_seconds": [60]},
        # type errors come before missing fields
        {"expires_in_seconds": "60", "company_id": ...},
    ],
)
def test_mint_user_wrong_types(svc: AuthService, over: dict[str, Any]) -> None:
    assert mint_err(svc.mint_user, req(USER_REQ, **over))[:3] == (
        400,
        "BadRequest",
        "Invalid request payload",
    )


@pytest.mark.parametrize(
    "raw",
    [
        b'{"company_id":"c1","agent_id":"a1","user_id":"u1","expires_in_seconds":1e3}',
        b'{"company_id":"c1","agent_id":"a1","user_id":"u1","expires_in_seconds":1.0}',
        b'{"company_id":"c1","agent_id":"a1","user_id":"u1","expires_in_seconds":123456789012345678901234567890}',
    ],
)
def test_mint_user_non_integer_numbers(svc: AuthService, raw: bytes) -> None:
    assert mint_err(svc.mint_user, raw)[:3] == (400, "BadRequest", "Invalid request payload")


@pytest.mark.parametrize(
    "over",
    [
        {"company_id": ...},
        {"agent_id": ...},
        {"user_id": ...},
        {"company_id": ""},
        {"agent_id": ""},
        {"user_id": ""},
        {"company_id": None},
        {"agent_id": None},
        {"user_id": None},
        {"expires_in_seconds": ...},
        {"expires_in_seconds": None},
        {"expires_in_seconds": 0},
        {"expires_in_seconds": -1},
        {"expires_in_seconds": -(2**63)},
        # missing beats an id violation elsewhere
        {"company_id": "a.b", "user_id": ""},
    ],
)
def test_mint_user_required(svc: AuthService, over: dict[str, Any]) -> None:
    assert mint_err(svc.mint_user, req(USER_REQ, **over)) == (
        400,
        "BadRequest",
        "Invalid payload",
        USER_REQUIRED,
    )


ID_VIOLATIONS = [
    "a:b",
    "a.b",
    "a*b",
    "a>b",
    "a b",
    "a\tb",
    "a\nb",
    "a\x00b",
    "a\x7fb",
    "a\u3000b",
    "x" * 129,
    "*",
]


@pytest.mark.parametrize("field", ["company_id", "agent_id", "user_id"])
@pytest.mark.parametrize("value", ID_VIOLATIONS)
def test_mint_user_id_rules(svc: AuthService, field: str, value: str) -> None:
    assert mint_err(svc.mint_user, req(USER_REQ, **{field: value})) == (
        400,
        "BadRequest",
        "Invalid payload",
        id_violation_text(field),
    )


def test_mint_user_id_rule_text_and_order(svc: AuthService) -> None:
    assert id_violation_text("agent_id") == (
        "agent_id must be 1-128 characters without ':', '.', '*', '>', whitespace or control characters."
    )
    # checked in field order: company_id, agent_id, user_id
    body = req(USER_REQ, company_id="a b", agent_id="a b", user_id="a b")
    assert mint_err(svc.mint_user, body)[3] == id_violation_text("company_id")
    body = req(USER_REQ, agent_id="a b", user_id="a b")
    assert mint_err(svc.mint_user, body)[3] == id_violation_text("agent_id")
    # 128 code points are fine
    svc.mint_user(req(USER_REQ, user_id="ü" * 128), NOW)


def test_mint_user_company_admin_reserved(svc: AuthService) -> None:
    assert mint_err(svc.mint_user, req(USER_REQ, company_id="admin")) == (
        400,
        "BadRequest",
        "Invalid payload",
        "company_id 'admin' is reserved.",
    )
    svc.mint_user(req(USER_REQ, company_id="ADMIN"), NOW)


def test_mint_expiry_too_large(svc: AuthService) -> None:
    end = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
    limit = int(end - NOW)
    token = svc.mint_user(req(USER_REQ, expires_in_seconds=limit), NOW)
    assert USER_CIPHER.open(token).endswith(b'"expires_at":"9999-12-31T23:59:59Z"}')
    for seconds in (limit + 1, 10**12, 2**63 - 1, 2**64 - 1):
        assert mint_err(svc.mint_user, req(USER_REQ, expires_in_seconds=seconds)) == (
            400,
            "BadRequest",
            "Invalid payload",
            "expires_in_seconds is too large.",
        )
        assert mint_err(svc.mint_admin, req(ADMIN_REQ, expires_in_seconds=seconds))[3] == (
            "expires_in_seconds is too large."
        )
    # with a fraction in `now` the last whole second still fits in year 9999
    svc.mint_user(req(USER_REQ, expires_in_seconds=limit - 1), NOW + 0.999999)


def test_mint_key_not_configured() -> None:
    svc = make(token_aes_key="", admin_token_aes_key="")
    assert mint_err(svc.mint_user, req(USER_REQ)) == (
        500,
        "InternalServerError",
        "Server configuration error",
        "Token encryption key not configured.",
    )
    assert mint_err(svc.mint_admin, req(ADMIN_REQ)) == (
        500,
        "InternalServerError",
        "Server configuration error",
        "Admin token encryption key not configured.",
    )
    # the payload is validated first
    assert mint_err(svc.mint_user, req(USER_REQ, user_id=""))[0] == 400
    assert mint_err(svc.mint_admin, b"[]")[0] == 400
    assert mint_err(svc.mint_user, req(USER_REQ, expires_in_seconds=10**15))[3] == (
        "expires_in_seconds is too large."
    )


def test_mint_admin_ok(svc: AuthService) -> None:
    token = svc.mint_admin(req(ADMIN_REQ, subscribed_company_id="c1", subscribed_agent_id="*"), NOW)
    plaintext = ADMIN_CIPHER.open(token)
    assert plaintext == (
        b'{"admin_id":"boss","subscribed_company_id":"c1","subscribed_agent_id":"*",'
        b'"expires_at":"2030-03-17T18:46:40Z"}'
    )
    claims = svc.validate_admin_token(token, NOW)
    assert claims == AdminClaims(
        "boss", datetime(2030, 3, 17, 18, 46, 40, tzinfo=UTC), "", "c1", "*"
    )
    # empty optional fields are left out of the claims
    token = svc.mint_admin(
        req(
            ADMIN_REQ,
            subscribed_company_id="",
            subscribed_agent_id=None,
            company_id_restriction="r",
        ),
        NOW,
    )
    assert ADMIN_CIPHER.open(token) == (
        b'{"admin_id":"boss","company_id_restriction":"r","expires_at":"2030-03-17T18:46:40Z"}'
    )
    assert decode_admin_claims(ADMIN_CIPHER.open(token)).company_id_restriction == "r"


@pytest.mark.parametrize(
    "over",
    [
        {"admin_id": 1},
        {"admin_id": False},
        {"expires_in_seconds": "1"},
        {"expires_in_seconds": 2.0},
        {"expires_in_seconds": True},
        {"subscribed_company_id": 5},
        {"subscribed_agent_id": ["a"]},
        {"company_id_restriction": True},
    ],
)
def test_mint_admin_wrong_types(svc: AuthService, over: dict[str, Any]) -> None:
    assert mint_err(svc.mint_admin, req(ADMIN_REQ, **over))[:3] == (
        400,
        "BadRequest",
        "Invalid request payload",
    )


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
def test_mint_admin_required(svc: AuthService, over: dict[str, Any]) -> None:
    assert mint_err(svc.mint_admin, req(ADMIN_REQ, **over)) == (
        400,
        "BadRequest",
        "Invalid payload",
        ADMIN_REQUIRED,
    )


@pytest.mark.parametrize("value", ID_VIOLATIONS)
def test_mint_admin_id_rules(svc: AuthService, value: str) -> None:
    assert mint_err(svc.mint_admin, req(ADMIN_REQ, admin_id=value)) == (
        400,
        "BadRequest",
        "Invalid payload",
        id_violation_text("admin_id"),
    )


@pytest.mark.parametrize(
    "field", ["subscribed_company_id", "subscribed_agent_id", "company_id_restriction"]
)
def test_mint_admin_optional_field_rules(svc: AuthService, field: str) -> None:
    for bad in [v for v in ID_VIOLATIONS if v != "*"] + ["**", " "]:
        assert mint_err(svc.mint_admin, req(ADMIN_REQ, **{field: bad})) == (
            400,
            "BadRequest",
            "Invalid payload",
            id_violation_text(field),
        )
    for ok in ("", "*", "x1", None):
        svc.mint_admin(req(ADMIN_REQ, **{field: ok}), NOW)


def test_mint_errors_do_not_touch_auth_metrics(svc: AuthService, counters: Counters) -> None:
    with pytest.raises(AuthError):
        svc.mint_user(b"[]", NOW)
    svc.mint_user(req(USER_REQ), NOW)
    assert counters.delta() == {}


# --- property: mint -> validate round-trips any valid ids -------------------------------------

valid_ids = st.text(min_size=1, max_size=128).filter(is_valid_id)
PROPERTY_SVC = make(token_cache_ttl_seconds=0, admin_token_cache_ttl_seconds=0)


@settings(max_examples=150, deadline=None)
@given(
    company=valid_ids.filter(lambda c: c != "admin"),
    agent=valid_ids,
    user=valid_ids,
    seconds=st.integers(min_value=1, max_value=10**9),
    now=st.floats(min_value=0, max_value=4e9, allow_nan=False),
)
def test_property_mint_validate_round_trip(
    company: str, agent: str, user: str, seconds: int, now: float
) -> None:
    body = orjson.dumps(
        {"company_id": company, "agent_id": agent, "user_id": user, "expires_in_seconds": seconds}
    )
    token = PROPERTY_SVC.mint_user(body, now)
    claims = PROPERTY_SVC.validate_user_token(token, now)
    assert (claims.company_id, claims.agent_id, claims.user_id) == (company, agent, user)
    PROPERTY_SVC.check_path(claims, company, agent)
    assert abs(claims.expires_ts - (now + seconds)) < 1e-3
    # and it is still valid one microsecond before its expiry, expired just after
    PROPERTY_SVC.validate_user_token(token, claims.expires_ts)
    with pytest.raises(AuthError):
        PROPERTY_SVC.validate_user_token(token, claims.expires_ts + 0.001)


@settings(max_examples=100, deadline=None)
@given(
    admin=valid_ids,
    filters=st.lists(st.one_of(st.just(""), st.just("*"), valid_ids), min_size=3, max_size=3),
)
def test_property_mint_admin_round_trip(admin: str, filters: list[str]) -> None:
    restriction, sub_company, sub_agent = filters
    body = orjson.dumps(
        {
            "admin_id": admin,
            "expires_in_seconds": 60,
            "company_id_restriction": restriction,
            "subscribed_company_id": sub_company,
            "subscribed_agent_id": sub_agent,
        }
    )
    claims = PROPERTY_SVC.validate_admin_token(PROPERTY_SVC.mint_admin(body, NOW), NOW)
    assert claims == AdminClaims(admin, claims.expires_at, restriction, sub_company, sub_agent)
