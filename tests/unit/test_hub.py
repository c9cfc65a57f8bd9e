"""Dispatch logic (SPEC §7.2-7.3) without sockets: fake transports record every write."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame
from websockets.streams import StreamReader

from daisi_ws import hotpath
from daisi_ws.gateway.hub import SCOPE_ADMINS, SCOPE_USERS, Hub, parse_subject
from daisi_ws.gateway.registry import Registry
from daisi_ws.log import Logger
from daisi_ws.metrics import metrics
from tests.unit.fakes import RecordingTransport


class FakeConn(hotpath.SendQueue):
    __slots__ = ("deflate_bits", "last_write", "name")

    def __init__(self, name: str, deflate_bits: int = 0) -> None:
        super().__init__(100, hotpath.POLICIES["drop_oldest"], hotpath.SendStats())
        self.name = name
        self.transport = RecordingTransport()
        self.deflate_bits = deflate_bits
        self.last_write = 0.0

    def frames(self) -> list[dict[str, Any]]:
        """Decode everything written, with websockets' own frame parser."""
        reader = StreamReader()
        for chunk in self.transport.writes:
            reader.feed_data(chunk)
        reader.feed_eof()
        out = []
        # websockets' own permessage-deflate decoder: our compressed frames must satisfy it
        extensions = [PerMessageDeflate(True, True, 15, self.deflate_bits)] if self.deflate_bits else []
        while True:
            parser = Frame.parse(reader.read_exact, mask=False, extensions=extensions)
            try:
                next(parser)
            except StopIteration as stop:
                frame = stop.value
            except EOFError:
                break
            else:
                break
            out.append(orjson.loads(frame.data))
        return out


@pytest.fixture
def hub() -> Hub:
    return Hub(Registry(), metrics(), Logger(level="error"), compression_threshold=128)


def add_user(hub: Hub, name: str, company: str, agent: str, chat: str | None = None) -> FakeConn:
    conn = FakeConn(name)
    hub.registry.add_user(conn, (company, agent))
    if chat is not None:
        hub.registry.select_chat(conn, (company, agent), None, chat)
    return conn


def add_admin(hub: Hub, name: str, company: str, agent: str) -> FakeConn:
    conn = FakeConn(name)
    hub.registry.add_admin(conn, (company, agent))
    return conn


async def tick() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def test_parse_subject() -> None:
    p = parse_subject("websocket.c.a.messages.chat1")
    assert p is not None and (p.company, p.agent, p.kind, p.chat) == ("c", "a", "messages", "chat1")
    p = parse_subject("websocket.c.a.custom")
    assert p is not None and p.kind == "custom" and p.chat is None
    for bad in ("websocket.c.a", "other.c.a.chats", "websocket.c.a.messages", ""):
        assert parse_subject(bad) is None


async def test_event_frame_is_spliced_verbatim_with_event_type_inserted(hub: Hub) -> None:
    conn = add_user(hub, "u", "acme", "agent-7", chat="c9")
    payload = b'  {"event_id":"e1","chat_id":"c9","row_data":{"b":1,"a":2}}\n'
    assert hub.dispatch("websocket.acme.agent-7.messages.c9", payload) == 1
    await tick()
    assert conn.transport.writes == [
        hotpath.build_text_frame(
            b'{"type":"event","payload":{"event_type":"message","event_id":"e1","chat_id":"c9","row_data":{"b":1,"a":2}}}'
        )
    ]


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("chats", "chat"), ("agents", "agent"), ("contacts", "contact"), ("custom\u00e9", "custom\u00e9")],
)
async def test_event_type_by_subject_type(hub: Hub, kind: str, expected: str) -> None:
    conn = add_user(hub, "u", "c", "a")
    hub.dispatch(f"websocket.c.a.{kind}", b"{}")
    await tick()
    assert conn.frames() == [{"type": "event", "payload": {"event_type": expected}}]


async def test_existing_event_type_untouched(hub: Hub) -> None:
    conn = add_user(hub, "u", "c", "a")
    hub.dispatch("websocket.c.a.chats", b'{"x": 1, "event_type": "custom"}')
    await tick()
    assert conn.transport.writes == [hotpath.build_text_frame(b'{"type":"event","payload":{"x": 1, "event_type": "custom"}}')]


@pytest.mark.parametrize("payload", [b"[]", b"1", b'"s"', b"{", b"", b"null", b"{\"a\":}", b"\xff{}"])
async def test_malformed_payload_dropped_and_counted(hub: Hub, payload: bytes) -> None:
    conn = add_user(hub, "u", "c", "a")
    counter = metrics().events_dropped.labels("malformed")
    before = counter._value.get()
    assert hub.dispatch("websocket.c.a.chats", payload) == 0
    await tick()
    assert conn.transport.writes == []
    assert counter._value.get() == before + 1


async def test_invalid_subject_dropped_and_counted(hub: Hub) -> None:
    add_user(hub, "u", "c", "a")
    counter = metrics().events_dropped.labels("invalid_subject")
    before = counter._value.get()
    assert hub.dispatch("websocket.c.a.messages", b"{}") == 0
    assert counter._value.get() == before + 1


async def test_messages_only_to_sockets_selecting_the_chat(hub: Hub) -> None:
    on_chat = add_user(hub, "u1", "c", "a", chat="x")
    other_chat = add_user(hub, "u2", "c", "a", chat="y")
    no_chat = add_user(hub, "u3", "c", "a")
    other_pair = add_user(hub, "u4", "c", "b", chat="x")
    assert hub.dispatch("websocket.c.a.messages.x", b'{"event_id":"m"}') == 1
    assert hub.dispatch("websocket.c.a.chats", b'{"event_id":"c"}') == 3
    await tick()
    assert [f["payload"]["event_id"] for f in on_chat.frames()] == ["m", "c"]
    assert [f["payload"]["event_id"] for f in other_chat.frames()] == ["c"]
    assert [f["payload"]["event_id"] for f in no_chat.frames()] == ["c"]
    assert other_pair.frames() == []


async def test_build_once_then_dispatch_built(hub: Hub) -> None:
    """The queue consumer validates once (it needs the route) and delivers what it built."""
    on_chat = add_user(hub, "u1", "c", "a", chat="x")
    admin = add_admin(hub, "adm", "c", "*")
    built = hub.build("websocket.c.a.messages.x", b' {"event_id":"m"} ')
    assert built is not None
    assert (built[0].company, built[0].agent, built[0].chat) == ("c", "a", "x")
    assert hub.dispatch_built(built) == 1
    agents = hub.build("websocket.c.a.agents", b'{"event_id":"g"}')
    assert agents is not None
    assert hub.dispatch_built(agents) == 2  # the (c, a) user socket and the admin
    await tick()
    assert [f["payload"]["event_id"] for f in on_chat.frames()] == ["m", "g"]
    assert admin.frames() == [{"type": "event", "payload": {"event_type": "agent", "event_id": "g"}}]


async def test_admin_filters(hub: Hub) -> None:
    everything = add_admin(hub, "all", "*", "*")
    company = add_admin(hub, "company", "c", "*")
    agent = add_admin(hub, "agent", "*", "a")
    exact = add_admin(hub, "exact", "c", "a")
    elsewhere = add_admin(hub, "elsewhere", "d", "*")
    user = add_user(hub, "user", "c", "a")
    assert hub.dispatch("websocket.c.a.agents", b"{}") == 5
    assert hub.dispatch("websocket.c.a.chats", b"{}") == 1  # admins get agents events only
    await tick()
    for conn in (everything, company, agent, exact):
        assert len(conn.frames()) == 1, conn.name
    assert elsewhere.frames() == []
    assert len(user.frames()) == 2


async def test_scoped_dispatch_never_double_delivers(hub: Hub) -> None:
    admin = add_admin(hub, "admin", "*", "*")
    user = add_user(hub, "user", "c", "a")
    # interest mode: the user subscription and the admin subscription both see the event
    assert hub.dispatch("websocket.c.a.agents", b"{}", SCOPE_USERS) == 1
    assert hub.dispatch("websocket.c.a.agents", b"{}", SCOPE_ADMINS, ("*", "*")) == 1
    assert hub.dispatch("websocket.c.a.agents", b"{}", SCOPE_ADMINS, ("c", "*")) == 0
    await tick()
    assert len(admin.frames()) == 1
    assert len(user.frames()) == 1


async def test_burst_is_coalesced_into_one_write_per_socket(hub: Hub) -> None:
    conns = [add_user(hub, f"u{i}", "c", "a") for i in range(3)]
    for i in range(10):
        hub.dispatch("websocket.c.a.chats", orjson.dumps({"event_id": str(i)}))
    await tick()
    for conn in conns:
        assert len(conn.transport.writes) == 1
        assert [f["payload"]["event_id"] for f in conn.frames()] == [str(i) for i in range(10)]
    assert sum(conn.stats.writes for conn in conns) == 3  # dws_websocket_writes_total


def event_ids(conn: FakeConn) -> list[str]:
    return [f["payload"]["event_id"] for f in conn.frames() if f["type"] == "event"]


async def test_write_delay_holds_a_busy_sockets_events_then_writes_them_once(hub: Hub) -> None:
    hub.write_delay = 0.2
    conns = [add_user(hub, f"u{i}", "c", "a") for i in range(3)]
    hub.dispatch("websocket.c.a.chats", b'{"event_id":"0"}')
    await tick()
    for conn in conns:  # quiet sockets: nothing to wait for
        assert event_ids(conn) == ["0"]
    hub.dispatch("websocket.c.a.chats", b'{"event_id":"1"}')  # written just now: held
    await asyncio.sleep(0.05)  # events from later ticks join the window
    hub.dispatch("websocket.c.a.chats", b'{"event_id":"2"}')
    await tick()
    assert all(len(conn.transport.writes) == 1 for conn in conns)
    await asyncio.sleep(0.3)
    for conn in conns:
        assert len(conn.transport.writes) == 2
        assert event_ids(conn) == ["0", "1", "2"]
    assert sum(conn.stats.writes for conn in conns) == 6  # two writes each: the window's count too
    await asyncio.sleep(0.25)  # quiet for longer than the delay: the next event goes at once
    hub.dispatch("websocket.c.a.chats", b'{"event_id":"3"}')
    await tick()
    assert event_ids(conns[0]) == ["0", "1", "2", "3"]


async def test_write_delay_does_not_hold_a_quiet_socket_for_a_busy_ones_window(hub: Hub) -> None:
    hub.write_delay = 0.3
    busy = add_user(hub, "busy", "c", "a")
    quiet = add_user(hub, "quiet", "c", "b")
    hub.dispatch("websocket.c.a.chats", b'{"event_id":"b1"}')
    await tick()
    hub.dispatch("websocket.c.a.chats", b'{"event_id":"b2"}')  # held: the window is open
    await tick()
    hub.dispatch("websocket.c.b.chats", b'{"event_id":"q1"}')
    await tick()
    assert event_ids(quiet) == ["q1"]
    assert event_ids(busy) == ["b1"]
    await asyncio.sleep(0.4)
    assert event_ids(busy) == ["b1", "b2"]


async def test_write_delay_does_not_hold_replies(hub: Hub) -> None:
    """ready, error and ack answer the client at once and take its held events along, in
    order; the other sockets' events stay held until the window ends."""
    hub.write_delay = 0.3
    conn = add_user(hub, "u", "c", "a")
    other = add_user(hub, "o", "c", "a")
    hub.dispatch("websocket.c.a.chats", b'{"event_id":"first"}')
    await tick()
    hub.dispatch("websocket.c.a.chats", b'{"event_id":"held"}')
    hub.send(conn, hotpath.build_text_frame(b'{"type":"ack","payload":{"id":1}}'))
    await tick()
    assert [f["type"] for f in conn.frames()] == ["event", "event", "ack"]
    assert len(conn.transport.writes) == 2
    assert len(other.transport.writes) == 1, "a reply must not end another socket's window"
    hub.dispatch("websocket.c.a.chats", b'{"event_id":"later"}')  # the reply was a write: held
    await asyncio.sleep(0.1)
    assert event_ids(conn) == ["first", "held"] and len(other.transport.writes) == 1
    await asyncio.sleep(0.3)
    assert event_ids(conn) == ["first", "held", "later"]
    assert event_ids(other) == ["first", "held", "later"]
    assert len(other.transport.writes) == 2


async def test_a_window_that_writes_nothing_does_not_reset_the_sockets_clock(hub: Hub) -> None:
    """A reply wrote the held events; the window's end finds nothing to write, so the socket
    has been quiet since the reply and its next event goes at once."""
    hub.write_delay = 0.2
    conn = add_user(hub, "u", "c", "a")
    hub.dispatch("websocket.c.a.chats", b'{"event_id":"0"}')
    await tick()
    hub.dispatch("websocket.c.a.chats", b'{"event_id":"1"}')  # held until ~0.2 s
    await tick()
    assert event_ids(conn) == ["0"]
    hub.send(conn, hotpath.build_text_frame(b'{"type":"ack","payload":{"id":1}}'))
    await tick()
    assert event_ids(conn) == ["0", "1"]
    await asyncio.sleep(0.35)  # the window ended at ~0.2 s with nothing to write
    hub.dispatch("websocket.c.a.chats", b'{"event_id":"2"}')
    await tick()
    assert event_ids(conn) == ["0", "1", "2"]
    assert len(conn.transport.writes) == 3


async def test_write_delay_never_holds_an_overflowed_socket(hub: Hub) -> None:
    """The `close` policy's overflow is acted on at the next flush, held or not: a socket that
    must close with 1008 does not wait for the window."""
    hub.write_delay = 0.3
    conn = add_user(hub, "u", "c", "a")
    conn.policy = hotpath.POLICIES["close"]
    hub.dispatch("websocket.c.a.chats", b'{"event_id":"0"}')
    await tick()  # written: from now on the socket counts as busy
    conn.paused = True  # its transport pushes back, so the ring fills
    for i in range(101):
        hub.dispatch("websocket.c.a.chats", orjson.dumps({"event_id": str(i + 1)}))
    assert conn.overflow
    await tick()
    assert conn.closed, "the overflow must not wait for the window"


async def test_reply_without_a_window_is_written_this_tick(hub: Hub) -> None:
    hub.write_delay = 0.3
    conn = add_user(hub, "u", "c", "a")
    for i in range(3):
        hub.send(conn, hotpath.build_text_frame(b'{"type":"ack","payload":{"id":%d}}' % i))
    await tick()
    assert [f["payload"]["id"] for f in conn.frames()] == [0, 1, 2]
    assert len(conn.transport.writes) == 1
    assert hub.dirty == []


async def test_delay_reloaded_to_zero_writes_the_open_window_now(hub: Hub) -> None:
    hub.write_delay = 0.4
    conn = add_user(hub, "u", "c", "a")
    hub.dispatch("websocket.c.a.chats", b'{"event_id":"0"}')
    await tick()
    hub.dispatch("websocket.c.a.chats", b'{"event_id":"1"}')  # held: window until ~0.4 s
    await tick()
    assert event_ids(conn) == ["0"]
    hub.write_delay = 0.0  # a reload
    hub.dispatch("websocket.c.a.chats", b'{"event_id":"2"}')
    await tick()
    assert event_ids(conn) == ["0", "1", "2"]
    assert len(conn.transport.writes) == 2
    hub.write_delay = 0.6  # reloaded again: the next held event must get a whole window of its own
    await asyncio.sleep(0.2)
    hub.dispatch("websocket.c.a.chats", b'{"event_id":"3"}')  # written 0.2 s ago: held until ~0.8 s
    await asyncio.sleep(0.3)  # past the cancelled window's end (~0.4 s)
    assert event_ids(conn) == ["0", "1", "2"]
    await asyncio.sleep(0.4)
    assert event_ids(conn) == ["0", "1", "2", "3"]


async def test_delay_reloaded_to_another_length_writes_the_open_window_now(hub: Hub) -> None:
    """A window of the old length must not outlive the reload: cut from 1 s to 0.1 s, what
    waits goes out now, and the next held event waits for a window of the new length."""
    hub.write_delay = 1.0
    conn = add_user(hub, "u", "c", "a")
    hub.dispatch("websocket.c.a.chats", b'{"event_id":"0"}')
    await tick()
    hub.dispatch("websocket.c.a.chats", b'{"event_id":"1"}')  # held: window until ~1 s
    await tick()
    hub.write_delay = 0.1  # a reload
    await tick()
    assert event_ids(conn) == ["0", "1"]
    hub.dispatch("websocket.c.a.chats", b'{"event_id":"2"}')  # written just now: held ~0.1 s
    await tick()
    assert event_ids(conn) == ["0", "1"]
    await asyncio.sleep(0.3)
    assert event_ids(conn) == ["0", "1", "2"]
    assert len(conn.transport.writes) == 3


async def test_reloading_the_same_delay_keeps_the_window(hub: Hub) -> None:
    hub.write_delay = 0.3
    conn = add_user(hub, "u", "c", "a")
    hub.dispatch("websocket.c.a.chats", b'{"event_id":"0"}')
    await tick()
    hub.dispatch("websocket.c.a.chats", b'{"event_id":"1"}')  # held: window until ~0.3 s
    await tick()
    hub.write_delay = 0.3  # a reload that changed other keys
    await tick()
    assert event_ids(conn) == ["0"]
    await asyncio.sleep(0.4)
    assert event_ids(conn) == ["0", "1"]


async def test_write_delay_full_ring_is_written_not_dropped(hub: Hub) -> None:
    """More events than the ring holds within one window go out early; none is dropped."""
    hub.write_delay = 0.5
    conn = add_user(hub, "u", "c", "a")
    for i in range(250):
        hub.dispatch("websocket.c.a.chats", orjson.dumps({"event_id": str(i)}))
    assert len(conn.transport.writes) == 2  # the ring (100) filled twice
    hub.flush()
    assert event_ids(conn) == [str(i) for i in range(250)]
    assert conn.stats.oldest == 0
    assert conn.stats.writes == 3  # the early writes count as well as the flush's


async def test_compressed_once_per_window_size(hub: Hub) -> None:
    plain = add_user(hub, "plain", "c", "a")
    deflated = [FakeConn(f"d{i}", deflate_bits=15) for i in range(2)]
    for conn in deflated:
        hub.registry.add_user(conn, ("c", "a"))
    hub.compression_used = True
    big = orjson.dumps({"event_id": "big", "row_data": "x" * 500})
    small = b'{"event_id":"small"}'
    hub.dispatch("websocket.c.a.chats", big)
    hub.dispatch("websocket.c.a.chats", small)
    await tick()
    assert [f["payload"]["event_id"] for f in plain.frames()] == ["big", "small"]
    for conn in deflated:
        assert [f["payload"]["event_id"] for f in conn.frames()] == ["big", "small"]
        assert conn.transport.writes[0][0] & 0x40  # first frame has RSV1: compressed
    assert deflated[0].transport.writes == deflated[1].transport.writes
    assert len(deflated[0].transport.writes[0]) < len(plain.transport.writes[0]) // 2


async def test_activity_hook_only_for_user_deliveries(hub: Hub) -> None:
    seen: list[tuple[str, str, str | None]] = []
    hub.activity = lambda c, a, chat: seen.append((c, a, chat))
    add_user(hub, "u", "c", "a", chat="x")
    add_admin(hub, "admin", "*", "*")
    hub.dispatch("websocket.c.a.messages.x", b"{}")
    hub.dispatch("websocket.c.a.messages.y", b"{}")  # nobody selects y
    hub.dispatch("websocket.z.z.agents", b"{}")  # admin only
    hub.dispatch("websocket.c.a.chats", b"{}")
    assert seen == [("c", "a", "x"), ("c", "a", None)]


def test_count_recipients(hub: Hub) -> None:
    add_user(hub, "u1", "c", "a", chat="x")
    add_user(hub, "u2", "c", "a")
    add_admin(hub, "admin", "c", "*")
    assert hub.count_recipients("websocket.c.a.chats") == 2
    assert hub.count_recipients("websocket.c.a.messages.x") == 1
    assert hub.count_recipients("websocket.c.a.agents") == 3
    assert hub.count_recipients("bad") == 0


@pytest.mark.parametrize(("size", "compressed"), [(126, False), (127, False), (128, True), (129, True)])
async def test_events_and_single_frames_share_the_compression_threshold(hub: Hub, size: int, compressed: bool) -> None:
    """SPEC §4.6: a message of >= threshold (128) bytes is compressed. The threshold applies
    to the JSON message for events as for ready/error/ack frames, not to the frame with its
    header (which made 126- and 127-byte events compressed)."""
    conn = FakeConn("d", deflate_bits=15)
    hub.registry.add_user(conn, ("c", "a"))
    hub.compression_used = True
    overhead = len(b'{"type":"event","payload":{"event_type":"chat","event_id":""}}')
    payload = b'{"event_id":"' + b"x" * (size - overhead) + b'"}'
    hub.dispatch("websocket.c.a.chats", payload)
    await tick()
    (frame,) = conn.transport.writes
    assert bool(frame[0] & 0x40) is compressed
    assert bool(hub.encode_for(conn, b"y" * size)[0] & 0x40) is compressed
    assert len(orjson.dumps(conn.frames()[0])) == size
