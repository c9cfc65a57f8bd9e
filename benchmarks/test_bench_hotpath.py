"""Group `hotpath`: the compiled twins next to the pure ones, in the same run.

Each benchmark asserts the path it measures (every lookup a hit, every frame delivered,
every push a drop, ...). Batched benchmarks set `ops_per_call`; the per-op figure is the
median divided by it. Targets (issue 3, this machine, native): token-cache hit with a fresh
str key <= 200 ns; fan-out of one frame to 500 queues <= 25 us, <= 35 us when every queue is
full and paused (drop_oldest); event frame 300 B <= 250 ns, 64 KiB <= 10 us; native >= 2x
pure on fan-out and ring operations. Results: benchmarks/RESULTS-hotpath.md.
"""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.harness import CountingTransport, make_queues, message_event

pytestmark = pytest.mark.benchmark(group="hotpath")

QUEUES = 500
KEYS = 1000
TOKEN_PREFIX = "v1.gAAAAAB" + "Qm9keVRva2VuU2FtcGxl" * 8  # ~170 chars, like an AES-GCM token
EVENT_TYPE = b'"messages"'


def rounds(smoke: bool, full: int) -> dict[str, int]:
    return {"rounds": 1, "warmup_rounds": 0} if smoke else {"rounds": full, "warmup_rounds": 5}


# --- token cache ---------------------------------------------------------------------------------


def test_tokencache_hit_fresh_key(benchmark: Any, twin: Any, smoke: bool) -> None:
    """`get()` hits; every key is a new str object (built by concatenation, hash not cached),
    as a token parsed out of a request is. 1000 lookups per timed call."""
    suffixes = [f".{i:06d}" for i in range(KEYS)]
    cache = twin.TokenCache(KEYS * 2)
    for s in suffixes:
        cache.put(TOKEN_PREFIX + s, ("claims", s), 2e9)
    now = 1.7e9
    get = cache.get
    setups = [0]

    def fresh_keys() -> tuple[tuple[list[str]], dict[str, Any]]:
        setups[0] += 1
        return ([TOKEN_PREFIX + s for s in suffixes],), {}

    def lookups(keys: list[str]) -> None:
        for key in keys:
            get(key, now)

    benchmark.extra_info["ops_per_call"] = KEYS
    benchmark.pedantic(lookups, setup=fresh_keys, **rounds(smoke, 300))
    assert cache.hits == KEYS * setups[0] and cache.misses == 0


# --- fan-out -------------------------------------------------------------------------------------


def test_fanout_500_queues(benchmark: Any, twin: Any, smoke: bool) -> None:
    """One shared frame pushed into 500 queues (Connection-like Python subclasses), each
    becoming dirty; no drops. The queues are flushed between rounds (not timed)."""
    frame = twin.build_event_frame(message_event(), EVENT_TYPE)
    queues = make_queues(twin, QUEUES, capacity=100)
    members = set(queues)
    dirty: list[Any] = []
    delivered: list[int] = []

    def flushed() -> None:
        twin.flush_dirty(dirty)

    def push() -> None:
        delivered.append(twin.fanout(frame, members, dirty))

    benchmark.pedantic(push, setup=flushed, **rounds(smoke, 500))
    twin.flush_dirty(dirty)
    assert delivered and all(d == QUEUES for d in delivered)
    assert queues[0].stats.drops_by_reason() == twin.SendStats().drops_by_reason()  # nothing dropped
    assert all(q.transport.writes == len(delivered) and len(q) == 0 for q in queues)


def test_fanout_500_full_paused_drop_oldest(benchmark: Any, twin: Any, smoke: bool) -> None:
    """The same into 500 queues that are full and paused: every push drops the oldest."""
    frame = twin.build_event_frame(message_event(), EVENT_TYPE)
    capacity = 64
    queues = make_queues(twin, QUEUES, capacity=capacity)
    dirty: list[Any] = []
    for q in queues:
        q.paused = True
        for _ in range(capacity):
            q.push(frame, dirty)
    members = set(queues)
    stats = queues[0].stats
    calls = [0]

    def push() -> int:
        calls[0] += 1
        return int(twin.fanout(frame, members, dirty))

    assert benchmark(push) == QUEUES
    assert stats.oldest == QUEUES * calls[0]
    assert all(len(q) == capacity and q.transport.writes == 0 for q in queues)


def test_flush_dirty_500_queues(benchmark: Any, twin: Any, smoke: bool) -> None:
    """The coalesced flush after a fan-out: 500 dirty queues, one transport write each."""
    frame = twin.build_event_frame(message_event(), EVENT_TYPE)
    queues = make_queues(twin, QUEUES, capacity=100)
    members = set(queues)
    dirty: list[Any] = []
    flushes = 0

    def fanned_out() -> None:
        twin.fanout(frame, members, dirty)

    def flush() -> None:
        nonlocal flushes
        twin.flush_dirty(dirty)
        flushes += 1

    benchmark.pedantic(flush, setup=fanned_out, **rounds(smoke, 500))
    assert flushes and queues[0].stats.writes == QUEUES * flushes
    assert all(q.transport.writes == flushes for q in queues)


# --- ring ----------------------------------------------------------------------------------------


def test_ring_push32_flush(benchmark: Any, twin: Any, smoke: bool) -> None:
    """One socket under a burst: 32 pushes, then one flush joining them into one write."""
    frames = [twin.build_event_frame(message_event(seq=i), EVENT_TYPE) for i in range(32)]
    q = twin.SendQueue(64, twin.POLICIES["drop_oldest"], twin.SendStats())
    q.transport = CountingTransport()
    dirty: list[Any] = []
    push, flush = q.push, q.flush
    calls = [0]

    def burst() -> None:
        calls[0] += 1
        for f in frames:
            push(f, dirty)
        flush()
        dirty.clear()

    benchmark.extra_info["ops_per_call"] = 33
    benchmark(burst)
    assert q.transport.writes == calls[0]
    assert q.transport.bytes == calls[0] * sum(map(len, frames))
    assert q.stats.drops_by_reason() == twin.SendStats().drops_by_reason()


def test_ring_drop_oldest_paused(benchmark: Any, twin: Any, smoke: bool) -> None:
    """One paused socket with a full ring: 100 pushes, each dropping the oldest frame."""
    frames = [twin.build_event_frame(message_event(seq=i), EVENT_TYPE) for i in range(100)]
    q = twin.SendQueue(64, twin.POLICIES["drop_oldest"], twin.SendStats())
    q.transport = CountingTransport()
    q.paused = True
    dirty: list[Any] = []
    for f in frames[:64]:
        q.push(f, dirty)
    push = q.push
    calls = [0]

    def pushes() -> None:
        calls[0] += 1
        for f in frames:
            push(f, dirty)

    benchmark.extra_info["ops_per_call"] = len(frames)
    benchmark(pushes)
    assert q.stats.oldest == len(frames) * calls[0]
    assert len(q) == 64 and q.transport.writes == 0


# --- framing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [300, 65536], ids=["300B", "64KiB"])
def test_event_frame_encode(benchmark: Any, twin: Any, size: int, smoke: bool) -> None:
    """Header + envelope (`event_type` inserted) + payload, from raw payload bytes."""
    head = b'{"event_id":"evt-1","company_id":"c","body":"'
    payload = head + b"x" * (size - len(head) - 2) + b'"}'
    assert len(payload) == size
    build = twin.build_event_frame
    frame = benchmark(build, payload, EVENT_TYPE)
    envelope = b'{"type":"event","payload":{"event_type":"messages",' + payload[1:] + b"}"
    assert frame == twin.build_frame_header(len(envelope)) + envelope
