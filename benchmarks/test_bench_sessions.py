"""sessions: routes (register chat/message, lookup, unregister), kill-switch publish, session
lock acquire/refresh/release, full session lifecycle, in process and against a real Redis.

The Go figures (PUBLISHED.md) called mock lock managers, route registries and kill-switch
publishers: Go maps and counters. The in-process twins here are the embedded backend's route
table and the gateway's session table (what embedded mode really runs); the `redis`
variants are the shared-mode code (cluster/redis_store.py) against a real redis-server, each
asserting the Redis commands it sent (INFO commandstats).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import orjson
import pytest

from benchmarks.harness import AGENT, COMPANY, RedisCommands, drive, scaled, shared_settings
from daisi_ws.cluster.embedded import EmbeddedBackend
from daisi_ws.gateway.registry import Registry
from daisi_ws.log import Logger
from daisi_ws.metrics import metrics
from daisi_ws.protocol import chats_route_key, kill_channel, message_route_key, user_session_key

pytestmark = pytest.mark.benchmark(group="sessions")

POD = "bench-pod"
OTHER_POD = "bench-pod-b"


# --- in process -------------------------------------------------------------------------------------


class Counter:
    def __init__(self) -> None:
        self.i = 0

    def next(self) -> int:
        self.i += 1
        return self.i


def test_route_register_chat_inproc(benchmark: Any) -> None:
    """Published 856 ns (mock registry): a chats route for a new agent each call."""
    backend = EmbeddedBackend(POD)
    c = Counter()
    register = backend.register_route

    def op() -> None:
        drive(register(chats_route_key(COMPANY, f"agent-{c.next()}")))

    benchmark(op)
    assert len(backend.routes) == c.i and all(v == {POD} for v in backend.routes.values())


def test_route_register_message_inproc(benchmark: Any) -> None:
    """Published 1.0 µs (mock registry): a message route for a new chat each call."""
    backend = EmbeddedBackend(POD)
    c = Counter()
    register = backend.register_route

    def op() -> None:
        drive(register(message_route_key(COMPANY, AGENT, f"chat-{c.next()}")))

    benchmark(op)
    assert len(backend.routes) == c.i


def test_route_lookup_inproc(benchmark: Any) -> None:
    """Published 625 ns (mock): the chats route and a message route of one of 1000 agents."""
    backend = EmbeddedBackend(POD)
    keys = [(chats_route_key(COMPANY, f"agent-{i}"), message_route_key(COMPANY, f"agent-{i}", f"chat-{i}")) for i in range(1000)]
    for ck, mk in keys:
        drive(backend.register_route(ck))
        drive(backend.register_route(mk))
    routes = backend.routes
    c = Counter()

    def op() -> tuple[Any, Any]:
        ck, mk = keys[c.next() % 1000]
        return routes.get(ck), routes.get(mk)

    chats, msgs = benchmark(op)
    assert chats == {POD} and msgs == {POD}


def test_route_unregister_inproc(benchmark: Any, request: pytest.FixtureRequest) -> None:
    """Published 1.3 µs (mock): unregister a chats route and a message route (a batch of 1000)."""
    backend = EmbeddedBackend(POD)
    n = scaled(request.config, 1000, 10)
    keys = [(chats_route_key(COMPANY, f"agent-{i}"), message_route_key(COMPANY, f"agent-{i}", f"chat-{i}")) for i in range(n)]
    register, unregister = backend.register_route, backend.unregister_route

    def setup() -> None:
        for ck, mk in keys:
            drive(register(ck))
            drive(register(mk))

    def op() -> None:
        for ck, mk in keys:
            drive(unregister(ck))
            drive(unregister(mk))
        assert not backend.routes

    benchmark.pedantic(op, setup=setup, rounds=scaled(request.config, 50, 1), iterations=1)
    benchmark.extra_info["ops_per_call"] = n


def test_kill_switch_inproc(benchmark: Any) -> None:
    """Published 580 ns (a counter in a mock publisher). In process, a kill message is
    encoded, parsed by the real KillSwitch.handle (SPEC §5.4) and dispatched to the gateway's
    on_kill, which finds no local holder: everything but the Redis hop."""
    from benchmarks.harness import InProcessGateway
    from daisi_ws.cluster.redis_store import KillSwitch, RedisStore

    h = InProcessGateway(pod_id=POD)
    store = RedisStore(shared_settings("127.0.0.1:1", pod_id=OTHER_POD), metrics(), Logger(level="error"))
    kills: list[tuple[str, str]] = []

    def on_kill(key: str, new_pod: str) -> None:
        kills.append((key, new_pod))
        h.gw.on_kill(key, new_pod)

    ks = KillSwitch(store, on_kill)
    channel = kill_channel(user_session_key(COMPANY, AGENT, "user-1")).encode()

    def op() -> None:
        ks.handle(channel, orjson.dumps({"new_pod_id": OTHER_POD}))

    benchmark(op)
    assert kills and kills[-1] == (user_session_key(COMPANY, AGENT, "user-1"), OTHER_POD)


def test_session_lock_inproc(benchmark: Any) -> None:
    """Embedded mode's lock is the gateway's session table (SPEC §5.3 last line):
    claim (acquire) + holder check (refresh) + identity-checked release, new key each call."""
    reg = Registry()
    conn = object()
    c = Counter()

    def op() -> None:
        key = f"session:{COMPANY}:{AGENT}:user-{c.next()}"
        assert reg.claim_session(key, conn) is None
        assert reg.holder(key) is conn
        assert reg.release_session(key, conn)

    benchmark(op)
    assert not reg.sessions


def test_session_lifecycle_inproc(benchmark: Any) -> None:
    """Published 1.7 µs (mocks): lock, chats + message route, refresh, unregister both, release."""
    backend = EmbeddedBackend(POD)
    reg = Registry()
    conn = object()
    c = Counter()
    register, unregister = backend.register_route, backend.unregister_route

    def op() -> None:
        i = c.next()
        key = f"session:{COMPANY}:{AGENT}:user-{i}"
        ck, mk = chats_route_key(COMPANY, AGENT), message_route_key(COMPANY, AGENT, f"chat-{i}")
        reg.claim_session(key, conn)
        drive(register(ck))
        drive(register(mk))
        assert reg.holder(key) is conn
        drive(unregister(ck))
        drive(unregister(mk))
        reg.release_session(key, conn)

    benchmark(op)
    assert not reg.sessions and not backend.routes


# --- against a real Redis -----------------------------------------------------------------------------


@pytest.fixture
def redis_env(redis_server: Any, aloop: Any) -> Iterator[Any]:
    from daisi_ws.cluster.redis_store import KillSwitch, RedisStore, RouteRegistry, SessionLocks

    store = RedisStore(shared_settings(redis_server.address, pod_id=POD), metrics(), Logger(level="error"))
    cmds = RedisCommands(redis_server.port)
    cmds.client.flushall()
    env = type("RedisEnv", (), {})()
    env.store, env.locks, env.routes, env.loop, env.cmds = store, SessionLocks(store), RouteRegistry(store), aloop, cmds
    env.KillSwitch = KillSwitch
    aloop.run_until_complete(store.ping())  # connect (and load nothing) outside the timing
    try:
        yield env
    finally:
        aloop.run_until_complete(store.close())
        cmds.close()


def batch(benchmark: Any, env: Any, make: Callable[[int], Coroutine[Any, Any, Any]], n: int, rounds: int,
          setup: Callable[[], None] | None = None) -> None:
    """Time `n` sequential awaited operations per call on the benchmark's loop."""
    loop = env.loop
    base = [0]

    async def run() -> None:
        b = base[0]
        for i in range(n):
            await make(b + i)
        base[0] += n

    def target() -> None:
        loop.run_until_complete(run())

    benchmark.pedantic(target, setup=setup, rounds=rounds, iterations=1, warmup_rounds=0)
    benchmark.extra_info["ops_per_call"] = n
    benchmark.extra_info["backend"] = "redis"


REDIS = pytest.mark.real


def sizes(request: pytest.FixtureRequest) -> tuple[int, int]:
    """(operations per timed call, rounds)"""
    return scaled(request.config, 200, 3), scaled(request.config, 20, 1)


@REDIS
def test_route_register_chat_redis(benchmark: Any, redis_env: Any, request: pytest.FixtureRequest) -> None:
    """SADD + EXPIRE pipelined: one round trip per registration."""
    n, rounds = sizes(request)
    reg = redis_env.routes.register
    redis_env.cmds.start()
    batch(benchmark, redis_env, lambda i: reg(chats_route_key(COMPANY, f"agent-{i}")), n, rounds)
    d = redis_env.cmds.delta()
    total = n * rounds
    assert d.get("sadd") == total and d.get("expire") == total, d
    assert redis_env.cmds.client.smembers(chats_route_key(COMPANY, "agent-0")) == {POD.encode()}


@REDIS
def test_route_register_message_redis(benchmark: Any, redis_env: Any, request: pytest.FixtureRequest) -> None:
    n, rounds = sizes(request)
    reg = redis_env.routes.register
    redis_env.cmds.start()
    batch(benchmark, redis_env, lambda i: reg(message_route_key(COMPANY, AGENT, f"chat-{i}")), n, rounds)
    d = redis_env.cmds.delta()
    assert d.get("sadd") == n * rounds and d.get("expire") == n * rounds, d


@REDIS
def test_route_lookup_redis(benchmark: Any, redis_env: Any, request: pytest.FixtureRequest) -> None:
    """The queue-mode lookup: SMEMBERS of the chats route and a message route, one round trip."""
    n, rounds = sizes(request)
    keys = [[chats_route_key(COMPANY, f"agent-{i}"), message_route_key(COMPANY, f"agent-{i}", f"chat-{i}")] for i in range(1000)]
    for pair in keys:
        for k in pair:
            redis_env.cmds.client.sadd(k, POD)
    members = redis_env.routes.members
    found: list[Any] = []

    async def lookup(i: int) -> None:
        found.append(await members(keys[i % 1000]))

    redis_env.cmds.start()
    batch(benchmark, redis_env, lookup, n, rounds)
    d = redis_env.cmds.delta()
    assert d.get("smembers") == 2 * n * rounds, d
    assert all(f == [{POD.encode()}, {POD.encode()}] for f in found)


@REDIS
def test_route_unregister_redis(benchmark: Any, redis_env: Any, request: pytest.FixtureRequest) -> None:
    """SREM of a chats route and a message route (two round trips, as the gateway does)."""
    n, rounds = sizes(request)
    unreg = redis_env.routes.unregister
    client = redis_env.cmds.client

    def setup() -> None:
        pipe = client.pipeline(transaction=False)
        for i in range(n):
            pipe.sadd(chats_route_key(COMPANY, f"agent-{i}"), POD)
            pipe.sadd(message_route_key(COMPANY, f"agent-{i}", f"chat-{i}"), POD)
        pipe.execute()

    async def op(i: int) -> None:
        i %= n
        await unreg(chats_route_key(COMPANY, f"agent-{i}"))
        await unreg(message_route_key(COMPANY, f"agent-{i}", f"chat-{i}"))

    redis_env.cmds.start()
    batch(benchmark, redis_env, op, n, rounds, setup=setup)
    d = redis_env.cmds.delta()
    assert d.get("srem") == 2 * n * rounds, d
    assert client.dbsize() == 0


@REDIS
def test_kill_switch_publish_redis(benchmark: Any, redis_env: Any, request: pytest.FixtureRequest) -> None:
    """PUBLISH of the kill message (SessionLocks' publisher), received by a real KillSwitch
    subscriber in the same loop: counts what the subscriber got."""
    import asyncio

    n, rounds = sizes(request)
    got: list[tuple[str, str]] = []
    ks = redis_env.KillSwitch(redis_env.store, lambda key, pod: got.append((key, pod)))
    loop = redis_env.loop
    task = loop.create_task(ks.run())

    async def subscribed() -> None:
        while not ks.subscribed:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)

    loop.run_until_complete(asyncio.wait_for(subscribed(), 10))
    publish = redis_env.locks._publish_kill
    payload = orjson.dumps({"new_pod_id": OTHER_POD})
    redis_env.cmds.start()
    try:
        batch(benchmark, redis_env, lambda i: publish(kill_channel(user_session_key(COMPANY, AGENT, f"user-{i}")), payload), n, rounds)
        d = redis_env.cmds.delta()

        async def drained() -> None:
            while len(got) < n * rounds:
                await asyncio.sleep(0.01)

        loop.run_until_complete(asyncio.wait_for(drained(), 10))
    finally:
        task.cancel()
        try:
            loop.run_until_complete(task)
        except (asyncio.CancelledError, Exception):
            pass
    assert d.get("publish") == n * rounds, d
    assert len(got) == n * rounds and got[0] == (user_session_key(COMPANY, AGENT, "user-0"), OTHER_POD)


@REDIS
def test_session_lock_acquire_redis(benchmark: Any, redis_env: Any, request: pytest.FixtureRequest) -> None:
    """Uncontended acquire: SET NX EX, a new session key each time."""
    n, rounds = sizes(request)
    acquire = redis_env.locks.acquire
    redis_env.cmds.start()
    batch(benchmark, redis_env, lambda i: acquire(user_session_key(COMPANY, AGENT, f"user-{i}"), "user", 5.0, False), n, rounds)
    d = redis_env.cmds.delta()
    assert d.get("set") == n * rounds and "publish" not in d, d
    assert redis_env.cmds.client.get(user_session_key(COMPANY, AGENT, "user-0")) == POD.encode()


def one_lock_refresh(store: Any) -> Callable[[str], Coroutine[Any, Any, int]]:
    """Compare-and-expire of one lock (TTL 30 s) as the renewal pass runs it: RENEW_SLICE."""

    async def refresh(key: str) -> int:
        (renewed,) = await store.renew_slice(keys=[key], args=[store.pod_bytes, 1, 0, 30])
        return int(renewed)

    return refresh


@REDIS
def test_session_lock_refresh_redis(benchmark: Any, redis_env: Any, request: pytest.FixtureRequest) -> None:
    """One lock renewed alone: the renewal pass's script (EVALSHA) with a one-lock slice."""
    n, rounds = sizes(request)
    key = user_session_key(COMPANY, AGENT, "user-1")
    redis_env.cmds.client.set(key, POD, ex=30)
    refresh_one = one_lock_refresh(redis_env.store)
    results: list[int] = []

    async def refresh(i: int) -> None:
        results.append(await refresh_one(key))

    loop = redis_env.loop
    loop.run_until_complete(refresh(0))  # loads the script (EVALSHA from then on)
    redis_env.cmds.start()
    batch(benchmark, redis_env, refresh, n, rounds)
    d = redis_env.cmds.delta()
    assert d.get("evalsha") == n * rounds, d
    assert all(r == 1 for r in results), "every refresh must find the lock ours"


@REDIS
def test_session_lock_release_redis(benchmark: Any, redis_env: Any, request: pytest.FixtureRequest) -> None:
    """Compare-and-delete script (EVALSHA), on locks this pod holds."""
    n, rounds = sizes(request)
    client = redis_env.cmds.client
    release = redis_env.locks.release

    def setup() -> None:
        pipe = client.pipeline(transaction=False)
        for i in range(n):
            pipe.set(user_session_key(COMPANY, AGENT, f"user-{i}"), POD, ex=30)
        pipe.execute()

    redis_env.loop.run_until_complete(redis_env.store.compare_and_delete(keys=["warm"], args=[b"x"]))
    redis_env.cmds.start()
    batch(benchmark, redis_env, lambda i: release(user_session_key(COMPANY, AGENT, f"user-{i % n}")), n, rounds, setup=setup)
    d = redis_env.cmds.delta()
    assert d.get("evalsha") == n * rounds and d.get("del") == n * rounds, d
    assert client.dbsize() == 0


@REDIS
def test_session_lifecycle_redis(benchmark: Any, redis_env: Any, request: pytest.FixtureRequest) -> None:
    """The Go lifecycle against real Redis: acquire, chats + message route, refresh, unregister
    both, release: seven round trips."""
    n, rounds = sizes(request)
    locks, routes = redis_env.locks, redis_env.routes
    refresh_one = one_lock_refresh(redis_env.store)

    async def lifecycle(i: int) -> None:
        key = user_session_key(COMPANY, AGENT, f"user-{i}")
        ck, mk = chats_route_key(COMPANY, AGENT), message_route_key(COMPANY, AGENT, f"chat-{i}")
        await locks.acquire(key, "user", 5.0, False)
        await routes.register(ck)
        await routes.register(mk)
        assert await refresh_one(key) == 1
        await routes.unregister(ck)
        await routes.unregister(mk)
        await locks.release(key)

    redis_env.loop.run_until_complete(lifecycle(-1))
    redis_env.cmds.start()
    batch(benchmark, redis_env, lifecycle, n, rounds)
    d = redis_env.cmds.delta()
    total = n * rounds
    assert d.get("set") == total and d.get("sadd") == 2 * total and d.get("srem") == 2 * total, d
    assert d.get("evalsha") == 2 * total, d
    assert redis_env.cmds.client.dbsize() == 0


@REDIS
@pytest.mark.parametrize("sockets", [1000])
def test_renewal_tick_redis(benchmark: Any, redis_env: Any, request: pytest.FixtureRequest, sockets: int) -> None:
    """What renewal really costs: one Renewal.tick for `sockets` local sockets (locks,
    selected chats, routes), pipelined. Per-socket figure = median / sockets."""
    from benchmarks.harness import InProcessGateway
    from daisi_ws.cluster.redis_store import RENEWAL_SLICE, Renewal

    n = scaled(request.config, sockets, 20)
    h = InProcessGateway(pod_id=POD)
    for i in range(n):
        h.connect(h.user_claims(COMPANY, f"agent-{i % 50}", f"user-{i}"))
    client = redis_env.cmds.client
    pipe = client.pipeline(transaction=False)
    for key in h.registry.sessions:
        pipe.set(key, POD, ex=30)
    for pair in h.registry.users:
        pipe.sadd(chats_route_key(*pair), POD)
    pipe.execute()
    renewal = Renewal(redis_env.store, redis_env.routes, False)
    renewal.gateway = h.gw
    loop = redis_env.loop
    loop.run_until_complete(renewal.tick())  # loads the scripts
    redis_env.cmds.start()
    rounds = scaled(request.config, 20, 1)
    benchmark.pedantic(lambda: loop.run_until_complete(renewal.tick()), rounds=rounds, iterations=1)
    d = redis_env.cmds.delta()
    routes = len(h.registry.users)
    # per tick and slice: one RENEW_SLICE script doing compare-and-expire per lock, EXPIRE per
    # selected chat and member-and-expire per route (Redis counts the calls inside scripts)
    slices = -(-max(n, routes) // RENEWAL_SLICE)
    assert d.get("evalsha") == rounds * slices, d
    assert d.get("expire", 0) == rounds * (2 * n + routes), d
    assert d.get("get", 0) == rounds * n and d.get("sismember", 0) == rounds * routes, d
    assert "set" not in d, "no lock was lost or re-asserted"
    benchmark.extra_info.update(ops_per_call=n, sockets=n, backend="redis", commands_per_tick={k: v // rounds for k, v in d.items()})
