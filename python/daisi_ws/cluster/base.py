"""The interface between the gateway and its cluster backends (embedded, Redis + NATS).

The gateway keeps the local reference counts (which (company, agent) pairs, chats and admin
filters this pod serves) and tells the backend when one starts or stops being needed; the
backend mirrors that into shared state (locks, routes, subscriptions) and carries events.
"""

from __future__ import annotations

from typing import Any, Protocol

Pair = tuple[str, str]


class LockError(Exception):
    """A session lock could not be acquired; the text goes into the 500's details."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(text)
        self.reason = reason  # dws_session_lock_failure_total{reason}


class Backend(Protocol):
    mode: str  # "embedded" | "shared"
    # False: locks are this process's session table only (embedded, SPEC §5.3 last line)
    distributed_locks: bool
    # True: no method ever suspends, so the gateway runs session work without a Task
    inline: bool

    def attach(self, gateway: Any) -> None:
        """Called once before start(): where events, kills and renewals go."""

    async def start(self) -> None: ...

    async def stop_intake(self) -> None:
        """Shutdown step 2: stop taking events (never deletes a durable consumer)."""

    async def stop(self) -> None: ...

    async def readiness(self) -> dict[str, str]:
        """{"nats": ..., "redis": ...} per SPEC §1.4, each check bounded."""

    # sessions (SPEC §5)
    async def acquire(self, session_key: str, user_type: str, timeout: float) -> None:
        """Own the session for this pod, taking it over if needed; raises LockError."""

    async def release(self, session_key: str) -> None:
        """Compare-and-delete: removes the lock only while this pod owns it."""

    async def open_session(self, session_key: str, chats_route: str | None) -> str | None:
        """After the 101, in one round trip: write `:last_active`; for users (chats_route
        given) also register that route and return the stored selected chat."""

    async def save_selected_chat(self, session_key: str, chat: str) -> None:
        """select_chat: `:selected_chat` (session TTL) and `:last_active`."""

    # routes (SPEC §6)
    async def register_route(self, route_key: str) -> None:
        """Add this pod to the route set; raises on backend error."""

    async def unregister_route(self, route_key: str) -> None: ...

    # interest (SPEC §7.4); synchronous, the backend schedules any I/O itself
    def user_pair_added(self, pair: Pair) -> None: ...

    def user_pair_removed(self, pair: Pair) -> None: ...

    def admin_filter_added(self, flt: Pair) -> None: ...

    def admin_filter_removed(self, flt: Pair) -> None: ...

    async def publish(self, subject: str, payload: bytes, request_id: str) -> int:
        """Publish an event; returns local sockets matching it (SPEC §1.7)."""
