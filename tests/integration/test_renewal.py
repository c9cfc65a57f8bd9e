"""The renewal pass (SPEC §5.6, §6.3) against a real Redis, driven directly with many sessions:
every slice is renewed, and the pass never holds the event loop for long."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import redis.asyncio as aioredis

from daisi_ws.cluster.redis_store import RENEWAL_SLICE, RedisStore, Renewal, RouteRegistry
from daisi_ws.config import LogSettings, NatsSettings, RedisSettings, ServerSettings, Settings
from daisi_ws.gateway.registry import Registry
from daisi_ws.log import Logger
from daisi_ws.metrics import metrics
from daisi_ws.protocol import chats_route_key, user_session_key
from tests.integration.servers import RedisServer

POD = "renewal-pod"


class Sock:
    """A stand-in socket: the renewal pass reads `kind` and identity only."""

    kind = "user"


def renewal_for(redis_server: RedisServer, registry: Registry) -> tuple[Renewal, RedisStore]:
    settings = Settings(
        server=ServerSettings(host="127.0.0.1", http_port=0, pod_id=POD),
        nats=NatsSettings(url="nats://127.0.0.1:1"),
        redis=RedisSettings(address=redis_server.address),
        log=LogSettings(level="error"),
    )
    store = RedisStore(settings, metrics(), Logger(level="error"))
    renewal = Renewal(store, RouteRegistry(store), queue_mode=False)
    closed: list[str] = []
    renewal.gateway = SimpleNamespace(registry=registry, lose_session=closed.append, spawn=asyncio.ensure_future)
    return renewal, store


async def test_every_slice_is_renewed_and_the_loop_keeps_turning(redis_server: RedisServer) -> None:
    n = RENEWAL_SLICE * 20 + 7  # many slices and a partial one
    registry = Registry()
    conns = []
    for i in range(n):
        conn = Sock()
        pair = ("renewal-co", f"agent-{i % 50}")
        registry.claim_session(user_session_key(pair[0], pair[1], f"u{i}"), conn)
        registry.add_user(conn, pair)
        conns.append(conn)
    renewal, store = renewal_for(redis_server, registry)
    r = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
    try:
        keys = list(registry.sessions)
        # every lock and route exists with a short TTL, as if the last renewal was long ago
        pipe = r.pipeline(transaction=False)
        for key in keys:
            pipe.set(key, POD, ex=5)
        for company, agent in registry.users:
            pipe.sadd(chats_route_key(company, agent), POD)
            pipe.expire(chats_route_key(company, agent), 5)
        await pipe.execute()

        # a ticker measures the longest gap between loop turns while the pass runs
        longest = 0.0
        running = True

        async def ticker() -> None:
            nonlocal longest
            last = time.perf_counter()
            while running:
                await asyncio.sleep(0)
                now = time.perf_counter()
                longest = max(longest, now - last)
                last = now

        task = asyncio.create_task(ticker())
        await renewal.tick()
        running = False
        await task

        pipe = r.pipeline(transaction=False)
        for key in keys:
            pipe.ttl(key)
        assert all(ttl > 20 for ttl in await pipe.execute()), "every lock renewed to the session TTL (30 s)"
        pipe = r.pipeline(transaction=False)
        for pair in registry.users:
            pipe.ttl(chats_route_key(*pair))
        assert all(ttl > 200 for ttl in await pipe.execute()), "every chats route renewed to the route TTL"
        # one slice of work at a time: generous bound for a shared, noisy machine, far below
        # what renewing every session in one go takes
        assert longest < 0.25, f"the renewal pass held the loop for {longest * 1000:.0f} ms"
    finally:
        await r.aclose()
        await store.close()


async def test_a_lost_lock_in_a_later_slice_closes_only_that_socket(redis_server: RedisServer) -> None:
    registry = Registry()
    n = RENEWAL_SLICE + 3
    for i in range(n):
        registry.claim_session(user_session_key("lost-co", "a", f"u{i}"), Sock())
    renewal, store = renewal_for(redis_server, registry)
    r = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
    lost_key = user_session_key("lost-co", "a", f"u{n - 1}")  # in the second slice
    try:
        for key in registry.sessions:
            await r.set(key, POD if key != lost_key else "other-pod", ex=30)
        closed: list[Any] = []
        renewal.gateway.lose_session = closed.append
        await renewal.tick()
        assert closed == [lost_key]
        assert await r.get(lost_key) == b"other-pod"
    finally:
        await r.aclose()
        await store.close()


def counter(store: RedisStore, reason: str) -> float:
    return float(store.metrics.renewal_failure.labels("user", reason)._value.get())


async def test_a_wrong_type_key_fails_only_itself(redis_server: RedisServer) -> None:
    """SPEC §5.6 step 1 ("Redis error -> reason=error, no action", per socket) and §6.3: a
    foreign value of the wrong type at a lock key and at a route key, early in the first slice,
    is that key's own error; every other lock and route of the slice (before and after it) and
    of the later slice is renewed, and re-assert, lost-lock detection and re-registration still
    work in the same slice."""
    registry = Registry()
    n = RENEWAL_SLICE + 10  # two slices
    co = "wrongtype-co"
    for i in range(n):
        conn = Sock()
        registry.claim_session(user_session_key(co, f"a{i}", "u"), conn)
        registry.add_user(conn, (co, f"a{i}"))
    renewal, store = renewal_for(redis_server, registry)
    r = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
    keys = list(registry.sessions)
    routes = [chats_route_key(*pair) for pair in registry.users]
    bad_lock, lost_lock, expired_lock = keys[1], keys[5], keys[6]
    bad_route, lost_route = routes[2], routes[7]
    try:
        pipe = r.pipeline(transaction=False)
        for key in keys:
            pipe.delete(key, key + ":selected_chat")
            if key == lost_lock:
                pipe.set(key, "other-pod", ex=5)
            elif key != expired_lock:
                pipe.set(key, POD, ex=5)
            pipe.set(key + ":selected_chat", "chat", ex=5)
        for key in routes:
            pipe.delete(key)
            if key != lost_route:
                pipe.sadd(key, POD)
                pipe.expire(key, 5)
        await pipe.execute()
        # the foreign, wrong-type values
        await r.delete(bad_lock, bad_route)
        await r.sadd(bad_lock, "not-a-lock")
        await r.set(bad_route, "not-a-set")
        errors, failed = counter(store, "error"), counter(store, "failed_to_renew")
        closed: list[Any] = []
        renewal.gateway.lose_session = closed.append

        await renewal.tick()

        # the bad keys: their own error, left as they are
        assert counter(store, "error") - errors == 1
        assert await r.type(bad_lock) == b"set" and await r.type(bad_route) == b"string"
        # lost-lock detection and re-assert ran in the bad slice
        assert closed == [lost_lock]
        assert counter(store, "failed_to_renew") - failed == 2
        assert await r.get(lost_lock) == b"other-pod"
        assert await r.get(expired_lock) == POD.encode()
        assert await r.smembers(lost_route) == {POD.encode()}
        # everything else renewed, in both slices
        pipe = r.pipeline(transaction=False)
        renewed = [k for k in keys if k not in (bad_lock, lost_lock)]
        for key in renewed:
            pipe.ttl(key)
            pipe.ttl(key + ":selected_chat")
        ttls = await pipe.execute()
        stale = [k for k, t in zip([k for k in renewed for _ in (0, 1)], ttls, strict=True) if t <= 20]
        assert not stale, f"{len(stale)} lock / selected-chat keys not renewed, e.g. {stale[:3]}"
        pipe = r.pipeline(transaction=False)
        good_routes = [k for k in routes if k != bad_route]
        for key in good_routes:
            pipe.ttl(key)
        stale = [k for k, t in zip(good_routes, await pipe.execute(), strict=True) if t <= 200]
        assert not stale, f"{len(stale)} routes not renewed, e.g. {stale[:3]}"
    finally:
        await r.aclose()
        await store.close()
