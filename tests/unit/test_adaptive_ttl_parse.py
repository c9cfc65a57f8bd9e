"""The activity value of the adaptive TTL rule (SPEC §5.6) is read as the Go service reads it,
strconv.ParseInt(value, 10, 64): an optional sign and ASCII decimal digits, within int64.
Anything else (spaces, underscores, other digits, out of range) is `error_fetching_activity`."""

from __future__ import annotations

import pytest

from daisi_ws.cluster.redis_store import decide_ttl
from daisi_ws.config import AdaptiveTTLSettings

NOW = 1_700_000_000
MESSAGE = AdaptiveTTLSettings().message_route  # enabled, 300, 900, 600, 900, 300


@pytest.mark.parametrize(
    "text",
    [
        f" {NOW}",
        f"{NOW} ",
        f" {NOW} ",
        f"{NOW}\n",
        f"\t{NOW}",
        "1_700_000_000",
        "+ 5",
        "+",
        "-",
        "++5",
        "+-5",
        "0x10",
        "1e3",
        "\uff11\uff17",  # fullwidth digits
        "\u0661\u0667",  # Arabic-Indic digits
        "9223372036854775808",  # int64 max + 1: ParseInt's range error
        "-9223372036854775809",
        "1" * 40,
    ],
)
def test_non_go_integers_are_errors(text: str) -> None:
    for value in (text, text.encode()):
        assert decide_ttl(MESSAGE, 123, NOW, value) == (123, "error_fetching_activity", None), value


@pytest.mark.parametrize(
    ("text", "stamp"),
    [
        (f"+{NOW}", NOW),  # ParseInt accepts a leading '+'
        (f"-{NOW}", -NOW),
        (f"000{NOW}", NOW),
        ("-0", 0),
        ("9223372036854775807", 2**63 - 1),
        ("-9223372036854775808", -(2**63)),
    ],
)
def test_go_integers_are_read(text: str, stamp: int) -> None:
    for value in (text, text.encode()):
        ttl, decision, age = decide_ttl(MESSAGE, 123, float(NOW), value)
        assert age == float(NOW) - stamp
        assert decision == ("active" if NOW - stamp <= MESSAGE.activity_threshold_seconds else "inactive_threshold")
        assert ttl == (900 if decision == "active" else 300)
