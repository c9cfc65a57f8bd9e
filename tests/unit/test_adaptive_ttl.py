"""The adaptive TTL rule (SPEC §5.6) as a pure function, and kill-channel parsing (§5.4)."""

from __future__ import annotations

import pytest

from daisi_ws.cluster.redis_store import ERROR, decide_ttl, parse_kill
from daisi_ws.config import AdaptiveRule, AdaptiveTTLSettings

NOW = 1_700_000_000.0
MESSAGE = AdaptiveTTLSettings().message_route  # enabled, 300, 900, 600, 900, 300
SESSION = AdaptiveTTLSettings().session_lock  # disabled, 15, 30, 120, 30, 15


def rule(**kw: int) -> AdaptiveRule:
    base = dict(
        enabled=True,
        min_ttl_seconds=300,
        max_ttl_seconds=900,
        activity_threshold_seconds=600,
        active_ttl_seconds=900,
        inactive_ttl_seconds=300,
    )
    base.update(kw)
    return AdaptiveRule(**base)  # type: ignore[arg-type]


def test_defaults_match_spec() -> None:
    assert AdaptiveRule(True, 300, 900, 600, 900, 300) == MESSAGE
    assert AdaptiveRule(False, 15, 30, 120, 30, 15) == SESSION
    assert AdaptiveTTLSettings().chat_route == AdaptiveRule(False, 300, 900, 600, 900, 300)


def test_disabled_rule_gives_default() -> None:
    assert decide_ttl(SESSION, 30, NOW, b"123") == (30, "disabled_config", None)
    assert decide_ttl(rule(enabled=False), 300, NOW, None) == (300, "disabled_config", None)


def test_absent_key_is_inactive() -> None:
    assert decide_ttl(MESSAGE, 300, NOW, None) == (300, "inactive_no_key", None)


@pytest.mark.parametrize("age", [0, 1, 599, 600])
def test_recent_activity_is_active(age: int) -> None:
    value = str(int(NOW) - age).encode()
    assert decide_ttl(MESSAGE, 300, NOW, value) == (900, "active", float(age))


@pytest.mark.parametrize("age", [601, 3600, 10**6])
def test_old_activity_is_inactive(age: int) -> None:
    value = str(int(NOW) - age)
    assert decide_ttl(MESSAGE, 300, NOW, value) == (300, "inactive_threshold", float(age))


def test_future_timestamp_counts_as_active() -> None:
    ttl, decision, age = decide_ttl(MESSAGE, 300, NOW, str(int(NOW) + 50).encode())
    assert (ttl, decision) == (900, "active")
    assert age == -50.0


@pytest.mark.parametrize("value", [b"", b"abc", b"1.5", b"12x", ERROR, RuntimeError("down")])
def test_errors_and_garbage_give_default(value: object) -> None:
    assert decide_ttl(MESSAGE, 123, NOW, value) == (123, "error_fetching_activity", None)


def test_clamped_to_min_and_max() -> None:
    r = rule(min_ttl_seconds=400, max_ttl_seconds=500, active_ttl_seconds=900, inactive_ttl_seconds=100)
    assert decide_ttl(r, 300, NOW, str(int(NOW)).encode())[0] == 500  # capped
    assert decide_ttl(r, 300, NOW, None)[0] == 400  # raised
    assert decide_ttl(r, 300, NOW, b"1")[0] == 400


def test_session_lock_rule_when_enabled() -> None:
    r = AdaptiveRule(True, 15, 30, 120, 30, 15)
    assert decide_ttl(r, 30, NOW, str(int(NOW) - 10).encode()) == (30, "active", 10.0)
    assert decide_ttl(r, 30, NOW, str(int(NOW) - 121).encode()) == (15, "inactive_threshold", 121.0)
    assert decide_ttl(r, 30, NOW, None) == (15, "inactive_no_key", None)


# --- kill channels (SPEC §5.4) ---------------------------------------------------------------
PAYLOAD = b'{"new_pod_id":"pod-2"}'


def test_user_and_admin_kills() -> None:
    assert parse_kill("session_kill:c:a:u", PAYLOAD) == ("session:c:a:u", "pod-2")
    assert parse_kill("session_kill:admin:boss", PAYLOAD) == ("session:admin:boss", "pod-2")


@pytest.mark.parametrize(
    "channel",
    [
        "session_kill:c:a",  # two parts
        "session_kill:c:a:u:x",  # four parts
        "session_kill:admin:x:y",  # admin with a further ':'
        "session_kill:admin:",  # empty admin id
        "session_kill:c::u",  # empty part
        "session_other:c:a:u",
    ],
)
def test_other_channels_are_skipped(channel: str) -> None:
    assert parse_kill(channel, PAYLOAD) is None


@pytest.mark.parametrize(
    "payload",
    [b"", b"not json", b"[]", b"{}", b'{"new_pod_id":5}', b'{"new_pod_id":null}', b'"pod-2"'],
)
def test_payloads_without_string_new_pod_id_are_skipped(payload: bytes) -> None:
    assert parse_kill("session_kill:c:a:u", payload) is None


def test_extra_payload_fields_are_ignored() -> None:
    assert parse_kill("session_kill:c:a:u", b'{"x":1,"new_pod_id":"p"}') == ("session:c:a:u", "p")
