"""AuthService: token cache -> decrypt/verify -> claims, and token minting (SPEC §1.5, §1.6, §2).

Validation at connect raises `AuthError` carrying the exact HTTP status, code, message and
details of SPEC §2.4 plus the `dws_auth_failure_total` reason label. A cache hit is one
dict lookup and one float compare (counters are read at scrape time); no datetime work.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

import orjson

from daisi_ws.auth.jwt_tokens import decode_admin_jwt, decode_user_jwt
from daisi_ws.auth.tokens import (
    ADMIN_OPTIONAL_CLAIMS,
    MAX_TIME,
    UTC,
    AdminClaims,
    TokenCipher,
    TokenExpired,
    TokenInvalid,
    UserClaims,
    decode_admin_claims,
    decode_user_claims,
    format_expiry_detail,
    matched_fields,
    mint_admin_token,
    mint_user_token,
    parse_aes_key,
)
from daisi_ws.hotpath import TokenCache
from daisi_ws.metrics import metrics
from daisi_ws.protocol import (
    BAD_REQUEST,
    INTERNAL_SERVER_ERROR,
    INVALID_TOKEN,
    RESERVED_COMPANY,
    RESERVED_COMPANY_TEXT,
    id_violation_text,
    is_valid_filter_id,
    is_valid_id,
)

# dws_auth_failure_total reasons (SPEC §9.1)
REASON_MISSING = "missing"
REASON_EXPIRED = "expired"
REASON_INVALID = "invalid_format_or_content"
REASON_MISMATCH = "claims_mismatch"
REASON_CONFIG = "config_error_aes_key"
REASON_INTERNAL = "internal_server_error"
FAILURE_REASONS = (
    REASON_MISSING,
    REASON_EXPIRED,
    REASON_INVALID,
    REASON_MISMATCH,
    REASON_CONFIG,
    REASON_INTERNAL,
)

TOKEN_TYPE_COMPANY = "company"
TOKEN_TYPE_ADMIN = "admin"


class AuthError(Exception):
    """An HTTP error response: status, JSON error body fields, and the metric reason.

    `reason` is the `dws_auth_failure_total` label for token failures at connect; minting
    errors carry an empty reason (they are not counted there).
    """

    def __init__(
        self, status: int, code: str, message: str, details: str = "", reason: str = ""
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.reason = reason


# --- connect-time wording (SPEC §2.4) ---------------------------------------------------------

_INTERNAL_DETAILS = "Internal server error."


@dataclass(frozen=True, slots=True)
class _Wording:
    token_type: str
    missing: str
    expired: str
    expired_prefix: str
    invalid: str
    config: str
    unexpected: str


_USER_WORDING = _Wording(
    token_type=TOKEN_TYPE_COMPANY,
    missing="Company token is required",
    expired="Company token has expired.",
    expired_prefix="token has expired: token expired at ",
    invalid="Company token is invalid or malformed.",
    config="Server configuration error processing token.",
    unexpected="An unexpected error occurred.",
)
_ADMIN_WORDING = _Wording(
    token_type=TOKEN_TYPE_ADMIN,
    missing="Admin token is required",
    expired="Admin token has expired.",
    expired_prefix="token has expired: admin token expired at ",
    invalid="Admin token is invalid or malformed.",
    config="Server configuration error processing admin token.",
    unexpected="An unexpected error occurred while processing admin token.",
)
_MISSING_DETAILS = "Provide 'token' in query parameter."
_INVALID_DETAILS = "Token format or content error."
_MISMATCH_MESSAGE = "Token does not match the requested company or agent."
_MISMATCH_DETAILS = "Path company/agent must equal the token's company_id and agent_id."

C = TypeVar("C", UserClaims, AdminClaims)


class _Kind(Generic[C]):
    """Per token type: cache, TTL, cipher, decoders, pre-labelled metric children."""

    __slots__ = (
        "cache",
        "cipher",
        "decode_aes",
        "decode_jwt",
        "failures",
        "ttl",
        "validated",
        "wording",
    )

    def __init__(
        self,
        wording: _Wording,
        max_entries: int,
        decode_aes: Callable[[bytes], C],
        decode_jwt: Callable[[str, str, float], C],
    ) -> None:
        m = metrics()
        t = wording.token_type
        self.wording = wording
        self.cache = TokenCache(max_entries)
        self.cipher: TokenCipher | None = None
        self.ttl = 0.0
        self.decode_aes: Callable[[bytes], C] = decode_aes
        self.decode_jwt: Callable[[str, str, float], C] = decode_jwt
        self.validated = 0  # successes that were not cache hits
        self.failures = {r: m.auth_failure.labels(t, r) for r in FAILURE_REASONS}
        m.add_count_source(self.counts)

    def counts(self) -> list[tuple[str, tuple[str, ...], float]]:
        """Scrape-time counters: a cache hit is a success too (SPEC §9.1)."""
        t = (self.wording.token_type,)
        hits = self.cache.hits
        return [
            ("dws_token_cache_hits", t, hits),
            ("dws_token_cache_misses", t, self.cache.misses),
            ("dws_auth_success", t, hits + self.validated),
        ]

    def fail(self, reason: str, status: int, code: str, message: str, details: str) -> AuthError:
        self.failures[reason].inc()
        return AuthError(status, code, message, details, reason)


def _cipher(hex_key: str) -> TokenCipher | None:
    return TokenCipher(parse_aes_key(hex_key)) if hex_key else None


# --- minting (SPEC §1.5, §1.6) ----------------------------------------------------------------

_INVALID_REQUEST = "Invalid request payload"
_INVALID_PAYLOAD = "Invalid payload"
_USER_REQUIRED = "company_id, agent_id, user_id, and positive expires_in_seconds are required."
_ADMIN_REQUIRED = "admin_id and positive expires_in_seconds are required."
_TOO_LARGE = "expires_in_seconds is too large."
_CONFIG_MESSAGE = "Server configuration error"
_USER_KEY_MISSING = "Token encryption key not configured."
_ADMIN_KEY_MISSING = "Admin token encryption key not configured."

_USER_REQUEST_FIELDS = {n: n for n in ("company_id", "agent_id", "user_id", "expires_in_seconds")}
_ADMIN_REQUEST_FIELDS = {n: n for n in ("admin_id", "expires_in_seconds", *ADMIN_OPTIONAL_CLAIMS)}


def _bad_request(message: str, details: str) -> AuthError:
    return AuthError(400, BAD_REQUEST, message, details)


def _request_fields(payload: bytes, names: dict[str, str]) -> dict[str, Any]:
    """Parse a mint request: a JSON object whose known fields have the right JSON type.

    Field names match case-insensitively, the last wins, `null` is as if absent (the Go
    service's `encoding/json` into a struct). Ids must be strings; `expires_in_seconds` an
    integer (not a float or boolean).
    """
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise _bad_request(_INVALID_REQUEST, str(exc)) from None
    if not isinstance(obj, dict):
        raise _bad_request(_INVALID_REQUEST, "request body must be a JSON object")
    fields: dict[str, Any] = {}
    for name, value in matched_fields(payload, obj, names):
        if name == "expires_in_seconds":
            if type(value) is not int:
                raise _bad_request(_INVALID_REQUEST, "expires_in_seconds must be an integer")
        elif not isinstance(value, str):
            raise _bad_request(_INVALID_REQUEST, f"{name} must be a string")
        fields[name] = value
    return fields


def _expiry(fields: dict[str, Any], now: float) -> datetime:
    """now + expires_in_seconds (already known positive), at most the end of year 9999."""
    seconds: int = fields["expires_in_seconds"]
    base = datetime.fromtimestamp(now, UTC)
    room = MAX_TIME - base
    if seconds > room.days * 86400 + room.seconds:
        raise _bad_request(_INVALID_PAYLOAD, _TOO_LARGE)
    return base + timedelta(seconds=seconds)


def _positive_expiry(fields: dict[str, Any]) -> bool:
    seconds = fields.get("expires_in_seconds")
    return seconds is not None and seconds > 0


# --- the service -----------------------------------------------------------------------------


class AuthService:
    """Validates user/admin tokens at connect (with a per-type cache) and mints tokens."""

    def __init__(
        self,
        *,
        token_aes_key: str,
        admin_token_aes_key: str,
        jwt_secret: str,
        token_cache_ttl_seconds: int,
        admin_token_cache_ttl_seconds: int,
        token_cache_max_entries: int,
    ) -> None:
        self._user: _Kind[UserClaims] = _Kind(
            _USER_WORDING, token_cache_max_entries, decode_user_claims, decode_user_jwt
        )
        self._admin: _Kind[AdminClaims] = _Kind(
            _ADMIN_WORDING, token_cache_max_entries, decode_admin_claims, decode_admin_jwt
        )
        self.user_cache = self._user.cache
        self.admin_cache = self._admin.cache
        self._jwt_secret = ""
        self._keys: tuple[str, str, str] = ("", "", "")
        self.reload(
            token_aes_key=token_aes_key,
            admin_token_aes_key=admin_token_aes_key,
            jwt_secret=jwt_secret,
            token_cache_ttl_seconds=token_cache_ttl_seconds,
            admin_token_cache_ttl_seconds=admin_token_cache_ttl_seconds,
            token_cache_max_entries=token_cache_max_entries,
        )

    # -- configuration --

    def reload(
        self,
        *,
        token_aes_key: str,
        admin_token_aes_key: str,
        jwt_secret: str,
        token_cache_ttl_seconds: int,
        admin_token_cache_ttl_seconds: int,
        token_cache_max_entries: int = 0,
    ) -> None:
        """Apply new keys and TTLs. A changed AES key or JWT secret clears both caches.

        `token_cache_max_entries` needs a restart and is ignored here. A malformed AES key
        raises ValueError before anything is applied (config validation rejects it first).
        """
        del token_cache_max_entries
        user_cipher = _cipher(token_aes_key)
        admin_cipher = _cipher(admin_token_aes_key)
        keys = (
            token_aes_key.lower(),
            admin_token_aes_key.lower(),
            jwt_secret,
        )
        self._user.cipher = user_cipher
        self._admin.cipher = admin_cipher
        self._jwt_secret = jwt_secret
        self._user.ttl = float(max(token_cache_ttl_seconds, 0))
        self._admin.ttl = float(max(admin_token_cache_ttl_seconds, 0))
        if keys != self._keys:
            self._keys = keys
            self.user_cache.clear()
            self.admin_cache.clear()

    @property
    def user_key_configured(self) -> bool:
        return self._user.cipher is not None

    @property
    def admin_key_configured(self) -> bool:
        return self._admin.cipher is not None

    @property
    def user_cipher(self) -> TokenCipher | None:
        return self._user.cipher

    @property
    def admin_cipher(self) -> TokenCipher | None:
        return self._admin.cipher

    # -- validation at connect (SPEC §2.4, §2.6) --

    def validate_user_token(self, token: str | None, now: float | None = None) -> UserClaims:
        """Claims of a user token, or AuthError per SPEC §2.4 (user wording)."""
        return self._check(self._user, token, now)

    def validate_admin_token(self, token: str | None, now: float | None = None) -> AdminClaims:
        """Claims of an admin token, or AuthError per SPEC §2.4 (admin wording)."""
        return self._check(self._admin, token, now)

    def _check(self, kind: _Kind[C], token: str | None, now: float | None) -> C:
        if now is None:
            now = time.time()
        if token:
            if kind.ttl:
                claims: C | None = kind.cache.get(token, now)  # counts the hit or miss itself
                if claims is not None:
                    return claims
            return self._validate(kind, token, now)
        w = kind.wording
        raise kind.fail(REASON_MISSING, 403, INVALID_TOKEN, w.missing, _MISSING_DETAILS)

    def _validate(self, kind: _Kind[C], token: str, now: float) -> C:
        """The cache-miss path: JWT or AES-GCM, claims, expiry; success is cached."""
        w = kind.wording
        secret = self._jwt_secret
        use_jwt = bool(secret) and token.count(".") == 2
        cipher = kind.cipher
        if not use_jwt and cipher is None:
            raise kind.fail(REASON_CONFIG, 500, INTERNAL_SERVER_ERROR, w.config, _INTERNAL_DETAILS)
        try:
            if use_jwt:
                claims = kind.decode_jwt(token, secret, now)
            else:
                assert cipher is not None
                claims = kind.decode_aes(cipher.open(token))
            expires_ts = claims.expires_ts
            if now > expires_ts:
                raise TokenExpired(claims.expires_at)
        except TokenExpired as exc:
            details = w.expired_prefix + format_expiry_detail(exc.expires_at)
            raise kind.fail(REASON_EXPIRED, 403, INVALID_TOKEN, w.expired, details) from None
        except TokenInvalid as exc:
            raise kind.fail(
                REASON_INVALID, 403, INVALID_TOKEN, w.invalid, _INVALID_DETAILS
            ) from exc
        except Exception as exc:
            raise kind.fail(
                REASON_INTERNAL, 500, INTERNAL_SERVER_ERROR, w.unexpected, _INTERNAL_DETAILS
            ) from exc
        kind.validated += 1
        ttl = kind.ttl
        if ttl:
            # Never past expiry: a hit needs now < deadline <= expires_ts, i.e. not expired.
            deadline = min(now + ttl, expires_ts)
            if deadline > now:
                kind.cache.put(token, claims, deadline)
        return claims

    def check_path(self, claims: UserClaims, company: str, agent: str) -> None:
        """SPEC §2.5: the path's company/agent must equal the claims exactly (else 403)."""
        if claims.company_id != company or claims.agent_id != agent:
            raise self._user.fail(
                REASON_MISMATCH, 403, INVALID_TOKEN, _MISMATCH_MESSAGE, _MISMATCH_DETAILS
            )

    # -- minting (SPEC §1.5, §1.6) --

    def mint_user(self, payload: bytes, now: float | None = None) -> str:
        """A user token for a `/generate-token` request body, or AuthError (400/500)."""
        fields = _request_fields(payload, _USER_REQUEST_FIELDS)
        company_id = fields.get("company_id", "")
        agent_id = fields.get("agent_id", "")
        user_id = fields.get("user_id", "")
        if not (company_id and agent_id and user_id and _positive_expiry(fields)):
            raise _bad_request(_INVALID_PAYLOAD, _USER_REQUIRED)
        if not is_valid_id(company_id):
            raise _bad_request(_INVALID_PAYLOAD, id_violation_text("company_id"))
        if company_id == RESERVED_COMPANY:
            raise _bad_request(_INVALID_PAYLOAD, RESERVED_COMPANY_TEXT)
        if not is_valid_id(agent_id):
            raise _bad_request(_INVALID_PAYLOAD, id_violation_text("agent_id"))
        if not is_valid_id(user_id):
            raise _bad_request(_INVALID_PAYLOAD, id_violation_text("user_id"))
        expires_at = _expiry(fields, time.time() if now is None else now)
        cipher = self._user.cipher
        if cipher is None:
            raise AuthError(500, INTERNAL_SERVER_ERROR, _CONFIG_MESSAGE, _USER_KEY_MISSING)
        return mint_user_token(cipher, company_id, agent_id, user_id, expires_at)

    def mint_admin(self, payload: bytes, now: float | None = None) -> str:
        """An admin token for an `/admin/generate-token` request body, or AuthError."""
        fields = _request_fields(payload, _ADMIN_REQUEST_FIELDS)
        admin_id = fields.get("admin_id", "")
        if not (admin_id and _positive_expiry(fields)):
            raise _bad_request(_INVALID_PAYLOAD, _ADMIN_REQUIRED)
        if not is_valid_id(admin_id):
            raise _bad_request(_INVALID_PAYLOAD, id_violation_text("admin_id"))
        optional = [fields.get(name, "") for name in ADMIN_OPTIONAL_CLAIMS]
        for name in ADMIN_OPTIONAL_CLAIMS:
            if not is_valid_filter_id(fields.get(name, "")):
                raise _bad_request(_INVALID_PAYLOAD, id_violation_text(name))
        expires_at = _expiry(fields, time.time() if now is None else now)
        cipher = self._admin.cipher
        if cipher is None:
            raise AuthError(500, INTERNAL_SERVER_ERROR, _CONFIG_MESSAGE, _ADMIN_KEY_MISSING)
        restriction, sub_company, sub_agent = optional
        return mint_admin_token(cipher, admin_id, expires_at, restriction, sub_company, sub_agent)
