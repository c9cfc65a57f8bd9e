"""The NATS half of shared mode (SPEC §7.4, §7.5): interest-mode core subscriptions, the
queue-mode durable pull consumer with forwarding over request/reply, and publishing.

Interest mode: the gateway reference-counts (company, agent) pairs and admin filters; this
module mirrors the set it needs into core subscriptions (reconciled by one worker, so rapid
add/remove sequences and reconnects converge) and never touches Redis per event.

Queue mode: one pull loop keeps a pull request outstanding on the durable consumer, so
messages stream in as they are published (no fetch-and-wait batching latency); one worker
processes them in stream order, batching route lookups of messages that arrived together into
one Redis round trip; forwards to each target are published in stream order and answered
concurrently; a message is acked once every forward answered, NAKed (1 s) otherwise.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from daisi_ws.cluster.base import Pair
from daisi_ws.cluster.redis_store import RouteRegistry
from daisi_ws.config import Settings, nats_servers
from daisi_ws.gateway.hub import SCOPE_ADMINS, SCOPE_USERS, BuiltEvent
from daisi_ws.log import Logger
from daisi_ws.metrics import Metrics
from daisi_ws.protocol import (
    FORWARD_SUBJECT_PREFIX,
    PODS_KEY,
    SUBJECT_PREFIX,
    chats_route_key,
    message_route_key,
    subject_type_label,
)

USERS = 0
ADMINS = 1

CONSUMER_FILTER = "websocket.>"
MAX_DELIVER = 5
BIND_RETRY = 5.0
PULL_BATCH = 64  # small batches spread the load: an exhausted request re-queues behind the others
PULL_EXPIRES = 5.0
NAK_DELAY = 1.0
MAX_INFLIGHT_BATCHES = 64
WORK_BATCH = 256
READY_TIMEOUT = 2.0
NO_RESPONDERS = "503"
STATUS = "Status"
REQUEST_ID = "X-Request-ID"
DWS_SUBJECT = "Dws-Subject"

# (message, route key, [(target pod, future of its reply)]) per processed message
Pending = list[tuple[Msg, str, list[tuple[bytes, "asyncio.Future[Msg]"]]]]


def subject_label(subject: str) -> str:
    parts = subject.split(".", 4)
    return subject_type_label(parts[3]) if len(parts) > 3 else "other"


def user_subject(pair: Pair) -> str:
    return f"{SUBJECT_PREFIX}.{pair[0]}.{pair[1]}.>"


def admin_subject(flt: Pair) -> str:
    return f"{SUBJECT_PREFIX}.{flt[0]}.{flt[1]}.agents"


class NatsBus:
    def __init__(self, settings: Settings, metrics: Metrics, log: Logger, routes: RouteRegistry) -> None:
        self.settings = settings
        self.metrics = metrics
        self.log = log
        self.routes = routes
        self.pod_id = settings.server.pod_id
        self.pod_bytes = self.pod_id.encode()
        self.queue_mode = settings.nats.delivery == "queue"
        self.gateway: Any = None
        self.nc: NATS | None = None
        self.closing = False
        self.intake_stopped = False
        self.connected = asyncio.Event()
        self._connect_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._last_error_log = 0.0
        # interest mode: wanted subscriptions and the ones we hold
        self._want: dict[tuple[int, Pair], None] = {}
        self._subs: dict[tuple[int, Pair], Subscription] = {}
        self._reconcile_running = False
        self._reconcile_dirty = False
        # queue mode
        self.bound = False
        self._bind_task: asyncio.Task[None] | None = None
        self._pull_task: asyncio.Task[None] | None = None
        self._worker_task: asyncio.Task[None] | None = None
        self._pull_inbox = ""
        self._pull_sub: Subscription | None = None
        self._pull_wake = asyncio.Event()
        self._pull_done = asyncio.Event()
        self._pull_pause = 0.0
        self._credits = 0
        self._queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._forward_sub: Subscription | None = None
        self._reply_sub: Subscription | None = None
        self._reply_prefix = ""
        self._replies: dict[str, asyncio.Future[Msg]] = {}
        self._tokens = itertools.count(1)
        self._inflight = asyncio.Semaphore(MAX_INFLIGHT_BATCHES)
        self._completions: set[asyncio.Task[None]] = set()
        m = metrics
        self._received = m.nats_received_by_type
        self._fwd_sent = m.forward_sent_by_type
        self._fwd_received = m.forward_received_by_type
        self._fwd_fail = {r: m.forward_failures.labels(r) for r in ("no_responders", "timeout", "error")}
        self._naks = {r: m.forward_naks.labels(r) for r in ("forward_failed", "route_lookup_failed")}
        n = settings.nats.stream_name
        c = settings.nats.consumer_name
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{n}.{c}"
        self._next_request = orjson.dumps({"batch": PULL_BATCH, "expires": int(PULL_EXPIRES * 1e9)})

    def attach(self, gateway: Any) -> None:
        self.gateway = gateway

    # --- connection -------------------------------------------------------------------------
    def start(self) -> None:
        self._connect_task = self._spawn(self._connect_loop())

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("nats task failed", error=repr(task.exception()))

    async def _connect_loop(self) -> None:
        n = self.settings.nats
        while not self.closing:
            nc = NATS()
            self.nc = nc
            # a new client holds none of the old one's subscriptions
            self._subs.clear()
            self._forward_sub = self._reply_sub = self._pull_sub = None
            try:
                await nc.connect(
                    servers=nats_servers(n.url),
                    name=f"daisi-ws {self.pod_id}",
                    connect_timeout=n.connect_timeout_seconds,
                    reconnect_time_wait=n.reconnect_wait_seconds,
                    max_reconnect_attempts=n.max_reconnects,
                    ping_interval=n.ping_interval_seconds,
                    max_outstanding_pings=n.max_pings_out,
                    allow_reconnect=True,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    closed_cb=self._on_closed,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # unreachable NATS never stops the process
                self._log_error("cannot connect to NATS; retrying", exc)
                try:
                    await nc.close()
                except Exception:
                    pass
                await asyncio.sleep(max(1.0, float(n.reconnect_wait_seconds)))
                continue
            self.log.info("connected to NATS", pod_id=self.pod_id, delivery=self.settings.nats.delivery)
            await self._on_connect()
            return

    async def _on_error(self, exc: Exception) -> None:
        self._log_error("NATS error", exc)

    def _log_error(self, message: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= 10:
            self._last_error_log = now
            self.log.warn(message, error=str(exc) or type(exc).__name__)

    async def _on_disconnected(self) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        if was_connected and not self.closing:
            self.log.warn("disconnected from NATS; reconnecting")

    async def _on_reconnected(self) -> None:
        self.log.info("reconnected to NATS", pod_id=self.pod_id)
        await self._on_connect()

    async def _on_closed(self) -> None:
        self.connected.clear()
        task = self._connect_task
        if not self.closing and (task is None or task.done()):
            # reconnect attempts exhausted (nats.max_reconnects >= 0): start over
            self.log.warn("NATS connection closed; connecting again")
            self._connect_task = self._spawn(self._connect_loop())

    async def _on_connect(self) -> None:
        """Every (re)connect: restore intake (SPEC §10.1)."""
        self.connected.set()
        if self.intake_stopped:
            return
        if self.queue_mode:
            await self._queue_setup()
        else:
            self._schedule_reconcile()

    async def wait_connected(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.connected.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        if self.queue_mode and not self.bound and self._bind_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._bind_task), timeout)
            except (asyncio.TimeoutError, Exception):  # readiness reports it
                pass
        return True

    async def readiness(self) -> str:
        nc = self.nc
        if nc is None or not nc.is_connected:
            return "disconnected"
        try:
            await asyncio.wait_for(nc.flush(timeout=int(READY_TIMEOUT)), READY_TIMEOUT)
        except Exception:  # a failed round trip is "disconnected"
            return "disconnected"
        if self.queue_mode and not self.bound:
            return "consumer_unavailable"
        return "connected"

    # --- interest mode (SPEC §7.4) ------------------------------------------------------------
    def user_pair_added(self, pair: Pair) -> None:
        if not self.queue_mode:
            self._want[(USERS, pair)] = None
            self._schedule_reconcile()

    def user_pair_removed(self, pair: Pair) -> None:
        if not self.queue_mode:
            self._want.pop((USERS, pair), None)
            self._schedule_reconcile()

    def admin_filter_added(self, flt: Pair) -> None:
        if not self.queue_mode:
            self._want[(ADMINS, flt)] = None
            self._schedule_reconcile()

    def admin_filter_removed(self, flt: Pair) -> None:
        if not self.queue_mode:
            self._want.pop((ADMINS, flt), None)
            self._schedule_reconcile()

    def _schedule_reconcile(self) -> None:
        self._reconcile_dirty = True
        if not self._reconcile_running and self.connected.is_set():
            self._reconcile_running = True
            self._spawn(self._reconcile())

    async def _reconcile(self) -> None:
        """Make the held subscriptions equal the wanted ones (one worker, serialised)."""
        try:
            while self._reconcile_dirty:
                self._reconcile_dirty = False
                nc = self.nc
                if nc is None or not nc.is_connected:
                    return  # the next connect reconciles
                want = {} if self.intake_stopped else self._want
                for key in [k for k in want if k not in self._subs]:
                    kind, pair = key
                    if kind == USERS:
                        sub = await nc.subscribe(user_subject(pair), cb=self._on_user_event)
                    else:
                        sub = await nc.subscribe(admin_subject(pair), cb=self._admin_callback(pair))
                    self._subs[key] = sub
                for key in [k for k in self._subs if k not in want]:
                    await self._subs.pop(key).unsubscribe()
        except Exception as exc:  # retried on the next change or reconnect
            self._log_error("could not update NATS subscriptions", exc)
            self._reconcile_dirty = True
        finally:
            self._reconcile_running = False

    async def _on_user_event(self, msg: Msg) -> None:
        subject = msg.subject
        self._received[subject_label(subject)].inc()
        self.gateway.hub.dispatch(subject, msg.data, SCOPE_USERS, None)

    def _admin_callback(self, flt: Pair) -> Callable[[Msg], Awaitable[None]]:
        received = self._received["agents"]

        async def on_admin_event(msg: Msg) -> None:
            received.inc()
            self.gateway.hub.dispatch(msg.subject, msg.data, SCOPE_ADMINS, flt)

        return on_admin_event

    # --- publish (SPEC §1.7) -----------------------------------------------------------------
    async def publish(self, subject: str, payload: bytes, request_id: str) -> int:
        nc = self.nc
        if nc is None or not (nc.is_connected or nc.is_reconnecting):
            raise ConnectionError("NATS is not connected")
        count = int(self.gateway.hub.count_recipients(subject))
        headers = {REQUEST_ID: request_id}
        if self.queue_mode:
            await nc.jetstream().publish(subject, payload, headers=headers)
        else:
            await nc.publish(subject, payload, headers=headers)
        return count

    # --- queue mode (SPEC §7.5) --------------------------------------------------------------
    async def _queue_setup(self) -> None:
        nc = self.nc
        assert nc is not None
        if self._forward_sub is None:  # first connect of this client (reconnects replay them)
            self._forward_sub = await nc.subscribe(FORWARD_SUBJECT_PREFIX + self.pod_id, cb=self._on_forward)
            self._reply_prefix = nc.new_inbox() + "."
            self._reply_sub = await nc.subscribe(self._reply_prefix + "*", cb=self._on_reply)
            self._pull_inbox = nc.new_inbox()
            self._pull_sub = await nc.subscribe(self._pull_inbox, cb=self._on_pulled)
        if self._worker_task is None or self._worker_task.done():
            self._worker_task = self._spawn(self._worker())
        if self._pull_task is None or self._pull_task.done():
            self._pull_task = self._spawn(self._pull_loop())
        # every (re)connect: check the binding (the consumer may be gone), then pull again
        self.bound = False
        self._pull_done.set()
        if self._bind_task is None or self._bind_task.done():
            self._bind_task = self._spawn(self._bind_loop())

    async def _bind_loop(self) -> None:
        n = self.settings.nats
        app = self.settings.app
        while not self.bound and not self.intake_stopped:
            nc = self.nc
            try:
                if nc is None or not nc.is_connected:
                    raise ConnectionError("NATS is not connected")
                js = nc.jetstream()
                try:
                    await js.consumer_info(n.stream_name, n.consumer_name, timeout=READY_TIMEOUT)
                except NotFoundError:
                    config = ConsumerConfig(
                        name=n.consumer_name,
                        durable_name=n.consumer_name,
                        filter_subject=CONSUMER_FILTER,
                        ack_policy=AckPolicy.EXPLICIT,
                        deliver_policy=DeliverPolicy.NEW,
                        ack_wait=float(app.nats_ack_wait_seconds),
                        max_ack_pending=app.nats_max_ack_pending,
                        max_deliver=MAX_DELIVER,
                    )
                    await js.add_consumer(n.stream_name, config, timeout=READY_TIMEOUT)
                    self.log.info("created durable consumer", stream=n.stream_name, consumer=n.consumer_name)
                self.bound = True
                self.log.info("bound to durable consumer", stream=n.stream_name, consumer=n.consumer_name)
                self._pull_done.set()
                self._pull_wake.set()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # retried every 5 s (SPEC §7.5)
                self._log_error("cannot bind durable consumer; retrying", exc)
            await asyncio.sleep(BIND_RETRY)

    def _rebind(self) -> None:
        self.bound = False
        self._pull_wake.clear()
        if not self.intake_stopped and (self._bind_task is None or self._bind_task.done()):
            self._bind_task = self._spawn(self._bind_loop())

    async def _pull_loop(self) -> None:
        """Keep one pull request outstanding; messages stream in as they are published."""
        while not self.intake_stopped:
            if not self.bound:
                self._pull_wake.clear()
                await self._pull_wake.wait()
                continue
            if self._pull_pause:
                pause, self._pull_pause = self._pull_pause, 0.0
                await asyncio.sleep(pause)
            nc = self.nc
            if nc is None or not nc.is_connected:
                await asyncio.sleep(0.2)
                continue
            self._pull_done.clear()
            self._credits = PULL_BATCH
            try:
                await nc.publish(self._next_subject, self._next_request, reply=self._pull_inbox)
            except Exception as exc:
                self._log_error("pull request failed", exc)
                await asyncio.sleep(1.0)
                continue
            try:
                await asyncio.wait_for(self._pull_done.wait(), PULL_EXPIRES + 1.0)
            except asyncio.TimeoutError:
                pass  # lost (e.g. reconnect): pull again

    async def _on_pulled(self, msg: Msg) -> None:
        if not msg.reply:
            # a status message ending (or refusing) the pull request
            status = (msg.headers or {}).get(STATUS, "")
            if status == "100":
                return  # heartbeat / flow control
            if status not in ("408", "404"):
                description = (msg.headers or {}).get("Description", "")
                self._log_error("pull request ended", RuntimeError(f"{status} {description}".strip()))
                self._pull_pause = 1.0
                if status == NO_RESPONDERS or "deleted" in description.lower() or "not found" in description.lower():
                    self._rebind()
            self._pull_done.set()
            return
        self._queue.put_nowait(msg)
        self._credits -= 1
        if self._credits <= 0:
            self._pull_done.set()

    async def _worker(self) -> None:
        queue = self._queue
        while True:
            batch = [await queue.get()]
            while len(batch) < WORK_BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            if self.intake_stopped:
                return  # fetched but unprocessed: left unacked (SPEC §10.2)
            await self._inflight.acquire()
            pending: Pending | None = None
            try:
                pending = await self._process(batch)
            except Exception as exc:  # redelivery after the ack wait covers it
                self.log.error("queue batch failed", error=repr(exc))
            if pending:
                task = asyncio.ensure_future(self._complete(pending))
                self._completions.add(task)
                task.add_done_callback(self._completion_done)
            else:
                self._inflight.release()

    async def _process(self, batch: list[Msg]) -> Pending | None:
        """Validate, look up routes (one round trip), deliver locally, send the forwards."""
        hub = self.gateway.hub
        received = self._received
        items: list[tuple[Msg, BuiltEvent, str, bool, str]] = []
        keys: dict[str, int] = {}
        any_agents = False
        for msg in batch:
            subject = msg.subject
            label = subject_label(subject)
            received[label].inc()
            built = hub.build(subject, msg.data)
            if built is None:
                await msg.ack()  # invalid: ACK and drop (counted by the hub)
                continue
            parsed = built[0]
            if parsed.chat is not None:
                rkey = message_route_key(parsed.company, parsed.agent, parsed.chat)
            else:
                rkey = chats_route_key(parsed.company, parsed.agent)
            agents = parsed.kind == "agents"
            any_agents = any_agents or agents
            keys.setdefault(rkey, len(keys))
            items.append((msg, built, rkey, agents, label))
        if not items:
            return None
        if any_agents:
            keys.setdefault(PODS_KEY, len(keys))
        try:
            members = await self.routes.members(list(keys))
        except Exception as exc:  # Redis error: NAK, nothing delivered
            self._log_error("route lookup failed; NAK", exc)
            nak = self._naks["route_lookup_failed"]
            for msg, *_ in items:
                await msg.nak(delay=NAK_DELAY)
                nak.inc()
            return None
        pods = members[keys[PODS_KEY]] if any_agents else set()
        own = self.pod_bytes
        pending: Pending = []
        forwarding = False
        for msg, built, rkey, agents, label in items:
            headers = msg.headers
            rid = headers.get(REQUEST_ID) if headers else None
            hub.dispatch_built(built)
            targets = members[keys[rkey]]
            if agents:
                targets = targets | pods
            futures: list[tuple[bytes, asyncio.Future[Msg]]] = []
            for target in targets:
                if target == own:
                    continue
                if not rid:
                    rid = uuid.uuid4().hex
                futures.append((target, await self._forward(target, msg.subject, msg.data, rid)))
                self._fwd_sent[label].inc()
            forwarding = forwarding or bool(futures)
            pending.append((msg, rkey, futures))
        if not forwarding:
            for msg, *_ in pending:  # nothing to wait for: ack now, no completion task
                await msg.ack()
            return None
        return pending

    def _completion_done(self, task: asyncio.Task[None]) -> None:
        self._completions.discard(task)
        self._inflight.release()
        if not task.cancelled() and task.exception() is not None:
            self.log.error("forward completion failed", error=repr(task.exception()))

    async def _forward(self, target: bytes, subject: str, data: bytes, rid: str) -> asyncio.Future[Msg]:
        """Publish one forward request (in call order) and return the future of its reply."""
        nc = self.nc
        token = str(next(self._tokens))
        fut: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._replies[token] = fut
        try:
            assert nc is not None
            await nc.publish(
                FORWARD_SUBJECT_PREFIX + target.decode(),
                data,
                reply=self._reply_prefix + token,
                headers={DWS_SUBJECT: subject, REQUEST_ID: rid},
            )
        except Exception as exc:  # counted as a failed forward
            self._replies.pop(token, None)
            if not fut.done():
                fut.set_exception(exc)
        fut.add_done_callback(lambda _f: self._replies.pop(token, None))
        return fut

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject[len(self._reply_prefix) :]
        fut = self._replies.pop(token, None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    async def _complete(self, pending: Pending) -> None:
        futures = [f for *_, fs in pending for _, f in fs]
        if futures:
            await asyncio.wait(futures, timeout=float(self.settings.nats.forward_timeout_seconds))
        gone: list[tuple[str, bytes]] = []
        fail = self._fwd_fail
        for msg, rkey, fs in pending:
            failed = False
            for target, fut in fs:
                if not fut.done():
                    fut.cancel()
                    fail["timeout"].inc()
                    failed = True
                    continue
                if fut.cancelled() or fut.exception() is not None:
                    fail["error"].inc()
                    failed = True
                    continue
                reply = fut.result()
                status = reply.headers.get(STATUS) if reply.headers else None
                if status == NO_RESPONDERS:
                    # target gone: not a NAK reason; it leaves the route key used and, whatever
                    # the event type, dws:pods (SPEC §7.5 Failures)
                    fail["no_responders"].inc()
                    gone.append((rkey, target))
                    gone.append((PODS_KEY, target))
                elif status:
                    fail["error"].inc()
                    failed = True
            try:
                if failed:
                    await msg.nak(delay=NAK_DELAY)
                    self._naks["forward_failed"].inc()
                else:
                    await msg.ack()
            except Exception as exc:  # redelivered after the ack wait
                self._log_error("ack failed", exc)
        if gone:
            try:
                await self.routes.remove_members(set(gone))
            except Exception as exc:  # the next forward finds them again
                self._log_error("could not remove gone pods from routes", exc)

    async def _on_forward(self, msg: Msg) -> None:
        """`dws.forward.<own pod_id>`: deliver locally, never re-forward, reply the count."""
        headers = msg.headers or {}
        subject = headers.get(DWS_SUBJECT, "")
        self._fwd_received[subject_label(subject)].inc()
        count = self.gateway.deliver(subject, msg.data, headers.get(REQUEST_ID)) if subject else 0
        if msg.reply:
            try:
                await msg.respond(str(count).encode())
            except Exception as exc:
                self._log_error("forward reply failed", exc)

    # --- shutdown (SPEC §10.2) ---------------------------------------------------------------
    async def stop_intake(self) -> None:
        """Unsubscribe; queue mode: stop pulling, leave unprocessed messages unacked."""
        self.intake_stopped = True
        for task in (self._pull_task, self._worker_task, self._bind_task):
            if task is not None:
                task.cancel()
        self._pull_wake.set()
        subs = list(self._subs.values())
        self._subs.clear()
        for sub in (self._pull_sub, self._forward_sub):
            if sub is not None:
                subs.append(sub)
        nc = self.nc
        if nc is not None and nc.is_connected:
            for sub in subs:
                try:
                    await sub.unsubscribe()
                except Exception:  # closing anyway
                    pass
        if self._completions:
            # forwards already sent: let them be answered and acked (bounded)
            await asyncio.wait(list(self._completions), timeout=float(self.settings.nats.forward_timeout_seconds) + 0.5)

    async def close(self) -> None:
        self.closing = True
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()
        for task in list(self._tasks):
            task.cancel()
        nc = self.nc
        if nc is not None and not nc.is_closed:
            try:
                await asyncio.wait_for(nc.close(), 5.0)
            except Exception:
                pass
