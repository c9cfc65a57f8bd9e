# No safety-dropping directives here: nothing is indexed, so there is nothing to gain.
"""Compiled twin of daisi_ws._pure.tokencache: bounded in-process cache of token claims."""

from cpython.dict cimport PyDict_DelItem, PyDict_GetItemWithError, PyDict_Next, PyDict_SetItem
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.object cimport Py_LT, PyObject, PyObject_RichCompareBool
from cpython.tuple cimport PyTuple_GET_ITEM


cdef class TokenCache:
    """Maps raw token -> claims until a per-entry deadline (wall-clock seconds).

    At most `max_entries`; when full, the oldest insertion is evicted. A hit is a dict
    lookup plus one float compare; expired entries are removed when looked up.
    """

    def __init__(self, max_entries):
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        self.max_entries = max_entries
        self._entries = {}
        self.hits = 0
        self.misses = 0

    def get(self, token, now):
        """Claims for `token`, or None (counted as a miss) if absent or expired."""
        cdef PyObject* found = PyDict_GetItemWithError(self._entries, token)
        cdef object entry, deadline
        cdef bint live
        if found is not NULL:
            entry = <object>found  # a strong reference, as the pure twin holds
            deadline = <object>PyTuple_GET_ITEM(entry, 1)
            if type(now) is float and type(deadline) is float:
                live = PyFloat_AS_DOUBLE(now) < PyFloat_AS_DOUBLE(deadline)
            else:
                live = PyObject_RichCompareBool(now, deadline, Py_LT)
            if live:
                self.hits += 1
                return <object>PyTuple_GET_ITEM(entry, 0)
            PyDict_DelItem(self._entries, token)
        self.misses += 1
        return None

    def put(self, token, value, deadline):
        if self.max_entries == 0:
            return
        cdef dict entries = self._entries
        cdef Py_ssize_t pos = 0
        cdef PyObject* first
        cdef object oldest
        if token not in entries and len(entries) >= self.max_entries:
            if PyDict_Next(entries, &pos, &first, NULL):
                oldest = <object>first  # own it: deleting drops the dict's reference
                PyDict_DelItem(entries, oldest)
        PyDict_SetItem(entries, token, (value, deadline))

    def clear(self):
        self._entries.clear()

    def __len__(self):
        return len(self._entries)
