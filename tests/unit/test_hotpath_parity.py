"""Parity: the compiled twins behave exactly as the pure ones.

hypothesis drives `daisi_ws._pure.x` and `daisi_ws._native.x` with the same random
operation sequences and compares every result (or exception), every counter and every byte
written. Under DAISI_WS_NO_EXTENSIONS=1 there is nothing to compare and the module is
skipped; otherwise a missing compiled module fails it (ImportError).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.twins import FORCE_PURE, both

pytestmark = pytest.mark.skipif(FORCE_PURE, reason="DAISI_WS_NO_EXTENSIONS=1: pure twins only")

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(call: Callable[[], Any]) -> tuple[Any, ...]:
    """A call's result, or its exception (type always; message unless it is Cython's own
    argument-conversion TypeError wording)."""
    try:
        return ("ok", call())
    except TypeError as exc:
        return ("err", type(exc).__name__)
    except Exception as exc:  # the point is comparing whatever is raised
        return ("err", type(exc).__name__, str(exc))


# --- the public surface ------------------------------------------------------------------------


def api(mod: ModuleType) -> dict[str, Any]:
    out = {}
    for name in dir(mod):
        if name.startswith("_"):
            continue
        value = getattr(mod, name)
        if isinstance(value, (int, bytes, str, dict, float)) or (
            callable(value) and getattr(value, "__module__", None) == mod.__name__
        ):
            out[name] = value
    return out


@pytest.mark.parametrize("module", ["framing", "sendqueue", "tokencache"])
def test_same_public_api(module: str) -> None:
    pure, native = both(module)
    a, b = api(pure), api(native)
    assert sorted(a) == sorted(b)
    for name, value in a.items():
        if isinstance(value, type):
            members = {n for n in dir(value) if not n.startswith("_")}
            assert members == {n for n in dir(b[name]) if not n.startswith("_")}, name
        elif not callable(value):
            assert value == b[name], name


# --- framing -----------------------------------------------------------------------------------

WHITESPACE = st.sampled_from([b"", b" ", b"\t", b"\r\n", b" \n\t\r "])
JSONISH = st.builds(
    lambda ws, body, close: b"{" + ws + body + close,
    WHITESPACE,
    st.sampled_from([b"", b'"a":1', b'"event_type":"x","b":[1,2]', b"}"]) | st.binary(max_size=40),
    st.sampled_from([b"}", b"", b" }"]),
)
PAYLOADS = JSONISH | st.binary(max_size=400)
EVENT_TYPES = st.none() | st.sampled_from([b'"messages"', b'"chats"', b'""']) | st.binary(max_size=24)


@SETTINGS
@given(PAYLOADS, EVENT_TYPES)
def test_envelope_and_frames_agree(payload: bytes, event_type: bytes | None) -> None:
    pure, native = both("framing")
    for fn in ("build_event_envelope", "build_event_frame"):
        for p in (payload, bytearray(payload)):
            assert outcome(lambda m=pure, fn=fn, p=p: getattr(m, fn)(p, event_type)) == outcome(
                lambda m=native, fn=fn, p=p: getattr(m, fn)(p, event_type)
            ), fn
    assert native.build_event_frame(payload, event_type) == native.build_text_frame(
        native.build_event_envelope(payload, event_type)
    )
    assert pure.build_text_frame(payload) == native.build_text_frame(payload)


@SETTINGS
@given(st.integers(0, 2**63 - 1) | st.sampled_from([0, 1, 125, 126, 127, 65535, 65536]), st.integers(0, 15), st.booleans())
def test_frame_header_agrees(length: int, opcode: int, rsv1: bool) -> None:
    pure, native = both("framing")
    assert pure.build_frame_header(length, opcode, rsv1) == native.build_frame_header(length, opcode, rsv1)
    assert pure.build_frame_header(length) == native.build_frame_header(length)


@SETTINGS
@given(st.text(max_size=30), st.text(max_size=60), st.text(max_size=30), st.integers(0, 65535), st.text(max_size=40))
def test_error_and_close_frames_agree(code: str, message: str, details: str, close_code: int, reason: str) -> None:
    pure, native = both("framing")
    assert pure.build_error_frame(code, message, details) == native.build_error_frame(code, message, details)
    assert pure.build_error_frame(code, message) == native.build_error_frame(code, message)
    assert pure.build_close_frame(close_code, reason) == native.build_close_frame(close_code, reason)
    assert pure.build_close_frame(close_code) == native.build_close_frame(close_code)


BAD_FRAMING_CALLS: list[tuple[str, tuple[Any, ...]]] = [
    ("build_frame_header", (-1,)),
    ("build_frame_header", ("5",)),
    ("build_frame_header", (1.5,)),
    ("build_frame_header", (None,)),
    ("build_frame_header", (5, 256)),
    ("build_frame_header", (300, 256)),
    ("build_frame_header", (70000, -1)),
    ("build_frame_header", (5, "x")),
    ("build_text_frame", ("text",)),
    ("build_text_frame", (None,)),
    ("build_text_frame", (memoryview(b"abc"),)),
    ("build_event_envelope", (None, None)),
    ("build_event_envelope", ("{}", b'"x"')),
    ("build_event_envelope", (b"{}", "x")),
    ("build_event_envelope", (b'{"a":1}', 5)),
    ("build_event_envelope", (memoryview(b'{"a":1}'), b'"x"')),
    ("build_event_frame", (b"{}", "x")),
    ("build_event_frame", (None, None)),
    ("build_error_frame", (object(), "m")),
    ("build_close_frame", (70000,)),
    ("build_close_frame", (-1,)),
    ("build_close_frame", ("x",)),
    ("build_close_frame", (1000, None)),
    ("build_close_frame", (1000, b"bytes")),
]


@pytest.mark.parametrize(("fn", "args"), BAD_FRAMING_CALLS, ids=[f"{f}{a!r}"[:60] for f, a in BAD_FRAMING_CALLS])
def test_framing_bad_arguments_agree(fn: str, args: tuple[Any, ...]) -> None:
    pure, native = both("framing")
    assert outcome(lambda: getattr(pure, fn)(*args)) == outcome(lambda: getattr(native, fn)(*args))


def test_struct_error_is_struct_error() -> None:
    _pure, native = both("framing")
    with pytest.raises(struct.error):
        native.build_frame_header(300, 256)


# --- send queues -------------------------------------------------------------------------------

FRAMES = [b"", b"a", b"bb", b"x" * 130, bytes(range(256))]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeTransport:
    """Records every write; per its schedule, pauses the queue from inside write()."""

    def __init__(self, queue: Any, schedule: list[bool]) -> None:
        self.queue = queue
        self.schedule = schedule
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        if self.schedule and self.schedule[(len(self.writes) - 1) % len(self.schedule)]:
            self.queue.paused = True  # asyncio calls pause_writing() synchronously in write()


class World:
    """A set of queues of one twin, some plain, some Connection-like Python subclasses."""

    def __init__(self, sq: ModuleType, specs: list[tuple[int, int, bool, bool, bool]], schedule: list[bool]) -> None:
        class Conn(sq.SendQueue):  # type: ignore[misc,name-defined]
            __slots__ = ("__weakref__", "index", "overflows")

            def __init__(self, index: int, capacity: int, policy: int, stats: Any) -> None:
                super().__init__(capacity, policy, stats)
                self.index = index
                self.overflows = 0

            def on_overflow(self) -> None:  # as Connection.close(1008, deliver_queued=False)
                self.overflows += 1
                self.closed = True
                self.discard_pending()

        self.sq = sq
        self.stats = sq.SendStats()
        self.queues: list[Any] = []
        self.transports: list[FakeTransport] = []
        for i, (capacity, policy, subclass, attached, paused) in enumerate(specs):
            q = Conn(i, capacity, policy, self.stats) if subclass else sq.SendQueue(capacity, policy, self.stats)
            t = FakeTransport(q, schedule)
            q.transport = t if attached else None
            q.paused = paused
            self.queues.append(q)
            self.transports.append(t)
        self.dirty: list[Any] = []

    def q(self, i: int) -> Any:
        return self.queues[i % len(self.queues)]

    def apply(self, op: tuple[Any, ...], clock: Clock) -> Any:
        kind = op[0]
        sq = self.sq
        if kind == "push":
            return outcome(lambda: self.q(op[1]).push(FRAMES[op[2]], self.dirty))
        if kind == "burst":  # many events for one socket within one tick
            q = self.q(op[1])
            burst = [FRAMES[(op[2] + k) % len(FRAMES)] for k in range(op[3])]
            return [outcome(lambda f=f: q.push(f, self.dirty)) for f in burst]
        if kind == "fanout":
            members = [q for j, q in enumerate(self.queues) if op[1] >> j & 1]
            return outcome(lambda: sq.fanout(FRAMES[op[2]], members, self.dirty))
        if kind == "flush":
            return outcome(lambda: self.q(op[1]).flush())
        if kind == "flush_dirty":
            return outcome(lambda: sq.flush_dirty(self.dirty))
        if kind == "pause":
            self.q(op[1]).paused = True
            return None
        if kind == "resume":  # Connection.resume_writing()
            q = self.q(op[1])
            q.paused = False
            return outcome(q.flush)
        if kind == "close":  # Connection.connection_lost()
            q = self.q(op[1])
            q.closed = True
            return outcome(q.discard_pending)
        if kind == "discard":
            return outcome(self.q(op[1]).discard_pending)
        if kind == "expire":
            return outcome(lambda: self.q(op[1]).expire_block(clock.now, op[2]))
        if kind == "on_overflow":  # the gateway's sweep after expire_block()
            return outcome(self.q(op[1]).on_overflow)
        if kind == "capacity":
            self.q(op[1]).capacity = op[2]
            return None
        if kind == "detach":
            self.q(op[1]).transport = None
            return None
        if kind == "attach":
            i = op[1] % len(self.queues)
            self.queues[i].transport = self.transports[i]
            return None
        raise AssertionError(op)

    def snapshot(self) -> Any:
        queues = [
            (
                len(q),
                q.dirty,
                q.paused,
                q.closed,
                q.overflow,
                q.full_since,
                q.capacity,
                q.policy,
                q.transport is None,
                getattr(q, "overflows", None),
            )
            for q in self.queues
        ]
        dirty = [next(j for j, x in enumerate(self.queues) if x is q) for q in self.dirty]
        return queues, dirty, self.stats.drops_by_reason(), self.stats.writes, [t.writes for t in self.transports]


Q = st.integers(0, 3)
F = st.integers(0, len(FRAMES) - 1)
QUEUE_OPS = st.one_of(
    st.tuples(st.just("push"), Q, F),
    st.tuples(st.just("push"), Q, F),
    st.tuples(st.just("burst"), Q, F, st.integers(1, 45)),
    st.tuples(st.just("fanout"), st.integers(0, 15), F),
    st.tuples(st.just("fanout"), st.integers(0, 15), F),
    st.tuples(st.just("flush"), Q),
    st.tuples(st.just("flush_dirty")),
    st.tuples(st.just("pause"), Q),
    st.tuples(st.just("resume"), Q),
    st.tuples(st.just("resume"), Q),
    st.tuples(st.just("close"), Q),
    st.tuples(st.just("discard"), Q),
    st.tuples(st.just("expire"), Q, st.sampled_from([0.0, 0.5, 2.0, 10.0])),
    st.tuples(st.just("on_overflow"), Q),
    st.tuples(st.just("capacity"), Q, st.integers(0, 6)),
    st.tuples(st.just("detach"), Q),
    st.tuples(st.just("attach"), Q),
    st.tuples(st.just("tick"), st.sampled_from([0.25, 1.0, 5.0])),
)
SPECS = st.lists(
    st.tuples(st.integers(1, 5), st.sampled_from([0, 1, 2, 3]), st.booleans(), st.booleans(), st.booleans()),
    min_size=1,
    max_size=4,
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SPECS, st.lists(st.booleans(), max_size=4), st.lists(QUEUE_OPS, min_size=8, max_size=80))
def test_sendqueue_sequences_agree(
    specs: list[tuple[int, int, bool, bool, bool]], schedule: list[bool], ops: list[tuple[Any, ...]]
) -> None:
    pure, native = both("sendqueue")
    clock = Clock()
    with mock.patch.object(time, "monotonic", clock):
        a, b = World(pure, specs, schedule), World(native, specs, schedule)
        assert a.snapshot() == b.snapshot()
        for step, op in enumerate(ops):
            if op[0] == "tick":
                clock.now += op[1]
                continue
            ra, rb = a.apply(op, clock), b.apply(op, clock)
            assert ra == rb, (step, op)
            assert a.snapshot() == b.snapshot(), (step, op)


@SETTINGS
@given(st.lists(st.tuples(st.integers(1, 4), st.booleans()), min_size=1, max_size=12), F)
def test_fanout_over_sets_agrees(shape: list[tuple[int, bool]], f: int) -> None:
    """Sets iterate in a different order per twin; per-queue outcomes and counters agree."""
    pure, native = both("sendqueue")
    results = []
    for sq in (pure, native):
        stats = sq.SendStats()
        queues = []
        for capacity, paused in shape:
            q = sq.SendQueue(capacity, sq.DROP_OLDEST, stats)
            q.paused = paused
            queues.append(q)
        dirty: list[Any] = []
        delivered = [sq.fanout(FRAMES[f], set(queues), dirty) for _ in range(5)]
        results.append((delivered, [len(q) for q in queues], len(dirty), stats.drops_by_reason()))
    assert results[0] == results[1]


def _drop_with_stats(m: ModuleType, stats: Any) -> Any:
    q = m.SendQueue(1, m.DROP_OLDEST, stats)
    q.paused = True
    q.push(b"a", [])
    return q.push(b"b", [])  # the drop counts into `stats`


BAD_QUEUE_CALLS: list[Callable[[ModuleType], Any]] = [
    lambda m: m.SendQueue(0, 0, m.SendStats()),
    lambda m: m.SendQueue(-3, 0, m.SendStats()),
    lambda m: m.SendQueue(1, 9, m.SendStats()),
    lambda m: m.SendQueue(1, -1, m.SendStats()),
    lambda m: m.SendQueue(1, "drop_oldest", m.SendStats()),
    lambda m: m.SendQueue("3", 0, m.SendStats()),
    lambda m: m.SendQueue(None, 0, m.SendStats()),
    lambda m: m.SendQueue(1, 0),
    lambda m: m.SendQueue(1, 0, m.SendStats()).push(b"a", None),
    lambda m: _drop_with_stats(m, None),
    lambda m: _drop_with_stats(m, object()),
    lambda m: m.fanout(b"a", None, []),
    lambda m: m.fanout(b"a", [object()], []),
    lambda m: m.flush_dirty(None),
    lambda m: m.flush_dirty([object()]),
]


@pytest.mark.parametrize("call", BAD_QUEUE_CALLS)
def test_sendqueue_bad_arguments_agree(call: Callable[[ModuleType], Any]) -> None:
    pure, native = both("sendqueue")
    a, b = outcome(lambda: call(pure)), outcome(lambda: call(native))
    assert a[0] == "err" and a == b


def test_block_expiry_with_bad_clock_agrees() -> None:
    pure, native = both("sendqueue")
    outs = []
    for sq in (pure, native):
        q = sq.SendQueue(1, sq.BLOCK, sq.SendStats())
        q.paused = True
        q.push(b"a", [])
        q.push(b"b", [])
        outs.append((outcome(lambda q=q: q.expire_block(None, 1.0)), outcome(lambda q=q: q.expire_block(2e9, None))))
    assert outs[0] == outs[1]


# --- token cache -------------------------------------------------------------------------------

TOKENS = ["tok-a", "tok-b", "tok-c", "tok-d", "tok-e", "v1." + "Z" * 200]
T = st.integers(0, len(TOKENS) - 1)
CACHE_OPS = st.one_of(
    st.tuples(st.just("get"), T),
    st.tuples(st.just("get"), T),
    st.tuples(st.just("put"), T, st.integers(0, 3), st.sampled_from([-1.0, 0.0, 0.5, 1, 3.0, 100.0])),
    st.tuples(st.just("put"), T, st.integers(0, 3), st.sampled_from([-1.0, 0.0, 0.5, 1, 3.0, 100.0])),
    st.tuples(st.just("clear")),
    st.tuples(st.just("tick"), st.sampled_from([0.5, 1.0, 2.0])),
    st.tuples(st.just("max"), st.integers(0, 4)),
)


def fresh(s: str) -> str:
    return s[:1] + s[1:]  # equal, but a new object without a cached hash


@settings(max_examples=600, deadline=None)
@given(st.integers(0, 4), st.lists(CACHE_OPS, min_size=4, max_size=80))
def test_tokencache_sequences_agree(max_entries: int, ops: list[tuple[Any, ...]]) -> None:
    pure, native = both("tokencache")
    a, b = pure.TokenCache(max_entries), native.TokenCache(max_entries)
    now = 0.0
    for step, op in enumerate(ops):
        kind = op[0]
        if kind == "tick":
            now += op[1]
            continue
        results = []
        for cache in (a, b):
            if kind == "get":
                token = fresh(TOKENS[op[1]])
                results.append(outcome(lambda c=cache, t=token, n=now: c.get(t, n)))
            elif kind == "put":
                args = (TOKENS[op[1]], ("claims", op[2]), now + op[3])
                results.append(outcome(lambda c=cache, args=args: c.put(*args)))
            elif kind == "clear":
                results.append(outcome(cache.clear))
            else:
                cache.max_entries = op[1]
                results.append(None)
        assert results[0] == results[1], (step, op)
        assert (a.hits, a.misses, len(a), a.max_entries) == (b.hits, b.misses, len(b), b.max_entries), (step, op)
