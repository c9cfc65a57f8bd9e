"""Bounded in-process cache of validated token claims (SPEC §2.6)."""

from __future__ import annotations

from typing import Any


class TokenCache:
    """Maps raw token -> claims until a per-entry deadline (wall-clock seconds).

    At most `max_entries`; when full, the oldest insertion is evicted. A hit is a dict
    lookup plus one float compare; expired entries are removed when looked up.
    """

    __slots__ = ("_entries", "hits", "max_entries", "misses")

    def __init__(self, max_entries: int) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        self.max_entries = max_entries
        self._entries: dict[str, tuple[Any, float]] = {}
        self.hits = 0
        self.misses = 0

    def get(self, token: str, now: float) -> Any:
        """Claims for `token`, or None (counted as a miss) if absent or expired."""
        entry = self._entries.get(token)
        if entry is not None:
            if now < entry[1]:
                self.hits += 1
                return entry[0]
            del self._entries[token]
        self.misses += 1
        return None

    def put(self, token: str, value: Any, deadline: float) -> None:
        if self.max_entries == 0:
            return
        entries = self._entries
        if token not in entries and len(entries) >= self.max_entries:
            del entries[next(iter(entries))]
        entries[token] = (value, deadline)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
