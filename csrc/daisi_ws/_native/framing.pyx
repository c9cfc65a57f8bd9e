# cython: boundscheck=False, wraparound=False
#
# boundscheck/wraparound are off here: the only indexing is into `payload` with i in
# [1, len(payload)) and every write goes through header_size()/write_header() into a bytes
# object allocated with exactly the computed size. tests/unit/test_framing.py decodes
# every length boundary (0, 1, 125, 126, 127, 65535, 65536, 70000) with websockets' own
# parser and tests/unit/test_hotpath_parity.py compares arbitrary payloads with the pure twin.
"""Compiled twin of daisi_ws._pure.framing: WebSocket frames and JSON envelopes.

Every builder allocates its result once (PyBytes_FromStringAndSize(NULL, n)) and fills it
with memcpy. Arguments that are not exact `bytes` take the pure twin's code path, so the
results and the exceptions are the same for anything a caller can pass.
"""

import struct

import orjson

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memcpy

OP_TEXT = 0x1
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

EVENT_PREFIX = b'{"type":"event","payload":'
EVENT_TYPE_PREFIX = b'{"event_type":'

cdef bytes _EVENT_PREFIX = EVENT_PREFIX
cdef bytes _EVENT_TYPE_PREFIX = EVENT_TYPE_PREFIX
cdef Py_ssize_t _EP_LEN = len(EVENT_PREFIX)
cdef Py_ssize_t _ETP_LEN = len(EVENT_TYPE_PREFIX)
cdef object _pack_H = struct.Struct("!H").pack


cdef inline Py_ssize_t header_size(Py_ssize_t length) noexcept:
    if length < 126:
        return 2
    if length < 65536:
        return 4
    return 10


cdef inline char* write_header(char* dst, Py_ssize_t length, unsigned char b0) noexcept:
    """FIN/opcode byte `b0` and the shortest length form; returns the end of the header."""
    cdef unsigned char* p = <unsigned char*>dst
    cdef unsigned long long n = <unsigned long long>length
    cdef int i
    p[0] = b0
    if length < 126:
        p[1] = <unsigned char>length
        return dst + 2
    if length < 65536:
        p[1] = 126
        p[2] = <unsigned char>(n >> 8)
        p[3] = <unsigned char>n
        return dst + 4
    p[1] = 127
    for i in range(8):
        p[2 + i] = <unsigned char>(n >> (56 - 8 * i))
    return dst + 10


def build_frame_header(Py_ssize_t length, long opcode=OP_TEXT, bint rsv1=False):
    """FIN + opcode (+ RSV1 for permessage-deflate) and the shortest length form."""
    if length < 0:
        raise ValueError("negative frame length")
    cdef long b0 = 0x80 | opcode | (0x40 if rsv1 else 0)
    if b0 < 0 or b0 > 255:  # the pure twin's bytes()/struct.pack refuse these the same way
        if length < 126:
            raise ValueError("bytes must be in range(0, 256)")
        raise struct.error("ubyte format requires 0 <= number <= 255")
    cdef Py_ssize_t size = header_size(length)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
    write_header(PyBytes_AS_STRING(out), length, <unsigned char>b0)
    return out


cdef bytes text_frame(bytes data):
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, header_size(n) + n)
    cdef char* dst = write_header(PyBytes_AS_STRING(out), n, 0x81)
    memcpy(dst, PyBytes_AS_STRING(data), n)
    return out


def build_text_frame(data):
    if type(data) is bytes:
        return text_frame(<bytes>data)
    return build_frame_header(len(data)) + data


cdef inline bint _is_ws(char c) noexcept:
    return c == b' ' or c == b'\t' or c == b'\r' or c == b'\n'


cdef bytes event_frame(bytes payload, bytes event_type, bint with_header):
    """The event envelope (see build_event_envelope), preceded by its text frame header
    when `with_header`; one allocation either way."""
    cdef const char* src = PyBytes_AS_STRING(payload)
    cdef Py_ssize_t plen = PyBytes_GET_SIZE(payload)
    cdef Py_ssize_t elen, tlen = 0, i, n
    cdef bint empty_object = False
    if event_type is None:
        n = _EP_LEN + plen + 1
    else:
        tlen = PyBytes_GET_SIZE(event_type)
        i = 1
        while i < plen and _is_ws(src[i]):
            i += 1
        empty_object = i < plen and src[i] == b'}'
        if empty_object:  # PREFIX + ETP + event_type + "}}"
            n = _EP_LEN + _ETP_LEN + tlen + 2
        else:  # PREFIX + ETP + event_type + "," + payload[1:] + "}"
            n = _EP_LEN + _ETP_LEN + tlen + 1 + (plen - 1 if plen > 0 else 0) + 1
    cdef bytes out
    cdef char* dst
    if with_header:
        out = PyBytes_FromStringAndSize(NULL, header_size(n) + n)
        dst = write_header(PyBytes_AS_STRING(out), n, 0x81)
    else:
        out = PyBytes_FromStringAndSize(NULL, n)
        dst = PyBytes_AS_STRING(out)
    memcpy(dst, PyBytes_AS_STRING(_EVENT_PREFIX), _EP_LEN)
    dst += _EP_LEN
    if event_type is None:
        memcpy(dst, src, plen)
        dst += plen
        dst[0] = b'}'
        return out
    memcpy(dst, PyBytes_AS_STRING(_EVENT_TYPE_PREFIX), _ETP_LEN)
    dst += _ETP_LEN
    memcpy(dst, PyBytes_AS_STRING(event_type), tlen)
    dst += tlen
    if empty_object:
        dst[0] = b'}'
        dst[1] = b'}'
        return out
    dst[0] = b','
    dst += 1
    if plen > 1:
        memcpy(dst, src + 1, plen - 1)
        dst += plen - 1
    dst[0] = b'}'
    return out


cdef object _envelope_slow(object payload, object event_type):
    """The pure twin's code, for arguments that are not exact bytes."""
    if event_type is None:
        return EVENT_PREFIX + payload + b"}"
    if payload[1:].lstrip(b" \t\r\n")[:1] == b"}":
        return EVENT_PREFIX + EVENT_TYPE_PREFIX + event_type + b"}}"
    return EVENT_PREFIX + EVENT_TYPE_PREFIX + event_type + b"," + payload[1:] + b"}"


def build_event_envelope(payload, event_type):
    """`{"type":"event","payload":<payload>}` with `"event_type":<event_type>` inserted first.

    `payload` is a JSON object's bytes without outer whitespace; `event_type` is an encoded
    JSON string (quotes included) or None when the payload already has one.
    """
    if type(payload) is bytes and (event_type is None or type(event_type) is bytes):
        return event_frame(<bytes>payload, <bytes>event_type, False)
    return _envelope_slow(payload, event_type)


def build_event_frame(payload, event_type):
    """Header + envelope in one allocation (build_text_frame(build_event_envelope(...)))."""
    if type(payload) is bytes and (event_type is None or type(event_type) is bytes):
        return event_frame(<bytes>payload, <bytes>event_type, True)
    return build_text_frame(_envelope_slow(payload, event_type))


def build_error_frame(code, message, details=""):
    error = {"code": code, "message": message, "details": details} if details else {
        "code": code,
        "message": message,
    }
    return text_frame(orjson.dumps({"type": "error", "payload": error}))


def build_close_frame(code, reason=""):
    cdef bytes body = _pack_H(code) + reason.encode()
    cdef Py_ssize_t n = PyBytes_GET_SIZE(body)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, header_size(n) + n)
    cdef char* dst = write_header(PyBytes_AS_STRING(out), n, 0x88)  # FIN | OP_CLOSE
    memcpy(dst, PyBytes_AS_STRING(body), n)
    return out
