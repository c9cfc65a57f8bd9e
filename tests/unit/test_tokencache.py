"""TokenCache: bounded, per-entry deadline, oldest-insertion eviction, counters; both twins."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from tests.unit.twins import KINDS, load


@pytest.fixture(params=KINDS)
def tc(request: pytest.FixtureRequest) -> ModuleType:
    return load(request.param, "tokencache")


def fresh(s: str) -> str:
    """An equal string that is a different object (and has no cached hash)."""
    head, tail = s[:1], s[1:]
    out = head + tail
    assert out == s
    return out


def test_hit_miss_and_counters(tc: ModuleType) -> None:
    cache = tc.TokenCache(10)
    assert cache.get("t1", 0.0) is None
    cache.put("t1", {"user": "u"}, 100.0)
    assert cache.get(fresh("t1"), 50.0) == {"user": "u"}
    assert cache.get("t1", 99.999) == {"user": "u"}
    assert (cache.hits, cache.misses, len(cache)) == (2, 1, 1)


def test_long_fresh_key_hits(tc: ModuleType) -> None:
    token = "v1." + "A" * 300
    cache = tc.TokenCache(4)
    cache.put(token, "claims", 10.0)
    key = fresh(token)  # built at run time: not the stored object
    assert key is not token
    assert cache.get(key, 1.0) == "claims"
    assert cache.hits == 1


def test_expired_entry_is_removed_on_lookup(tc: ModuleType) -> None:
    cache = tc.TokenCache(10)
    cache.put("t", "c", 10.0)
    assert cache.get("t", 10.0) is None  # deadline is exclusive
    assert len(cache) == 0 and cache.misses == 1
    assert cache.get("t", 0.0) is None and cache.misses == 2


def test_int_deadlines_and_clocks(tc: ModuleType) -> None:
    cache = tc.TokenCache(10)
    cache.put("t", "c", 10)
    assert cache.get("t", 9) == "c"
    assert cache.get("t", 9.5) == "c"
    cache.put("u", "d", 10.5)
    assert cache.get("u", 10) == "d"


def test_evicts_oldest_insertion(tc: ModuleType) -> None:
    cache = tc.TokenCache(3)
    for name in "abc":
        cache.put(name, name.upper(), 100.0)
    cache.put("a", "A2", 100.0)  # an update keeps its insertion position
    cache.put("d", "D", 100.0)  # evicts "a", the oldest insertion
    assert len(cache) == 3
    assert cache.get("a", 0.0) is None
    assert [cache.get(k, 0.0) for k in "bcd"] == ["B", "C", "D"]
    cache.put("e", "E", 100.0)
    assert cache.get("b", 0.0) is None


def test_zero_entries_caches_nothing(tc: ModuleType) -> None:
    cache = tc.TokenCache(0)
    cache.put("t", "c", 100.0)
    assert len(cache) == 0 and cache.get("t", 0.0) is None
    assert cache.max_entries == 0


def test_clear_keeps_counters(tc: ModuleType) -> None:
    cache = tc.TokenCache(5)
    cache.put("t", "c", 100.0)
    cache.get("t", 0.0)
    cache.get("x", 0.0)
    cache.clear()
    assert len(cache) == 0 and (cache.hits, cache.misses) == (1, 1)
    cache.hits = cache.misses = 0  # the metrics layer may reset them
    assert (cache.hits, cache.misses) == (0, 0)


def test_none_value_is_a_hit(tc: ModuleType) -> None:
    cache = tc.TokenCache(5)
    cache.put("t", None, 100.0)
    assert cache.get("t", 0.0) is None
    assert (cache.hits, cache.misses) == (1, 0)


def test_max_entries_is_settable(tc: ModuleType) -> None:
    cache = tc.TokenCache(1)
    cache.max_entries = 2
    cache.put("a", 1, 9.0)
    cache.put("b", 2, 9.0)
    assert len(cache) == 2


@pytest.mark.parametrize(
    ("call", "exc"),
    [
        (lambda m: m.TokenCache(-1), ValueError),
        (lambda m: m.TokenCache("x"), TypeError),
        (lambda m: m.TokenCache(3).get([], 0.0), TypeError),
        (lambda m: m.TokenCache(3).put([], 1, 0.0), TypeError),
    ],
)
def test_bad_arguments(tc: ModuleType, call: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        call(tc)


def test_bad_clock_only_matters_on_a_hit(tc: ModuleType) -> None:
    cache = tc.TokenCache(3)
    assert cache.get("absent", None) is None
    cache.put("t", "c", 5.0)
    with pytest.raises(TypeError):
        cache.get("t", None)
