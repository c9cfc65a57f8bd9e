"""Local index of this pod's sockets: by session key, (company, agent), chat and admin filter.

Pure bookkeeping, no I/O. The reference counts it keeps decide when the gateway writes
routes and interest subscriptions to the cluster backends.
"""

from __future__ import annotations

from typing import Any

Pair = tuple[str, str]
ChatKey = tuple[str, str, str]


def _add(index: dict[Any, set[Any]], key: Any, conn: Any) -> bool:
    """Add conn under key; True if it is the first one."""
    members = index.get(key)
    if members is None:
        index[key] = {conn}
        return True
    members.add(conn)
    return False


def _remove(index: dict[Any, set[Any]], key: Any, conn: Any) -> bool:
    """Remove conn from key; True if that emptied the key."""
    members = index.get(key)
    if members is None or conn not in members:
        return False
    members.discard(conn)
    if not members:
        del index[key]
        return True
    return False


class Registry:
    __slots__ = ("admins", "all", "chats", "sessions", "users")

    def __init__(self) -> None:
        self.all: set[Any] = set()
        self.sessions: dict[str, Any] = {}
        self.users: dict[Pair, set[Any]] = {}
        self.chats: dict[ChatKey, set[Any]] = {}
        self.admins: dict[Pair, set[Any]] = {}

    def __len__(self) -> int:
        return len(self.all)

    # --- sessions -------------------------------------------------------------------------
    def claim_session(self, key: str, conn: Any) -> Any:
        """Make conn the holder of `key`; returns the local socket it replaced, if any."""
        previous = self.sessions.get(key)
        self.sessions[key] = conn
        return previous if previous is not conn else None

    def release_session(self, key: str, conn: Any) -> bool:
        """Remove the entry only if conn still holds it (identity-checked, SPEC §5.5)."""
        if self.sessions.get(key) is conn:
            del self.sessions[key]
            return True
        return False

    def holder(self, key: str) -> Any:
        return self.sessions.get(key)

    # --- user sockets ---------------------------------------------------------------------
    def add_user(self, conn: Any, pair: Pair) -> bool:
        """True if conn is the first local user socket of (company, agent)."""
        self.all.add(conn)
        return _add(self.users, pair, conn)

    def remove_user(self, conn: Any, pair: Pair) -> bool:
        """True if conn was the last local user socket of (company, agent)."""
        self.all.discard(conn)
        return _remove(self.users, pair, conn)

    def select_chat(self, conn: Any, pair: Pair, old: str | None, new: str | None) -> bool:
        """Move conn from chat `old` to `new`; True if `old` has no local selector left."""
        if new is not None:
            _add(self.chats, (pair[0], pair[1], new), conn)
        if old is not None:
            return _remove(self.chats, (pair[0], pair[1], old), conn)
        return False

    def chat_selected(self, pair: Pair, chat: str) -> bool:
        return (pair[0], pair[1], chat) in self.chats

    def has_users(self, pair: Pair) -> bool:
        return pair in self.users

    # --- admin sockets --------------------------------------------------------------------
    def add_admin(self, conn: Any, flt: Pair) -> bool:
        self.all.add(conn)
        return _add(self.admins, flt, conn)

    def remove_admin(self, conn: Any, flt: Pair) -> bool:
        self.all.discard(conn)
        return _remove(self.admins, flt, conn)

    # --- delivery -------------------------------------------------------------------------
    def admin_sets(self, company: str, agent: str) -> list[set[Any]]:
        """Admin sockets whose filter matches (company, agent) (SPEC §7.3)."""
        admins = self.admins
        if not admins or company == "*" or agent == "*":
            return []  # wildcard tokens never come from a real publish
        out = []
        for key in ((company, agent), (company, "*"), ("*", agent), ("*", "*")):
            members = admins.get(key)
            if members:
                out.append(members)
        return out

    def route_keys(self) -> tuple[list[Pair], list[ChatKey]]:
        """Every (company, agent) and (company, agent, chat) with a local user socket."""
        return list(self.users), list(self.chats)
