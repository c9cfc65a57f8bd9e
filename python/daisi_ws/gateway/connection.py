"""One upgraded WebSocket: an asyncio protocol around websockets' sans-I/O ServerProtocol.

websockets parses inbound frames and produces control frames (pong, close); data frames go
straight from the socket's SendQueue to the transport, encoded once per event by the hub.
No Task per socket: heartbeats come from the gateway's sweep, writes from the hub's flush.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import orjson
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from daisi_ws import hotpath
from daisi_ws.protocol import (
    CLOSE_TOO_BIG,
    REASON_SLOW_CONSUMER,
    REASON_TOO_BIG,
    ErrorTriple,
)

if TYPE_CHECKING:
    from daisi_ws.gateway.server import Gateway

USER = "user"
ADMIN = "admin"

_TEXT = Opcode.TEXT
_BINARY = Opcode.BINARY
_CONT = Opcode.CONT
_PONG = Opcode.PONG
_CLOSE = Opcode.CLOSE
_OPEN = State.OPEN

# Fragment reassembly modes.
_NO_FRAGMENTS = 0
_TEXT_FRAGMENTS = 1
_SKIP_FRAGMENTS = 2  # binary messages are ignored, fragments included


FIRST_PING_SPREAD = 0.5

# Why reading from a client is paused (bits; reading resumes when none is left). A client must
# not make the server buffer without bound what it sends faster than the server can answer:
# - the peer does not read what we write (the transport paused our writing): its pings would
#   pile up pongs in the transport buffer;
# - INBOX_LIMIT client messages wait behind an asynchronous select_chat (a Redis round trip).
_READ_BLOCKED_BY_WRITES = 1
_READ_BLOCKED_BY_INBOX = 2
INBOX_LIMIT = 16

# One logger for every socket's protocol: websockets otherwise looks it up per instance.
WS_LOGGER = logging.getLogger("websockets.server")


class FrameProtocol(ServerProtocol):
    """websockets' frame parser with SPEC's 1009 reason (its own names the sizes)."""

    def fail(self, code: int, reason: str = "") -> None:
        if code == CLOSE_TOO_BIG:
            reason = REASON_TOO_BIG
        super().fail(code, reason)


def encode_error(error: ErrorTriple) -> bytes:
    code, message, details = error
    payload = {"code": code, "message": message, "details": details} if details else {
        "code": code,
        "message": message,
    }
    return orjson.dumps({"type": "error", "payload": payload})


class Connection(hotpath.SendQueue):
    __slots__ = (
        "__weakref__",
        "_busy",
        "_frag_mode",
        "_fragments",
        "_inbox",
        "_read_blocked",
        "admin_filter",
        "agent",
        "app",
        "chat",
        "claims",
        "close_deadline",
        "company",
        "deflate_bits",
        "ended",
        "gw",
        "kind",
        "last_pong",
        "last_write",
        "next_ping",
        "opened_at",
        "proto",
        "request_id",
        "session_key",
    )

    def __init__(
        self,
        gw: Gateway,
        proto: ServerProtocol,
        kind: str,
        session_key: str,
        claims: Any,
        request_id: str,
        deflate_bits: int,
    ) -> None:
        # Socket settings as they were at the upgrade: a reload applies them to later sockets
        # only (SPEC §8.2), so a shorter pong wait never closes a socket pinged less often.
        self.app = settings = gw.settings.app
        super().__init__(settings.websocket_message_buffer_size, gw.drop_policy, gw.send_stats)
        self.gw = gw
        self.proto = proto
        self.kind = kind
        self.session_key = session_key
        self.claims = claims
        self.request_id = request_id
        self.deflate_bits = deflate_bits
        if kind == USER:
            self.company: str = claims.company_id
            self.agent: str = claims.agent_id
            self.admin_filter: tuple[str, str] | None = None
        else:
            self.company = self.agent = ""
            self.admin_filter = (
                claims.subscribed_company_id or "*",
                claims.subscribed_agent_id or "*",
            )
        self.chat: str | None = None
        self.last_write = 0.0  # loop time of the hub's last write (the write delay's clock)
        now = time.monotonic()
        self.opened_at = now
        self.last_pong = now
        # The first ping comes after 50-100 % of the interval (then every interval): sockets
        # that connect together (a reconnect storm, a load test) are not pinged together, so
        # neither the pings nor the pongs they bring back arrive as one burst.
        self.next_ping = now + settings.ping_interval_seconds * (1.0 - FIRST_PING_SPREAD * random.random())
        self.close_deadline = 0.0
        self.ended = False
        self._frag_mode = _NO_FRAGMENTS
        self._fragments: list[bytes] | None = None
        self._inbox: deque[bytes] | None = None
        self._busy = False
        self._read_blocked = 0

    # --- asyncio protocol -------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:  # set_protocol() does not call this
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        proto = self.proto
        try:
            proto.receive_data(data)
        except EOFError:
            return
        for frame in proto.events_received():
            self._on_frame(frame)  # type: ignore[arg-type]  # only frames once OPEN
        if proto.state is not _OPEN and not self.closed:
            self._stop_data_frames()
        self._send_protocol_data()
        if proto.state is not _OPEN and not self.ended:
            # peer's close frame, or a protocol error / oversize message (1002/1007/1009)
            self.gw.end(self)
            self._expect_close()

    def eof_received(self) -> bool:
        self.proto.receive_eof()
        self._send_protocol_data()
        return False  # let asyncio close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.discard_pending()
        self.gw.end(self)
        self.gw.closing.discard(self)

    def pause_writing(self) -> None:
        self.paused = True
        self._block_reading(_READ_BLOCKED_BY_WRITES)

    def resume_writing(self) -> None:
        self.paused = False
        self._unblock_reading(_READ_BLOCKED_BY_WRITES)
        self.flush()

    def _block_reading(self, reason: int) -> None:
        if not self._read_blocked and not self.transport.is_closing():
            self.transport.pause_reading()
        self._read_blocked |= reason

    def _unblock_reading(self, reason: int) -> None:
        was = self._read_blocked
        self._read_blocked = was & ~reason
        if was and not self._read_blocked and not self.transport.is_closing():
            self.transport.resume_reading()

    # --- inbound ----------------------------------------------------------------------------
    def _on_frame(self, frame: Frame) -> None:
        op = frame.opcode
        data = bytes(frame.data)
        if op is _TEXT:
            if frame.fin:
                self._on_text(data)
            else:
                self._frag_mode = _TEXT_FRAGMENTS
                self._fragments = [data]
        elif op is _CONT:
            if self._frag_mode == _TEXT_FRAGMENTS:
                assert self._fragments is not None
                self._fragments.append(data)
                if frame.fin:
                    data = b"".join(self._fragments)
                    self._fragments = None
                    self._frag_mode = _NO_FRAGMENTS
                    self._on_text(data)
            elif frame.fin:
                self._frag_mode = _NO_FRAGMENTS
        elif op is _BINARY:
            if not frame.fin:
                self._frag_mode = _SKIP_FRAGMENTS
        elif op is _PONG:
            self.last_pong = time.monotonic()
        # PING: websockets queued the pong; CLOSE: handled after the loop

    def _on_text(self, data: bytes) -> None:
        if self.kind != USER or self.ended:
            return  # admin sockets: everything the client sends is ignored (SPEC §4.3)
        if self._busy:
            if self._inbox is None:
                self._inbox = deque()
            self._inbox.append(data)
            if len(self._inbox) >= INBOX_LIMIT:
                self._block_reading(_READ_BLOCKED_BY_INBOX)
            return
        pending = self.gw.handle_client_text(self, data)
        if pending is not None:
            self._busy = True
            self.gw.run_soon(self._drain(pending))

    async def _drain(self, pending: Any) -> None:
        """Finish an asynchronous select_chat, then the messages that queued behind it."""
        try:
            await pending
            while self._inbox and not self.ended:
                nxt = self.gw.handle_client_text(self, self._inbox.popleft())
                if nxt is not None:
                    await nxt
        finally:
            self._busy = False
            self._inbox = None
            self._unblock_reading(_READ_BLOCKED_BY_INBOX)

    def invalid_utf8(self, exc: UnicodeDecodeError) -> None:
        self.proto.fail(1007, f"{exc.reason} at position {exc.start}")
        self._stop_data_frames()
        self._send_protocol_data()
        if not self.ended:
            self.gw.end(self)
            self._expect_close()

    # --- outbound ---------------------------------------------------------------------------
    def _stop_data_frames(self) -> None:
        """websockets is about to send a close frame (the peer's echoed, or a protocol
        failure): queued frames go first if the transport takes them, later ones are
        discarded as `socket_closed` (SPEC §4.5); no data frame may follow a close frame."""
        if not self.overflow:
            self.flush()
        self.closed = True
        self.discard_pending()

    def send_envelope(self, envelope: bytes) -> bool:
        """Queue one JSON text frame (ready, error, ack) behind already queued events."""
        return self.gw.hub.send(self, self.gw.hub.encode_for(self, envelope))

    def send_error(self, error: ErrorTriple) -> None:
        if self.send_envelope(encode_error(error)):
            self.gw.metrics.sent_error.inc()

    def _send_protocol_data(self) -> None:
        transport = self.transport
        for data in self.proto.data_to_send():
            if data:
                if not transport.is_closing():
                    transport.write(data)
            else:
                transport.close()  # websockets signals "half-close": the server closes TCP

    def ping(self, now: float) -> None:
        if self.proto.state is _OPEN:
            self.proto.send_ping(b"")
            self._send_protocol_data()
        self.next_ping = now + self.app.ping_interval_seconds

    def close(self, code: int, reason: str, error: ErrorTriple | None = None, deliver_queued: bool = True) -> None:
        """Server-initiated close: queued frames (if writable), error frame, close frame."""
        if self.ended:
            return
        if deliver_queued and not self.overflow:
            self.flush()
        self.closed = True
        self.discard_pending()
        transport = self.transport
        if error is not None and not transport.is_closing():
            transport.write(self.gw.hub.encode_for(self, encode_error(error)))
            self.gw.metrics.sent_error.inc()
        if self.proto.state is _OPEN:
            self.proto.send_close(code, reason)
            self._send_protocol_data()
        self.gw.end(self)
        self._expect_close()

    def _expect_close(self) -> None:
        """Wait at most write_timeout for the peer's close, then drop TCP (the sweep does)."""
        if not self.transport.is_closing():
            self.close_deadline = time.monotonic() + self.app.write_timeout_seconds
            self.gw.closing.add(self)

    def abort(self) -> None:
        self.transport.abort()

    def on_overflow(self) -> None:
        """The drop policy (close, block) demands a 1008 close (SPEC §4.5)."""
        if self.ended:
            return
        self.gw.metrics.slow_clients.inc()
        self.close(1008, REASON_SLOW_CONSUMER, deliver_queued=False)
