"""integration: whole flows. Full user flow, concurrent user flows, message flows (single, bulk),
session conflict resolution, multi-pod handoff, high concurrency, memory pressure.

The Go figures (PUBLISHED.md) chained mocks: a token minted, validated against a map cache,
a mock connection "connected" and registered with mocked Redis, a JSON write into a Go
channel. Each in-process twin here chains the real parts in the same order; each real
variant does the flow over real sockets against real `daisi-ws serve` processes (embedded,
or shared mode with real NATS and Redis; multi-pod means two server processes).
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
    drive,
    env_native,
    expiry,
    message_event,
    messages_subject,
    scaled,
)
from benchmarks.wsclient import (
    HttpPublisher,
    Tally,
    WSClient,
    close_all,
    connect,
    connect_many,
    user_path,
)
from daisi_ws import hotpath
from daisi_ws.auth import TokenCipher, mint_user_token, parse_aes_key
from daisi_ws.protocol import CLOSE_SESSION_CONFLICT

pytestmark = pytest.mark.benchmark(group="integration")

ENVELOPE_PREFIX = b'{"type":"event","payload":'


def envelope(payload: bytes, event_type: bytes) -> bytes:
    return ENVELOPE_PREFIX + b'{"event_type":' + event_type + b"," + payload[1:] + b"}"


def server_cpu(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


class Seq:
    def __init__(self) -> None:
        self.i = 0

    def next(self) -> int:
        self.i += 1
        return self.i


# --- full user flow ------------------------------------------------------------------------------


def inproc_flow(h: InProcessGateway, cipher: TokenCipher, user: str) -> Any:
    """mint -> validate (a miss: the token is new) -> path check -> upgrade + register (the
    embedded lock is the session table) -> ready written -> socket closed -> deregistered."""
    token = mint_user_token(cipher, COMPANY, AGENT, user, expiry(3600))
    claims = h.auth.validate_user_token(token)
    h.auth.check_path(claims, COMPANY, AGENT)
    conn = h.connect(claims)
    h.flush()
    conn.connection_lost(None)
    return conn


def test_full_user_flow_inproc(benchmark: Any) -> None:
    """Published 16.6-32.7 µs (mint, mock-cache validate, mock connect/register/write/deregister)."""
    h = InProcessGateway()
    cipher = TokenCipher(parse_aes_key(h.keys.aes))
    seq = Seq()
    conn = benchmark(lambda: inproc_flow(h, cipher, f"user-{seq.next()}"))
    assert conn.transport.bytes == len(hotpath.build_text_frame(b'{"type":"ready"}'))
    assert len(h.registry) == 0 and not h.registry.sessions


def test_concurrent_user_flow_inproc(benchmark: Any, request: pytest.FixtureRequest) -> None:
    """Published 11.2-23.2 µs (RunParallel). In process: 100 flows at once, stage by stage
    (100 mints + validations, 100 upgrades, one flush for all, 100 closes)."""
    h = InProcessGateway()
    cipher = TokenCipher(parse_aes_key(h.keys.aes))
    seq = Seq()
    k = scaled(request.config, 100, 5)

    def flows() -> list[Any]:
        base = seq.i
        seq.i += k
        claims = [h.auth.validate_user_token(mint_user_token(cipher, COMPANY, AGENT, f"u-{base + j}", expiry(3600))) for j in range(k)]
        conns = [h.connect(c) for c in claims]
        h.flush()
        for c in conns:
            c.connection_lost(None)
        return conns

    conns = benchmark(flows)
    assert all(c.transport.writes == 1 for c in conns) and len(h.registry) == 0
    benchmark.extra_info["ops_per_call"] = k


async def real_flow(port: int, api_key: str, cipher: TokenCipher, user: str) -> WSClient:
    token = mint_user_token(cipher, COMPANY, AGENT, user, expiry(3600))
    client = await connect(port, user_path(COMPANY, AGENT, token, api_key))
    client.close()
    await asyncio.wait_for(client.lost, 10)
    return client


@pytest.mark.real
@pytest.mark.parametrize("mode", ["embedded", "shared"])
def test_full_user_flow_real(benchmark: Any, aloop: Any, request: pytest.FixtureRequest, mode: str) -> None:
    """Real sockets: mint -> TCP connect -> upgrade request (API key, token, path check,
    session lock: SET NX in Redis when shared) -> 101 -> ready frame -> client close ->
    server's close frame and TCP close."""
    srv = request.getfixturevalue("embedded_server") if mode == "embedded" else request.getfixturevalue("shared_server")[0]
    cipher = TokenCipher(parse_aes_key(srv.keys.aes))
    seq = Seq()
    prefix = f"flow-{mode}-{time.monotonic_ns()}"
    client = benchmark(lambda: aloop.run_until_complete(real_flow(srv.port, srv.keys.api, cipher, f"{prefix}-{seq.next()}")))
    assert client.ready.result() and client.close_code == 1000
    benchmark.extra_info.update(native=env_native(), server=mode)


@pytest.mark.real
@pytest.mark.parametrize("mode", ["embedded", "shared"])
def test_concurrent_user_flow_real(benchmark: Any, aloop: Any, request: pytest.FixtureRequest, mode: str) -> None:
    """100 users doing the full flow at once over real sockets; per flow = median / 100."""
    srv = request.getfixturevalue("embedded_server") if mode == "embedded" else request.getfixturevalue("shared_server")[0]
    cipher = TokenCipher(parse_aes_key(srv.keys.aes))
    k = scaled(request.config, 100, 5)
    seq = Seq()
    prefix = f"cflow-{mode}-{time.monotonic_ns()}"

    async def flows() -> list[WSClient]:
        base = seq.i
        seq.i += k
        return list(await asyncio.gather(*(real_flow(srv.port, srv.keys.api, cipher, f"{prefix}-{base + j}") for j in range(k))))

    clients = benchmark.pedantic(lambda: aloop.run_until_complete(flows()), rounds=scaled(request.config, 10, 1), iterations=1, warmup_rounds=1)
    assert all(c.ready.result() and c.close_code == 1000 for c in clients)
    benchmark.extra_info.update(ops_per_call=k, native=env_native(), server=mode)


# --- message flows -----------------------------------------------------------------------------------


def inproc_chat_sockets(h: InProcessGateway, n: int) -> list[Any]:
    """n sockets of one (company, agent), socket i selecting chat-i (via select_chat)."""
    conns = []
    for i in range(n):
        c = h.connect(h.user_claims(COMPANY, AGENT, f"user-{i}"))
        pending = h.gw.handle_client_text(c, orjson.dumps({"type": "select_chat", "chat_id": f"chat-{i}"}))
        if pending is not None:
            drive(pending)
        conns.append(c)
    h.flush()
    return conns


@pytest.mark.parametrize("n", [1, 10, 100, 1000], ids=lambda n: f"{n}conns")
def test_message_flow_inproc(benchmark: Any, n: int) -> None:
    """Published: single message flow 4.7-6.9 µs; bulk message flow 4.7-5.9 µs (10 conns),
    4.5 µs (100 conns) (JSON marshal, mock inject, one mock connection written per message).

    Ours: one `messages` event per call, published on the embedded bus, for the chat that
    exactly one of the n sockets selected (rotating), dispatched and flushed to it.
    """
    h = InProcessGateway()
    conns = inproc_chat_sockets(h, n)
    base = [c.transport.bytes for c in conns]
    subjects = [messages_subject(f"chat-{i}") for i in range(n)]
    payload = message_event()
    publish, flush = h.backend.publish, h.flush
    seq = Seq()

    def flow() -> int:
        delivered = drive(publish(subjects[seq.next() % n], payload, "req"))
        flush()
        return int(delivered)

    assert benchmark(flow) == 1
    frame = len(hotpath.build_text_frame(envelope(payload, b'"message"')))
    got = sum(c.transport.bytes - b for c, b in zip(conns, base, strict=False))
    assert got == seq.i * frame, "each message reached exactly one socket"
    benchmark.extra_info["connections"] = n


async def chat_clients(srv: Any, company: str, n: int, tally: Tally) -> list[WSClient]:
    """n real sockets, socket i selected chat-i (ack received), then counted by `tally`."""
    paths = [user_path(company, AGENT, srv.keys.user_token(company, AGENT, f"u{i}"), srv.keys.api) for i in range(n)]
    clients = await connect_many(srv.port, paths, concurrency=200)
    for i, c in enumerate(clients):
        c.send_text(orjson.dumps({"type": "select_chat", "chat_id": f"chat-{i}", "id": i}))
    deadline = time.monotonic() + 30
    while any(c.frames < 2 for c in clients) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert all(c.frames == 2 for c in clients), "every select_chat acked"
    for c in clients:
        c.tally = tally
    return clients


@pytest.mark.real
@pytest.mark.parametrize("n", [1, 10, 100, 1000], ids=lambda n: f"{n}conns")
def test_message_flow_real(benchmark: Any, embedded_server: Any, aloop: Any, request: pytest.FixtureRequest, n: int) -> None:
    """Real sockets: POST /api/publish of a `messages` event for the chat one of n sockets
    selected (rotating) -> that socket received it."""
    srv = embedded_server
    n_run = n if not request.config.getoption("benchmark_disable") else min(n, 10)
    company = f"mflow-{n}"
    tally = Tally()
    payload = message_event()
    frame_len = len(envelope(payload, b'"message"'))
    pub = HttpPublisher(srv.port, srv.keys.admin_api)

    async def setup() -> list[WSClient]:
        await pub.open()
        return await chat_clients(srv, company, n_run, tally)

    clients = aloop.run_until_complete(setup())
    seq = Seq()

    async def flow() -> None:
        target = tally.expect(tally.frames + 1)
        chat = seq.next() % n_run
        assert await pub.publish(f"websocket.{company}.{AGENT}.messages.chat-{chat}", payload) == 1
        await asyncio.wait_for(target, 10)

    try:
        benchmark(lambda: aloop.run_until_complete(flow()))
        assert tally.frames == seq.i and tally.bytes == seq.i * frame_len
    finally:
        aloop.run_until_complete(close_all(clients))
        aloop.run_until_complete(pub.close())
    benchmark.extra_info.update(connections=n_run, native=env_native())


# --- session conflict resolution and multi-pod handoff ------------------------------------------------------


def test_session_conflict_inproc(benchmark: Any) -> None:
    """Published 26.7 µs: two tokens of one user minted and validated, two mock connections
    registered (the second kicks the first), deregistered.

    Ours: the same with the real parts; the second upgrade replaces the first in the session
    table, which gets the SessionConflict error frame and close 4402 (SPEC §3.4, §4.7)."""
    h = InProcessGateway()
    cipher = TokenCipher(parse_aes_key(h.keys.aes))
    seq = Seq()

    def conflict() -> tuple[Any, Any]:
        user = f"user-{seq.next()}"
        c1 = h.auth.validate_user_token(mint_user_token(cipher, COMPANY, AGENT, user, expiry(3600)))
        c2 = h.auth.validate_user_token(mint_user_token(cipher, COMPANY, AGENT, user, expiry(3600)))
        first = h.connect(c1)
        h.flush()
        second = h.connect(c2)
        h.flush()
        first.connection_lost(None)
        second.connection_lost(None)
        return first, second

    first, second = benchmark(conflict)
    assert first.transport.writes == 3, "ready, then the SessionConflict error frame, then close 4402"
    assert second.transport.writes == 1 and not h.registry.sessions and len(h.registry) == 0


def test_multi_pod_handoff_inproc(benchmark: Any) -> None:
    """Published 18.4 µs (one connection manager: register, deregister, re-validate (cache
    hit), register again, deregister). Ours: the user's socket on pod A ends, the same token
    validates again (cache hit) and connects to pod B, then ends: two gateways in process."""
    pod_a = InProcessGateway(pod_id="pod-a")
    pod_b = InProcessGateway(keys=pod_a.keys, pod_id="pod-b")
    cipher = TokenCipher(parse_aes_key(pod_a.keys.aes))
    seq = Seq()

    def handoff() -> tuple[Any, Any]:
        token = mint_user_token(cipher, COMPANY, AGENT, f"user-{seq.next()}", expiry(3600))
        a = pod_a.connect(pod_a.auth.validate_user_token(token))
        pod_a.flush()
        a.connection_lost(None)
        b = pod_b.connect(pod_b.auth.validate_user_token(token))
        pod_b.flush()
        b.connection_lost(None)
        return a, b

    a, b = benchmark(handoff)
    assert a.transport.writes == 1 and b.transport.writes == 1
    assert len(pod_a.registry) == 0 and len(pod_b.registry) == 0


async def takeover(first_port: int, second_port: int, keys: Any, user: str) -> tuple[WSClient, WSClient]:
    """The user connects to the first server, then again to the second: returns when the
    second socket is ready and the first got its 4402 close."""
    path = user_path(COMPANY, AGENT, keys.user_token(COMPANY, AGENT, user), keys.api)
    first = await connect(first_port, path)
    second = await connect(second_port, path)
    await asyncio.wait_for(first.lost, 10)
    second.close()
    await asyncio.wait_for(second.lost, 10)
    return first, second


@pytest.mark.real
def test_session_conflict_real(benchmark: Any, shared_server: Any, aloop: Any) -> None:
    """One shared-mode pod, real Redis: a user's second login on the same pod (local holder:
    forced SET + kill publish in one round trip) -> new socket ready, old one closed 4402."""
    srv = shared_server[0]
    seq = Seq()
    prefix = f"conflict-{time.monotonic_ns()}"
    first, second = benchmark(lambda: aloop.run_until_complete(takeover(srv.port, srv.port, srv.keys, f"{prefix}-{seq.next()}")))
    assert first.close_code == CLOSE_SESSION_CONFLICT and second.ready.result()
    benchmark.extra_info.update(native=env_native(), server="shared")


@pytest.mark.real
def test_multi_pod_handoff_real(benchmark: Any, shared_pods: list[Any], aloop: Any) -> None:
    """Two shared-mode pods, real Redis and NATS: the user is on pod A and logs in on pod B:
    B's SET NX fails -> kill published -> A closes its socket 4402 and releases -> B's retry
    acquires -> B ready. Timed until A's socket is gone and B's socket has closed cleanly."""
    a, b = shared_pods
    seq = Seq()
    prefix = f"handoff-{time.monotonic_ns()}"
    first, second = benchmark(lambda: aloop.run_until_complete(takeover(a.port, b.port, a.keys, f"{prefix}-{seq.next()}")))
    assert first.close_code == CLOSE_SESSION_CONFLICT and second.ready.result()
    benchmark.extra_info.update(native=env_native(), server="shared, 2 pods")


# --- high concurrency and memory pressure ------------------------------------------------------------------


def test_high_concurrency_inproc(benchmark: Any, request: pytest.FixtureRequest) -> None:
    """Published 10.5 ms per 1,000 users x 10 messages (goroutines writing into mock channels).

    Ours: 1,000 registered sockets, each selecting its own chat; 10 `messages` events per user
    dispatched (parse, validate, encode, fan-out), then the tick's flush: one write per socket
    carrying its 10 frames."""
    users = scaled(request.config, 1000, 20)
    per_user = 10
    h = InProcessGateway()
    conns = inproc_chat_sockets(h, users)
    events = [(messages_subject(f"chat-{u}"), message_event(f"chat-{u}", m)) for m in range(per_user) for u in range(users)]
    dispatch, flush = h.hub.dispatch, h.flush
    w0 = [c.transport.writes for c in conns]

    def load() -> int:
        delivered = 0
        for subject, payload in events:
            delivered += dispatch(subject, payload)
        flush()
        return delivered

    assert benchmark(load) == users * per_user
    rounds = conns[0].transport.writes - w0[0]
    assert all(c.transport.writes - w == rounds for c, w in zip(conns, w0, strict=False)), "one coalesced write per socket per call"
    benchmark.extra_info.update(users=users, messages_per_user=per_user, deliveries_per_call=users * per_user)


def test_memory_pressure_inproc(benchmark: Any, request: pytest.FixtureRequest) -> None:
    """Published 11.2 ms: one event written to 5,000 mock connections.

    Ours: one event dispatched to 5,000 registered sockets + the flush (5,000 writes).
    extra_info has the Python heap held per registered socket (tracemalloc)."""
    import tracemalloc

    n = scaled(request.config, 5000, 20)
    h = InProcessGateway()
    claims = [h.user_claims(COMPANY, AGENT, f"user-{i}") for i in range(n)]
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    conns = [h.connect(c) for c in claims]
    h.flush()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    held = sum(s.size_diff for s in after.compare_to(before, "filename"))
    subject, payload = f"websocket.{COMPANY}.{AGENT}.chats", chat_event()
    dispatch, flush = h.hub.dispatch, h.flush
    b0 = conns[0].transport.bytes

    def pressure() -> int:
        delivered = dispatch(subject, payload)
        flush()
        return delivered

    assert benchmark(pressure) == n
    frame = len(hotpath.build_text_frame(envelope(payload, b'"chat"')))
    sent = conns[0].transport.bytes - b0
    assert sent % frame == 0 and all(c.transport.bytes - b0 == sent for c in conns)
    benchmark.extra_info.update(connections=n, python_heap_per_connection_bytes=round(held / n))


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_high_concurrency_real(benchmark: Any, shared_server: Any, aloop: Any, request: pytest.FixtureRequest) -> None:
    """Real: 1,000 sockets on a shared-mode pod, each selected its own chat; 10,000 `messages`
    events (10 per user) published to the real nats-server by nats-py; timed until all
    10,000 frames arrived at their sockets."""
    import nats

    srv, nats_url = shared_server
    users = scaled(request.config, 1000, 10)
    per_user = 10
    company = f"load-{time.monotonic_ns()}"
    tally = Tally()
    events = [(f"websocket.{company}.{AGENT}.messages.chat-{u}", message_event(f"chat-{u}", m)) for m in range(per_user) for u in range(users)]
    box: list[Any] = []

    async def setup() -> list[WSClient]:
        box.append(await nats.connect(nats_url, pending_size=64 * 1024 * 1024))
        clients = await chat_clients(srv, company, users, tally)
        # the pod subscribes to websocket.<C>.<A>.> asynchronously: probe until it delivers
        probe = f"websocket.{company}.{AGENT}.messages.chat-0"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            target = tally.expect(tally.frames + 1)
            await box[0].publish(probe, message_event("chat-0"))
            try:
                await asyncio.wait_for(asyncio.shield(target), 0.2)
                break
            except asyncio.TimeoutError:
                continue
        await asyncio.sleep(0.3)
        return clients

    clients = aloop.run_until_complete(setup())
    nc = box[0]
    base = [tally.frames]

    async def load() -> None:
        target = tally.expect(tally.frames + users * per_user)
        for subject, payload in events:
            await nc.publish(subject, payload)
        await nc.flush()
        await asyncio.wait_for(target, 60)

    cpu0 = server_cpu(srv.pid)
    try:
        benchmark.pedantic(lambda: aloop.run_until_complete(load()), rounds=scaled(request.config, 5, 1), iterations=1)
        cpu1 = server_cpu(srv.pid)
        rounds = (tally.frames - base[0]) // (users * per_user)
        assert tally.frames - base[0] == rounds * users * per_user, "every event reached its one socket, once"
    finally:
        aloop.run_until_complete(close_all(clients))
        aloop.run_until_complete(nc.close())
    benchmark.extra_info.update(
        users=users, messages_per_user=per_user, native=env_native(), server="shared",
        server_cpu_us_per_message=round((cpu1 - cpu0) / max(1, rounds * users * per_user) * 1e6, 2),
    )


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_memory_pressure_real(benchmark: Any, aloop: Any, request: pytest.FixtureRequest) -> None:
    """Real: a fresh embedded `daisi-ws serve` with 5,000 idle sockets of one (company, agent);
    one event published (POST /api/publish), timed until all 5,000 sockets received it.
    extra_info: the server's RSS growth per socket and CPU per broadcast."""
    from tests.support import ServerProcess, rss_kib

    n = scaled(request.config, 5000, 20)
    srv = ServerProcess().start()
    tally = Tally()
    payload = chat_event()
    frame_len = len(envelope(payload, b'"chat"'))
    pub = HttpPublisher(srv.port, srv.keys.admin_api)
    try:
        rss0 = rss_kib(srv.pid) * 1024
        paths = [user_path(COMPANY, AGENT, srv.keys.user_token(COMPANY, AGENT, f"u{i}"), srv.keys.api) for i in range(n)]

        async def setup() -> list[WSClient]:
            await pub.open()
            return await connect_many(srv.port, paths, tally, concurrency=200)

        clients = aloop.run_until_complete(setup())
        aloop.run_until_complete(asyncio.sleep(0.5))
        rss1 = rss_kib(srv.pid) * 1024
        latencies: list[float] = []

        async def broadcast() -> None:
            target = tally.expect(tally.frames + n)
            t0 = time.perf_counter()
            assert await pub.publish(f"websocket.{COMPANY}.{AGENT}.chats", payload) == n
            latencies.append(await asyncio.wait_for(target, 30) - t0)

        cpu0 = server_cpu(srv.pid)
        benchmark.pedantic(lambda: aloop.run_until_complete(broadcast()), rounds=scaled(request.config, 20, 1), iterations=1, warmup_rounds=1)
        cpu1 = server_cpu(srv.pid)
        assert tally.frames == len(latencies) * n and tally.bytes == tally.frames * frame_len
        benchmark.extra_info.update(
            connections=n,
            native=env_native(),
            rss_per_connection_bytes=round((rss1 - rss0) / n),
            server_cpu_ms_per_broadcast=round((cpu1 - cpu0) / len(latencies) * 1e3, 2),
            publish_to_all_received_p50_ms=round(statistics.median(latencies) * 1e3, 2),
        )
        aloop.run_until_complete(close_all(clients))
    finally:
        aloop.run_until_complete(pub.close())
        srv.stop(15)
        srv.kill()
