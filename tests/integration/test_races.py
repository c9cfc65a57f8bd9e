"""Races between a socket's end and the Redis work started for it (SPEC §5.5, §6.2, §10.2).
The pod reaches Redis through a relay that delays every chunk, so each window is wide open
on every run; the Redis behind it is real."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import time
from collections.abc import Iterator

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.integration.servers import (
    Client,
    NatsServer,
    RedisServer,
    SlowLink,
    pod_id,
    start_pods,
    stop_pods,
)
from tests.support import ServerProcess, wait_for

DELAY = 0.02  # one way: a Redis round trip takes 40 ms


@pytest.fixture
def slow_redis(redis_server: RedisServer) -> Iterator[SlowLink]:
    link = SlowLink(redis_server.port, DELAY).start()
    try:
        yield link
    finally:
        link.stop()


@pytest.fixture
def pod(nats_server: NatsServer, slow_redis: SlowLink) -> Iterator[ServerProcess]:
    pods = start_pods(nats_server, slow_redis, 1, prefix="race")  # type: ignore[arg-type]
    try:
        yield pods[0]
    finally:
        stop_pods(pods)


def ids() -> tuple[str, str, str]:
    tag = secrets.token_hex(4)
    return f"co{tag}", f"ag{tag}", "u1"


async def test_a_chat_selected_as_the_socket_closes_leaves_no_route(pod: ServerProcess, redis_server: RedisServer) -> None:
    """select_chat registers the message route (SADD); the socket ends before the reply.
    Nothing will ever select that chat here, so the route must be given back."""
    r = redis_server.client()
    c, a, u = ids()
    ws = await websockets.connect(pod.user_url(c, a, u))
    assert json.loads(await ws.recv()) == {"type": "ready"}
    await asyncio.sleep(0.3)  # the session state is restored
    await ws.send(json.dumps({"type": "select_chat", "chat_id": "chat-x"}))
    await ws.close()
    route = f"route:{c}:{a}:messages:chat-x"
    assert wait_for(lambda: not r.exists(f"route:{c}:{a}:chats"), 3)
    await asyncio.sleep(6 * DELAY)
    assert pod_id(pod) not in r.smembers(route), r.ttl(route)


async def test_a_restored_chat_of_a_socket_that_left_leaves_no_route(pod: ServerProcess, redis_server: RedisServer) -> None:
    """On connect the pod reads `:selected_chat` and registers that chat's route; the socket
    leaves right after ready, before the registration's reply."""
    r = redis_server.client()
    c, a, u = ids()
    r.set(f"session:{c}:{a}:{u}:selected_chat", "chat-r", ex=60)
    ws = await websockets.connect(pod.user_url(c, a, u))
    assert json.loads(await ws.recv()) == {"type": "ready"}
    await asyncio.sleep(2.5 * DELAY)  # the open pipeline answered; the message route SADD is out
    await ws.close()
    await asyncio.sleep(12 * DELAY)
    assert pod_id(pod) not in r.smembers(f"route:{c}:{a}:messages:chat-r")
    assert not r.exists(f"route:{c}:{a}:chats")


async def test_an_old_socket_closing_during_a_relogin_does_not_release_the_new_lock(
    pod: ServerProcess, redis_server: RedisServer
) -> None:
    """Same-pod re-login: the new handshake takes the lock (forced SET, our pod id); the old
    tab closes before the 101. Its deregistration must not compare-and-delete the lock the new
    socket is taking: the value is the same pod id."""
    r = redis_server.client()
    c, a, u = ids()
    key = f"session:{c}:{a}:{u}"
    old = await Client.connect(pod.user_url(c, a, u), "old")
    await asyncio.sleep(0.3)
    relogin = asyncio.ensure_future(Client.connect(pod.user_url(c, a, u), "new"))
    await asyncio.sleep(2.5 * DELAY)  # the forced SET is on its way to Redis
    await old.close()
    new = await relogin
    await asyncio.sleep(6 * DELAY)
    assert r.get(key) == pod_id(pod)
    assert not new.closed.is_set()
    await new.close()
    assert wait_for(lambda: r.get(key) is None, 3)  # and its own end releases it


async def test_sigterm_while_a_handshake_takes_the_lock_refuses_it_and_leaves_nothing(
    pod: ServerProcess, redis_server: RedisServer
) -> None:
    """The lock belongs to a pod that never answers the kill: acquisition takes ~0.5 s (kill,
    retries, forced SET). SIGTERM arrives meanwhile; the drain must not open the socket after
    it closed the others: 503, and no lock or route of it stays behind."""
    r = redis_server.client()
    c, a, u = ids()
    key = f"session:{c}:{a}:{u}"
    r.set(key, "a-pod-that-died", ex=60)
    r.set(key + ":selected_chat", "chat-1", ex=60)

    async def connect() -> int:
        try:
            async with websockets.connect(pod.user_url(c, a, u), open_timeout=10):
                return 101
        except InvalidStatus as exc:
            assert json.loads(exc.response.body) == {
                "code": "InternalServerError",
                "message": "Service shutting down",
                "details": "The WebSocket service is being gracefully terminated.",
            }
            return exc.response.status_code

    kills = r.pubsub()
    kills.subscribe(f"session_kill:{c}:{a}:{u}")

    def takeover_begun() -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if (kills.get_message(timeout=0.5) or {}).get("type") == "message":
                return True
        return False

    attempt = asyncio.ensure_future(connect())
    assert await asyncio.to_thread(takeover_begun)  # the handshake is waiting for the lock
    kills.close()
    started = time.monotonic()
    pod.signal(signal.SIGTERM)
    assert await attempt == 503
    assert await asyncio.to_thread(pod.wait, 15) == 0
    assert time.monotonic() - started < 5
    assert r.get(key) != pod_id(pod)
    assert not r.exists(f"route:{c}:{a}:chats")
    assert not r.exists(f"route:{c}:{a}:messages:chat-1")


async def test_a_route_given_back_is_kept_while_another_socket_registers_it(pod: ServerProcess, redis_server: RedisServer) -> None:
    """S1 selects chat X and closes; S2 (same company and agent) selects X while S1's SADD is
    still out. When S1's registration returns, S2's is in flight and not yet in the registry:
    the route must stay (it used to be given back, so the pod left the route S2 needs)."""
    r = redis_server.client()
    c, a, _ = ids()
    s1 = await Client.connect(pod.user_url(c, a, "s1"), "s1")
    s2 = await Client.connect(pod.user_url(c, a, "s2"), "s2")
    await asyncio.sleep(0.3)  # both sessions restored
    await s1.send({"type": "select_chat", "chat_id": "chat-x"})
    await asyncio.sleep(DELAY / 2)  # S1's SADD is on its way
    await s2.send({"type": "select_chat", "chat_id": "chat-x", "id": 7})
    await s1.close()
    await s2.wait_for(lambda f: f.get("type") == "ack" and f.get("id") == 7)
    await asyncio.sleep(6 * DELAY)
    assert pod_id(pod) in r.smembers(f"route:{c}:{a}:messages:chat-x")
    await s2.close()
