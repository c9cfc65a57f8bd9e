"""Per-socket outbound FIFO with SPEC §4.5 drop policies, fan-out and coalesced flushing.

A socket's `SendQueue` holds data frames not yet handed to its transport. Fan-out pushes one
shared frame into many queues and lists each queue that became dirty; one flush per loop
tick writes each dirty queue's frames with ONE transport write. While the transport pushes
back (`paused`), frames wait here and the policy bounds them.

That write goes straight to the socket with send() when the transport is asyncio's selector
socket transport and holds nothing: what `transport.write` would do first, without its
bookkeeping (~15 % of a lone send here). Anything else, a partial send included, goes
through `transport.write`, which buffers it, watches the socket and reports errors.
"""

from __future__ import annotations

import socket
import time
from asyncio import selector_events
from collections import deque
from typing import Any

DROP_OLDEST = 0
DROP_NEWEST = 1
BLOCK = 2
CLOSE = 3
POLICIES = {"drop_oldest": DROP_OLDEST, "drop_newest": DROP_NEWEST, "block": BLOCK, "close": CLOSE}
# `block` keeps every frame past capacity until write_timeout; this multiple of the capacity
# is the hard memory bound after which the socket is closed at once.
BLOCK_HARD_LIMIT_FACTOR = 8

# The transport class whose write() starts with a send() when its buffer is empty, and the
# attributes that say whether it may: nothing buffered, not closing, connection not lost.
_SELECTOR_TRANSPORT: Any = getattr(selector_events, "_SelectorSocketTransport", None)
_DIRECT_STATE = ("_buffer", "_closing", "_conn_lost")


def _direct_socket(transport: Any) -> socket.socket | None:
    """The socket a queue may send() to directly in place of `transport.write`, else None."""
    if _SELECTOR_TRANSPORT is None or type(transport) is not _SELECTOR_TRANSPORT:
        return None
    sock = getattr(transport, "_sock", None)
    if not isinstance(sock, socket.socket) or not all(hasattr(transport, a) for a in _DIRECT_STATE):
        return None
    return sock


class SendStats:
    """Process-wide counters of the send path: discards, one per SPEC reason label, and socket
    writes (every write of queued frames, whoever triggered it)."""

    __slots__ = ("block_timeout", "closed", "newest", "oldest", "socket_closed", "writes")

    def __init__(self) -> None:
        self.oldest = 0
        self.newest = 0
        self.block_timeout = 0
        self.closed = 0
        self.socket_closed = 0
        self.writes = 0

    def drops_by_reason(self) -> dict[str, int]:
        return {
            "buffer_full_dropped_oldest": self.oldest,
            "buffer_full_dropped_newest": self.newest,
            "buffer_full_block_timeout": self.block_timeout,
            "buffer_full_closed": self.closed,
            "socket_closed": self.socket_closed,
        }


class SendQueue:
    """Outbound frames of one socket. Subclassed by the gateway's Connection.

    `overflow` is set when the policy demands a 1008 close; the next flush calls
    `on_overflow()` (the subclass closes the socket).
    """

    __slots__ = (
        "_frames",
        "_sock",
        "_transport",
        "capacity",
        "closed",
        "dirty",
        "full_since",
        "overflow",
        "paused",
        "policy",
        "stats",
    )

    def __init__(self, capacity: int, policy: int, stats: SendStats) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        if policy not in (DROP_OLDEST, DROP_NEWEST, BLOCK, CLOSE):
            raise ValueError(f"unknown policy {policy}")
        self.capacity = capacity
        self.policy = policy
        self.stats = stats
        self._transport: Any = None
        self._sock: socket.socket | None = None
        self._frames: deque[bytes] = deque()
        self.dirty = False
        self.paused = False
        self.closed = False
        self.overflow = False
        self.full_since = 0.0

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def transport(self) -> Any:
        return self._transport

    @transport.setter
    def transport(self, transport: Any) -> None:
        self._transport = transport
        self._sock = _direct_socket(transport)

    def push(self, frame: bytes, dirty: list[Any]) -> bool:
        """Queue `frame`; append self to `dirty` when it becomes dirty. False if discarded."""
        if self.closed or self.overflow:
            self.stats.socket_closed += 1
            return False
        frames = self._frames
        if len(frames) >= self.capacity:
            if not self.paused and self._transport is not None:
                # A burst bigger than the ring within one tick: hand it to the transport
                # now rather than dropping frames nobody pushed back on. The ring is empty
                # afterwards even if that write paused the transport, so the frame fits.
                self._write_all()
                frames.append(frame)
                self._mark(dirty)
                return True
            if self.full_since == 0.0:
                self.full_since = time.monotonic()
            policy = self.policy
            if policy == DROP_OLDEST:
                frames.popleft()
                self.stats.oldest += 1
            elif policy == DROP_NEWEST:
                self.stats.newest += 1
                return False
            elif policy == BLOCK:
                if len(frames) >= self.capacity * BLOCK_HARD_LIMIT_FACTOR:
                    self.stats.block_timeout += len(frames) + 1
                    frames.clear()
                    self._set_overflow(dirty)
                    return False
            else:  # CLOSE
                self.stats.closed += len(frames) + 1
                frames.clear()
                self._set_overflow(dirty)
                return False
        frames.append(frame)
        self._mark(dirty)
        return True

    def _mark(self, dirty: list[Any]) -> None:
        if not self.dirty:
            self.dirty = True
            dirty.append(self)

    def _set_overflow(self, dirty: list[Any]) -> None:
        self.overflow = True
        self._mark(dirty)

    def _write_all(self) -> int:
        frames = self._frames
        n = len(frames)
        if n == 0:
            return 0
        data = frames[0] if n == 1 else b"".join(frames)
        frames.clear()
        self.full_since = 0.0
        self._send(data)
        self.stats.writes += 1
        return n

    def _send(self, data: bytes) -> None:
        transport = self._transport
        sock = self._sock
        if sock is not None and not transport._buffer and not transport._closing and not transport._conn_lost:
            try:
                sent = sock.send(data)
            except OSError:
                pass  # EAGAIN, EINTR or an error: transport.write retries, buffers or closes
            else:
                if sent == len(data):
                    return
                data = data[sent:]
        transport.write(data)  # may call pause_writing() synchronously

    def flush(self) -> int:
        """Write every queued frame in one transport write, unless paused. Frames written."""
        self.dirty = False
        if self.overflow:
            if not self.closed:
                self.on_overflow()
            return 0
        if self.closed or self.paused or self._transport is None:
            return 0
        return self._write_all()

    def expire_block(self, now: float, timeout: float) -> bool:
        """`block` policy: still full `timeout` s after filling -> discard, flag overflow."""
        if (
            self.policy != BLOCK
            or self.full_since == 0.0
            or len(self._frames) < self.capacity
            or now - self.full_since < timeout
        ):
            return False
        self.stats.block_timeout += len(self._frames)
        self._frames.clear()
        self.full_since = 0.0
        self.overflow = True
        return True

    def discard_pending(self) -> int:
        """Drop every queued frame (socket closing); counted as socket_closed."""
        n = len(self._frames)
        if n:
            self.stats.socket_closed += n
            self._frames.clear()
        self.full_since = 0.0
        return n

    def on_overflow(self) -> None:
        """Hook: the policy asks for a 1008 close. The gateway's Connection overrides it."""
        self.closed = True


def fanout(frame: bytes, queues: Any, dirty: list[Any]) -> int:
    """Push one shared frame into every queue of `queues`; returns frames accepted."""
    delivered = 0
    for q in queues:
        if q.push(frame, dirty):
            delivered += 1
    return delivered


def flush_dirty(dirty: list[Any]) -> None:
    """Flush each dirty queue once (one write per socket) and empty the list."""
    for q in dirty:
        q.flush()
    dirty.clear()
