"""WebSocket frame and JSON envelope encoding (server -> client, never masked).

Frames are built once per event and shared by every recipient (DESIGN.md: encode once).
Payload bytes are spliced, never re-serialised (SPEC §7.2).
"""

from __future__ import annotations

import struct

import orjson

OP_TEXT = 0x1
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

EVENT_PREFIX = b'{"type":"event","payload":'
EVENT_TYPE_PREFIX = b'{"event_type":'
_pack_16 = struct.Struct("!BBH").pack
_pack_64 = struct.Struct("!BBQ").pack


def build_frame_header(length: int, opcode: int = OP_TEXT, rsv1: bool = False) -> bytes:
    """FIN + opcode (+ RSV1 for permessage-deflate) and the shortest length form."""
    if length < 0:
        raise ValueError("negative frame length")
    b0 = 0x80 | opcode | (0x40 if rsv1 else 0)
    if length < 126:
        return bytes((b0, length))
    if length < 65536:
        return _pack_16(b0, 126, length)
    return _pack_64(b0, 127, length)


def build_text_frame(data: bytes) -> bytes:
    return build_frame_header(len(data)) + data


def build_event_envelope(payload: bytes, event_type: bytes | None) -> bytes:
    """`{"type":"event","payload":<payload>}` with `"event_type":<event_type>` inserted first.

    `payload` is a JSON object's bytes without outer whitespace; `event_type` is an encoded
    JSON string (quotes included) or None when the payload already has one.
    """
    if event_type is None:
        return EVENT_PREFIX + payload + b"}"
    if payload[1:].lstrip(b" \t\r\n")[:1] == b"}":
        return EVENT_PREFIX + EVENT_TYPE_PREFIX + event_type + b"}}"
    return EVENT_PREFIX + EVENT_TYPE_PREFIX + event_type + b"," + payload[1:] + b"}"


def build_event_frame(payload: bytes, event_type: bytes | None) -> bytes:
    return build_text_frame(build_event_envelope(payload, event_type))


def build_error_frame(code: str, message: str, details: str = "") -> bytes:
    error = {"code": code, "message": message, "details": details} if details else {
        "code": code,
        "message": message,
    }
    return build_text_frame(orjson.dumps({"type": "error", "payload": error}))


def build_close_frame(code: int, reason: str = "") -> bytes:
    body = struct.pack("!H", code) + reason.encode()
    return build_frame_header(len(body), OP_CLOSE) + body
