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
