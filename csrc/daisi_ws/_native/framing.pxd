# C-level interface of daisi_ws._native.framing (see framing.pyx).

cdef Py_ssize_t header_size(Py_ssize_t length) noexcept
cdef char* write_header(char* dst, Py_ssize_t length, unsigned char b0) noexcept
cdef bytes text_frame(bytes data)
cdef bytes event_frame(bytes payload, bytes event_type, bint with_header)
