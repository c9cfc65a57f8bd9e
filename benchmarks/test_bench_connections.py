"""connections: registration, deregistration, lifecycle, registry size scaling, and memory per
real idle socket.

The Go figures (PUBLISHED.md) registered mock connections (Go structs holding channels) in a
ConnectionManager whose lock manager, route registry, kill switch and Redis were mocks. Ours
drive the real Gateway (register/end, embedded backend) with what `HttpProtocol.switch` builds
after a 101: a websockets FrameProtocol and a Connection on a (counting) transport. The memory
benchmark opens real sockets to a real `daisi-ws serve` and reads the server's RSS.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import pytest

from benchmarks.harness import AGENT, COMPANY, InProcessGateway, env_native, scaled
from benchmarks.wsclient import READY, close_all, connect_many, user_path
from daisi_ws import hotpath

pytestmark = pytest.mark.benchmark(group="connections")

READY_FRAME = hotpath.build_text_frame(READY)


class Users:
    """Claims as the auth step hands them to the upgrade, minted outside the timing and
    cycled (a user id comes back only after its previous socket ended)."""

    def __init__(self, h: InProcessGateway, pool: int = 2000, prefix: str = "user", agents: int = 10) -> None:
        self.pool = [h.user_claims(COMPANY, f"{AGENT}-{i % agents}", f"{prefix}-{i}") for i in range(pool)]
        self.i = 0

    def claims(self) -> Any:
        self.i += 1
        return self.pool[self.i % len(self.pool)]


def test_connection_registration(benchmark: Any, request: pytest.FixtureRequest) -> None:
    """Published 5.3 µs: RegisterConnection of a mock connection with mocked Redis/kill switch.

    Ours, per socket: FrameProtocol + Connection on the transport + Gateway.register (ready
    frame queued, session table, registry, chats route in the embedded backend, selected-chat
    restore) + the tick's flush writing the ready frame. Batches of 500; the previous batch is
    deregistered outside the timing.
    """
    h = InProcessGateway()
    users = Users(h)
    k = scaled(request.config, 500, 5)
    live: list[Any] = []

    def setup() -> None:
        for c in live:
            c.connection_lost(None)
        live.clear()
        gc.collect()

    def register_batch() -> None:
        connect, claims = h.connect, users.claims
        for _ in range(k):
            live.append(connect(claims()))
        h.flush()

    benchmark.pedantic(register_batch, setup=setup, rounds=scaled(request.config, 40, 1), iterations=1, warmup_rounds=1)
    assert len(h.registry) == k
    assert all(c.transport.bytes == len(READY_FRAME) and c.transport.writes == 1 for c in live), "ready frame written once"
    assert all(f"route:{c.company}:{c.agent}:chats" in h.backend.routes for c in live), "chats route registered"
    benchmark.extra_info["ops_per_call"] = k


def test_connection_deregistration(benchmark: Any, request: pytest.FixtureRequest) -> None:
    """Published 10.9 µs: DeregisterConnection with mocks.

    Ours, per socket: Connection.connection_lost (socket gone) -> Gateway.end: session table
    (identity-checked), registry, chats route released after the last socket of (C, A), the
    release coroutine run to completion. Batches of 500 registered outside the timing.
    """
    h = InProcessGateway()
    users = Users(h)
    k = scaled(request.config, 500, 5)
    live: list[Any] = []

    def setup() -> None:
        gc.collect()
        for _ in range(k):
            live.append(h.connect(users.claims()))
        h.flush()

    def deregister_batch() -> None:
        for c in live:
            c.connection_lost(None)
        live.clear()

    benchmark.pedantic(deregister_batch, setup=setup, rounds=scaled(request.config, 40, 1), iterations=1, warmup_rounds=1)
    assert len(h.registry) == 0 and not h.registry.sessions and not h.registry.users
    assert not h.backend.routes, "every route released"
    benchmark.extra_info["ops_per_call"] = k


def test_connection_lifecycle(benchmark: Any) -> None:
    """Create, register, flush the ready frame, deregister: one socket's whole life, in process."""
    h = InProcessGateway()
    users = Users(h)
    connect, flush = h.connect, h.flush

    def lifecycle() -> Any:
        c = connect(users.claims())
        flush()
        c.connection_lost(None)
        return c

    c = benchmark(lifecycle)
    assert c.transport.bytes == len(READY_FRAME) and len(h.registry) == 0 and not h.backend.routes


@pytest.mark.parametrize("size", [100, 1000, 5000])
def test_registry_scale(benchmark: Any, size: int) -> None:
    """Published 2.6 / 6.2 / 5.0 µs at 100 / 1,000 / 5,000 (re-registering mock connections).

    Ours: the lifecycle of one more socket (register + flush + deregister) while the gateway
    already holds `size` sockets over 10 agents.
    """
    h = InProcessGateway()
    resident_users = Users(h, pool=size, prefix="resident")
    resident = [h.connect(resident_users.claims()) for _ in range(size)]
    users = Users(h, pool=100)
    h.flush()
    connect, flush = h.connect, h.flush

    def one_more() -> None:
        c = connect(users.claims())
        flush()
        c.connection_lost(None)

    benchmark(one_more)
    assert len(h.registry) == size and all(c in h.registry.all for c in resident[:10])
    benchmark.extra_info["resident_connections"] = size


# --- memory per real idle socket --------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    from tests.support import rss_kib

    return rss_kib(pid) * 1024


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("n", [100, 1000, 5000, 10000])
def test_memory_per_connection(benchmark: Any, aloop: Any, request: pytest.FixtureRequest, n: int) -> None:
    """Server RSS growth per idle socket: a fresh `daisi-ws serve` (embedded), 100 sockets
    opened and closed to warm it up, RSS read; then `n` sockets (distinct users, so distinct
    tokens in the cache) opened and all ready; RSS read again after 0.5 s. The timed part is
    opening the n sockets (handshake + auth + registration), so handshakes/s comes with it.
    """
    from tests.support import ServerProcess

    n_run = n if not request.config.getoption("benchmark_disable") else min(n, 20)
    srv = ServerProcess().start()
    company = "mem"
    try:
        warm = [user_path(company, AGENT, srv.keys.user_token(company, AGENT, f"warm-{i}"), srv.keys.api) for i in range(100)]
        paths = [user_path(company, f"agent-{i % 100}", srv.keys.user_token(company, f"agent-{i % 100}", f"u{i}"), srv.keys.api) for i in range(n_run)]

        async def warm_up() -> None:
            clients = await connect_many(srv.port, warm)
            await close_all(clients)
            await asyncio.sleep(0.5)

        aloop.run_until_complete(warm_up())
        rss0 = rss_bytes(srv.pid)
        clients: list[Any] = []

        def open_all() -> None:
            clients.extend(aloop.run_until_complete(connect_many(srv.port, paths, concurrency=200)))

        t0 = time.perf_counter()
        benchmark.pedantic(open_all, rounds=1, iterations=1)
        elapsed = time.perf_counter() - t0
        aloop.run_until_complete(asyncio.sleep(0.5))
        rss1 = rss_bytes(srv.pid)
        assert len(clients) == n_run and all(c.ready.result() for c in clients), "every socket upgraded and got ready"
        assert not any(c.lost.done() for c in clients), "the server still holds every socket"
        growth = rss1 - rss0
        benchmark.extra_info.update(
            connections=n_run,
            native=env_native(),
            rss_before_bytes=rss0,
            rss_after_bytes=rss1,
            rss_growth_bytes=growth,
            rss_per_connection_bytes=round(growth / n_run),
            handshakes_per_second=round(n_run / elapsed),
        )
        aloop.run_until_complete(close_all(clients))
    finally:
        srv.stop(15)
        srv.kill()
