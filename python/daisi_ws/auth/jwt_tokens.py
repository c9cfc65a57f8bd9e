"""HS256 JWTs (SPEC §2.3): accepted at connect when `auth.jwt_secret` is set; never minted.

PyJWT verifies the signature (HS256 only: `none` and every other `alg` are rejected);
`exp` (required, numeric) and `nbf` are checked here against the caller's clock with no
leeway, `aud`/`iss`/`iat`/`sub`/`jti` are not validated by PyJWT. Claim names are exact
(a JWT payload is a map, not a struct).
"""

from __future__ import annotations

import math
import time
from datetime import datetime
from typing import Any

import jwt

from daisi_ws.auth.tokens import (
    ADMIN_OPTIONAL_CLAIMS,
    AdminClaims,
    TokenExpired,
    TokenInvalid,
    UserClaims,
    check_admin_ids,
    check_user_ids,
    datetime_from_ts,
)

_ALGORITHMS = ["HS256"]
_OPTIONS: Any = {
    "verify_signature": True,
    "verify_exp": False,  # checked below: expired iff now > exp, caller's clock
    "verify_nbf": False,  # checked below
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,  # `sub` is only a fallback for user_id, type-checked below
    "verify_jti": False,
    "require": [],
}


def is_jwt(token: str) -> bool:
    """A token with exactly two '.' is a JWT (when a JWT secret is configured)."""
    return token.count(".") == 2


def _number(value: Any) -> float | None:
    """A finite JSON number as float, else None (booleans are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        f = float(value)
    except OverflowError:  # an integer beyond float range
        return None
    return f if math.isfinite(f) else None


def _verified_payload(
    token: str, secret: str, now: float | None
) -> tuple[dict[str, Any], datetime]:
    """Signature, exp, nbf. Returns the payload and the expiry."""
    try:
        payload: dict[str, Any] = jwt.decode(
            token, secret.encode("utf-8"), algorithms=_ALGORITHMS, options=_OPTIONS
        )
    except jwt.PyJWTError as exc:
        raise TokenInvalid(f"jwt: {exc}") from None
    exp = _number(payload.get("exp"))
    # golang-jwt treats exp == 0 as absent; exp is required.
    if exp is None or exp == 0:
        raise TokenInvalid("jwt: exp claim is required and must be a number")
    expires_at = datetime_from_ts(exp)
    if now is None:
        now = time.time()
    if now > exp:
        raise TokenExpired(expires_at)
    nbf_claim = payload.get("nbf")
    if nbf_claim is not None:
        nbf = _number(nbf_claim)
        if nbf is None:
            raise TokenInvalid("jwt: nbf claim must be a number")
        if now < nbf:
            raise TokenInvalid("jwt: token is not valid yet")
    return payload, expires_at


def _string(payload: dict[str, Any], name: str) -> str:
    value = payload.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TokenInvalid(f"jwt: {name} is not a string")
    return value


def decode_user_jwt(token: str, secret: str, now: float | None = None) -> UserClaims:
    """User claims of an HS256 JWT; TokenExpired / TokenInvalid on failure."""
    payload, expires_at = _verified_payload(token, secret, now)
    company_id = _string(payload, "company_id")
    agent_id = _string(payload, "agent_id")
    user_id = _string(payload, "user_id") or _string(payload, "sub")
    check_user_ids(company_id, agent_id, user_id)
    return UserClaims(company_id, agent_id, user_id, expires_at)


def decode_admin_jwt(token: str, secret: str, now: float | None = None) -> AdminClaims:
    """Admin claims of an HS256 JWT; TokenExpired / TokenInvalid on failure."""
    payload, expires_at = _verified_payload(token, secret, now)
    admin_id = _string(payload, "admin_id")
    restriction, sub_company, sub_agent = (_string(payload, n) for n in ADMIN_OPTIONAL_CLAIMS)
    check_admin_ids(admin_id, restriction, sub_company, sub_agent)
    return AdminClaims(admin_id, expires_at, restriction, sub_company, sub_agent)
