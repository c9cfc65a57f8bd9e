"""Frame and envelope encoding, both twins: decoded by websockets' own frame parser."""

from __future__ import annotations

import dataclasses
import os
import struct
from types import ModuleType
from typing import Any

import orjson
import pytest
from websockets.frames import Close, Frame, Opcode
from websockets.streams import StreamReader

from tests.unit.twins import KINDS, load

BOUNDARIES = (0, 1, 125, 126, 127, 65535, 65536, 70000)
DATA_OPCODES = (Opcode.TEXT, Opcode.BINARY)
CONTROL_OPCODES = (Opcode.PING, Opcode.PONG)


@pytest.fixture(params=KINDS)
def framing(request: pytest.FixtureRequest) -> ModuleType:
    return load(request.param, "framing")


class _ClearRsv1:
    """Stands in for permessage-deflate in the parser: accepts RSV1 and records it."""

    def __init__(self) -> None:
        self.seen: list[bool] = []

    def decode(self, frame: Frame, *, max_size: int | None = None) -> Frame:
        self.seen.append(frame.rsv1)
        return dataclasses.replace(frame, rsv1=False)


def parse(data: bytes, extensions: list[Any] | None = None) -> Frame:
    """One server frame (unmasked) through websockets' parser; it must consume every byte."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False, extensions=extensions)
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
    else:  # pragma: no cover - the parser wanted more bytes than the frame has
        raise AssertionError("incomplete frame")
    assert not reader.buffer, "bytes left after the frame"
    return frame


def header_len(n: int) -> int:
    return 2 if n < 126 else 4 if n < 65536 else 10


@pytest.mark.parametrize("n", BOUNDARIES)
def test_text_frame_every_length_form(framing: ModuleType, n: int) -> None:
    payload = os.urandom(n)
    frame = framing.build_text_frame(payload)
    assert len(frame) == header_len(n) + n
    parsed = parse(frame)
    assert parsed.opcode is Opcode.TEXT
    assert parsed.fin and not parsed.rsv1
    assert parsed.data == payload


@pytest.mark.parametrize("n", BOUNDARIES)
@pytest.mark.parametrize("opcode", DATA_OPCODES)
@pytest.mark.parametrize("rsv1", [False, True])
def test_frame_header_data_opcodes(framing: ModuleType, n: int, opcode: Opcode, rsv1: bool) -> None:
    payload = os.urandom(n)
    header = framing.build_frame_header(n, int(opcode), rsv1)
    assert len(header) == header_len(n)
    ext = _ClearRsv1()
    parsed = parse(header + payload, [ext])
    assert parsed.opcode is opcode
    assert parsed.data == payload
    assert ext.seen == [rsv1]


@pytest.mark.parametrize("n", (0, 1, 124, 125))
@pytest.mark.parametrize("opcode", CONTROL_OPCODES)
def test_frame_header_control_opcodes(framing: ModuleType, n: int, opcode: Opcode) -> None:
    payload = os.urandom(n)
    parsed = parse(framing.build_frame_header(n, int(opcode)) + payload)
    assert parsed.opcode is opcode
    assert parsed.data == payload


def test_frame_header_defaults_and_constants(framing: ModuleType) -> None:
    assert framing.build_frame_header(5) == b"\x81\x05"
    assert framing.build_frame_header(126) == b"\x81\x7e\x00\x7e"
    assert framing.build_frame_header(65536, framing.OP_PING, True) == b"\xc9\x7f" + (65536).to_bytes(8, "big")
    assert (framing.OP_TEXT, framing.OP_CLOSE, framing.OP_PING, framing.OP_PONG) == (1, 8, 9, 10)
    assert framing.EVENT_PREFIX == b'{"type":"event","payload":'
    assert framing.EVENT_TYPE_PREFIX == b'{"event_type":'


def test_frame_header_rejects_negative_length(framing: ModuleType) -> None:
    with pytest.raises(ValueError, match="negative frame length"):
        framing.build_frame_header(-1)


@pytest.mark.parametrize(
    ("code", "reason"), [(1000, ""), (1001, "going away"), (1008, "slow consumer"), (4000, "é" * 20)]
)
def test_close_frame(framing: ModuleType, code: int, reason: str) -> None:
    parsed = parse(framing.build_close_frame(code, reason))
    assert parsed.opcode is Opcode.CLOSE
    close = Close.parse(parsed.data)
    assert (close.code, close.reason) == (code, reason)


def test_close_frame_bad_code(framing: ModuleType) -> None:
    with pytest.raises(struct.error):
        framing.build_close_frame(70000)


@pytest.mark.parametrize("details", ["", "token expired"])
def test_error_frame(framing: ModuleType, details: str) -> None:
    parsed = parse(framing.build_error_frame("AUTH_FAILED", "bad token", details))
    assert parsed.opcode is Opcode.TEXT
    expected: dict[str, str] = {"code": "AUTH_FAILED", "message": "bad token"}
    if details:
        expected["details"] = details
    assert orjson.loads(parsed.data) == {"type": "error", "payload": expected}


ET = b'"messages"'
ENVELOPE_CASES = [
    # (payload, event_type, expected envelope)
    (b"{}", ET, b'{"type":"event","payload":{"event_type":"messages"}}'),
    (b"{ }", ET, b'{"type":"event","payload":{"event_type":"messages"}}'),
    (b"{\r\n\t }", ET, b'{"type":"event","payload":{"event_type":"messages"}}'),
    (b'{"a":1}', ET, b'{"type":"event","payload":{"event_type":"messages","a":1}}'),
    (b'{ "a": 1 }', ET, b'{"type":"event","payload":{"event_type":"messages", "a": 1 }}'),
    (b'{\n"a":{}}', ET, b'{"type":"event","payload":{"event_type":"messages",\n"a":{}}}'),
    # existing event_type: the caller passes None and the payload is spliced untouched
    (b'{"event_type":"chats","a":1}', None, b'{"type":"event","payload":{"event_type":"chats","a":1}}'),
    (b"{}", None, b'{"type":"event","payload":{}}'),
    (b"{ }", None, b'{"type":"event","payload":{ }}'),
]


@pytest.mark.parametrize(("payload", "event_type", "expected"), ENVELOPE_CASES)
def test_event_envelope(framing: ModuleType, payload: bytes, event_type: bytes | None, expected: bytes) -> None:
    envelope = framing.build_event_envelope(payload, event_type)
    assert envelope == expected
    decoded = orjson.loads(envelope)
    assert decoded["type"] == "event"
    if event_type is not None:
        assert next(iter(decoded["payload"])) == "event_type"  # inserted first
        assert decoded["payload"]["event_type"] == orjson.loads(event_type)
    assert orjson.loads(parse(framing.build_event_frame(payload, event_type)).data) == decoded


@pytest.mark.parametrize("target", BOUNDARIES[1:])
@pytest.mark.parametrize("event_type", [None, ET])
def test_event_frame_at_length_boundaries(framing: ModuleType, target: int, event_type: bytes | None) -> None:
    """Payloads sized so that the ENVELOPE lands on each length-form boundary."""
    overhead = len(framing.build_event_envelope(b'{"x":""}', event_type)) - len(b'{"x":""}')
    filler = max(0, target - overhead - len(b'{"x":""}'))
    payload = b'{"x":"' + b"a" * filler + b'"}'
    frame = framing.build_event_frame(payload, event_type)
    envelope = framing.build_event_envelope(payload, event_type)
    if target >= overhead + 8:
        assert len(envelope) == target
    assert frame == framing.build_text_frame(envelope)
    parsed = parse(frame)
    assert parsed.data == envelope
    assert orjson.loads(parsed.data)["payload"]["x"] == "a" * filler


def test_non_bytes_arguments(framing: ModuleType) -> None:
    """bytearray/memoryview go through the same concatenations as the pure twin."""
    assert framing.build_text_frame(bytearray(b"abc")) == b"\x81\x03abc"
    assert framing.build_event_envelope(bytearray(b"{}"), bytearray(ET)) == ENVELOPE_CASES[0][2]
    assert framing.build_event_frame(bytearray(b'{"a":1}'), None) == framing.build_text_frame(
        b'{"type":"event","payload":{"a":1}}'
    )
    with pytest.raises(TypeError):
        framing.build_text_frame("text")
    with pytest.raises(TypeError):
        framing.build_event_envelope("{}", ET)
    with pytest.raises(TypeError):
        framing.build_event_envelope(b"{}", "text")
