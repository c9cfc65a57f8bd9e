"""messages: NATS message processing, broadcast (in-process queues and real sockets), client
message (select_chat) processing, end-to-end delivery.

The Go figures (PUBLISHED.md) "processed" messages injected into a mock NATS consumer and
"broadcast" into Go channels standing in for sockets. The in-process twins here run the real
Hub (subject parse, payload validation, one encode, fan-out into each socket's SendQueue, one
write per socket) into counting transports; the real variants use real sockets.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import orjson
import psutil
import pytest

from benchmarks.harness import (
    AGENT,
    COMPANY,
    InProcessGateway,
    chat_event,
    chats_subject,
    drive,
    env_native,
    make_queues,
    message_event,
    messages_subject,
)
from benchmarks.wsclient import HttpPublisher, Tally, close_all, connect_many, user_path
from daisi_ws import hotpath
from daisi_ws.gateway.hub import Hub
from daisi_ws.gateway.registry import Registry
from daisi_ws.log import Logger
from daisi_ws.metrics import metrics

pytestmark = pytest.mark.benchmark(group="messages")

ENVELOPE_PREFIX = b'{"type":"event","payload":'


def make_hub() -> Hub:
    from benchmarks.harness import NoLoop

    hub = Hub(Registry(), metrics(), Logger(level="error"), compression_threshold=128)
    hub._loop = NoLoop()  # type: ignore[assignment]  # the benchmark calls hub.flush() itself
    return hub


def expected_envelope(payload: bytes, event_type: bytes) -> bytes:
    return ENVELOPE_PREFIX + b'{"event_type":' + event_type + b"," + payload[1:] + b"}"


# --- NATS message processing ---------------------------------------------------------------------


def test_nats_message_processing(benchmark: Any, twin: Any) -> None:
    """Published 2.6 µs: json.Unmarshal of an event pushed into a mock NATS consumer.

    Ours, on a ~300-byte `messages` event: Hub.build (subject parse, payload validated as a
    JSON object, event_type decided: SPEC §7.2 steps 1-2) + the frame encoded once
    (hotpath.build_event_frame, step 3), as Hub.dispatch does before fan-out.
    """
    hub = make_hub()
    subject, payload = messages_subject(), message_event()
    build = hub.build

    def process() -> tuple[Any, bytes]:
        built = build(subject, payload)
        assert built is not None
        parsed, body, event_type = built
        return parsed, hotpath.build_event_frame(body, event_type)

    parsed, frame = benchmark(process)
    assert (parsed.company, parsed.agent, parsed.kind, parsed.chat) == (COMPANY, AGENT, "messages", "chat-1")
    assert frame == hotpath.build_text_frame(expected_envelope(payload, b'"message"'))
    benchmark.extra_info["payload_bytes"] = len(payload)


# --- broadcast into in-process queues --------------------------------------------------------------

SIZES = [1, 10, 100, 500]


@pytest.mark.parametrize("stage", ["fanout", "dispatch"])
@pytest.mark.parametrize("n", SIZES)
def test_broadcast_inproc(benchmark: Any, twin: Any, n: int, stage: str) -> None:
    """Published 297 ns / 4 µs / 46 µs / 239 µs for 1/10/100/500 Go channels (a pre-serialised
    message sent into each connection's channel).

    - fanout (the same operation): the event's frame, already encoded, pushed into n sockets'
      SendQueues (hotpath.fanout) + the tick's flush: one transport.write per socket;
    - dispatch (what an event really costs): Hub.dispatch of one `chats` event to the n user
      sockets of (C, A): subject parse, payload validation, encode once, fan-out, + the flush.
    """
    hub = make_hub()
    queues = make_queues(twin, n)
    for q in queues:
        hub.registry.add_user(q, (COMPANY, AGENT))
    subject, payload = chats_subject(), chat_event()
    frame = hotpath.build_text_frame(expected_envelope(payload, b'"chat"'))
    dispatch, flush, fanout = hub.dispatch, hub.flush, hotpath.fanout
    members = hub.registry.users[(COMPANY, AGENT)]

    def broadcast() -> int:
        delivered = dispatch(subject, payload)
        flush()
        return delivered

    def fan() -> int:
        delivered = fanout(frame, members, hub.dirty)
        flush()
        return int(delivered)

    assert benchmark(fan if stage == "fanout" else broadcast) == n
    writes = {q.transport.writes for q in queues}
    assert len(writes) == 1, "every socket got every event"
    calls = writes.pop()
    assert calls >= 1 and all(q.transport.bytes == calls * len(frame) for q in queues), "one write per socket per event"
    assert all(len(q) == 0 for q in queues)
    benchmark.extra_info.update(connections=n, frame_bytes=len(frame))


# --- client message (select_chat) processing ----------------------------------------------------------


@pytest.mark.parametrize("mode", ["switch", "reselect"])
def test_client_message_processing(benchmark: Any, mode: str) -> None:
    """Published 886 ns: json.Unmarshal of {"action":"select_chat",...} into a map, one compare.

    Ours, through Gateway.handle_client_text on a registered socket (embedded backend):
    - switch: alternate between two chats: parse, validate, register the new message route,
      move the socket in the registry, ack (message has an `id`), persist the selected chat,
      touch last_active, unregister the old route; then the tick's flush writes the ack.
    - reselect: the current chat again: parse, validate, ack only (closest to the Go op).
    """
    h = InProcessGateway()
    conn = h.connect(h.user_claims(COMPANY, AGENT, "user-1"))
    h.flush()
    ready_bytes = conn.transport.bytes
    msgs = [orjson.dumps({"type": "select_chat", "id": 7, "payload": {"chat_id": c}}) for c in ("chat-a", "chat-b")]
    handle, flush, gw = h.gw.handle_client_text, h.flush, h.gw
    if mode == "reselect":
        drive(handle(conn, msgs[0]))
        flush()
        ready_bytes = conn.transport.bytes
        msgs = [msgs[0]]
    i = [0]

    def select_chat() -> None:
        pending = handle(conn, msgs[i[0] & 1 if mode == "switch" else 0])
        i[0] += 1
        if pending is not None:
            drive(pending)
        flush()

    writes0 = conn.transport.writes
    benchmark(select_chat)
    ack = hotpath.build_text_frame(b'{"type":"ack","id":7}')
    calls = conn.transport.writes - writes0
    assert calls == i[0] and conn.transport.bytes - ready_bytes == calls * len(ack), "one ack frame per message"
    routes = h.backend.routes
    if mode == "switch":
        current = "chat-a" if i[0] & 1 else "chat-b"
        other = "chat-b" if current == "chat-a" else "chat-a"
        assert conn.chat == current
        assert f"route:{COMPANY}:{AGENT}:messages:{current}" in routes
        assert f"route:{COMPANY}:{AGENT}:messages:{other}" not in routes, "old route released"
    else:
        assert conn.chat == "chat-a"
    gw.end(conn)


# --- end to end, in process --------------------------------------------------------------------------


def test_end_to_end_inproc(benchmark: Any) -> None:
    """Published 9.1 µs: mock NATS inject -> json.Unmarshal -> json.Marshal -> 10 Go channels.

    Ours: the embedded bus (EmbeddedBackend.publish, what /api/publish calls in embedded mode)
    -> Gateway.deliver -> Hub.dispatch to 10 registered sockets -> the tick's flush.
    """
    h = InProcessGateway()
    conns = [h.connect(h.user_claims(COMPANY, AGENT, f"user-{i}")) for i in range(10)]
    h.flush()
    base = [c.transport.bytes for c in conns]
    subject, payload = chats_subject(), chat_event()
    frame = hotpath.build_text_frame(expected_envelope(payload, b'"chat"'))
    publish, flush = h.backend.publish, h.flush

    def end_to_end() -> int:
        n = drive(publish(subject, payload, "req-1"))
        flush()
        return int(n)

    assert benchmark(end_to_end) == 10
    sent = [c.transport.bytes - b for c, b in zip(conns, base, strict=False)]
    assert len(set(sent)) == 1 and sent[0] > 0 and sent[0] % len(frame) == 0
    benchmark.extra_info.update(connections=10)


# --- broadcast to real sockets through a real server ------------------------------------------------


def server_cpu(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


@pytest.mark.real
@pytest.mark.parametrize("n", SIZES)
def test_broadcast_sockets(benchmark: Any, embedded_server: Any, aloop: Any, request: pytest.FixtureRequest, n: int) -> None:
    """Real sockets: POST /api/publish to a `daisi-ws serve` process -> all n client sockets
    (in this process) received the frame. Includes the HTTP publish and the client side;
    `server_cpu_us_per_event` is the server process's own CPU per broadcast.
    """
    n_run = n if not request.config.getoption("benchmark_disable") else min(n, 10)
    srv = embedded_server
    company, agent = f"bcast-{n}", "agent-1"
    tally = Tally()
    paths = [user_path(company, agent, srv.keys.user_token(company, agent, f"u{i}"), srv.keys.api) for i in range(n_run)]
    subject, payload = f"websocket.{company}.{agent}.chats", chat_event()
    envelope_len = len(expected_envelope(payload, b'"chat"'))
    latencies: list[float] = []
    pub = HttpPublisher(srv.port, srv.keys.admin_api)

    async def setup() -> list[Any]:
        await pub.open()
        return await connect_many(srv.port, paths, tally)

    clients = aloop.run_until_complete(setup())
    count = [0]

    async def one() -> None:
        target = tally.expect(tally.frames + n_run)
        t0 = time.perf_counter()
        delivered = await pub.publish(subject, payload)
        t1 = await asyncio.wait_for(target, 10)
        assert delivered == n_run
        latencies.append(t1 - t0)
        count[0] += 1

    def broadcast() -> None:
        aloop.run_until_complete(one())

    cpu0 = server_cpu(srv.pid)
    benchmark(broadcast)
    cpu1 = server_cpu(srv.pid)
    try:
        assert tally.frames == count[0] * n_run and tally.bytes == tally.frames * envelope_len
    finally:
        aloop.run_until_complete(close_all(clients))
        aloop.run_until_complete(pub.close())
    benchmark.extra_info.update(
        connections=n_run,
        native=env_native(),
        server_cpu_us_per_event=round((cpu1 - cpu0) / count[0] * 1e6, 1),
        publish_to_all_received_p50_us=round(statistics.median(latencies) * 1e6, 1),
    )


# The per-socket cost against a raw transport.write loop and websockets.broadcast() (a target
# of the project) is measured by the throughput group: test_bench_throughput.py::test_broadcast_real.


# --- end to end through real NATS --------------------------------------------------------------------


@pytest.mark.real
def test_end_to_end_nats(benchmark: Any, shared_server: Any, aloop: Any, request: pytest.FixtureRequest) -> None:
    """Real servers: nats-py publish to a real nats-server -> `daisi-ws serve` (shared mode,
    interest delivery, real Redis) -> all 10 client sockets received the frame."""
    import nats

    srv, nats_url = shared_server
    company, agent = "e2e-co", "agent-1"
    n = 10
    tally = Tally()
    paths = [user_path(company, agent, srv.keys.user_token(company, agent, f"u{i}"), srv.keys.api) for i in range(n)]
    subject, payload = f"websocket.{company}.{agent}.chats", chat_event()
    envelope_len = len(expected_envelope(payload, b'"chat"'))
    latencies: list[float] = []
    count = [0]
    nc_box: list[Any] = []

    async def setup() -> list[Any]:
        nc_box.append(await nats.connect(nats_url))
        clients = await connect_many(srv.port, paths, tally)
        # interest subscriptions are set up asynchronously after the upgrade: wait until a probe arrives
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            target = tally.expect(tally.frames + n)
            await nc_box[0].publish(subject, payload)
            try:
                await asyncio.wait_for(asyncio.shield(target), 0.2)
                break
            except asyncio.TimeoutError:
                continue
        await asyncio.sleep(0.3)
        tally.frames = tally.bytes = 0
        return clients

    clients = aloop.run_until_complete(setup())
    nc = nc_box[0]

    async def one() -> None:
        target = tally.expect(tally.frames + n)
        t0 = time.perf_counter()
        await nc.publish(subject, payload)
        t1 = await asyncio.wait_for(target, 10)
        latencies.append(t1 - t0)
        count[0] += 1

    try:
        benchmark(lambda: aloop.run_until_complete(one()))
        assert tally.frames == count[0] * n and tally.bytes == tally.frames * envelope_len
    finally:
        aloop.run_until_complete(close_all(clients))
        aloop.run_until_complete(nc.close())
    benchmark.extra_info.update(
        connections=n,
        native=env_native(),
        publish_to_all_received_p50_us=round(statistics.median(latencies) * 1e6, 1),
    )
