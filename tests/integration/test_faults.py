"""Faults and lifecycle (SPEC §7.5, §10): Redis and NATS restarted mid-run, a queue-mode pod
killed with events in flight, and a SIGTERM drain. Tests that restart a server own it."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.servers import (
    Client,
    NatsServer,
    RedisServer,
    close_all,
    connect_status,
    create_stream,
    metric,
    pod_id,
    start_pods,
    stop_pods,
    wait_ready,
)
from tests.support import ServerProcess, http_request, wait_for

FAST = {
    "DAISI_WS_APP_SESSION_TTL_SECONDS": "3",
    "DAISI_WS_APP_TTL_REFRESH_INTERVAL_SECONDS": "1",
    "DAISI_WS_APP_ROUTE_TTL_SECONDS": "30",
}


def ids() -> tuple[str, str]:
    tag = secrets.token_hex(4)
    return f"co{tag}", f"ag{tag}"


def ready_state(pod: ServerProcess) -> tuple[int, dict[str, Any]]:
    status, _, body = http_request(pod.http + "/ready")
    return status, json.loads(body)


async def publish_core(url: str, items: list[tuple[str, dict[str, Any]]]) -> None:
    import nats

    nc = await nats.connect(url)
    try:
        for subject, payload in items:
            await nc.publish(subject, json.dumps(payload).encode())
        await nc.flush()
    finally:
        await nc.close()


async def wait_events(clients: list[Client], expected: set[str], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(expected <= set(c.events) for c in clients):
            return
        await asyncio.sleep(0.05)
    missing = {c.name: len(expected - set(c.events)) for c in clients}
    raise AssertionError(f"events missing: {missing}")


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    srv = RedisServer().start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[NatsServer]:
    srv = NatsServer(tmp_path / "js").start()
    try:
        asyncio.run(create_stream(srv.url))
        yield srv
    finally:
        srv.stop()


# --- Redis restarted mid-run (SPEC §10.1) ----------------------------------------------------------
async def test_redis_restart(nats_server: NatsServer, own_redis: RedisServer) -> None:
    pods = start_pods(nats_server, own_redis, 2, prefix="rr", **FAST)
    a, b = pods
    r = own_redis.client()
    try:
        c, ag = ids()
        u1 = await Client.connect(a.user_url(c, ag, "u1"), "u1")
        await u1.select_chat("chat-1")
        u2 = await Client.connect(b.user_url(c, ag, "u2"), "u2")
        adm = await Client.connect(a.admin_url(f"boss{c}", c, ""), "adm")
        clients = [u1, u2, adm]

        own_redis.stop()
        assert wait_for(lambda: ready_state(a)[0] == 503, 5)
        assert ready_state(a)[1] == {"status": "NOT_READY", "dependencies": {"nats": "connected", "redis": "disconnected"}}
        # existing sockets keep receiving while Redis is down, across renewal ticks
        await asyncio.sleep(1.5)
        await publish_core(nats_server.url, [
            (f"websocket.{c}.{ag}.agents", {"event_id": "down-1"}),
            (f"websocket.{c}.{ag}.messages.chat-1", {"event_id": "down-2"}),
        ])
        await wait_events(clients, {"down-1"})
        await wait_events([u1], {"down-2"})
        assert not any(cl.closed.is_set() for cl in clients)
        # new sockets get the lock 500
        assert await connect_status(b.user_url(c, ag, "u3")) == 500
        assert await connect_status(b.admin_url(f"other{c}")) == 500
        assert metric(b, "dws_session_lock_failure_total", user_type="user", reason="redis_error_initial") >= 1

        # Redis comes back empty: the next ticks re-assert locks and routes
        own_redis.start()
        assert wait_for(lambda: r.get(f"session:{c}:{ag}:u1") == pod_id(a), 5)
        assert wait_for(lambda: r.get(f"session:{c}:{ag}:u2") == pod_id(b), 5)
        assert wait_for(lambda: r.get(f"session:admin:boss{c}") == pod_id(a), 5)
        assert wait_for(lambda: r.smembers(f"route:{c}:{ag}:chats") == {pod_id(a), pod_id(b)}, 5)
        assert wait_for(lambda: r.smembers(f"route:{c}:{ag}:messages:chat-1") == {pod_id(a)}, 5)
        assert wait_for(lambda: metric(a, "dws_session_lock_success_total", user_type="user", lock_type="reassert") >= 1, 3)
        assert wait_for(lambda: ready_state(a)[0] == 200, 5)
        assert not any(cl.closed.is_set() for cl in clients)

        # the kill switch resubscribed (backoff 2 s doubling): takeovers work again
        def kill_switch_clients() -> int:
            return sum(1 for cl in r.client_list() if int(cl.get("psub", 0)) == 2)

        assert wait_for(lambda: kill_switch_clients() >= 2, 20)
        started = time.monotonic()
        u1b = await Client.connect(b.user_url(c, ag, "u1"), "u1b")
        await u1.wait_closed(2)
        assert u1.close_code == 4402
        assert time.monotonic() - started < 0.5
        assert r.get(f"session:{c}:{ag}:u1") == pod_id(b)
        await close_all([u1b, u2, adm])
    finally:
        stop_pods(pods)


# --- NATS restarted mid-run ----------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["interest", "queue"])
async def test_nats_restart(mode: str, own_nats: NatsServer, redis_server: RedisServer) -> None:
    pods = start_pods(own_nats, redis_server, 2, prefix=f"nr{mode[0]}", DAISI_WS_NATS_DELIVERY=mode, **FAST)
    a, b = pods
    try:
        c, ag = ids()
        u1 = await Client.connect(a.user_url(c, ag, "u1"), "u1")
        await u1.select_chat("chat-1")
        u2 = await Client.connect(b.user_url(c, ag, "u2"), "u2")
        adm = await Client.connect(b.admin_url(f"boss{c}", "*", ag), "adm")
        clients = [u1, u2, adm]
        await asyncio.sleep(0.3)
        await publish_mode(mode, own_nats.url, [(f"websocket.{c}.{ag}.agents", {"event_id": "before"})])
        await wait_events(clients, {"before"})

        own_nats.stop()
        assert wait_for(lambda: ready_state(a)[1]["dependencies"]["nats"] == "disconnected", 5)
        assert ready_state(a)[0] == 503
        own_nats.start()
        for pod in pods:
            wait_ready(pod, 20)
        # intake restored on reconnect: everything published afterwards is delivered, once
        items = []
        for k in range(50):
            items.append((f"websocket.{c}.{ag}.agents", {"event_id": f"after-a{k}"}))
            items.append((f"websocket.{c}.{ag}.messages.chat-1", {"event_id": f"after-m{k}"}))
        await publish_mode(mode, own_nats.url, items)
        agents = {f"after-a{k}" for k in range(50)}
        await wait_events(clients, agents)
        await wait_events([u1], {f"after-m{k}" for k in range(50)})
        await asyncio.sleep(0.3)
        for cl in clients:
            assert all(n == 1 for e, n in cl.events.items() if e.startswith("after")), cl.name
            assert not cl.closed.is_set()
        assert not any(e.startswith("after-m") for e in u2.events)
        await close_all(clients)
    finally:
        stop_pods(pods)


async def publish_mode(mode: str, url: str, items: list[tuple[str, dict[str, Any]]]) -> None:
    if mode == "interest":
        await publish_core(url, items)
        return
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for subject, payload in items:
            await js.publish(subject, json.dumps(payload).encode())
    finally:
        await nc.close()


# --- queue mode: a pod killed with events in flight (SPEC §7.5) ---------------------------------------
async def consumer_info(url: str, name: str) -> Any:
    import nats

    nc = await nats.connect(url)
    try:
        return await nc.jetstream().consumer_info("wa_stream", name)
    finally:
        await nc.close()


async def test_queue_redelivers_events_in_flight_at_sigkill(nats_server: NatsServer, redis_server: RedisServer) -> None:
    consumer = f"dws_kill_{secrets.token_hex(4)}"
    env = {
        **FAST,
        "DAISI_WS_NATS_DELIVERY": "queue",
        "DAISI_WS_NATS_CONSUMER_NAME": consumer,
        "DAISI_WS_APP_NATS_ACK_WAIT_SECONDS": "3",
        "DAISI_WS_NATS_FORWARD_TIMEOUT_SECONDS": "1",
    }
    pods = start_pods(nats_server, redis_server, 3, prefix="qk", **env)
    doomed, b, c_pod = pods
    try:
        c, ag = ids()
        clients = [
            await Client.connect(b.user_url(c, ag, "u1"), "u1"),
            await Client.connect(c_pod.user_url(c, ag, "u2"), "u2"),
            await Client.connect(b.admin_url(f"boss{c}"), "adm"),
        ]
        await asyncio.sleep(0.3)
        # the doomed pod holds a pull request; freeze it so what it is sent stays in flight
        doomed.signal(signal.SIGSTOP)
        expected = set()
        items = []
        for k in range(150):
            items.append((f"websocket.{c}.{ag}.agents", {"event_id": f"e{k}"}))
            expected.add(f"e{k}")
        await publish_mode("queue", nats_server.url, items)
        await asyncio.sleep(0.5)
        info = await consumer_info(nats_server.url, consumer)
        in_flight = info.num_ack_pending
        doomed.kill()
        assert in_flight > 0, "the frozen pod was sent nothing"
        started = time.monotonic()
        await wait_events(clients, expected, timeout=15)
        assert time.monotonic() - started >= 1.0  # they came back after the ack wait
        info = await consumer_info(nats_server.url, consumer)
        assert info.delivered.consumer_seq >= len(items) + in_flight  # each was delivered again
        # the dead pod no longer answers forwards: it is dropped from dws:pods
        r = redis_server.client()
        assert wait_for(lambda: pod_id(doomed) not in r.smembers("dws:pods"), 5)
        await close_all(clients)
    finally:
        stop_pods(pods)
        await delete_consumer(nats_server.url, consumer)


async def delete_consumer(url: str, name: str) -> None:
    import nats

    nc = await nats.connect(url)
    try:
        await nc.jetstream().delete_consumer("wa_stream", name)
    except Exception:
        pass
    finally:
        await nc.close()


# --- SIGTERM drain (SPEC §10.2) -----------------------------------------------------------------
async def test_sigterm_releases_locks_and_routes_and_keeps_the_durable(
    nats_server: NatsServer, redis_server: RedisServer
) -> None:
    consumer = f"dws_drain_{secrets.token_hex(4)}"
    env = {**FAST, "DAISI_WS_NATS_DELIVERY": "queue", "DAISI_WS_NATS_CONSUMER_NAME": consumer}
    pods = start_pods(nats_server, redis_server, 2, prefix="drain", **env)
    a, b = pods
    r = redis_server.client()
    try:
        c, ag = ids()
        users = [await Client.connect(a.user_url(c, ag, f"u{i}"), f"u{i}") for i in range(5)]
        for i, cl in enumerate(users):
            await cl.select_chat(f"chat-{i % 2}")
        adm = await Client.connect(a.admin_url(f"boss{c}"), "adm")
        stay = await Client.connect(b.user_url(c, ag, "stay"), "stay")
        assert wait_for(lambda: r.smembers(f"route:{c}:{ag}:chats") == {pod_id(a), pod_id(b)}, 2)
        assert {pod_id(a), pod_id(b)} <= r.smembers("dws:pods")
        started = time.monotonic()
        a.signal(signal.SIGTERM)
        assert await asyncio.to_thread(a.wait, 15) == 0  # the loop keeps serving our clients
        assert time.monotonic() - started < 2.5
        for cl in [*users, adm]:
            await cl.wait_closed(2)
            assert cl.close_code == 1001
        for i in range(5):
            assert r.get(f"session:{c}:{ag}:u{i}") is None
            assert r.get(f"session:{c}:{ag}:u{i}:selected_chat") == f"chat-{i % 2}"  # kept
        assert r.get(f"session:admin:boss{c}") is None
        assert r.smembers(f"route:{c}:{ag}:chats") == {pod_id(b)}
        assert not r.smembers(f"route:{c}:{ag}:messages:chat-0")
        assert not r.smembers(f"route:{c}:{ag}:messages:chat-1")
        assert pod_id(a) not in r.smembers("dws:pods")
        assert pod_id(b) in r.smembers("dws:pods")
        assert 0 < r.ttl("dws:pods") <= 30  # app.route_ttl_seconds
        assert r.get(f"session:{c}:{ag}:stay") == pod_id(b)
        info = await consumer_info(nats_server.url, consumer)  # never deleted
        assert info.name == consumer
        assert info.config.ack_wait == 30 and info.config.max_deliver == 5
        assert info.config.filter_subject == "websocket.>"
        await close_all([stay])
    finally:
        stop_pods(pods)
        await delete_consumer(nats_server.url, consumer)


# --- queue mode: binding the durable is retried every 5 s (SPEC §1.4, §7.5) ----------------------------
async def test_queue_binding_retried_until_the_stream_exists(own_nats: NatsServer, redis_server: RedisServer) -> None:
    from tests.integration.servers import pod_env

    stream = f"late_{secrets.token_hex(3)}"
    env = {**FAST, "DAISI_WS_NATS_DELIVERY": "queue", "DAISI_WS_NATS_STREAM_NAME": stream}
    pod = ServerProcess(env=pod_env(own_nats, redis_server, f"late-{secrets.token_hex(3)}", **env))
    pod.start()
    try:
        status, body = ready_state(pod)
        assert status == 503
        assert body["dependencies"] == {"nats": "consumer_unavailable", "redis": "connected"}
        import nats

        nc = await nats.connect(own_nats.url)
        try:
            await nc.jetstream().add_stream(name=stream, subjects=["late.>"])
        finally:
            await nc.close()
        await asyncio.to_thread(wait_ready, pod, 8)  # the next bind attempt creates the durable
        info = await consumer_info_on(own_nats.url, stream, "ws_fanout")
        assert info.config.filter_subject == "websocket.>"
        assert info.config.deliver_policy == "new" and info.config.ack_policy == "explicit"
        assert info.config.ack_wait == 30 and info.config.max_ack_pending == 1000 and info.config.max_deliver == 5
    finally:
        stop_pods([pod])


async def consumer_info_on(url: str, stream: str, name: str) -> Any:
    import nats

    nc = await nats.connect(url)
    try:
        return await nc.jetstream().consumer_info(stream, name)
    finally:
        await nc.close()


# --- nats.url: a server list with credentials ---------------------------------------------------
async def test_nats_url_lists_servers_and_its_password_is_never_logged(tmp_path: Path, redis_server: RedisServer) -> None:
    """Like the Go client, a comma-separated nats.url is tried server by server; the first one
    here is down. The password appears in no log line (the unreachable-at-start warning
    prints the URL masked)."""
    password = "S3cret-" + secrets.token_hex(4)
    live = NatsServer(tmp_path / "js", extra_args=("--user", "alice", "--pass", password)).start()
    dead = NatsServer(tmp_path / "dead")  # never started
    pods: list[ServerProcess] = []
    try:
        url = f"nats://alice:{password}@127.0.0.1:{dead.port},nats://alice:{password}@127.0.0.1:{live.port}"
        pods = start_pods(live, redis_server, 1, prefix="nl", DAISI_WS_NATS_URL=url)
        (pod,) = pods
        c, ag = ids()
        user = await Client.connect(pod.user_url(c, ag, "u1"), "u1")
        await publish_core(f"nats://alice:{password}@127.0.0.1:{live.port}", [(f"websocket.{c}.{ag}.chats", {"event_id": "e1"})])
        await wait_events([user], {"e1"})
        await close_all([user])

        # all servers down at start: the warning names them, masked
        unreachable = ServerProcess(env={
            "DAISI_WS_NATS_URL": f"nats://alice:{password}@127.0.0.1:{dead.port}",
            "DAISI_WS_REDIS_ADDRESS": redis_server.address,
        })
        pods.append(unreachable.start())
        warned = unreachable.logged("NATS not reachable yet; retrying in the background")
        assert warned and warned[0]["url"] == f"nats://alice:****@127.0.0.1:{dead.port}", warned
        for p in pods:
            assert password not in json.dumps(p.lines) + "".join(p.stderr)
    finally:
        stop_pods(pods)
        live.stop()


def test_pods_that_never_get_ready_are_stopped_by_the_harness(redis_server: RedisServer, tmp_path: Path) -> None:
    """start_pods raises when a pod never gets ready; it must not leave that process running
    (one did, for the rest of the machine's day, when a NATS URL could not be used)."""
    prefix = f"leak{secrets.token_hex(3)}"
    unusable = NatsServer(tmp_path / "js")  # never started: NATS stays unreachable, /ready 503
    with pytest.raises(AssertionError, match="pod never ready"):
        start_pods(unusable, redis_server, 1, prefix=prefix, ready_timeout=1.0)

    def running() -> list[int]:
        found = []
        for proc in Path("/proc").iterdir():
            try:
                if f"DAISI_WS_SERVER_POD_ID={prefix}-".encode() in (proc / "environ").read_bytes():
                    found.append(int(proc.name))
            except (OSError, ValueError):
                continue
        return found

    assert running() == []
