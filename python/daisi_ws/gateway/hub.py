"""Dispatch: one event -> one frame -> every matching local socket's send queue.

Encode once (the frame is shared by all recipients), push into the queues, and flush every
dirty socket once per loop tick so a burst of events costs one write per socket. With a write
delay (`app.websocket_write_delay_ms`) a socket written less than the delay ago holds its new
events until the pod's window ends (at most the delay), so a busy socket takes several events
per write; a socket quiet for the delay is written at once, as without one.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Callable
from typing import Any

import orjson

from daisi_ws import hotpath
from daisi_ws.gateway.registry import Registry
from daisi_ws.log import Logger
from daisi_ws.metrics import Metrics
from daisi_ws.protocol import EVENT_TYPE_BY_SUBJECT_TYPE, SUBJECT_PREFIX, subject_type_label

# Who a delivery may reach: interest-mode subscriptions are scoped so overlapping
# user and admin subscriptions never deliver twice (SPEC §7.4).
SCOPE_ALL = 0
SCOPE_USERS = 1
SCOPE_ADMINS = 2

_EVENT_TYPE_JSON = {t: orjson.dumps(v) for t, v in EVENT_TYPE_BY_SUBJECT_TYPE.items()}
_MALFORMED_LOG_INTERVAL = 60.0


class ParsedSubject:
    __slots__ = ("agent", "chat", "company", "kind")

    def __init__(self, company: str, agent: str, kind: str, chat: str | None) -> None:
        self.company = company
        self.agent = agent
        self.kind = kind
        self.chat = chat


# A validated event: its subject, the stripped payload and the event_type to insert (or None).
BuiltEvent = tuple[ParsedSubject, bytes, bytes | None]


def parse_subject(subject: str) -> ParsedSubject | None:
    """`websocket.<C>.<A>.<type>[.<chat>]` (SPEC §7.2 step 1), else None."""
    parts = subject.split(".")
    if len(parts) < 4 or parts[0] != SUBJECT_PREFIX:
        return None
    kind = parts[3]
    if kind == "messages":
        if len(parts) < 5:
            return None
        return ParsedSubject(parts[1], parts[2], kind, parts[4])
    return ParsedSubject(parts[1], parts[2], kind, None)


def _message_size(frame: bytes) -> int:
    """The JSON message's size in an unmasked server frame: the frame less its header (the
    compression threshold applies to the message, as in `encode_for`)."""
    length = frame[1] & 0x7F
    return len(frame) - (2 if length < 126 else 4 if length == 126 else 10)


def _deflate(envelope: bytes, wbits: int) -> bytes:
    """permessage-deflate without context takeover: one raw deflate block, tail removed."""
    comp = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -wbits)
    data = comp.compress(envelope) + comp.flush(zlib.Z_SYNC_FLUSH)
    if data.endswith(b"\x00\x00\xff\xff"):
        data = data[:-4]
    return hotpath.build_frame_header(len(data), 1, True) + data


class Hub:
    """Owns the per-tick dirty list and the flush callback."""

    __slots__ = (
        "_flush_pending",
        "_held",
        "_loop",
        "_malformed_logged",
        "_window",
        "_write_delay",
        "activity",
        "compression_threshold",
        "compression_used",
        "dirty",
        "log",
        "metrics",
        "registry",
    )

    def __init__(self, registry: Registry, metrics: Metrics, log: Logger, compression_threshold: int) -> None:
        self.registry = registry
        self.metrics = metrics
        self.log = log
        self.dirty: list[Any] = []
        self._flush_pending = False
        # Seconds a socket's events may wait after its last write (0 = written this tick); the
        # gateway sets it from app.websocket_write_delay_ms, at start and on reload.
        self._write_delay = 0.0
        self._held: list[Any] = []  # sockets whose events wait for the window's end
        self._window: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._malformed_logged: dict[str, float] = {}
        self.compression_threshold = compression_threshold
        # Set once a socket negotiates permessage-deflate; until then fan-out skips the check.
        self.compression_used = False
        # Shared mode with adaptive route TTLs: called (company, agent, chat or None) after an
        # event reached at least one local user socket (SPEC §6.2 "Activity").
        self.activity: Callable[[str, str, str | None], None] | None = None

    # --- flushing ---------------------------------------------------------------------------
    def _get_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    @property
    def write_delay(self) -> float:
        return self._write_delay

    @write_delay.setter
    def write_delay(self, seconds: float) -> None:
        changed = seconds != self._write_delay
        self._write_delay = seconds
        if changed and self._window is not None:
            # Reloaded: what waits for a window of the old length is written this tick.
            self._window.cancel()
            self._window = self._get_loop().call_soon(self._end_window)

    def schedule_flush(self) -> None:
        """Flush at the end of this loop tick."""
        if not self._flush_pending:
            self._flush_pending = True
            self._get_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write the sockets queued this tick. With a write delay, a socket written less than
        the delay ago is held for the pod's window instead (one timer for all of them), so a
        busy socket gets at most one event write per delay and a quiet one waits for nothing."""
        self._flush_pending = False
        dirty, self.dirty = self.dirty, []
        delay = self._write_delay
        if delay <= 0.0:
            hotpath.flush_dirty(dirty)
            return
        now = self._get_loop().time()
        recent = now - delay
        held = self._held
        write: list[Any] = []
        for q in dirty:
            if q.last_write <= recent or q.overflow:
                write.append(q)
            elif q.dirty:  # not dirty: written since it was queued (listed twice, or flushed directly)
                held.append(q)
        if write:
            self._write_now(write, now)
        if held and self._window is None:
            self._window = self._get_loop().call_later(delay, self._end_window)

    def _write_now(self, queues: list[Any], now: float) -> None:
        for q in queues:
            q.last_write = now
        hotpath.flush_dirty(queues)  # empties the list

    def _end_window(self) -> None:
        if self._window is not None:
            self._window.cancel()
            self._window = None
        held, self._held = self._held, []
        # A socket a reply has written since is clean: it would write nothing, and its clock
        # stays at that write.
        self._write_now([q for q in held if q.dirty], self._get_loop().time())

    def send(self, conn: Any, frame: bytes) -> bool:
        """Queue one frame for one socket (ready, error, ack), in order with events; written
        this tick. A reply is never held: its socket counts as quiet for this tick's flush,
        which writes it with its held events first."""
        queued = conn.dirty  # in this tick's list already, or held for the window
        ok = bool(conn.push(frame, self.dirty))
        if queued and self._held:
            self.dirty.append(conn)  # possibly held: this tick's flush must see it
        conn.last_write = 0.0
        if self.dirty:
            self.schedule_flush()
        return ok

    # --- dispatch ---------------------------------------------------------------------------
    def build(self, subject: str, payload: bytes) -> BuiltEvent | None:
        """Validate (SPEC §7.2 steps 1-2): (subject, stripped payload, event_type to insert).

        None (counted) when the event is dropped.
        """
        parsed = parse_subject(subject)
        if parsed is None:
            self.metrics.events_dropped.labels("invalid_subject").inc()
            return None
        body = payload.strip()
        try:
            obj = orjson.loads(body) if body[:1] == b"{" else None
        except orjson.JSONDecodeError:
            obj = None
        if type(obj) is not dict:
            self._malformed(parsed.kind, subject)
            return None
        if "event_type" in obj:
            event_type = None
        else:
            event_type = _EVENT_TYPE_JSON.get(parsed.kind) or orjson.dumps(parsed.kind)
        return parsed, body, event_type

    def _malformed(self, kind: str, subject: str) -> None:
        self.metrics.events_dropped.labels("malformed").inc()
        label = subject_type_label(kind)
        now = time.monotonic()
        if now - self._malformed_logged.get(label, -_MALFORMED_LOG_INTERVAL) >= _MALFORMED_LOG_INTERVAL:
            self._malformed_logged[label] = now
            self.log.warn("dropping event: payload is not a JSON object", subject_type=label)

    def user_recipients(self, parsed: ParsedSubject) -> set[Any] | None:
        """User sockets of (C, A); for messages only those selecting the chat (SPEC §7.3)."""
        if parsed.chat is not None:
            return self.registry.chats.get((parsed.company, parsed.agent, parsed.chat))
        return self.registry.users.get((parsed.company, parsed.agent))

    def admin_recipients(self, parsed: ParsedSubject, admin_filter: tuple[str, str] | None) -> list[set[Any]]:
        """Admin sockets whose filter matches an `agents` event; the sets are disjoint."""
        if parsed.kind != "agents":
            return []
        if admin_filter is None:
            return self.registry.admin_sets(parsed.company, parsed.agent)
        members = self.registry.admins.get(admin_filter)
        return [members] if members else []

    def count_recipients(self, subject: str) -> int:
        parsed = parse_subject(subject)
        if parsed is None:
            return 0
        users = self.user_recipients(parsed)
        return (len(users) if users else 0) + sum(len(s) for s in self.admin_recipients(parsed, None))

    def dispatch(
        self,
        subject: str,
        payload: bytes,
        scope: int = SCOPE_ALL,
        admin_filter: tuple[str, str] | None = None,
    ) -> int:
        """Deliver one event to every matching local socket; returns sockets reached."""
        built = self.build(subject, payload)
        if built is None:
            return 0
        return self.dispatch_built(built, scope, admin_filter)

    def dispatch_built(
        self,
        built: BuiltEvent,
        scope: int = SCOPE_ALL,
        admin_filter: tuple[str, str] | None = None,
    ) -> int:
        """`dispatch` for an event `build` already validated (the queue consumer needs its route)."""
        parsed, body, event_type = built
        targets: list[set[Any]] = []
        users = self.user_recipients(parsed) if scope != SCOPE_ADMINS else None
        if users:
            targets.append(users)
        if scope != SCOPE_USERS:
            targets.extend(self.admin_recipients(parsed, admin_filter))
        if not targets:
            return 0
        frame = hotpath.build_event_frame(body, event_type)  # encoded once for every recipient
        dirty = self.dirty
        delivered = 0
        if self.compression_used and _message_size(frame) >= self.compression_threshold:
            envelope = hotpath.build_event_envelope(body, event_type)
            delivered = self._fanout_compressed(envelope, frame, targets)
        else:
            for members in targets:
                delivered += hotpath.fanout(frame, members, dirty)
        if dirty:
            self.schedule_flush()
        if delivered:
            self.metrics.sent_event.inc(delivered)
            if users and self.activity is not None:
                self.activity(parsed.company, parsed.agent, parsed.chat)
        return delivered

    def _fanout_compressed(self, envelope: bytes, frame: bytes, targets: list[set[Any]]) -> int:
        """Compress once per distinct window size; plain frame for the rest (SPEC §4.6)."""
        by_bits: dict[int, bytes] = {}
        dirty = self.dirty
        delivered = 0
        for members in targets:
            for conn in members:
                bits = conn.deflate_bits
                if bits:
                    f = by_bits.get(bits)
                    if f is None:
                        f = by_bits[bits] = _deflate(envelope, bits)
                else:
                    f = frame
                if conn.push(f, dirty):
                    delivered += 1
        return delivered

    def encode_for(self, conn: Any, envelope: bytes) -> bytes:
        """A single-socket frame (ready, error, ack), compressed when the socket asked for it."""
        bits = conn.deflate_bits
        if bits and len(envelope) >= self.compression_threshold:
            return _deflate(envelope, bits)
        return hotpath.build_text_frame(envelope)
