# C-level interface of daisi_ws._native.sendqueue (see sendqueue.pyx).

cdef class SendStats:
    cdef public Py_ssize_t oldest
    cdef public Py_ssize_t newest
    cdef public Py_ssize_t block_timeout
    cdef public Py_ssize_t closed
    cdef public Py_ssize_t socket_closed
    cdef public Py_ssize_t writes


cdef class SendQueue:
    # Ring of queued frames: a Python list used circularly (GC-visible, refcounted by
    # CPython); _head is the oldest slot, _count the number queued, _size == len(_ring).
    cdef list _ring
    cdef Py_ssize_t _head
    cdef Py_ssize_t _count
    cdef Py_ssize_t _size

    # The transport, and its socket when writes may bypass transport.write (_direct_socket).
    cdef object _transport
    cdef object _sock
    cdef public Py_ssize_t capacity
    cdef public int policy
    cdef public object stats
    cdef public bint dirty
    cdef public bint paused
    cdef public bint closed
    cdef public bint overflow
    cdef public double full_since

    cdef int _push(self, object frame, object dirty) except -1
    cdef Py_ssize_t _flush(self) except -1
    cdef Py_ssize_t _write_all(self) except -1
    cdef int _send(self, object data) except -1
    cdef int _append(self, object frame) except -1
    cdef int _popleft(self) except -1
    cdef void _clear(self) noexcept
    cdef int _grow(self) except -1
    cdef int _mark(self, object dirty) except -1
