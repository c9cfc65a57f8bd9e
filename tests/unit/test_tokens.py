"""AES-GCM tokens, claims, RFC 3339 and JWTs (SPEC §2.1-§2.3)."""

from __future__ import annotations

import base64
import time
from datetime import datetime, timedelta, timezone

import jwt
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daisi_ws.auth import (
    AdminClaims,
    TokenCipher,
    TokenExpired,
    TokenInvalid,
    UserClaims,
    decode_admin_claims,
    decode_admin_jwt,
    decode_user_claims,
    decode_user_jwt,
    format_expiry_detail,
    format_rfc3339,
    is_jwt,
    mint_admin_token,
    mint_user_token,
    parse_aes_key,
    parse_rfc3339,
)
from daisi_ws.protocol import _is_valid_id_slow, is_valid_id

UTC = timezone.utc
VECTOR_KEY = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
VECTOR_NONCE = bytes.fromhex("000000000000000000000001")
VECTOR_PLAINTEXT = (
    b'{"company_id":"c1","agent_id":"a1","user_id":"u1","expires_at":"2030-01-01T00:00:00Z"}'
)
VECTOR_TOKEN = (
    "AAAAAAAAAAAAAAABbvTckymEUXB3cThdzpwYlCS9MHYF1THqB19qvQQKUT8LtEvTXV_hTga2pyNWxnICDDpx94WedDXbZ"
    "kIELJehKjZBVso8eazr-ppggXADqNnulepNViOsjdYchCW7WpbLKnaD7ENZ"
)
OTHER_KEY = "ff" * 32
EXP = datetime(2030, 1, 1, tzinfo=UTC)
SECRET = "a-jwt-secret-that-is-at-least-32-bytes-long!"


@pytest.fixture
def cipher() -> TokenCipher:
    return TokenCipher(parse_aes_key(VECTOR_KEY))


def claims_bytes(**fields: object) -> bytes:
    return orjson.dumps(fields)


def user_fields(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "company_id": "c1",
        "agent_id": "a1",
        "user_id": "u1",
        "expires_at": "2030-01-01T00:00:00Z",
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not ...}


# --- keys and the AES-GCM format -------------------------------------------------------------


def test_spec_test_vector(cipher: TokenCipher) -> None:
    assert cipher.seal(VECTOR_PLAINTEXT, VECTOR_NONCE) == VECTOR_TOKEN
    assert cipher.open(VECTOR_TOKEN) == VECTOR_PLAINTEXT
    claims = decode_user_claims(cipher.open(VECTOR_TOKEN))
    assert claims == UserClaims("c1", "a1", "u1", EXP)
    assert claims.expires_ts == EXP.timestamp()


def test_mint_user_token_plaintext_is_exact(cipher: TokenCipher) -> None:
    token = mint_user_token(cipher, "c1", "a1", "u1", EXP)
    assert cipher.open(token) == VECTOR_PLAINTEXT
    # fresh random nonce each time
    assert mint_user_token(cipher, "c1", "a1", "u1", EXP) != token


def test_mint_admin_token_plaintext_order(cipher: TokenCipher) -> None:
    token = mint_admin_token(cipher, "boss", EXP)
    assert cipher.open(token) == b'{"admin_id":"boss","expires_at":"2030-01-01T00:00:00Z"}'
    token = mint_admin_token(
        cipher,
        "boss",
        EXP,
        company_id_restriction="r",
        subscribed_company_id="c",
        subscribed_agent_id="*",
    )
    assert cipher.open(token) == (
        b'{"admin_id":"boss","company_id_restriction":"r","subscribed_company_id":"c",'
        b'"subscribed_agent_id":"*","expires_at":"2030-01-01T00:00:00Z"}'
    )
    token = mint_admin_token(cipher, "boss", EXP, subscribed_agent_id="a")
    assert cipher.open(token) == (
        b'{"admin_id":"boss","subscribed_agent_id":"a","expires_at":"2030-01-01T00:00:00Z"}'
    )


def test_round_trip_user_and_admin(cipher: TokenCipher) -> None:
    at = datetime(2031, 5, 6, 7, 8, 9, 120000, tzinfo=UTC)
    claims = decode_user_claims(cipher.open(mint_user_token(cipher, "co", "ag", "us", at)))
    assert claims == UserClaims("co", "ag", "us", at)
    admin = decode_admin_claims(cipher.open(mint_admin_token(cipher, "adm", at, "*", "co", "ag")))
    assert admin == AdminClaims("adm", at, "*", "co", "ag")
    assert admin.expires_ts == at.timestamp()


@pytest.mark.parametrize(
    "bad", ["", "00" * 31, "00" * 33, "g" * 64, " " + "0" * 63, "0" * 63 + "\n"]
)
def test_parse_aes_key_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_aes_key(bad)


def test_parse_aes_key_accepts_upper_case() -> None:
    assert parse_aes_key(VECTOR_KEY.upper()) == bytes(range(32))


def test_tampered_token_rejected(cipher: TokenCipher) -> None:
    raw = bytearray(base64.urlsafe_b64decode(VECTOR_TOKEN))
    for index in (0, 11, 12, len(raw) // 2, len(raw) - 1):
        flipped = bytearray(raw)
        flipped[index] ^= 0x01
        with pytest.raises(TokenInvalid):
            cipher.open(base64.urlsafe_b64encode(bytes(flipped)).decode())


@pytest.mark.parametrize("size", [0, 1, 12, 27])
def test_truncated_token_rejected(cipher: TokenCipher, size: int) -> None:
    raw = base64.urlsafe_b64decode(VECTOR_TOKEN)[:size]
    with pytest.raises(TokenInvalid, match="short"):
        cipher.open(base64.urlsafe_b64encode(raw).decode())


def test_exactly_28_bytes_reaches_gcm(cipher: TokenCipher) -> None:
    # 28 bytes is long enough to try; GCM then fails (empty plaintext, wrong tag)
    token = base64.urlsafe_b64encode(bytes(28)).decode()
    with pytest.raises(TokenInvalid, match="authentication"):
        cipher.open(token)
    # and a genuine empty-plaintext token of 28 bytes opens
    assert cipher.open(cipher.seal(b"")) == b""


def test_wrong_key_rejected() -> None:
    with pytest.raises(TokenInvalid):
        TokenCipher(parse_aes_key(OTHER_KEY)).open(VECTOR_TOKEN)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t.replace("-", "+"),  # standard alphabet
        lambda t: t.replace("_", "/"),
        lambda t: t[:-4] + "ENZ" + "=",  # padding where none belongs (length stays 4k)
        lambda t: t + "====",
        lambda t: t + "=",
        lambda t: t[:-1],  # length not a multiple of 4 (missing padding)
        lambda t: t[:40] + " " + t[41:],
        lambda t: t[:40] + "\n" + t[41:],
        lambda t: t[:40] + "é" + t[41:],
        lambda t: t[:40] + "=" + t[41:],  # padding in the middle
    ],
)
def test_bad_base64_rejected(cipher: TokenCipher, mutate: object) -> None:
    bad = mutate(VECTOR_TOKEN)  # type: ignore[operator]
    assert bad != VECTOR_TOKEN
    with pytest.raises(TokenInvalid):
        cipher.open(bad)


def test_padding_required_and_accepted(cipher: TokenCipher) -> None:
    # sealed sizes 98, 99, 100 bytes -> 1, 0, 2 pad chars; padded opens, unpadded does not
    for size in (70, 71, 72):
        token = cipher.seal(b"x" * size)
        assert cipher.open(token) == b"x" * size
        stripped = token.rstrip("=")
        if stripped != token:
            with pytest.raises(TokenInvalid):
                cipher.open(stripped)


def test_seal_rejects_bad_nonce(cipher: TokenCipher) -> None:
    with pytest.raises(ValueError):
        cipher.seal(b"x", b"short")


# --- claims ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "plaintext",
    [b"[]", b'"s"', b"1", b"null", b"true", b"not json", b"", b'{"company_id":"c1"', b"\xff"],
)
def test_non_object_plaintext_invalid(plaintext: bytes) -> None:
    with pytest.raises(TokenInvalid):
        decode_user_claims(plaintext)
    with pytest.raises(TokenInvalid):
        decode_admin_claims(plaintext)


@pytest.mark.parametrize("claim", ["company_id", "agent_id", "user_id", "expires_at"])
@pytest.mark.parametrize("value", [..., None, "", 5, 1.5, True, [], {}])
def test_user_claim_missing_null_empty_or_mistyped(claim: str, value: object) -> None:
    with pytest.raises(TokenInvalid):
        decode_user_claims(claims_bytes(**user_fields(**{claim: value})))


@pytest.mark.parametrize("claim", ["admin_id", "expires_at"])
@pytest.mark.parametrize("value", [..., None, "", 5, False, ["x"]])
def test_admin_required_claims(claim: str, value: object) -> None:
    fields = {"admin_id": "boss", "expires_at": "2030-01-01T00:00:00Z", claim: value}
    fields = {k: v for k, v in fields.items() if v is not ...}
    with pytest.raises(TokenInvalid):
        decode_admin_claims(claims_bytes(**fields))


@pytest.mark.parametrize(
    "claim", ["company_id_restriction", "subscribed_company_id", "subscribed_agent_id"]
)
def test_admin_optional_claims(claim: str) -> None:
    base = {"admin_id": "boss", "expires_at": "2030-01-01T00:00:00Z"}
    for ok in ("", "*", "x1", None):
        claims = decode_admin_claims(claims_bytes(**base, **{claim: ok}))
        assert getattr(claims, claim) == (ok or "")
    for bad in (5, True, "a.b", "a b", "**", ">", "x" * 129):
        with pytest.raises(TokenInvalid):
            decode_admin_claims(claims_bytes(**base, **{claim: bad}))


def test_null_then_mistyped_claim_invalid() -> None:
    for plaintext in (
        b'{"company_id":null,"agent_id":5,"user_id":"u1","expires_at":"2030-01-01T00:00:00Z"}',
        b'{"agent_id":5,"company_id":null,"user_id":"u1","expires_at":"2030-01-01T00:00:00Z"}',
        b'{"user_id":"u1","company_id":"c1","agent_id":"a1","expires_at":null,"COMPANY_ID":[]}',
    ):
        with pytest.raises(TokenInvalid):
            decode_user_claims(plaintext)


def test_null_is_missing_and_unknown_keys_ignored() -> None:
    claims = decode_user_claims(claims_bytes(**user_fields(), extra=5, nested={"a": [1]}, sub="zz"))
    assert claims == UserClaims("c1", "a1", "u1", EXP)
    with pytest.raises(TokenInvalid):
        decode_user_claims(claims_bytes(**user_fields(user_id=None)))


def test_case_insensitive_keys_last_wins() -> None:
    plaintext = (
        b'{"Company_ID":"first","agent_id":"a1","USER_ID":"u1",'
        b'"EXPIRES_AT":"2030-01-01T00:00:00Z","company_id":"second","COMPANY_ID":"third"}'
    )
    assert decode_user_claims(plaintext).company_id == "third"
    # exact duplicates interleaved with case variants: document order decides
    plaintext = (
        b'{"company_id":"one","agent_id":"a1","user_id":"u1","expires_at":"2030-01-01T00:00:00Z",'
        b'"Company_Id":"two","company_id":"three"}'
    )
    assert decode_user_claims(plaintext).company_id == "three"
    # a null later in the document does not erase an earlier value (Go: null is a no-op)
    plaintext = (
        b'{"company_id":"one","agent_id":"a1","user_id":"u1","expires_at":"2030-01-01T00:00:00Z",'
        b'"COMPANY_ID":null}'
    )
    assert decode_user_claims(plaintext).company_id == "one"
    # a mistyped earlier duplicate is still an error
    plaintext = (
        b'{"COMPANY_ID":5,"company_id":"c1","agent_id":"a1","user_id":"u1",'
        b'"expires_at":"2030-01-01T00:00:00Z"}'
    )
    with pytest.raises(TokenInvalid):
        decode_user_claims(plaintext)
    # Go folds LATIN SMALL LETTER LONG S (and KELVIN SIGN) onto ASCII; nothing else
    long_s = orjson.dumps(
        {
            "company_id": "c1",
            "agent_id": "a1",
            "user_id": "u1",
            "expire\u017f_at": "2030-01-01T00:00:00Z",
        }
    )
    assert decode_user_claims(long_s).expires_at == EXP
    dotless_i = orjson.dumps(
        {
            "company_id": "c1",
            "agent_id": "a1",
            "user_\u0131d": "u1",
            "expires_at": "2030-01-01T00:00:00Z",
        }
    )
    with pytest.raises(TokenInvalid):
        decode_user_claims(dotless_i)
    # the "st" ligature case-folds to "st" in Python but not in Go: no match, so ignored
    ligature = orjson.dumps(
        {"admin_id": "b", "expires_at": "2030-01-01T00:00:00Z", "company_id_re\ufb06riction": "a b"}
    )
    assert decode_admin_claims(ligature).company_id_restriction == ""


ID_VIOLATIONS = [
    "a:b",
    "a.b",
    "a*b",
    "a>b",
    "a b",
    "a\tb",
    "a\x00b",
    "a\x1fb",
    "a\x7fb",
    "a\u00a0b",  # non-breaking space (str.isspace)
    "a\u2028b",
    "x" * 129,
    "*",
]


@pytest.mark.parametrize("claim", ["company_id", "agent_id", "user_id"])
@pytest.mark.parametrize("value", ID_VIOLATIONS)
def test_user_claim_id_rules(claim: str, value: str) -> None:
    with pytest.raises(TokenInvalid):
        decode_user_claims(claims_bytes(**user_fields(**{claim: value})))


@pytest.mark.parametrize("value", ID_VIOLATIONS)
def test_admin_id_rules(value: str) -> None:
    with pytest.raises(TokenInvalid):
        decode_admin_claims(claims_bytes(admin_id=value, expires_at="2030-01-01T00:00:00Z"))


@settings(max_examples=500)
@given(st.text(max_size=130) | st.text(alphabet=st.characters(max_codepoint=127), max_size=130))
def test_fast_id_check_agrees_with_protocol(value: str) -> None:
    assert is_valid_id(value) == _is_valid_id_slow(value)


def test_fast_id_check_agrees_on_every_ascii_char() -> None:
    for code in range(128):
        for value in (chr(code), "a" + chr(code) + "b", chr(code) * 128, chr(code) * 129):
            assert is_valid_id(value) == _is_valid_id_slow(value), repr(value)


def test_id_limits_accepted() -> None:
    long_id = "é" * 128  # 128 code points, 256 bytes
    claims = decode_user_claims(claims_bytes(**user_fields(user_id=long_id, agent_id="-_~!")))
    assert claims.user_id == long_id


def test_company_admin_reserved() -> None:
    with pytest.raises(TokenInvalid):
        decode_user_claims(claims_bytes(**user_fields(company_id="admin")))
    # only the exact id is reserved
    assert decode_user_claims(claims_bytes(**user_fields(company_id="Admin"))).company_id == "Admin"
    # admin ids may be "admin"
    assert (
        decode_admin_claims(
            claims_bytes(admin_id="admin", expires_at="2030-01-01T00:00:00Z")
        ).admin_id
        == "admin"
    )


def test_decode_does_not_check_expiry() -> None:
    claims = decode_user_claims(claims_bytes(**user_fields(expires_at="2000-01-01T00:00:00Z")))
    assert claims.expires_ts < time.time()


# --- RFC 3339 --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2030-01-01T00:00:00Z", datetime(2030, 1, 1, tzinfo=UTC)),
        ("2030-01-01T02:30:00+02:30", datetime(2030, 1, 1, tzinfo=UTC)),
        ("2029-12-31T19:00:00-05:00", datetime(2030, 1, 1, tzinfo=UTC)),
        ("2030-01-01T00:00:00-00:00", datetime(2030, 1, 1, tzinfo=UTC)),
        ("2030-01-01T00:00:00.5Z", datetime(2030, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)),
        ("2030-01-01T00:00:00.000001Z", datetime(2030, 1, 1, 0, 0, 0, 1, tzinfo=UTC)),
        ("2030-01-01T00:00:00.123456789Z", datetime(2030, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)),
        ("2030-01-01T00:00:00.000Z", datetime(2030, 1, 1, tzinfo=UTC)),
        (
            "2024-02-29T23:59:59.999999999+00:00",
            datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC),
        ),
        ("9999-12-31T23:59:59Z", datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
        ("0001-01-01T00:00:01Z", datetime(1, 1, 1, 0, 0, 1, tzinfo=UTC)),
    ],
)
def test_parse_rfc3339(text: str, expected: datetime) -> None:
    parsed = parse_rfc3339(text)
    assert parsed == expected
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    [
        "2030-01-01t00:00:00Z",
        "2030-01-01T00:00:00z",
        "2030-01-01 00:00:00Z",
        "2030-01-01T00:00:00",
        "2030-01-01T00:00Z",
        "2030-1-01T00:00:00Z",
        "30-01-01T00:00:00Z",
        "2030-01-01T00:00:00.Z",
        "2030-01-01T00:00:00,5Z",
        "2030-01-01T00:00:00+0100",
        "2030-01-01T00:00:00+01",
        "2030-01-01T00:00:00+24:00",
        "2030-01-01T00:00:00+01:60",
        "2030-13-01T00:00:00Z",
        "2030-02-29T00:00:00Z",
        "2030-01-01T24:00:00Z",
        "2030-01-01T00:60:00Z",
        "2030-01-01T00:00:60Z",
        "2030-01-01T00:00:00Z ",
        " 2030-01-01T00:00:00Z",
        "\uff12\uff10\uff13\uff10-01-01T00:00:00Z",  # non-ASCII (fullwidth) digits
        "",
        "0001-01-01T00:00:00Z",  # Go's zero time = missing
        "0001-01-01T00:00:00.000Z",
        "0001-01-01T01:00:00+01:00",
        "0001-01-01T00:00:00+01:00",  # before year 1 UTC
    ],
)
def test_parse_rfc3339_rejects(text: str) -> None:
    with pytest.raises(TokenInvalid):
        parse_rfc3339(text)


def test_sentinel_expiry_is_missing() -> None:
    with pytest.raises(TokenInvalid):
        decode_user_claims(claims_bytes(**user_fields(expires_at="0001-01-01T00:00:00Z")))


@pytest.mark.parametrize(
    ("dt", "text", "detail"),
    [
        (datetime(2030, 1, 1, tzinfo=UTC), "2030-01-01T00:00:00Z", "2030-01-01 00:00:00 +0000 UTC"),
        (
            datetime(2030, 1, 2, 3, 4, 5, 500000, tzinfo=UTC),
            "2030-01-02T03:04:05.5Z",
            "2030-01-02 03:04:05.5 +0000 UTC",
        ),
        (
            datetime(2030, 1, 2, 3, 4, 5, 120, tzinfo=UTC),
            "2030-01-02T03:04:05.00012Z",
            "2030-01-02 03:04:05.00012 +0000 UTC",
        ),
        (
            datetime(2030, 1, 1, 2, 0, tzinfo=timezone(timedelta(hours=2))),
            "2030-01-01T00:00:00Z",
            "2030-01-01 00:00:00 +0000 UTC",
        ),
        (
            datetime(999, 3, 4, 5, 6, 7, tzinfo=UTC),
            "0999-03-04T05:06:07Z",
            "0999-03-04 05:06:07 +0000 UTC",
        ),
    ],
)
def test_format_rfc3339_and_expiry_detail(dt: datetime, text: str, detail: str) -> None:
    assert format_rfc3339(dt) == text
    assert format_expiry_detail(dt) == detail
    assert parse_rfc3339(text) == dt


@pytest.mark.parametrize(
    ("text", "detail", "minted"),
    [
        ("2021-06-07T08:09:10.123456789Z", "2021-06-07 08:09:10.123456789 +0000 UTC", "2021-06-07T08:09:10.123456789Z"),
        ("2021-06-07T08:09:10.0000005Z", "2021-06-07 08:09:10.0000005 +0000 UTC", "2021-06-07T08:09:10.0000005Z"),
        ("2021-06-07T08:09:10.000000001Z", "2021-06-07 08:09:10.000000001 +0000 UTC", "2021-06-07T08:09:10.000000001Z"),
        ("2021-06-07T10:09:10.987654321+02:00", "2021-06-07 08:09:10.987654321 +0000 UTC", "2021-06-07T08:09:10.987654321Z"),
        ("2021-06-07T08:09:10.1234567899999Z", "2021-06-07 08:09:10.123456789 +0000 UTC", "2021-06-07T08:09:10.123456789Z"),
        ("2021-06-07T08:09:10.123456000Z", "2021-06-07 08:09:10.123456 +0000 UTC", "2021-06-07T08:09:10.123456Z"),
    ],
)
def test_nanoseconds_are_kept_for_the_expiry_detail(text: str, detail: str, minted: str) -> None:
    """Go's encoding/json writes time.Time with up to 9 fractional digits and Go prints them
    all in `token expired at <T>`; digits beyond the 9th are truncated, as Go parses them."""
    at = parse_rfc3339(text)
    assert format_expiry_detail(at) == detail
    assert format_rfc3339(at) == minted
    assert at == parse_rfc3339(minted)
    assert at.tzinfo is UTC
    claims = decode_user_claims(claims_bytes(**user_fields(expires_at=text)))
    assert format_expiry_detail(claims.expires_at) == detail
    assert detail in str(TokenExpired(claims.expires_at))
    # compares as the datetime of its microseconds; arithmetic gives a plain instant
    assert at == at.replace(microsecond=at.microsecond) and hash(at) == hash(at.replace(microsecond=at.microsecond))
    later = at + timedelta(seconds=1)
    plain = datetime(*later.timetuple()[:6], later.microsecond, UTC)
    assert format_expiry_detail(later) == format_expiry_detail(plain)


def test_nanoseconds_after_the_zero_time_are_not_the_zero_time() -> None:
    at = parse_rfc3339("0001-01-01T00:00:00.000000001Z")  # Go: IsZero() is false
    assert format_expiry_detail(at) == "0001-01-01 00:00:00.000000001 +0000 UTC"


def test_expired_exception_carries_time() -> None:
    exc = TokenExpired(EXP)
    assert exc.expires_at == EXP
    assert "2030-01-01 00:00:00 +0000 UTC" in str(exc)


# --- JWT -------------------------------------------------------------------------------------


def hs256(payload: dict[str, object], secret: str = SECRET, **kw: object) -> str:
    return jwt.encode(payload, secret, algorithm="HS256", **kw)  # type: ignore[arg-type]


NOW = 1_900_000_000.0
JWT_USER = {"company_id": "c1", "agent_id": "a1", "user_id": "u1", "exp": int(NOW) + 60}


def test_is_jwt() -> None:
    assert is_jwt("a.b.c")
    assert is_jwt("..")
    assert not is_jwt("a.b")
    assert not is_jwt("a.b.c.d")
    assert not is_jwt(VECTOR_TOKEN)


def test_jwt_valid_user() -> None:
    claims = decode_user_jwt(hs256(JWT_USER), SECRET, NOW)
    assert claims == UserClaims("c1", "a1", "u1", datetime.fromtimestamp(NOW + 60, UTC))
    assert claims.expires_ts == NOW + 60


def test_jwt_ignores_aud_iss_iat() -> None:
    token = hs256({**JWT_USER, "aud": "someone", "iss": "x", "iat": NOW + 1000})
    assert decode_user_jwt(token, SECRET, NOW).user_id == "u1"


def test_jwt_sub_fallback() -> None:
    for user in (..., None, ""):
        payload = {**JWT_USER, "sub": "subject", "user_id": user}
        payload = {k: v for k, v in payload.items() if v is not ...}
        assert decode_user_jwt(hs256(payload), SECRET, NOW).user_id == "subject"
    # user_id wins over sub when present
    assert decode_user_jwt(hs256({**JWT_USER, "sub": "s"}), SECRET, NOW).user_id == "u1"
    # neither -> invalid; non-string sub needed -> invalid
    with pytest.raises(TokenInvalid):
        decode_user_jwt(hs256({**JWT_USER, "user_id": ""}), SECRET, NOW)
    with pytest.raises(TokenInvalid):
        decode_user_jwt(hs256({**JWT_USER, "user_id": None, "sub": 5}), SECRET, NOW)


def test_jwt_alg_none_rejected() -> None:
    token = jwt.encode(JWT_USER, None, algorithm="none")
    with pytest.raises(TokenInvalid):
        decode_user_jwt(token, SECRET, NOW)
    # also with a forged empty signature and an HS256 body
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    body = hs256(JWT_USER).split(".")[1]
    with pytest.raises(TokenInvalid):
        decode_user_jwt(f"{header}.{body}.", SECRET, NOW)


def test_jwt_hs512_rejected() -> None:
    token = jwt.encode(JWT_USER, SECRET * 2, algorithm="HS512")
    with pytest.raises(TokenInvalid):
        decode_user_jwt(token, SECRET * 2, NOW)


def test_jwt_hs256_signature_under_other_alg_header_rejected() -> None:
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(b'{"alg":"HS384","typ":"JWT"}')
    body = b64(orjson.dumps(JWT_USER))
    sig = b64(hmac.new(SECRET.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest())
    with pytest.raises(TokenInvalid):
        decode_user_jwt(f"{header}.{body}.{sig}", SECRET, NOW)


def test_jwt_wrong_secret_and_garbage() -> None:
    with pytest.raises(TokenInvalid):
        decode_user_jwt(hs256(JWT_USER, "another-secret-that-is-at-least-32-bytes"), SECRET, NOW)
    for garbage in ("a.b.c", "..", "e30.e30.", "!!.!!.!!"):
        with pytest.raises(TokenInvalid):
            decode_user_jwt(garbage, SECRET, NOW)


@pytest.mark.parametrize("exp", [..., None, "1900000060", True, 0, [1], float("nan"), 10**400])
def test_jwt_exp_required_and_numeric(exp: object) -> None:
    payload = {**JWT_USER, "exp": exp}
    payload = {k: v for k, v in payload.items() if v is not ...}
    with pytest.raises(TokenInvalid):
        decode_user_jwt(_raw_hs256(payload), SECRET, NOW)


def _raw_hs256(payload: dict[str, object]) -> str:
    """Sign a payload PyJWT would not encode (NaN, huge ints) by hand."""
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(b'{"alg":"HS256","typ":"JWT"}')
    body = b64(json.dumps(payload).encode())
    sig = b64(hmac.new(SECRET.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest())
    return f"{header}.{body}.{sig}"


def test_jwt_expiry_without_leeway() -> None:
    token = hs256(JWT_USER)
    exp = JWT_USER["exp"]
    assert isinstance(exp, int)
    # exactly at exp: still valid (expired iff now > exp)
    assert decode_user_jwt(token, SECRET, float(exp)).user_id == "u1"
    with pytest.raises(TokenExpired) as info:
        decode_user_jwt(token, SECRET, exp + 0.001)
    assert info.value.expires_at == datetime.fromtimestamp(exp, UTC)
    # expiry is reported before claim problems (as golang-jwt does)
    with pytest.raises(TokenExpired):
        decode_user_jwt(hs256({**JWT_USER, "company_id": "a.b"}), SECRET, exp + 1.0)


def test_jwt_expired_by_wall_clock_without_now() -> None:
    token = hs256({**JWT_USER, "exp": int(time.time()) - 5})
    with pytest.raises(TokenExpired):
        decode_user_jwt(token, SECRET)


def test_jwt_nbf() -> None:
    token = hs256({**JWT_USER, "nbf": NOW + 10})
    with pytest.raises(TokenInvalid):
        decode_user_jwt(token, SECRET, NOW)
    assert decode_user_jwt(token, SECRET, NOW + 10).user_id == "u1"
    with pytest.raises(TokenInvalid):
        decode_user_jwt(hs256({**JWT_USER, "nbf": "soon"}), SECRET, NOW)


@pytest.mark.parametrize(
    "over",
    [
        {"company_id": "admin"},
        {"company_id": "a:b"},
        {"agent_id": "x" * 129},
        {"user_id": "a b"},
        {"company_id": 7},
        {"agent_id": None},
        {"company_id": ""},
    ],
)
def test_jwt_user_claims_validated(over: dict[str, object]) -> None:
    with pytest.raises(TokenInvalid):
        decode_user_jwt(hs256({**JWT_USER, **over}), SECRET, NOW)


def test_jwt_claim_names_are_exact() -> None:
    payload = {"COMPANY_ID": "c1", "agent_id": "a1", "user_id": "u1", "exp": NOW + 60}
    with pytest.raises(TokenInvalid):
        decode_user_jwt(hs256(payload), SECRET, NOW)


def test_jwt_admin() -> None:
    payload = {
        "admin_id": "boss",
        "exp": NOW + 60,
        "subscribed_company_id": "*",
        "subscribed_agent_id": "a1",
        "company_id_restriction": "c9",
        "sub": "ignored",
    }
    claims = decode_admin_jwt(hs256(payload), SECRET, NOW)
    assert claims == AdminClaims("boss", datetime.fromtimestamp(NOW + 60, UTC), "c9", "*", "a1")
    with pytest.raises(TokenInvalid):  # no sub fallback for admins
        decode_admin_jwt(hs256({"sub": "boss", "exp": NOW + 60}), SECRET, NOW)
    with pytest.raises(TokenInvalid):
        decode_admin_jwt(hs256({**payload, "subscribed_agent_id": "a.b"}), SECRET, NOW)
    with pytest.raises(TokenExpired):
        decode_admin_jwt(hs256(payload), SECRET, NOW + 61)
