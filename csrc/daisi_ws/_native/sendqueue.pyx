# cython: boundscheck=False, wraparound=False
#
# boundscheck/wraparound are off here: every ring index is computed from _head/_count/_size
# and kept in [0, _size) by the code below (_ring is private, len(_ring) == _size always).
# tests/unit/test_hotpath_parity.py (hypothesis: random push/flush/pause/resume/close/
# expire_block/capacity-change sequences against the pure twin) and tests/unit/
# test_sendqueue.py (ring wrap-around, growth past capacity under `block`) cover them.
"""Compiled twin of daisi_ws._pure.sendqueue: same names, same behaviour, same counters.

`SendQueue` is a cdef class the gateway's Connection subclasses in Python (with its own
__slots__ and __weakref__). Its frames live in a ring (a Python list used circularly with
head/count indices). `fanout` and `flush_dirty` call the C-level push/flush for every
queue whose type does not override them in Python, else the Python method, so a subclass
behaves exactly as with the pure twin.
"""

import time

from daisi_ws._pure.sendqueue import _direct_socket

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_ITEM
from cpython.object cimport PyObject
from libc.string cimport memcpy


cdef extern from *:
    """
    #include <sys/types.h>
    #include <sys/socket.h>
    #ifndef MSG_NOSIGNAL
    #define MSG_NOSIGNAL 0  /* macOS: CPython ignores SIGPIPE already */
    #endif
    """
    ssize_t c_send "send"(int fd, const void* buf, size_t n, int flags)
    int MSG_DONTWAIT
    int MSG_NOSIGNAL

DROP_OLDEST = 0
DROP_NEWEST = 1
BLOCK = 2
CLOSE = 3
POLICIES = {"drop_oldest": DROP_OLDEST, "drop_newest": DROP_NEWEST, "block": BLOCK, "close": CLOSE}
# `block` keeps every frame past capacity until write_timeout; this multiple of the capacity
# is the hard memory bound after which the socket is closed at once.
BLOCK_HARD_LIMIT_FACTOR = 8

cdef enum:
    C_DROP_OLDEST = 0
    C_DROP_NEWEST = 1
    C_BLOCK = 2
    C_CLOSE = 3
    C_BLOCK_HARD_LIMIT_FACTOR = 8
    C_MIN_RING = 4


cdef class SendStats:
    """Process-wide counters of the send path: discards, one per SPEC reason label, and socket
    writes (every write of queued frames, whoever triggered it)."""

    def __init__(self):
        self.oldest = 0
        self.newest = 0
        self.block_timeout = 0
        self.closed = 0
        self.socket_closed = 0
        self.writes = 0

    def drops_by_reason(self):
        return {
            "buffer_full_dropped_oldest": self.oldest,
            "buffer_full_dropped_newest": self.newest,
            "buffer_full_block_timeout": self.block_timeout,
            "buffer_full_closed": self.closed,
            "socket_closed": self.socket_closed,
        }


# Counter updates: C field increments for a SendStats, attribute arithmetic for anything
# else (the pure twin duck-types `stats`, so does this one; None fails the same way).
cdef inline int _count_oldest(object stats, Py_ssize_t n) except -1:
    if isinstance(stats, SendStats):
        (<SendStats>stats).oldest += n
    else:
        stats.oldest += n
    return 0


cdef inline int _count_newest(object stats, Py_ssize_t n) except -1:
    if isinstance(stats, SendStats):
        (<SendStats>stats).newest += n
    else:
        stats.newest += n
    return 0


cdef inline int _count_block_timeout(object stats, Py_ssize_t n) except -1:
    if isinstance(stats, SendStats):
        (<SendStats>stats).block_timeout += n
    else:
        stats.block_timeout += n
    return 0


cdef inline int _count_closed(object stats, Py_ssize_t n) except -1:
    if isinstance(stats, SendStats):
        (<SendStats>stats).closed += n
    else:
        stats.closed += n
    return 0


cdef inline int _count_socket_closed(object stats, Py_ssize_t n) except -1:
    if isinstance(stats, SendStats):
        (<SendStats>stats).socket_closed += n
    else:
        stats.socket_closed += n
    return 0


cdef inline int _count_write(object stats) except -1:
    if isinstance(stats, SendStats):
        (<SendStats>stats).writes += 1
    else:
        stats.writes += 1
    return 0


cdef class SendQueue:
    """Outbound frames of one socket. Subclassed by the gateway's Connection.

    `overflow` is set when the policy demands a 1008 close; the next flush calls
    `on_overflow()` (the subclass closes the socket).
    """

    # No __cinit__: a Python subclass has its own constructor signature and calls
    # super().__init__(capacity, policy, stats). Before __init__ the ring is empty (_size 0).

    def __init__(self, capacity, policy, stats):
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        if policy not in (DROP_OLDEST, DROP_NEWEST, BLOCK, CLOSE):
            raise ValueError(f"unknown policy {policy}")
        self.capacity = capacity
        self.policy = policy
        self.stats = stats
        self._transport = None
        self._sock = None
        self._clear()
        self.dirty = False
        self.paused = False
        self.closed = False
        self.overflow = False
        self.full_since = 0.0

    def __len__(self):
        return self._count

    @property
    def transport(self):
        return self._transport

    @transport.setter
    def transport(self, transport):
        self._transport = transport
        self._sock = _direct_socket(transport)

    # --- ring ---------------------------------------------------------------------------
    cdef int _grow(self) except -1:
        cdef Py_ssize_t new_size = self._size * 2 if self._size else C_MIN_RING
        cdef list ring = [None] * new_size
        cdef Py_ssize_t i, idx = self._head
        for i in range(self._count):
            ring[i] = self._ring[idx]
            idx += 1
            if idx == self._size:
                idx = 0
        self._ring = ring
        self._size = new_size
        self._head = 0
        return 0

    cdef int _append(self, object frame) except -1:
        if self._count == self._size:
            self._grow()
        cdef Py_ssize_t idx = self._head + self._count
        if idx >= self._size:
            idx -= self._size
        self._ring[idx] = frame
        self._count += 1
        return 0

    cdef int _popleft(self) except -1:
        if self._count == 0:  # only reachable when capacity was set below 1 after __init__
            raise IndexError("pop from an empty deque")
        self._ring[self._head] = None
        self._head += 1
        if self._head == self._size:
            self._head = 0
        self._count -= 1
        return 0

    cdef void _clear(self) noexcept:
        cdef Py_ssize_t i, idx = self._head
        for i in range(self._count):
            self._ring[idx] = None
            idx += 1
            if idx == self._size:
                idx = 0
        self._head = 0
        self._count = 0

    # --- push -----------------------------------------------------------------------------
    def push(self, frame, dirty):
        """Queue `frame`; append self to `dirty` when it becomes dirty. False if discarded."""
        return self._push(frame, dirty) == 1

    cdef int _push(self, object frame, object dirty) except -1:
        if self.closed or self.overflow:
            _count_socket_closed(self.stats, 1)
            return 0
        cdef int policy
        if self._count >= self.capacity:
            if not self.paused and self._transport is not None:
                # A burst bigger than the ring within one tick: hand it to the transport
                # now rather than dropping frames nobody pushed back on. The ring is empty
                # afterwards even if that write paused the transport, so the frame fits.
                self._write_all()
                self._append(frame)
                self._mark(dirty)
                return 1
            if self.full_since == 0.0:
                self.full_since = time.monotonic()
            policy = self.policy
            if policy == C_DROP_OLDEST:
                self._popleft()
                _count_oldest(self.stats, 1)
            elif policy == C_DROP_NEWEST:
                _count_newest(self.stats, 1)
                return 0
            elif policy == C_BLOCK:
                if self._count >= self.capacity * C_BLOCK_HARD_LIMIT_FACTOR:
                    _count_block_timeout(self.stats, self._count + 1)
                    self._clear()
                    self.overflow = True
                    self._mark(dirty)
                    return 0
            else:  # CLOSE
                _count_closed(self.stats, self._count + 1)
                self._clear()
                self.overflow = True
                self._mark(dirty)
                return 0
        self._append(frame)
        self._mark(dirty)
        return 1

    cdef int _mark(self, object dirty) except -1:
        if not self.dirty:
            self.dirty = True
            if type(dirty) is list:
                (<list>dirty).append(self)
            else:
                dirty.append(self)
        return 0

    # --- flush ----------------------------------------------------------------------------
    cdef Py_ssize_t _write_all(self) except -1:
        cdef Py_ssize_t n = self._count
        if n == 0:
            return 0
        cdef object data
        if n == 1:
            data = self._ring[self._head]
        else:
            data = _join(self._ring, self._head, n, self._size)
        self._clear()
        self.full_since = 0.0
        self._send(data)
        _count_write(self.stats)
        return n

    cdef int _send(self, object data) except -1:
        """The pure twin's _send, with send(2) called directly: no exception on EAGAIN."""
        cdef object transport = self._transport
        cdef object sock = self._sock
        cdef Py_ssize_t size, sent
        cdef int fd
        if (
            sock is not None
            and PyBytes_CheckExact(data)
            and not transport._buffer
            and not transport._closing
            and not transport._conn_lost
        ):
            fd = sock.fileno()  # -1 once the socket is closed: never a reused descriptor
            if fd >= 0:
                size = PyBytes_GET_SIZE(data)
                sent = c_send(fd, PyBytes_AS_STRING(data), <size_t>size, MSG_DONTWAIT | MSG_NOSIGNAL)
                if sent == size:
                    return 0
                if sent > 0:
                    data = data[sent:]
                # sent < 0: transport.write meets the same errno and handles it
        transport.write(data)  # may call pause_writing() synchronously
        return 0

    def flush(self):
        """Write every queued frame in one transport write, unless paused. Frames written."""
        return self._flush()

    cdef Py_ssize_t _flush(self) except -1:
        self.dirty = False
        if self.overflow:
            if not self.closed:
                self.on_overflow()  # Python-level call: a subclass override runs
            return 0
        if self.closed or self.paused or self._transport is None:
            return 0
        return self._write_all()

    def expire_block(self, now, timeout):
        """`block` policy: still full `timeout` s after filling -> discard, flag overflow."""
        if (
            self.policy != C_BLOCK
            or self.full_since == 0.0
            or self._count < self.capacity
            or now - self.full_since < timeout
        ):
            return False
        _count_block_timeout(self.stats, self._count)
        self._clear()
        self.full_since = 0.0
        self.overflow = True
        return True

    def discard_pending(self):
        """Drop every queued frame (socket closing); counted as socket_closed."""
        cdef Py_ssize_t n = self._count
        if n:
            _count_socket_closed(self.stats, n)
            self._clear()
        self.full_since = 0.0
        return n

    def on_overflow(self):
        """Hook: the policy asks for a 1008 close. The gateway's Connection overrides it."""
        self.closed = True


cdef object _join(list ring, Py_ssize_t head, Py_ssize_t n, Py_ssize_t size):
    """The n frames from `head` as one bytes object: one allocation + memcpy per frame."""
    cdef Py_ssize_t i, idx = head, total = 0, k
    cdef PyObject* item
    for i in range(n):
        item = PyList_GET_ITEM(ring, idx)
        if not PyBytes_CheckExact(<object>item):
            return _join_slow(ring, head, n, size)
        total += PyBytes_GET_SIZE(<object>item)
        idx += 1
        if idx == size:
            idx = 0
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef char* dst = PyBytes_AS_STRING(out)
    idx = head
    for i in range(n):
        item = PyList_GET_ITEM(ring, idx)
        k = PyBytes_GET_SIZE(<object>item)
        memcpy(dst, PyBytes_AS_STRING(<object>item), k)
        dst += k
        idx += 1
        if idx == size:
            idx = 0
    return out


cdef object _join_slow(list ring, Py_ssize_t head, Py_ssize_t n, Py_ssize_t size):
    """Frames that are not all exact bytes: b"".join, exactly as the pure twin."""
    cdef list frames = []
    cdef Py_ssize_t i, idx = head
    for i in range(n):
        frames.append(ring[idx])
        idx += 1
        if idx == size:
            idx = 0
    return b"".join(frames)


# The Python-level methods of the base class: a queue whose type still has these is served
# by the C-level method; a subclass that overrides push/flush gets its override called.
cdef object _PUSH = SendQueue.push
cdef object _FLUSH = SendQueue.flush


cdef inline bint _uses_base(type t, str name, object base_method) except -1:
    return issubclass(t, SendQueue) and getattr(t, name) is base_method


def fanout(frame, queues, dirty):
    """Push one shared frame into every queue of `queues`; returns frames accepted."""
    cdef Py_ssize_t delivered = 0
    cdef type t, last_type = None
    cdef bint fast = False
    for q in queues:
        t = type(q)
        if t is not last_type:
            last_type = t
            fast = _uses_base(t, "push", _PUSH)
        if fast:
            if (<SendQueue>q)._push(frame, dirty):
                delivered += 1
        elif q.push(frame, dirty):
            delivered += 1
    return delivered


def flush_dirty(dirty):
    """Flush each dirty queue once (one write per socket) and empty the list."""
    cdef type t, last_type = None
    cdef bint fast = False
    for q in dirty:
        t = type(q)
        if t is not last_type:
            last_type = t
            fast = _uses_base(t, "flush", _FLUSH)
        if fast:
            (<SendQueue>q)._flush()
        else:
            q.flush()
    dirty.clear()
