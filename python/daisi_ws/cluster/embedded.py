"""One-process twins of the cluster backends (SPEC §8.4): no Redis, no NATS.

Locks are the gateway's own session table (a second login replaces the first in process);
routes and the selected chat live in dictionaries; publishing dispatches synchronously.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from daisi_ws.cluster.base import Pair

# Selected chats outlive their sockets (a quick reconnect restores them); bound the table.
MAX_REMEMBERED_CHATS = 100_000


class EmbeddedBackend:
    mode = "embedded"
    distributed_locks = False
    inline = True  # no call suspends: the gateway runs session work without a Task

    def __init__(self, pod_id: str) -> None:
        self.pod_id = pod_id
        self.gateway: Any = None
        self.routes: dict[str, set[str]] = {}
        self.selected_chats: OrderedDict[str, str] = OrderedDict()

    def attach(self, gateway: Any) -> None:
        self.gateway = gateway

    async def start(self) -> None:
        return None

    async def stop_intake(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def readiness(self) -> dict[str, str]:
        return {"nats": "embedded", "redis": "embedded"}

    async def acquire(self, session_key: str, user_type: str, timeout: float) -> None:
        return None

    async def release(self, session_key: str) -> None:
        return None

    async def open_session(self, session_key: str, chats_route: str | None) -> str | None:
        if chats_route is None:
            return None
        await self.register_route(chats_route)
        return self.selected_chats.get(session_key)

    async def save_selected_chat(self, session_key: str, chat: str) -> None:
        chats = self.selected_chats
        chats[session_key] = chat
        chats.move_to_end(session_key)
        while len(chats) > MAX_REMEMBERED_CHATS:
            chats.popitem(last=False)

    async def register_route(self, route_key: str) -> None:
        self.routes.setdefault(route_key, set()).add(self.pod_id)

    async def unregister_route(self, route_key: str) -> None:
        members = self.routes.get(route_key)
        if members is not None:
            members.discard(self.pod_id)
            if not members:
                del self.routes[route_key]

    def user_pair_added(self, pair: Pair) -> None:
        return None

    def user_pair_removed(self, pair: Pair) -> None:
        return None

    def admin_filter_added(self, flt: Pair) -> None:
        return None

    def admin_filter_removed(self, flt: Pair) -> None:
        return None

    async def publish(self, subject: str, payload: bytes, request_id: str) -> int:
        assert self.gateway is not None, "attach() the gateway first"
        return int(self.gateway.deliver(subject, payload, request_id))
