"""SendQueue (ring + drop policies), fanout and flush_dirty, both twins."""

from __future__ import annotations

import gc
import time
import weakref
from types import ModuleType
from typing import Any

import pytest

from tests.unit.twins import KINDS, load


@pytest.fixture(params=KINDS)
def sq(request: pytest.FixtureRequest) -> ModuleType:
    return load(request.param, "sendqueue")


class Transport:
    """Records writes; `pause_after` writes later it pauses its queue from inside write()."""

    def __init__(self, queue: Any = None, pause_after: int | None = None) -> None:
        self.queue = queue
        self.writes: list[bytes] = []
        self.pause_after = pause_after

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        if self.pause_after is not None and len(self.writes) >= self.pause_after:
            self.queue.paused = True  # what asyncio's pause_writing() does to a Connection


def make(sq: ModuleType, capacity: int = 4, policy: str = "drop_oldest", transport: bool = True) -> Any:
    q = sq.SendQueue(capacity, sq.POLICIES[policy], sq.SendStats())
    if transport:
        q.transport = Transport(q)
    return q


def frames(n: int, start: int = 0) -> list[bytes]:
    return [f"f{i}|".encode() for i in range(start, start + n)]


def test_constants(sq: ModuleType) -> None:
    assert sq.POLICIES == {"drop_oldest": 0, "drop_newest": 1, "block": 2, "close": 3}
    assert (sq.DROP_OLDEST, sq.DROP_NEWEST, sq.BLOCK, sq.CLOSE) == (0, 1, 2, 3)
    assert sq.BLOCK_HARD_LIMIT_FACTOR == 8
    assert sq.SendStats().drops_by_reason() == {
        "buffer_full_dropped_oldest": 0,
        "buffer_full_dropped_newest": 0,
        "buffer_full_block_timeout": 0,
        "buffer_full_closed": 0,
        "socket_closed": 0,
    }


def test_initial_state(sq: ModuleType) -> None:
    stats = sq.SendStats()
    q = sq.SendQueue(3, sq.BLOCK, stats)
    assert (q.capacity, q.policy, q.stats, q.transport) == (3, sq.BLOCK, stats, None)
    assert (q.dirty, q.paused, q.closed, q.overflow, q.full_since, len(q)) == (False, False, False, False, 0.0, 0)


@pytest.mark.parametrize(("args", "message"), [((0, 0), "capacity must be >= 1"), ((1, 9), "unknown policy 9"), ((1, "x"), "unknown policy x")])
def test_bad_arguments(sq: ModuleType, args: tuple[Any, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sq.SendQueue(*args, sq.SendStats())
    with pytest.raises(TypeError):
        sq.SendQueue("3", 0, sq.SendStats())


def test_push_marks_dirty_once_and_flush_coalesces(sq: ModuleType) -> None:
    q = make(sq)
    dirty: list[Any] = []
    for f in frames(3):
        assert q.push(f, dirty) is True
    assert dirty == [q] and q.dirty and len(q) == 3
    assert q.flush() == 3
    assert q.transport.writes == [b"f0|f1|f2|"]
    assert not q.dirty and len(q) == 0
    assert q.flush() == 0  # nothing queued: no empty write
    assert q.transport.writes == [b"f0|f1|f2|"]


def test_single_frame_is_written_as_is(sq: ModuleType) -> None:
    q = make(sq)
    frame = b"only"
    q.push(frame, [])
    q.flush()
    assert q.transport.writes == [frame]


def test_flush_skips_paused_closed_or_unattached(sq: ModuleType) -> None:
    q = make(sq)
    q.push(b"a", [])
    q.paused = True
    assert q.flush() == 0 and len(q) == 1
    q.paused = False
    q.closed = True
    assert q.flush() == 0 and len(q) == 1
    q.closed = False
    t = q.transport
    q.transport = None
    assert q.flush() == 0 and len(q) == 1
    q.transport = t
    assert q.flush() == 1 and t.writes == [b"a"]


def test_ring_wraps_around_in_order(sq: ModuleType) -> None:
    """drop_oldest on a paused full ring keeps the newest `capacity` frames, in order."""
    q = make(sq, capacity=5)
    q.paused = True
    dirty: list[Any] = []
    sent = frames(23)
    for f in sent:
        assert q.push(f, dirty)
    assert len(q) == 5
    assert q.stats.oldest == 18
    assert q.full_since > 0.0
    q.paused = False
    assert q.flush() == 5
    assert q.transport.writes == [b"".join(sent[-5:])]
    assert q.full_since == 0.0
    # and again after the indices moved
    q.paused = True
    for f in frames(8, 100):
        q.push(f, dirty)
    q.paused = False
    q.flush()
    assert q.transport.writes[-1] == b"".join(frames(5, 103))


def test_drop_newest(sq: ModuleType) -> None:
    q = make(sq, capacity=2, policy="drop_newest")
    q.paused = True
    assert [q.push(f, []) for f in frames(4)] == [True, True, False, False]
    assert q.stats.newest == 2 and len(q) == 2
    q.paused = False
    q.flush()
    assert q.transport.writes == [b"f0|f1|"]


def test_block_grows_to_hard_limit_then_overflows(sq: ModuleType) -> None:
    q = make(sq, capacity=2, policy="block")
    q.paused = True
    dirty: list[Any] = []
    limit = 2 * sq.BLOCK_HARD_LIMIT_FACTOR
    for f in frames(limit):
        assert q.push(f, dirty)
    assert len(q) == limit  # the ring grew past capacity
    assert q.push(b"x", dirty) is False
    assert q.overflow and len(q) == 0
    assert q.stats.block_timeout == limit + 1
    assert q.push(b"y", dirty) is False  # overflowed: counted as socket_closed
    assert q.stats.socket_closed == 1


def test_block_keeps_order_past_capacity(sq: ModuleType) -> None:
    q = make(sq, capacity=3, policy="block")
    q.paused = True
    sent = frames(20)
    for f in sent:
        q.push(f, [])
    q.paused = False
    assert q.flush() == 20
    assert q.transport.writes == [b"".join(sent)]


def test_expire_block(sq: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    q = make(sq, capacity=2, policy="block")
    q.paused = True
    for f in frames(3):
        q.push(f, [])
    assert q.full_since == 1000.0
    assert q.expire_block(1004.0, 5.0) is False
    assert q.expire_block(1005.0, 5.0) is True
    assert q.overflow and len(q) == 0 and q.full_since == 0.0
    assert q.stats.block_timeout == 3
    other = make(sq, capacity=2, policy="drop_oldest")
    assert other.expire_block(None, None) is False  # not `block`: arguments never looked at


def test_close_policy_overflow_calls_on_overflow_at_flush(sq: ModuleType) -> None:
    q = make(sq, capacity=2, policy="close")
    q.paused = True
    dirty: list[Any] = []
    q.push(b"a", dirty)
    q.push(b"b", dirty)
    assert q.push(b"c", dirty) is False
    assert q.overflow and len(q) == 0 and q.stats.closed == 3
    assert dirty == [q]
    sq.flush_dirty(dirty)
    assert q.closed and dirty == []  # the base on_overflow() just closes
    assert q.stats.writes == 0


def test_burst_bigger_than_ring_is_written_now(sq: ModuleType) -> None:
    q = make(sq, capacity=3)
    dirty: list[Any] = []
    sent = frames(7)
    for f in sent:
        assert q.push(f, dirty)
    assert q.transport.writes == [b"".join(sent[:3]), b"".join(sent[3:6])]
    assert len(q) == 1 and q.stats.oldest == 0
    q.flush()
    assert q.transport.writes[-1] == sent[6]
    assert q.stats.writes == 3  # the early writes count as well as the flush's


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest", "block", "close"])
def test_burst_write_that_pauses_keeps_the_frame(sq: ModuleType, policy: str) -> None:
    """The write empties the ring; pausing inside it must not drop (or pop from an empty ring)."""
    q = make(sq, capacity=2, policy=policy)
    q.transport.pause_after = 1
    dirty: list[Any] = []
    assert [q.push(f, dirty) for f in frames(3)] == [True, True, True]
    assert q.paused and len(q) == 1 and q.transport.writes == [b"f0|f1|"]
    assert q.stats.drops_by_reason() == sq.SendStats().drops_by_reason()
    assert not q.overflow


def test_discard_pending(sq: ModuleType) -> None:
    q = make(sq, capacity=2)
    q.paused = True
    for f in frames(3):
        q.push(f, [])
    assert q.discard_pending() == 2
    assert q.stats.socket_closed == 2 and len(q) == 0 and q.full_since == 0.0
    assert q.discard_pending() == 0


def test_closed_queue_counts_socket_closed(sq: ModuleType) -> None:
    q = make(sq)
    q.closed = True
    assert q.push(b"a", []) is False
    assert q.stats.socket_closed == 1 and len(q) == 0


def test_capacity_lowered_after_init(sq: ModuleType) -> None:
    q = make(sq, capacity=4)
    q.paused = True
    for f in frames(4):
        q.push(f, [])
    q.capacity = 2  # over capacity: each push drops one, the ring stays at 4
    q.push(b"x", [])
    assert len(q) == 4 and q.stats.oldest == 1
    q.discard_pending()
    q.capacity = 0
    with pytest.raises(IndexError):
        q.push(b"y", [])  # the twins agree even on this nonsense


def test_non_bytes_frames_are_joined_like_bytes(sq: ModuleType) -> None:
    q = make(sq)
    q.push(bytearray(b"ab"), [])
    q.push(memoryview(b"cd"), [])
    q.push(b"ef", [])
    q.flush()
    assert q.transport.writes == [b"abcdef"]
    q.push("text", [])
    q.push(b"x", [])
    with pytest.raises(TypeError):
        q.flush()


def test_duck_typed_stats(sq: ModuleType) -> None:
    class Counters:
        oldest = newest = block_timeout = closed = socket_closed = 0

    c = Counters()
    q = sq.SendQueue(1, sq.DROP_OLDEST, c)
    q.paused = True
    q.push(b"a", [])
    q.push(b"b", [])
    assert c.oldest == 1
    q.stats = None
    with pytest.raises(AttributeError):
        q.push(b"c", [])


def test_fanout_and_flush_dirty(sq: ModuleType) -> None:
    stats = sq.SendStats()
    queues = [sq.SendQueue(2, sq.DROP_OLDEST, stats) for _ in range(5)]
    for q in queues:
        q.transport = Transport(q)
    queues[1].closed = True
    queues[2].paused = True
    dirty: list[Any] = []
    assert sq.fanout(b"e1", set(queues), dirty) == 4
    assert sq.fanout(b"e2", iter(queues), dirty) == 4  # any iterable
    assert sorted(map(id, dirty)) == sorted(id(q) for i, q in enumerate(queues) if i != 1)
    assert stats.socket_closed == 2
    sq.flush_dirty(dirty)
    assert dirty == []
    assert stats.writes == 3  # one per queue written: the paused one writes nothing
    for i, q in enumerate(queues):
        assert q.transport.writes == ([] if i in (1, 2) else [b"e1e2"])
    assert len(queues[2]) == 2 and not queues[2].dirty


def test_fanout_duck_typed_queues(sq: ModuleType) -> None:
    class Fake:
        def __init__(self) -> None:
            self.got: list[bytes] = []
            self.flushed = False

        def push(self, frame: bytes, dirty: list[Any]) -> bool:
            self.got.append(frame)
            return len(self.got) == 1

        def flush(self) -> int:
            self.flushed = True
            return 7

    fakes = [Fake(), Fake()]
    real = make(sq)
    assert sq.fanout(b"x", [fakes[0], real, fakes[1]], []) == 3
    assert sq.fanout(b"y", fakes, []) == 0
    sq.flush_dirty([fakes[0], real])
    assert fakes[0].flushed and real.transport.writes == [b"x"]


def subclass_of(sq: ModuleType) -> type:
    class Conn(sq.SendQueue):  # type: ignore[misc,name-defined]
        __slots__ = ("__weakref__", "name", "overflows")

        def __init__(self, name: str, capacity: int, policy: int, stats: Any) -> None:
            super().__init__(capacity, policy, stats)
            self.name = name
            self.overflows = 0

        def on_overflow(self) -> None:
            self.overflows += 1
            self.closed = True
            self.discard_pending()

    return Conn


def test_python_subclass_with_slots(sq: ModuleType) -> None:
    Conn = subclass_of(sq)
    stats = sq.SendStats()
    c = Conn("a", 1, sq.CLOSE, stats)
    assert isinstance(c, sq.SendQueue)
    assert c.name == "a" and c.capacity == 1 and c.policy == sq.CLOSE
    with pytest.raises(AttributeError):
        c.undeclared = 1  # __slots__: no __dict__
    ref = weakref.ref(c)
    assert ref() is c
    c.transport = Transport(c)
    c.paused = True
    dirty: list[Any] = []
    assert sq.fanout(b"1", {c}, dirty) == 1
    assert sq.fanout(b"2", {c}, dirty) == 0  # close policy: overflow
    assert c.overflow and stats.closed == 2
    sq.flush_dirty(dirty)  # fast C path must still call the Python override
    assert c.overflows == 1 and c.closed
    c.overflow = True
    c.closed = False
    c.flush()
    assert c.overflows == 2
    del c
    gc.collect()
    assert ref() is None


def test_subclass_overrides_of_push_and_flush_are_honoured(sq: ModuleType) -> None:
    class Tagging(sq.SendQueue):  # type: ignore[misc,name-defined]
        __slots__ = ("flushes",)

        def push(self, frame: bytes, dirty: list[Any]) -> bool:
            return bool(super().push(b"<" + frame + b">", dirty))

        def flush(self) -> int:
            self.flushes = getattr(self, "flushes", 0) + 1
            return int(super().flush())

    q = Tagging(4, sq.DROP_OLDEST, sq.SendStats())
    q.transport = Transport(q)
    dirty: list[Any] = []
    assert sq.fanout(b"a", [q], dirty) == 1
    sq.flush_dirty(dirty)
    assert q.transport.writes == [b"<a>"] and q.flushes == 1 and q.stats.writes == 1


def test_dirty_list_may_be_any_appendable(sq: ModuleType) -> None:
    class Sink:
        def __init__(self) -> None:
            self.items: list[Any] = []

        def append(self, item: Any) -> None:
            self.items.append(item)

    q = make(sq)
    sink = Sink()
    q.push(b"a", sink)
    assert sink.items == [q]
    q2 = make(sq)
    with pytest.raises(AttributeError):
        q2.push(b"a", None)
