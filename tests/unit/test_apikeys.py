"""API keys (SPEC §1.2)."""

from __future__ import annotations

import pytest

from daisi_ws.auth import check_api_key, extract_api_key


@pytest.mark.parametrize(
    ("header", "query", "expected"),
    [
        ("h", "q", "h"),
        ("h", None, "h"),
        ("", "q", "q"),
        (None, "q", "q"),
        (None, None, None),
        ("", "", None),
        (None, "", None),
        ("", None, None),
    ],
)
def test_extract_api_key(header: str | None, query: str | None, expected: str | None) -> None:
    assert extract_api_key(header, query) == expected


def test_check_api_key() -> None:
    assert check_api_key("secret", "secret")
    assert check_api_key("sécret-ü", "sécret-ü")
    assert not check_api_key("secret", "Secret")
    assert not check_api_key("secret ", "secret")
    assert not check_api_key("secre", "secret")
    assert not check_api_key("", "secret")
    assert not check_api_key(None, "secret")
    # an unconfigured key never matches (the caller reports 500 before asking)
    assert not check_api_key("", "")
    assert not check_api_key(None, "")
    assert not check_api_key("x", "")
    # not encodable as plain UTF-8: still just a mismatch
    assert not check_api_key("\udcff", "secret")


def test_check_api_key_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import hmac

    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert check_api_key("k€y", "k€y")
    assert calls == [("k€y".encode(), "k€y".encode())]
