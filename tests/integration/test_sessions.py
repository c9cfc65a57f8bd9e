"""Sessions across pods (SPEC §5, §6, §13): takeover, kill switch, renewal, routes, and the
exact Redis keys / values / TTLs / channels a Go pod sharing the Redis relies on."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as aredis

from tests.integration.servers import (
    Client,
    NatsServer,
    RedisServer,
    close_all,
    connect_status,
    metric,
    pod_id,
    start_pods,
    stop_pods,
)
from tests.support import ServerProcess, wait_for

SESSION_TTL = 4
ROUTE_TTL = 60
ENV = {
    "DAISI_WS_APP_SESSION_TTL_SECONDS": str(SESSION_TTL),
    "DAISI_WS_APP_TTL_REFRESH_INTERVAL_SECONDS": "1",
    "DAISI_WS_APP_ROUTE_TTL_SECONDS": str(ROUTE_TTL),
}
USER_CONFLICT = {
    "code": "SessionConflict",
    "message": "Session conflict",
    "details": "Session taken over by another connection",
}
ADMIN_CONFLICT = {**USER_CONFLICT, "details": "Admin session taken over by another connection"}
USER_REASON = "SessionConflict: Session taken over by another connection"
ADMIN_REASON = "AdminSessionConflict: Session taken over by another connection"


@pytest.fixture(scope="module")
def pods(nats_server: NatsServer, redis_server: RedisServer) -> Iterator[list[ServerProcess]]:
    procs = start_pods(nats_server, redis_server, 2, prefix="sess", **ENV)
    try:
        yield procs
    finally:
        stop_pods(procs)


@pytest.fixture
def r(redis_server: RedisServer) -> Any:
    return redis_server.client()


def ids() -> tuple[str, str, str]:
    tag = secrets.token_hex(4)
    return f"co{tag}", f"ag{tag}", f"us{tag}"


def assert_conflict_close(client: Client, admin: bool = False) -> None:
    assert client.close_code == 4402
    assert client.close_reason == (ADMIN_REASON if admin else USER_REASON)
    errors = client.errors()
    assert errors == [ADMIN_CONFLICT if admin else USER_CONFLICT], client.frames
    assert client.frames[-1]["type"] == "error"  # the frame comes right before the close


# --- takeover (SPEC §5.3, §5.4) -----------------------------------------------------------------
async def test_user_takeover_across_pods(pods: list[ServerProcess], r: Any) -> None:
    a, b = pods
    c, ag, u = ids()
    key = f"session:{c}:{ag}:{u}"
    old = await Client.connect(a.user_url(c, ag, u), "old")
    assert r.get(key) == pod_id(a)
    started = time.monotonic()
    new = await Client.connect(b.user_url(c, ag, u), "new")
    ready_at = time.monotonic()
    await old.wait_closed(2)
    assert r.get(key) == pod_id(b)
    elapsed = max(ready_at, old.closed_at) - started
    assert elapsed < 0.5, elapsed
    assert_conflict_close(old)
    assert not new.closed.is_set()
    await asyncio.sleep(1.5)  # a renewal tick later the winner still holds the lock
    assert not new.closed.is_set()
    assert r.get(key) == pod_id(b)
    await close_all([new])


async def test_admin_takeover_across_pods(pods: list[ServerProcess], r: Any) -> None:
    a, b = pods
    admin = f"adm{secrets.token_hex(4)}"
    key = f"session:admin:{admin}"
    old = await Client.connect(a.admin_url(admin), "old")
    assert r.get(key) == pod_id(a)
    started = time.monotonic()
    new = await Client.connect(b.admin_url(admin, "acme", "*"), "new")
    ready_at = time.monotonic()
    await old.wait_closed(2)
    assert max(ready_at, old.closed_at) - started < 0.5
    assert r.get(key) == pod_id(b)
    assert_conflict_close(old, admin=True)
    assert not new.closed.is_set()
    await close_all([new])


async def test_takeover_back_and_forth(pods: list[ServerProcess], r: Any) -> None:
    a, b = pods
    c, ag, u = ids()
    key = f"session:{c}:{ag}:{u}"
    clients = []
    for i, pod in enumerate([a, b, a, b]):
        clients.append(await Client.connect(pod.user_url(c, ag, u), f"c{i}"))
        if i:
            await clients[i - 1].wait_closed(2)
            assert_conflict_close(clients[i - 1])
        assert r.get(key) == pod_id(pod)
    await close_all(clients[-1:])


async def test_same_pod_relogin(pods: list[ServerProcess], r: Any) -> None:
    a, _ = pods
    c, ag, u = ids()
    key = f"session:{c}:{ag}:{u}"
    old = await Client.connect(a.user_url(c, ag, u), "old")
    await old.select_chat("chat-1")
    started = time.monotonic()
    new = await Client.connect(a.user_url(c, ag, u), "new")
    ready_at = time.monotonic()
    await old.wait_closed(2)
    assert max(ready_at, old.closed_at) - started < 0.5
    assert_conflict_close(old)
    assert r.get(key) == pod_id(a)
    # the replaced socket's deregistration touched nothing: lock and routes stay
    await asyncio.sleep(0.3)
    assert r.get(key) == pod_id(a)
    assert wait_for(lambda: pod_id(a) in r.smembers(f"route:{c}:{ag}:chats"), 2)
    assert r.get(key + ":selected_chat") == "chat-1"
    assert wait_for(lambda: pod_id(a) in r.smembers(f"route:{c}:{ag}:messages:chat-1"), 2)  # restored
    assert not new.closed.is_set()
    # admin re-login on the same pod as well
    admin = f"adm{secrets.token_hex(4)}"
    first = await Client.connect(a.admin_url(admin), "first")
    second = await Client.connect(a.admin_url(admin), "second")
    await first.wait_closed(2)
    assert_conflict_close(first, admin=True)
    assert r.get(f"session:admin:{admin}") == pod_id(a)
    assert not second.closed.is_set()
    await close_all([new, second])
    assert wait_for(lambda: r.get(key) is None, 2)
    assert wait_for(lambda: r.get(f"session:admin:{admin}") is None, 2)


async def test_uncontended_acquire_is_one_set(pods: list[ServerProcess]) -> None:
    a, _ = pods
    before = {
        t: metric(a, "dws_session_lock_attempts_total", user_type="user", lock_type=t)
        for t in ("initial_setnx", "retry_setnx", "force_set")
    }
    c, ag, u = ids()
    client = await Client.connect(a.user_url(c, ag, u))
    after = {
        t: metric(a, "dws_session_lock_attempts_total", user_type="user", lock_type=t)
        for t in ("initial_setnx", "retry_setnx", "force_set")
    }
    assert after["initial_setnx"] - before["initial_setnx"] == 1
    assert after["retry_setnx"] == before["retry_setnx"]
    assert after["force_set"] == before["force_set"]
    await close_all([client])


# --- wire compatibility (SPEC §5.1, §5.4, §6.1, §13) ----------------------------------------------
async def test_keys_values_and_ttls(pods: list[ServerProcess], r: Any, nats_server: NatsServer) -> None:
    import nats

    a, _ = pods
    c, ag, u = ids()
    key = f"session:{c}:{ag}:{u}"
    before = time.time()
    client = await Client.connect(a.user_url(c, ag, u))
    await client.select_chat("chat-9")
    assert r.get(key) == pod_id(a)
    assert 0 < r.ttl(key) <= SESSION_TTL
    assert wait_for(lambda: r.get(key + ":last_active") is not None, 2)
    stamp = int(r.get(key + ":last_active"))
    assert int(before) - 1 <= stamp <= time.time() + 1
    assert 25 <= r.ttl(key + ":last_active") <= 30  # adaptive_ttl.session_lock.max_ttl_seconds
    assert r.get(key + ":selected_chat") == "chat-9"
    assert 0 < r.ttl(key + ":selected_chat") <= SESSION_TTL
    chats = f"route:{c}:{ag}:chats"
    messages = f"route:{c}:{ag}:messages:chat-9"
    assert r.type(chats) == "set" and r.smembers(chats) == {pod_id(a)}
    assert r.type(messages) == "set" and r.smembers(messages) == {pod_id(a)}
    assert 0 < r.ttl(chats) <= ROUTE_TTL
    # activity on the message route (rule enabled by default) after a delivered event
    nc = await nats.connect(nats_server.url)
    try:
        await nc.publish(f"websocket.{c}.{ag}.messages.chat-9", b'{"event_id":"m1"}')
        await client.wait_for(lambda f: f.get("type") == "event")
    finally:
        await nc.close()
    assert wait_for(lambda: r.get(messages + ":last_active") is not None, 2)
    assert abs(int(r.get(messages + ":last_active")) - time.time()) <= 2
    assert 890 <= r.ttl(messages + ":last_active") <= 900  # adaptive_ttl.message_route.max_ttl_seconds
    # renewal keeps the lock, the selected chat and the routes alive past their TTL
    await asyncio.sleep(SESSION_TTL + 1)
    assert r.get(key) == pod_id(a)
    assert r.get(key + ":selected_chat") == "chat-9"
    assert r.ttl(messages) > ROUTE_TTL  # active message route: adaptive 900 s
    assert 0 < r.ttl(chats) <= ROUTE_TTL  # chat_route rule disabled: route_ttl
    await close_all([client])
    # disconnect: lock released, pod removed from routes, selected chat and activity kept
    assert wait_for(lambda: r.get(key) is None, 2)
    assert wait_for(lambda: pod_id(a) not in r.smembers(chats), 2)
    assert wait_for(lambda: pod_id(a) not in r.smembers(messages), 2)
    assert r.get(key + ":selected_chat") == "chat-9"
    assert r.get(key + ":last_active") is not None


async def _psubscribe(redis_server: RedisServer, pattern: str) -> Any:
    client = aredis.Redis(host="127.0.0.1", port=redis_server.port)
    ps = client.pubsub(ignore_subscribe_messages=True)
    await ps.psubscribe(pattern)
    return client, ps


async def _next_message(ps: Any, timeout: float = 2.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = await ps.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if msg is not None and msg["type"] == "pmessage":
            return dict(msg)
    raise AssertionError("no kill message")


async def test_kill_channels_and_payload(pods: list[ServerProcess], redis_server: RedisServer) -> None:
    a, b = pods
    client, ps = await _psubscribe(redis_server, "session_kill:*")
    try:
        c, ag, u = ids()
        first = await Client.connect(a.user_url(c, ag, u))
        second = await Client.connect(b.user_url(c, ag, u))
        msg = await _next_message(ps)
        assert msg["channel"] == f"session_kill:{c}:{ag}:{u}".encode()
        assert msg["data"] == b'{"new_pod_id":"' + pod_id(b).encode() + b'"}'
        admin = f"adm{secrets.token_hex(4)}"
        third = await Client.connect(b.admin_url(admin))
        fourth = await Client.connect(a.admin_url(admin))
        msg = await _next_message(ps)
        assert msg["channel"] == f"session_kill:admin:{admin}".encode()
        assert msg["data"] == b'{"new_pod_id":"' + pod_id(a).encode() + b'"}'
        await first.wait_closed(2)
        await third.wait_closed(2)
        await close_all([second, fourth])
    finally:
        await ps.aclose()
        await client.aclose()


async def test_takeover_from_a_go_pod(pods: list[ServerProcess], r: Any, redis_server: RedisServer) -> None:
    """A foreign pod holds the lock and releases it when killed, as a Go pod does."""
    a, _ = pods
    c, ag, u = ids()
    key = f"session:{c}:{ag}:{u}"
    r.set(key, "go-pod-1", ex=30)
    client, ps = await _psubscribe(redis_server, f"session_kill:{c}:{ag}:{u}")
    retry_before = metric(a, "dws_session_lock_success_total", user_type="user", lock_type="retry_setnx")

    async def go_pod() -> None:
        msg = await _next_message(ps)
        assert json.loads(msg["data"]) == {"new_pod_id": pod_id(a)}
        r.delete(key)  # the Go pod closes its socket and releases

    try:
        killer = asyncio.ensure_future(go_pod())
        started = time.monotonic()
        user = await Client.connect(a.user_url(c, ag, u))
        assert time.monotonic() - started < 0.3  # no forced SET needed
        await killer
        assert r.get(key) == pod_id(a)
        assert metric(a, "dws_session_lock_success_total", user_type="user", lock_type="retry_setnx") == retry_before + 1
        # a Go pod that never answers: the forced SET takes over after the retries
        c2, ag2, u2 = ids()
        key2 = f"session:{c2}:{ag2}:{u2}"
        r.set(key2, "go-pod-dead", ex=30)
        started = time.monotonic()
        other = await Client.connect(a.user_url(c2, ag2, u2))
        took = time.monotonic() - started
        assert 0.4 <= took < 1.5, took
        assert r.get(key2) == pod_id(a)
        await close_all([user, other])
    finally:
        await ps.aclose()
        await client.aclose()


async def test_kill_from_a_go_pod(pods: list[ServerProcess], r: Any) -> None:
    a, _ = pods
    c, ag, u = ids()
    user = await Client.connect(a.user_url(c, ag, u))
    channel = f"session_kill:{c}:{ag}:{u}"
    # naming our own pod, or malformed: ignored
    r.publish(channel, json.dumps({"new_pod_id": pod_id(a)}))
    r.publish(channel, b"{}")
    r.publish(channel, b"not json")
    r.publish(f"session_kill:admin:{u}:x", json.dumps({"new_pod_id": "go"}))
    await asyncio.sleep(0.3)
    assert not user.closed.is_set()
    r.publish(channel, json.dumps({"new_pod_id": "go-pod-2"}))
    await user.wait_closed(2)
    assert_conflict_close(user)
    admin = f"adm{secrets.token_hex(4)}"
    adm = await Client.connect(a.admin_url(admin))
    r.publish(f"session_kill:admin:{admin}", json.dumps({"new_pod_id": "go-pod-2"}))
    await adm.wait_closed(2)
    assert_conflict_close(adm, admin=True)


# --- renewal (SPEC §5.6) ------------------------------------------------------------------------
async def test_expired_lock_is_reasserted_and_lost_lock_closes(pods: list[ServerProcess], r: Any) -> None:
    a, _ = pods
    c, ag, u = ids()
    key = f"session:{c}:{ag}:{u}"
    user = await Client.connect(a.user_url(c, ag, u))
    r.delete(key)  # as after a Redis restart
    assert wait_for(lambda: r.get(key) == pod_id(a), 3)
    assert not user.closed.is_set()
    # counted when the renewal's reply is processed, a moment after Redis holds the key again
    assert wait_for(lambda: metric(a, "dws_session_lock_success_total", user_type="user", lock_type="reassert") >= 1, 3)
    # another owner without a kill message: the next tick finds the lock lost
    r.set(key, "someone-else", ex=30)
    await user.wait_closed(3)
    assert_conflict_close(user)
    assert r.get(key) == "someone-else"  # a lost lock is never deleted by its old owner
    assert metric(a, "dws_session_lock_renewal_failure_total", user_type="user", reason="failed_to_renew") >= 2


async def test_routes_are_re_registered_when_missing(pods: list[ServerProcess], r: Any) -> None:
    a, _ = pods
    c, ag, u = ids()
    user = await Client.connect(a.user_url(c, ag, u))
    await user.select_chat("x1")
    chats, messages = f"route:{c}:{ag}:chats", f"route:{c}:{ag}:messages:x1"
    r.delete(chats, messages)
    assert wait_for(lambda: pod_id(a) in r.smembers(chats) and pod_id(a) in r.smembers(messages), 3)
    assert 0 < r.ttl(chats) <= ROUTE_TTL
    await close_all([user])


# --- routes (SPEC §6.2) -------------------------------------------------------------------------
async def test_select_chat_moves_routes(pods: list[ServerProcess], r: Any) -> None:
    a, b = pods
    c, ag, u = ids()
    route = f"route:{c}:{ag}:messages:"
    one = await Client.connect(a.user_url(c, ag, u + "1"), "one")
    two = await Client.connect(a.user_url(c, ag, u + "2"), "two")
    three = await Client.connect(b.user_url(c, ag, u + "3"), "three")
    # the chats route is written right after the upgrade
    assert wait_for(lambda: r.smembers(f"route:{c}:{ag}:chats") == {pod_id(a), pod_id(b)}, 2)
    await one.select_chat("k1", 1)
    assert r.smembers(route + "k1") == {pod_id(a)}
    await one.select_chat("k2", 2)
    assert r.smembers(route + "k2") == {pod_id(a)}
    assert wait_for(lambda: pod_id(a) not in r.smembers(route + "k1"), 2)
    assert r.get(f"session:{c}:{ag}:{u}1:selected_chat") == "k2"
    await two.select_chat("k2", 1)
    await three.select_chat("k2", 1)
    assert r.smembers(route + "k2") == {pod_id(a), pod_id(b)}
    await one.select_chat("k3", 3)  # `two` still needs k2 on pod a
    await asyncio.sleep(0.2)
    assert r.smembers(route + "k2") == {pod_id(a), pod_id(b)}
    assert r.smembers(route + "k3") == {pod_id(a)}
    await close_all([two])
    assert wait_for(lambda: r.smembers(route + "k2") == {pod_id(b)}, 2)
    await close_all([one])
    assert wait_for(lambda: r.smembers(f"route:{c}:{ag}:chats") == {pod_id(b)}, 2)
    assert wait_for(lambda: not r.smembers(route + "k3"), 2)
    await close_all([three])
    assert wait_for(lambda: not r.exists(f"route:{c}:{ag}:chats"), 2)


async def test_selected_chat_follows_the_user_to_another_pod(pods: list[ServerProcess], r: Any) -> None:
    a, b = pods
    c, ag, u = ids()
    first = await Client.connect(a.user_url(c, ag, u))
    await first.select_chat("here")
    await close_all([first])
    assert wait_for(lambda: r.get(f"session:{c}:{ag}:{u}") is None, 2)
    second = await Client.connect(b.user_url(c, ag, u))
    assert wait_for(lambda: pod_id(b) in r.smembers(f"route:{c}:{ag}:messages:here"), 2)
    await close_all([second])


# --- a pod killed with SIGKILL (SPEC §5.1) ---------------------------------------------------------
async def test_sigkilled_pod_lock_expires(
    pods: list[ServerProcess], nats_server: NatsServer, redis_server: RedisServer, r: Any
) -> None:
    _, b = pods
    [doomed] = start_pods(nats_server, redis_server, 1, keys=b.keys, prefix="doomed", **{**ENV, "DAISI_WS_APP_SESSION_TTL_SECONDS": "3"})
    try:
        c, ag, u = ids()
        key1, key2 = f"session:{c}:{ag}:{u}1", f"session:{c}:{ag}:{u}2"
        s1 = await Client.connect(doomed.user_url(c, ag, u + "1"))
        s2 = await Client.connect(doomed.user_url(c, ag, u + "2"))
        await asyncio.sleep(1.2)  # a renewal tick
        doomed.kill()
        killed_at = time.monotonic()
        await s1.wait_closed(2)
        await s2.wait_closed(2)
        assert r.get(key1) == pod_id(doomed)
        assert 0 < r.ttl(key1) <= 3
        # the user can log in elsewhere at once (the dead pod never answers the kill) ...
        other = await Client.connect(b.user_url(c, ag, u + "2"))
        assert r.get(key2) == pod_id(b)
        # ... and the dead pod's lock expires by its TTL
        assert wait_for(lambda: r.get(key1) is None, 4)
        assert time.monotonic() - killed_at <= 3.5
        before = metric(b, "dws_session_lock_success_total", user_type="user", lock_type="initial_setnx")
        again = await Client.connect(b.user_url(c, ag, u + "1"))
        assert r.get(key1) == pod_id(b)
        assert metric(b, "dws_session_lock_success_total", user_type="user", lock_type="initial_setnx") == before + 1
        await close_all([other, again])
    finally:
        doomed.kill()


# --- new sockets while Redis is unreachable -------------------------------------------------------
async def test_unreachable_redis_answers_500(nats_server: NatsServer, tmp_path: Any) -> None:
    """Start-up does not need Redis; sockets get the lock 500; /ready says 503."""
    dead = RedisServer()  # never started: nothing listens on its port
    procs = start_pods_unready(nats_server, dead)
    try:
        [pod] = procs
        c, ag, u = ids()
        assert await connect_status(pod.user_url(c, ag, u)) == 500
        assert await connect_status(pod.admin_url("boss")) == 500
        from tests.support import http_request

        status, _, body = http_request(pod.http + "/ready")
        assert status == 503
        assert json.loads(body) == {"status": "NOT_READY", "dependencies": {"nats": "connected", "redis": "disconnected"}}
        assert metric(pod, "dws_session_lock_failure_total", user_type="user", reason="redis_error_initial") == 1
    finally:
        stop_pods(procs)


async def test_hanging_redis_answers_500_at_the_lock_deadline_then_recovers(nats_server: NatsServer) -> None:
    """Redis accepts the connection but never answers (CLIENT PAUSE): the upgrade is refused
    with the lock 500 at the user deadline (5 s), not left hanging; once Redis answers again
    the next socket gets in."""
    srv = RedisServer().start()
    procs = start_pods_unready(nats_server, srv)
    try:
        [pod] = procs
        from tests.support import http_request

        assert wait_for(lambda: http_request(pod.http + "/ready")[0] == 200, 10)
        control = srv.client()
        control.execute_command("CLIENT", "PAUSE", "8000", "ALL")
        started = time.monotonic()
        assert await connect_status(pod.user_url(*ids())) == 500
        elapsed = time.monotonic() - started
        assert 4.5 <= elapsed < 6.5, elapsed
        # the lock deadline and redis-py's 5 s command timeout race: either reason is counted once
        failures = sum(
            metric(pod, "dws_session_lock_failure_total", user_type="user", reason=reason)
            for reason in ("timeout_context_cancelled", "redis_error_initial")
        )
        assert failures == 1
        control.execute_command("CLIENT", "UNPAUSE")
        c, ag, u = ids()
        client = await Client.connect(pod.user_url(c, ag, u))  # returns once `ready` arrived
        await client.close()
    finally:
        stop_pods(procs)
        srv.stop()


def start_pods_unready(nats_srv: NatsServer, redis_srv: RedisServer) -> list[ServerProcess]:
    from tests.integration.servers import pod_env

    pod = ServerProcess(env=pod_env(nats_srv, redis_srv, f"nored-{secrets.token_hex(3)}", **ENV))
    pod.start()
    wait_for(lambda: any(line.get("message") == "connected to NATS" for line in pod.lines), 5)
    return [pod]
