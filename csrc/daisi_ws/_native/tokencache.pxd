# C-level interface of daisi_ws._native.tokencache (see tokencache.pyx).

cdef class TokenCache:
    cdef dict _entries  # token -> (value, deadline), in insertion order
    cdef public Py_ssize_t max_entries
    cdef public Py_ssize_t hits
    cdef public Py_ssize_t misses
