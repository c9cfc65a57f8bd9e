"""AES-GCM tokens and their claims (SPEC §2.1, §2.2).

Token = base64url (with padding) of nonce(12) || ciphertext || tag(16); AES-256-GCM, no
associated data. The plaintext is a JSON object of claims. Decoding follows the Go
service's `encoding/json` rules: keys match claim names case-insensitively, the last
matching key wins, unknown keys are ignored, `null` is as if absent; every claim must
also satisfy the id rules of SPEC §0.1.

Nothing here checks expiry: callers compare `claims.expires_ts` with the clock.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from daisi_ws.protocol import RESERVED_COMPANY, is_valid_filter_id, is_valid_id

UTC = timezone.utc

NONCE_SIZE = 12
TAG_SIZE = 16
MIN_TOKEN_BYTES = NONCE_SIZE + TAG_SIZE

# Go's zero time.Time: an `expires_at` equal to it means "missing".
ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


class TokenInvalid(Exception):
    """Bad base64, too short, GCM failure, bad JSON or claims, any JWT failure but expiry."""


class TokenExpired(Exception):
    """The token is well-formed but `now > expires_at`."""

    def __init__(self, expires_at: datetime) -> None:
        super().__init__(f"token expired at {format_expiry_detail(expires_at)}")
        self.expires_at = expires_at


# --- claims ----------------------------------------------------------------------------------


def _utc(dt: datetime) -> datetime:
    """Aware UTC; a naive datetime is taken to be UTC already."""
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    if dt.tzinfo is UTC:
        return dt
    return dt.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class UserClaims:
    company_id: str
    agent_id: str
    user_id: str
    expires_at: datetime
    # Derived from expires_at (unix seconds); the hot path compares floats, not datetimes.
    expires_ts: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        at = self.expires_at
        if at.tzinfo is not UTC:
            at = _utc(at)
            object.__setattr__(self, "expires_at", at)
        object.__setattr__(self, "expires_ts", at.timestamp())


@dataclass(frozen=True, slots=True)
class AdminClaims:
    admin_id: str
    expires_at: datetime
    company_id_restriction: str = ""
    subscribed_company_id: str = ""
    subscribed_agent_id: str = ""
    expires_ts: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        at = self.expires_at
        if at.tzinfo is not UTC:
            at = _utc(at)
            object.__setattr__(self, "expires_at", at)
        object.__setattr__(self, "expires_ts", at.timestamp())


# --- keys and the cipher ---------------------------------------------------------------------

_HEX64 = re.compile(r"[0-9A-Fa-f]{64}")


def parse_aes_key(hex64: str) -> bytes:
    """64 hex characters -> 32 key bytes; ValueError otherwise."""
    if not isinstance(hex64, str) or _HEX64.fullmatch(hex64) is None:
        raise ValueError("must be 64 hex characters (32 bytes)")
    return bytes.fromhex(hex64)


# Only the base64url alphabet, then at most two '=' at the very end; the length check
# (multiple of 4) completes the strict-padding rule. '+', '/', whitespace -> no match.
_B64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")
_a2b = binascii.a2b_base64


class TokenCipher:
    """One AES-256-GCM key. Building the AESGCM object is the slow part, so it is kept."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("AES-256 key must be 32 bytes")
        self._aead = AESGCM(key)

    @classmethod
    def from_hex(cls, hex64: str) -> TokenCipher:
        return cls(parse_aes_key(hex64))

    def seal(self, plaintext: bytes, nonce: bytes | None = None) -> str:
        """base64url (padded) of nonce || ciphertext || tag; a random nonce unless given."""
        if nonce is None:
            nonce = os.urandom(NONCE_SIZE)
        elif len(nonce) != NONCE_SIZE:
            raise ValueError("nonce must be 12 bytes")
        sealed = self._aead.encrypt(nonce, plaintext, None)
        return base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def open(self, token: str) -> bytes:
        """The plaintext of `token`; TokenInvalid on any decoding or authentication failure."""
        if len(token) & 3 or _B64URL.fullmatch(token) is None:
            raise TokenInvalid("token is not padded base64url")
        raw = _a2b(token.encode("ascii").translate(_FROM_URLSAFE))
        if len(raw) < MIN_TOKEN_BYTES:
            raise TokenInvalid("token too short")
        try:
            return self._aead.decrypt(raw[:NONCE_SIZE], raw[NONCE_SIZE:], None)
        except InvalidTag:
            raise TokenInvalid("token authentication failed") from None


# --- RFC 3339 --------------------------------------------------------------------------------

_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]+))?(?:(Z)|([+-])([0-9]{2}):([0-9]{2}))"
)


class NanosecondTime(datetime):
    """A datetime that also keeps the nanoseconds below its microsecond: Go's time.Time has
    them, its encoding/json writes up to 9 fractional digits and its String() prints them all
    (SPEC §2.4's `token expired at <T>`). Compares, hashes and computes as a plain datetime;
    the result of arithmetic on one has no nanoseconds of its own."""

    nanosecond: int = 0  # 0-999, below .microsecond


def _fraction(t: datetime) -> str:
    nanos = t.nanosecond if type(t) is NanosecondTime else 0
    if nanos:
        return "." + f"{t.microsecond:06d}{nanos:03d}".rstrip("0")
    micro = t.microsecond
    return "." + f"{micro:06d}".rstrip("0") if micro else ""


def format_rfc3339(dt: datetime) -> str:
    """UTC with `Z`; fraction only when non-zero, trailing zeros trimmed (Go's RFC3339Nano)."""
    t = _utc(dt)
    return (
        f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
        f"{_fraction(t)}Z"
    )


def format_expiry_detail(dt: datetime) -> str:
    """Go's `time.Time.String()` of a UTC time: `YYYY-MM-DD HH:MM:SS[.f] +0000 UTC`, the
    fraction down to the nanosecond, trailing zeros trimmed."""
    t = _utc(dt)
    return (
        f"{t.year:04d}-{t.month:02d}-{t.day:02d} {t.hour:02d}:{t.minute:02d}:{t.second:02d}"
        f"{_fraction(t)} +0000 UTC"
    )


def _with_nanoseconds(t: datetime, nanos: int) -> datetime:
    at = NanosecondTime(t.year, t.month, t.day, t.hour, t.minute, t.second, t.microsecond, t.tzinfo)
    at.nanosecond = nanos
    return at


def parse_rfc3339(s: str) -> datetime:
    """Strict `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` -> aware UTC datetime.

    Upper-case `T`/`Z` only. Fractions beyond nanoseconds are truncated (as Go does); the
    nanoseconds below the microsecond, if any, are kept by a NanosecondTime. Go's zero time
    (`0001-01-01T00:00:00Z`, in any spelling) means "missing": TokenInvalid. Instants
    before year 1 UTC are TokenInvalid; after year 9999 UTC they are clamped to its end.
    """
    m = _RFC3339.fullmatch(s)
    if m is None:
        raise TokenInvalid("expires_at is not RFC 3339")
    year, month, day, hour, minute, second, frac, z, sign, oh, om = m.groups()
    micro = nanos = 0
    if frac:
        micro = int((frac + "00000")[:6])
        if len(frac) > 6:
            nanos = int((frac[6:9] + "00")[:3])
    if z and year != "0001":
        # the common case: UTC, no conversion, cannot be the zero time or out of range
        try:
            t = datetime(
                int(year), int(month), int(day), int(hour), int(minute), int(second), micro, UTC
            )
        except ValueError:
            raise TokenInvalid("expires_at is out of range") from None
        return _with_nanoseconds(t, nanos) if nanos else t
    try:
        if z:
            tz = UTC
        else:
            offset = timedelta(hours=int(oh), minutes=int(om))
            if int(om) > 59:
                raise ValueError("offset minutes out of range")
            tz = timezone(-offset if sign == "-" else offset)
        local = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tz
        )
    except ValueError:
        raise TokenInvalid("expires_at is out of range") from None
    try:
        at = local.astimezone(UTC)
    except OverflowError:
        if local.year == 1:
            raise TokenInvalid("expires_at is before year 1") from None
        return MAX_TIME
    if nanos:
        return _with_nanoseconds(at, nanos)  # 1-999 ns after Go's zero time is not zero
    if at == ZERO_TIME:
        raise TokenInvalid("expires_at is missing")
    return at


# --- claim decoding --------------------------------------------------------------------------


def _fold(key: str) -> str:
    """Go's `encoding/json` case folding, as far as it can reach an ASCII claim name.

    `str.lower()` maps ASCII and KELVIN SIGN (-> 'k'); LATIN SMALL LETTER LONG S folds to
    's' in Go too. No other non-ASCII character folds onto an ASCII letter.
    """
    return key.lower().replace("\u017f", "s")


def _big_int(text: str) -> int | float:
    """stdlib json int parsing, turned into a float beyond 64 bits as orjson does."""
    v = int(text)
    return v if -(2**63) <= v < 2**64 else float(v)


def matched_fields(
    raw: bytes | bytearray | memoryview | str, obj: dict[str, Any], names: Mapping[str, str]
) -> list[tuple[str, Any]]:
    """(canonical name, value) for every key of `obj` matching one of `names`.

    Document order, `null` values dropped; callers type-check each and let the last win.
    `names` maps each lower-case canonical name to itself. When two distinct keys match
    the same name (`company_id` and `COMPANY_ID`), the dict has lost the document order of
    exact duplicates, so the object is re-read pair by pair (rare).
    """
    pairs: list[tuple[str, Any]] = []
    seen: set[str] = set()
    collided = False
    for key, value in obj.items():
        name = names.get(key)
        if name is None:
            name = names.get(_fold(key))
            if name is None:
                continue
        if name in seen:
            collided = True
        seen.add(name)
        pairs.append((name, value))
    if collided:
        data = raw if isinstance(raw, str) else bytes(raw)
        pairs = []
        for key, value in json.loads(data, object_pairs_hook=list, parse_int=_big_int):
            name = names.get(key)
            if name is None:
                name = names.get(_fold(key))
            if name is not None:
                pairs.append((name, value))
    return [(n, v) for n, v in pairs if v is not None]


def _load_object(plaintext: bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(plaintext)
    except orjson.JSONDecodeError:
        raise TokenInvalid("claims are not JSON") from None
    if not isinstance(obj, dict):
        raise TokenInvalid("claims are not a JSON object")
    return obj


def _string_claims(plaintext: bytes, names: Mapping[str, str]) -> dict[str, str]:
    """Claim name -> string value; TokenInvalid for a non-string (non-null) claim."""
    obj = _load_object(plaintext)
    found: dict[str, Any] = {}
    get = names.get
    for key, value in obj.items():
        name = get(key)
        if name is None:
            name = get(_fold(key))
            if name is None:
                continue
        if name in found:  # two spellings of one claim: document order needed
            return _string_claims_slow(plaintext, obj, names)
        found[name] = value
    nulls = False
    for name, value in found.items():
        if type(value) is not str:
            if value is not None:
                raise TokenInvalid(f"{name} is not a string")
            nulls = True
    if nulls:
        return {n: v for n, v in found.items() if v is not None}
    return found


def _string_claims_slow(
    plaintext: bytes, obj: dict[str, Any], names: Mapping[str, str]
) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in matched_fields(plaintext, obj, names):
        if not isinstance(value, str):
            raise TokenInvalid(f"{name} is not a string")
        found[name] = value
    return found


def _names(*names: str) -> dict[str, str]:
    return {n: n for n in names}


USER_CLAIM_NAMES = _names("company_id", "agent_id", "user_id", "expires_at")
ADMIN_CLAIM_NAMES = _names(
    "admin_id",
    "company_id_restriction",
    "subscribed_company_id",
    "subscribed_agent_id",
    "expires_at",
)
ADMIN_OPTIONAL_CLAIMS = ("company_id_restriction", "subscribed_company_id", "subscribed_agent_id")


def check_user_ids(company_id: str, agent_id: str, user_id: str) -> None:
    """TokenInvalid unless all three are valid §0.1 ids and the company is not `admin`."""
    if not (is_valid_id(company_id) and is_valid_id(agent_id) and is_valid_id(user_id)):
        raise TokenInvalid("an id violates the id rules")
    if company_id == RESERVED_COMPANY:
        raise TokenInvalid("company_id 'admin' is reserved")


def check_admin_ids(
    admin_id: str, company_id_restriction: str, subscribed_company_id: str, subscribed_agent_id: str
) -> None:
    if not is_valid_id(admin_id):
        raise TokenInvalid("admin_id violates the id rules")
    if not (
        is_valid_filter_id(company_id_restriction)
        and is_valid_filter_id(subscribed_company_id)
        and is_valid_filter_id(subscribed_agent_id)
    ):
        raise TokenInvalid("an admin filter field violates the id rules")


def _expires_at(found: Mapping[str, str]) -> datetime:
    raw = found.get("expires_at")
    if raw is None:
        raise TokenInvalid("expires_at is missing")
    return parse_rfc3339(raw)


def decode_user_claims(plaintext: bytes) -> UserClaims:
    """Claims of a user token's plaintext (SPEC §2.2); expiry is not checked."""
    found = _string_claims(plaintext, USER_CLAIM_NAMES)
    company_id = found.get("company_id", "")
    agent_id = found.get("agent_id", "")
    user_id = found.get("user_id", "")
    check_user_ids(company_id, agent_id, user_id)
    return UserClaims(company_id, agent_id, user_id, _expires_at(found))


def decode_admin_claims(plaintext: bytes) -> AdminClaims:
    """Claims of an admin token's plaintext (SPEC §2.2); expiry is not checked."""
    found = _string_claims(plaintext, ADMIN_CLAIM_NAMES)
    admin_id = found.get("admin_id", "")
    restriction = found.get("company_id_restriction", "")
    sub_company = found.get("subscribed_company_id", "")
    sub_agent = found.get("subscribed_agent_id", "")
    check_admin_ids(admin_id, restriction, sub_company, sub_agent)
    return AdminClaims(admin_id, _expires_at(found), restriction, sub_company, sub_agent)


# --- minting ---------------------------------------------------------------------------------


def user_claims_json(company_id: str, agent_id: str, user_id: str, expires_at: datetime) -> bytes:
    return orjson.dumps(
        {
            "company_id": company_id,
            "agent_id": agent_id,
            "user_id": user_id,
            "expires_at": format_rfc3339(expires_at),
        }
    )


def admin_claims_json(
    admin_id: str,
    expires_at: datetime,
    company_id_restriction: str = "",
    subscribed_company_id: str = "",
    subscribed_agent_id: str = "",
) -> bytes:
    claims: dict[str, str] = {"admin_id": admin_id}
    if company_id_restriction:
        claims["company_id_restriction"] = company_id_restriction
    if subscribed_company_id:
        claims["subscribed_company_id"] = subscribed_company_id
    if subscribed_agent_id:
        claims["subscribed_agent_id"] = subscribed_agent_id
    claims["expires_at"] = format_rfc3339(expires_at)
    return orjson.dumps(claims)


def mint_user_token(
    cipher: TokenCipher, company_id: str, agent_id: str, user_id: str, expires_at: datetime
) -> str:
    """Seal user claims as-is (no id validation: AuthService.mint_user validates)."""
    return cipher.seal(user_claims_json(company_id, agent_id, user_id, expires_at))


def mint_admin_token(
    cipher: TokenCipher,
    admin_id: str,
    expires_at: datetime,
    company_id_restriction: str = "",
    subscribed_company_id: str = "",
    subscribed_agent_id: str = "",
) -> str:
    """Seal admin claims as-is; empty optional fields are left out."""
    return cipher.seal(
        admin_claims_json(
            admin_id, expires_at, company_id_restriction, subscribed_company_id, subscribed_agent_id
        )
    )


def datetime_from_ts(ts: float) -> datetime:
    """Unix seconds -> aware UTC datetime, floored to microseconds, clamped to years 1..9999."""
    if not math.isfinite(ts):
        raise ValueError("timestamp is not finite")
    try:
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=math.floor(ts * 1e6))
    except OverflowError:
        return MAX_TIME if ts > 0 else ZERO_TIME
