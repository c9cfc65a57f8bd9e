"""Shared mode (SPEC §8.4): the Backend the gateway uses when NATS and Redis are configured.

Composes the Redis half (locks, kill switch, routes, renewal) and the NATS half (interest
subscriptions or the queue consumer, forwards, publish). Start-up never waits on either for
long: both are retried in the background; /ready reports them, new sockets get the lock 500
while Redis is down, existing sockets keep receiving (SPEC §10.1).
"""

from __future__ import annotations

import asyncio
from typing import Any

from daisi_ws.cluster.base import Pair
from daisi_ws.cluster.nats_bus import NatsBus
from daisi_ws.cluster.redis_store import (
    KillSwitch,
    RedisStore,
    Renewal,
    RouteRegistry,
    SessionLocks,
)
from daisi_ws.config import Settings, redact_url
from daisi_ws.log import Logger
from daisi_ws.metrics import Metrics

READY_TIMEOUT = 2.0  # SPEC §1.4: each check <= 2 s
STARTUP_WAIT = 2.0  # how long start() waits for the first NATS connection
STOP_STEP_TIMEOUT = 2.0


class SharedBackend:
    mode = "shared"
    distributed_locks = True
    inline = False

    def __init__(self, settings: Settings, metrics: Metrics, log: Logger) -> None:
        self.settings = settings
        self.metrics = metrics
        self.log = log
        self.pod_id = settings.server.pod_id
        self.queue_mode = settings.nats.delivery == "queue"
        self.store = RedisStore(settings, metrics, log)
        self.locks = SessionLocks(self.store)
        self.routes = RouteRegistry(self.store)
        self.renewal = Renewal(self.store, self.routes, self.queue_mode)
        self.bus = NatsBus(settings, metrics, log, self.routes)
        self.kill_switch: KillSwitch | None = None
        self.gateway: Any = None
        self._kill_task: asyncio.Task[None] | None = None
        self._renewal_task: asyncio.Task[None] | None = None

    def attach(self, gateway: Any) -> None:
        self.gateway = gateway
        self.renewal.gateway = gateway
        self.bus.attach(gateway)
        self.kill_switch = KillSwitch(self.store, gateway.on_kill)
        self._set_activity_hook()

    def _set_activity_hook(self) -> None:
        if self.gateway is not None:
            self.gateway.hub.activity = self.renewal.on_activity if self.renewal.activity_enabled() else None

    def apply_settings(self, settings: Settings) -> None:
        """SIGHUP: TTLs and adaptive rules apply at once (restart keys arrive unchanged)."""
        self.settings = settings
        self.store.settings = settings
        self.bus.settings = settings
        self._set_activity_hook()

    # --- lifecycle (SPEC §10) ----------------------------------------------------------------
    async def start(self) -> None:
        assert self.kill_switch is not None, "attach() the gateway first"
        loop = asyncio.get_running_loop()
        self._kill_task = loop.create_task(self.kill_switch.run())
        self._renewal_task = loop.create_task(self.renewal.run())
        self.bus.start()
        if not await self.bus.wait_connected(STARTUP_WAIT):
            self.log.warn("NATS not reachable yet; retrying in the background", url=redact_url(self.settings.nats.url))

    async def stop_intake(self) -> None:
        self.renewal.stopped = True
        if self._renewal_task is not None:
            self._renewal_task.cancel()
        await self.bus.stop_intake()

    async def stop(self) -> None:
        """After the drain released every lock and route: leave dws:pods, close both."""
        if self._kill_task is not None:
            self._kill_task.cancel()
        if self._renewal_task is not None:
            self._renewal_task.cancel()
        if self.gateway is not None:
            # safety net: locks of sockets the drain could not end (it normally empties this)
            for key in list(self.gateway.registry.sessions):
                await self._bounded(self.locks.release(key), "could not release session lock")
        if self.queue_mode:
            await self._bounded(self.routes.remove_pod(), "could not leave dws:pods")
        await self.bus.close()
        try:
            await asyncio.wait_for(self.store.close(), STOP_STEP_TIMEOUT)
        except Exception as exc:
            self.log.warn("could not close Redis", error=str(exc))

    async def _bounded(self, coro: Any, message: str) -> None:
        try:
            await asyncio.wait_for(coro, STOP_STEP_TIMEOUT)
        except Exception as exc:  # shutdown goes on
            self.log.warn(message, error=str(exc) or type(exc).__name__)

    async def readiness(self) -> dict[str, str]:
        nats_state, redis_state = await asyncio.gather(self.bus.readiness(), self._redis_state())
        return {"nats": nats_state, "redis": redis_state}

    async def _redis_state(self) -> str:
        try:
            ok = await asyncio.wait_for(self.store.ping(), READY_TIMEOUT)
        except Exception:  # timeout or error
            return "disconnected"
        return "connected" if ok else "disconnected"

    # --- sessions (SPEC §5) ------------------------------------------------------------------
    async def acquire(self, session_key: str, user_type: str, timeout: float) -> None:
        local = self.gateway is not None and self.gateway.registry.holder(session_key) is not None
        await self.locks.acquire(session_key, user_type, timeout, local)

    async def release(self, session_key: str) -> None:
        await self.locks.release(session_key)

    async def open_session(self, session_key: str, chats_route: str | None) -> str | None:
        return await self.locks.open(session_key, chats_route)

    async def save_selected_chat(self, session_key: str, chat: str) -> None:
        await self.locks.save_selected_chat(session_key, chat)

    # --- routes (SPEC §6) --------------------------------------------------------------------
    async def register_route(self, route_key: str) -> None:
        await self.routes.register(route_key)

    async def unregister_route(self, route_key: str) -> None:
        await self.routes.unregister(route_key)

    # --- interest (SPEC §7.4) ----------------------------------------------------------------
    def user_pair_added(self, pair: Pair) -> None:
        self.bus.user_pair_added(pair)

    def user_pair_removed(self, pair: Pair) -> None:
        self.bus.user_pair_removed(pair)

    def admin_filter_added(self, flt: Pair) -> None:
        self.bus.admin_filter_added(flt)

    def admin_filter_removed(self, flt: Pair) -> None:
        self.bus.admin_filter_removed(flt)

    async def publish(self, subject: str, payload: bytes, request_id: str) -> int:
        return await self.bus.publish(subject, payload, request_id)
