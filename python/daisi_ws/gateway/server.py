"""The gateway: listener, socket lifecycle (SPEC §3.4, §5.5), client messages, sweep, drain."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Coroutine
from typing import TYPE_CHECKING, Any

import orjson

from daisi_ws import hotpath
from daisi_ws.auth import AuthService
from daisi_ws.cluster.base import Backend, LockError
from daisi_ws.config import Settings
from daisi_ws.gateway.connection import ADMIN, USER, Connection
from daisi_ws.gateway.http import (
    HttpProtocol,
    Req,
    Upgrade,
    error_reply,
    make_deflate_factories,
)
from daisi_ws.gateway.hub import SCOPE_ALL, Hub
from daisi_ws.gateway.registry import Registry
from daisi_ws.log import Logger
from daisi_ws.metrics import Metrics
from daisi_ws.protocol import (
    ADMIN_CONFLICT_ERROR,
    BAD_REQUEST,
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_SESSION_CONFLICT,
    INTERNAL_SERVER_ERROR,
    MSG_INVALID_FORMAT,
    MSG_UNHANDLED_TYPE,
    PONG_TIMEOUT_ERROR,
    REASON_ADMIN_CONFLICT,
    REASON_PONG_TIMEOUT,
    REASON_SHUTDOWN,
    REASON_USER_CONFLICT,
    SELECT_BAD_STRUCTURE,
    SELECT_MISSING,
    SELECT_NOT_STRING,
    SELECT_ROUTE_FAILED,
    SHUTDOWN_ERROR,
    USER_CONFLICT_ERROR,
    chats_route_key,
    id_violation_text,
    is_valid_id,
    message_route_key,
)
from daisi_ws.timeouts import within

if TYPE_CHECKING:
    from asyncio import AbstractEventLoop

READY = b'{"type":"ready"}'
LOCK_DEADLINE = {USER: 5.0, ADMIN: 10.0}
LOCK_FAILED_TEXT = {USER: "Failed to process session.", ADMIN: "Failed to process admin session."}
# Every socket is visited once per SWEEP_INTERVAL (pings, pong timeouts, block-policy
# timeouts), in SWEEP_PASSES passes spread over the interval: one pass touches a slice of the
# sockets, so the sweep never holds the event loop for all of them at once (5,000 sockets in
# one pass held it for ~15 ms whenever their pings fell due together).
SWEEP_INTERVAL = 1.0
SWEEP_PASSES = 10


class InFlight:
    """Operations under way per key (a key is present while at least one runs)."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._counts

    def enter(self, key: str) -> None:
        self._counts[key] = self._counts.get(key, 0) + 1

    def leave(self, key: str) -> bool:
        """True when this was the last one under way for `key`."""
        left = self._counts[key] - 1
        if left:
            self._counts[key] = left
            return False
        del self._counts[key]
        return True


class Gateway:
    def __init__(
        self,
        settings: Settings,
        auth: AuthService,
        backend: Backend,
        metrics: Metrics,
        log: Logger,
    ) -> None:
        self.settings = settings
        self.auth = auth
        self.backend = backend
        self.metrics = metrics
        self.log = log
        self.pod_id = settings.server.pod_id
        self.registry = Registry()
        self.hub = Hub(self.registry, metrics, log, settings.app.websocket_compression_threshold)
        self.send_stats = hotpath.SendStats()
        self.http_conns: set[HttpProtocol] = set()
        self.closing: set[Connection] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.server: asyncio.Server | None = None
        self.port = 0
        self.shutting_down = False
        # Shared mode: lock acquisitions in flight on this pod, per session key. While one
        # runs, a local socket of the same session that ends must not compare-and-delete the
        # lock (its value is this pod's id, the new socket's too); the release is deferred to
        # the last acquisition, which gives the lock back if no socket holds it then.
        self._acquiring = InFlight()
        self._release_deferred: set[str] = set()
        # Route registrations (SADD) in flight, per route key: until one returns, its socket is
        # not in the registry yet, but the route is needed all the same.
        self._registering = InFlight()
        self._sweeper: asyncio.Task[None] | None = None
        self._sweep_round: list[Connection] = []  # this round's snapshot of the sockets
        self._sweep_pos = 0
        self._sweep_slice = 1
        self._loop: AbstractEventLoop | None = None
        self.apply_settings(settings)
        metrics.bind_buffer_gauges(self._buffer_used, self._buffer_capacity)
        metrics.add_count_source(self._drop_counts)
        metrics.add_count_source(self._write_counts)

    def apply_settings(self, settings: Settings) -> None:
        """Settings that apply at once on reload (socket settings to later sockets)."""
        self.settings = settings
        app = settings.app
        self.drop_policy = hotpath.POLICIES[app.websocket_backpressure_drop_policy]
        self.allowed_origins = frozenset(o.lower() for o in app.allowed_origins)
        self.deflate_factories = make_deflate_factories(app.websocket_compression_mode)
        self.hub.compression_threshold = app.websocket_compression_threshold
        self.hub.write_delay = app.websocket_write_delay_ms / 1000.0

    # --- metrics read at scrape time ---------------------------------------------------------
    def _drop_counts(self) -> list[tuple[str, tuple[str, ...], float]]:
        return [("dws_websocket_messages_dropped", (reason,), n) for reason, n in self.send_stats.drops_by_reason().items()]

    def _write_counts(self) -> list[tuple[str, tuple[str, ...], float]]:
        return [("dws_websocket_writes", (), self.send_stats.writes)]

    def _buffer_used(self) -> float:
        return float(sum(len(c) for c in self.registry.all))

    def _buffer_capacity(self) -> float:
        return float(sum(c.capacity for c in self.registry.all))

    # --- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        s = self.settings.server
        self.server = await loop.create_server(
            lambda: HttpProtocol(self), host=s.host, port=s.http_port, backlog=4096, reuse_address=True
        )
        self.port = self.server.sockets[0].getsockname()[1]
        self._sweeper = loop.create_task(self._sweep_loop())

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def run_soon(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Session bookkeeping: run at once with the embedded backend, whose calls never
        suspend (no Task per socket event); a Task with the shared backend."""
        if not self.backend.inline:
            self.spawn(coro)
            return
        try:
            coro.send(None)
        except StopIteration:
            return
        except Exception as exc:
            self.log.error("session work failed", error=repr(exc))
            return
        coro.close()
        self.log.error("embedded session work suspended; it was abandoned")

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("background task failed", error=repr(task.exception()))

    # --- handshake: step 8 and the upgrade -------------------------------------------------------
    def upgrade(self, http: HttpProtocol, req: Req, upgrade: Upgrade) -> None:
        if self.shutting_down:
            http.reply_and_close(error_reply(503, *SHUTDOWN_ERROR), req.request_id)
            return
        if not self.backend.distributed_locks:
            # embedded: the lock is this process's table, taken over in register()
            http.switch(upgrade, req.request_id)
            return
        http.transport.pause_reading()
        self.spawn(self._lock_then_switch(http, req, upgrade))

    async def _lock_then_switch(self, http: HttpProtocol, req: Req, upgrade: Upgrade) -> None:
        key = upgrade.session_key
        self._acquiring.enter(key)
        acquired = False
        try:
            acquired = await self._acquire_and_switch(http, req, upgrade)
        finally:
            if self._acquiring.leave(key):
                deferred = key in self._release_deferred
                self._release_deferred.discard(key)
                if (acquired or deferred) and self.registry.holder(key) is None:
                    # no socket holds the session now (the client left, the server is
                    # stopping, or the socket it was to replace ended): give it back
                    await self._release(key, [])

    async def _acquire_and_switch(self, http: HttpProtocol, req: Req, upgrade: Upgrade) -> bool:
        """True once the lock is ours (whether or not the socket then opened)."""
        kind = upgrade.kind
        try:
            # the backend enforces LOCK_DEADLINE itself; this is the safety net around it
            await within(LOCK_DEADLINE[kind] + 0.5, self.backend.acquire(upgrade.session_key, kind, LOCK_DEADLINE[kind]))
        except (LockError, asyncio.TimeoutError, OSError, ConnectionError) as exc:
            reason = exc.reason if isinstance(exc, LockError) else "timeout_context_cancelled"
            if not isinstance(exc, LockError):
                self.metrics.lock_failure.labels(kind, reason).inc()
            self.log.warn("session lock failed", request_id=req.request_id, reason=reason, error=str(exc))
            http.reply_and_close(
                error_reply(500, INTERNAL_SERVER_ERROR, LOCK_FAILED_TEXT[kind], str(exc) or reason),
                req.request_id,
            )
            return False
        if self.shutting_down:  # the drain began while we took the lock (SPEC §10.2)
            http.reply_and_close(error_reply(503, *SHUTDOWN_ERROR), req.request_id)
        else:
            http.switch(upgrade, req.request_id)
        return True

    # --- registration (SPEC §3.4) -----------------------------------------------------------
    def register(self, conn: Connection) -> None:
        m = self.metrics
        if conn.send_envelope(READY):  # always first: queued before any event source sees conn
            m.sent_ready.inc()
        previous = self.registry.claim_session(conn.session_key, conn)
        if previous is not None:
            m.session_conflicts.labels(conn.kind).inc()
            self._conflict_close(previous)
        m.active_connections.inc()
        m.connections_total.inc()
        if conn.kind == USER:
            pair = (conn.company, conn.agent)
            if self.registry.add_user(conn, pair):
                self.backend.user_pair_added(pair)
        else:
            assert conn.admin_filter is not None
            if self.registry.add_admin(conn, conn.admin_filter):
                self.backend.admin_filter_added(conn.admin_filter)
        conn._busy = True  # client messages wait until the session state is restored
        self.run_soon(conn._drain(self._after_open(conn)))
        if self.log.enabled("debug"):
            self.log.debug("socket opened", request_id=conn.request_id, pod_id=self.pod_id, session=conn.kind)

    async def _after_open(self, conn: Connection) -> None:
        backend = self.backend
        key = conn.session_key
        user = conn.kind == USER
        pair = (conn.company, conn.agent)
        try:
            chat = await backend.open_session(key, chats_route_key(*pair) if user else None)
        except Exception as exc:
            self.log.warn("could not record the session in Redis", request_id=conn.request_id, error=str(exc))
            return
        if conn.ended:
            # the socket's deregistration may have reached Redis before our SADD
            if user:
                await self._release(None, [chats_route_key(*pair)])
            return
        if chat is None or not is_valid_id(chat) or conn.chat is not None:
            return
        route = message_route_key(pair[0], pair[1], chat)
        try:
            if not self.registry.chat_selected(pair, chat):
                await self._register_route(route)
        except Exception as exc:
            self.log.warn("could not register message route", request_id=conn.request_id, error=str(exc))
        if conn.ended:
            await self._release(None, [route])  # nobody entered it in the registry
        elif conn.chat is None:
            self.registry.select_chat(conn, pair, None, chat)
            conn.chat = chat

    # --- deregistration (SPEC §5.5) ---------------------------------------------------------
    def end(self, conn: Connection) -> None:
        if conn.ended:
            return
        conn.ended = True
        registry = self.registry
        release = registry.release_session(conn.session_key, conn)
        if release and conn.session_key in self._acquiring:
            release = False
            self._release_deferred.add(conn.session_key)
        routes: list[str] = []
        if conn.kind == USER:
            pair = (conn.company, conn.agent)
            if conn.chat is not None and registry.select_chat(conn, pair, conn.chat, None):
                routes.append(message_route_key(pair[0], pair[1], conn.chat))
            if registry.remove_user(conn, pair):
                routes.append(chats_route_key(*pair))
                self.backend.user_pair_removed(pair)
        else:
            assert conn.admin_filter is not None
            if registry.remove_admin(conn, conn.admin_filter):
                self.backend.admin_filter_removed(conn.admin_filter)
        m = self.metrics
        m.active_connections.dec()
        m.connection_duration.observe(time.monotonic() - conn.opened_at)
        if release or routes:
            self.run_soon(self._release(conn.session_key if release else None, routes))

    async def _release(self, session_key: str | None, routes: list[str]) -> None:
        backend = self.backend
        if session_key is not None:
            try:
                await backend.release(session_key)
            except Exception as exc:
                self.log.warn("could not release session lock", error=str(exc))
        for key in routes:
            if self._route_needed(key):
                continue  # a socket registered again meanwhile
            try:
                await backend.unregister_route(key)
            except Exception as exc:
                self.log.warn("could not unregister route", error=str(exc))

    async def _register_route(self, key: str) -> None:
        self._registering.enter(key)
        try:
            await self.backend.register_route(key)
        finally:
            self._registering.leave(key)

    def _route_needed(self, key: str) -> bool:
        if key in self._registering:
            return True  # another socket's registration: it enters the registry on return
        parts = key.split(":")
        if parts[-1] == "chats":
            return self.registry.has_users((parts[1], parts[2]))
        return self.registry.chat_selected((parts[1], parts[2]), parts[4])

    def _conflict_close(self, conn: Connection) -> None:
        if conn.kind == USER:
            conn.close(CLOSE_SESSION_CONFLICT, REASON_USER_CONFLICT, USER_CONFLICT_ERROR)
        else:
            conn.close(CLOSE_SESSION_CONFLICT, REASON_ADMIN_CONFLICT, ADMIN_CONFLICT_ERROR)

    def on_kill(self, session_key: str, new_pod_id: str) -> None:
        """Kill switch (SPEC §5.4): another pod took the session."""
        if new_pod_id == self.pod_id:
            return
        conn = self.registry.holder(session_key)
        if conn is not None:
            self.log.info("session taken over by another pod", request_id=conn.request_id, pod_id=self.pod_id)
            self._conflict_close(conn)

    def lose_session(self, session_key: str) -> None:
        """Renewal found the lock owned elsewhere (SPEC §5.6)."""
        conn = self.registry.holder(session_key)
        if conn is not None:
            self._conflict_close(conn)

    # --- client messages (SPEC §4.2) --------------------------------------------------------
    def handle_client_text(self, conn: Connection, data: bytes) -> Awaitable[None] | None:
        received = self.metrics.received_by_type
        try:
            msg = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as uexc:
                conn.invalid_utf8(uexc)
                return None
            received["invalid_json"].inc()
            conn.send_error((BAD_REQUEST, MSG_INVALID_FORMAT, str(exc)))
            return None
        if type(msg) is not dict:
            received["invalid_json"].inc()
            conn.send_error((BAD_REQUEST, MSG_INVALID_FORMAT, "message must be a JSON object"))
            return None
        mtype = msg.get("type")
        if mtype is not None and type(mtype) is not str:
            received["invalid_json"].inc()
            conn.send_error((BAD_REQUEST, MSG_INVALID_FORMAT, "type must be a string"))
            return None
        if mtype == "ready":
            received["ready"].inc()
            payload = msg.get("payload")
            if payload is None:
                echo = READY
            else:
                try:
                    echo = orjson.dumps({"type": "ready", "payload": payload})
                except orjson.JSONEncodeError as exc:  # parsed, but nested deeper than orjson writes
                    conn.send_error((BAD_REQUEST, MSG_INVALID_FORMAT, str(exc)))
                    return None
            if conn.send_envelope(echo):
                self.metrics.sent_ready.inc()
            return None
        if mtype == "select_chat":
            received["select_chat"].inc()
            return self._select_chat(conn, msg)
        received["unknown"].inc()
        conn.send_error((BAD_REQUEST, MSG_UNHANDLED_TYPE, f"Type: {mtype or ''}"))
        return None

    def _select_chat(self, conn: Connection, msg: dict[str, Any]) -> Awaitable[None] | None:
        payload = msg.get("payload")
        if payload is not None:
            if type(payload) is not dict:
                conn.send_error(SELECT_BAD_STRUCTURE)
                return None
            source = payload
        else:
            source = msg
        chat = source.get("chat_id")
        if chat is None:
            conn.send_error(SELECT_MISSING)
            return None
        if type(chat) is not str or not chat:
            conn.send_error(SELECT_NOT_STRING)
            return None
        if not is_valid_id(chat):
            conn.send_error((BAD_REQUEST, "Invalid select_chat payload", id_violation_text("chat_id")))
            return None
        ack_id = msg.get("id")
        if type(ack_id) not in (str, int, float):  # bool is not a number here
            ack_id = None
        if chat == conn.chat:
            self._ack(conn, ack_id)
            return None
        return self._move_chat(conn, chat, ack_id)

    def _ack(self, conn: Connection, ack_id: Any) -> None:
        if ack_id is not None and conn.send_envelope(orjson.dumps({"type": "ack", "id": ack_id})):
            self.metrics.sent_ack.inc()

    async def _move_chat(self, conn: Connection, chat: str, ack_id: Any) -> None:
        """Register the new route, switch, persist, release the old (SPEC §4.2)."""
        pair = (conn.company, conn.agent)
        backend = self.backend
        route = message_route_key(pair[0], pair[1], chat)
        if not self.registry.chat_selected(pair, chat):
            try:
                await self._register_route(route)
            except Exception as exc:
                self.log.warn("select_chat route registration failed", request_id=conn.request_id, error=str(exc))
                conn.send_error(SELECT_ROUTE_FAILED)
                return
        if conn.ended:
            await self._release(None, [route])  # registered for a socket that is gone
            return
        old = conn.chat
        old_released = self.registry.select_chat(conn, pair, old, chat)
        conn.chat = chat
        self._ack(conn, ack_id)
        try:
            await backend.save_selected_chat(conn.session_key, chat)
        except Exception as exc:
            self.log.warn("could not persist selected chat", request_id=conn.request_id, error=str(exc))
        if old_released and old is not None:
            await self._release(None, [message_route_key(pair[0], pair[1], old)])

    # --- events -----------------------------------------------------------------------------
    def deliver(self, subject: str, payload: bytes, request_id: str | None = None) -> int:
        """Embedded bus and forwarded events: every matching local socket (the queue consumer
        validates first, for the route, and calls hub.dispatch_built)."""
        return self.hub.dispatch(subject, payload, SCOPE_ALL, None)

    async def publish(self, subject: str, payload: bytes, request_id: str) -> int:
        """/api/publish: sockets matching here at request time (SPEC §1.7)."""
        return await self.backend.publish(subject, payload, request_id)

    # --- sweep: heartbeats, close deadlines, block-policy timeouts --------------------------------
    async def _sweep_loop(self) -> None:
        step = SWEEP_INTERVAL / SWEEP_PASSES
        while True:
            await asyncio.sleep(step)
            try:
                self.sweep(time.monotonic())
            except Exception as exc:
                self.log.error("sweep failed", error=repr(exc))

    def sweep(self, now: float) -> None:
        """One pass: the next slice (1/SWEEP_PASSES) of this round's sockets. A round starts
        with the close deadlines and a snapshot of the registry; sockets that connect during
        a round are visited from the next one (their first ping is not due before then)."""
        if self._sweep_pos >= len(self._sweep_round):
            for conn in [c for c in self.closing if now >= c.close_deadline]:
                self.closing.discard(conn)
                conn.abort()
            self._sweep_round = list(self.registry.all)
            self._sweep_pos = 0
            self._sweep_slice = max(1, -(-len(self._sweep_round) // SWEEP_PASSES))
        start = self._sweep_pos
        self._sweep_pos = stop = start + self._sweep_slice
        batch = self._sweep_round[start:stop]
        if stop >= len(self._sweep_round):
            self._sweep_round = []  # hold no ended sockets until the next round
        timed_out: list[Connection] = []
        overflowed: list[Connection] = []
        for conn in batch:
            if conn.ended:
                continue
            app = conn.app
            if now - conn.last_pong > app.pong_wait_seconds:
                timed_out.append(conn)
            elif now >= conn.next_ping:
                conn.ping(now)
            if conn.expire_block(now, app.write_timeout_seconds):
                overflowed.append(conn)
        for conn in timed_out:
            conn.close(CLOSE_INTERNAL, REASON_PONG_TIMEOUT, PONG_TIMEOUT_ERROR)
        for conn in overflowed:
            conn.on_overflow()

    # --- shutdown (SPEC §10.2) --------------------------------------------------------------
    def stop_accepting(self) -> None:
        self.shutting_down = True
        if self.server is not None:
            self.server.close()
        for http in list(self.http_conns):
            http.close_idle()

    async def drain(self, timeout: float) -> None:
        """Close every socket with 1001 concurrently; wait for them, then for the releases."""
        deadline = time.monotonic() + timeout
        for conn in list(self.registry.all):
            conn.close(CLOSE_GOING_AWAY, REASON_SHUTDOWN, SHUTDOWN_ERROR)
        while self.closing and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.closing):
            conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
        pending = [t for t in self.tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=max(0.1, deadline - time.monotonic()))
        if self.server is not None:
            self.server.close()
