"""JSON-lines logging (SPEC §9.2): debug/info/warn to stdout, error to stderr.

Fields: timestamp, level, message, service, then the known context fields in a fixed order,
then call-specific ones. Keys, secrets and raw tokens are never passed here.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import orjson

LEVELS = {"debug": 10, "info": 20, "warn": 30, "error": 40}
CONTEXT_FIELDS = (
    "request_id",
    "event_id",
    "pod_id",
    "user_id",
    "company_id",
    "agent_id",
    "admin_id",
)


def _timestamp(now: float) -> str:
    secs = int(now)
    micros = int((now - secs) * 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{micros:06d}Z"


class Logger:
    """A small structured logger; `bind()` returns a child carrying context fields."""

    __slots__ = ("_context", "_err", "_min", "_out", "service")

    def __init__(
        self,
        service: str = "daisi-ws",
        level: str = "info",
        context: dict[str, Any] | None = None,
        out: TextIO | None = None,
        err: TextIO | None = None,
    ) -> None:
        self.service = service
        self._min = LEVELS[level]
        self._context = context or {}
        self._out = out
        self._err = err

    def set_level(self, level: str) -> None:
        self._min = LEVELS[level]

    def enabled(self, level: str) -> bool:
        return LEVELS[level] >= self._min

    def bind(self, **context: Any) -> Logger:
        child = Logger.__new__(Logger)
        child.service = self.service
        child._min = self._min
        child._context = {**self._context, **{k: v for k, v in context.items() if v is not None}}
        child._out = self._out
        child._err = self._err
        return child

    def _emit(self, level: str, message: str, fields: dict[str, Any]) -> None:
        if LEVELS[level] < self._min:
            return
        record: dict[str, Any] = {
            "timestamp": _timestamp(time.time()),
            "level": level,
            "message": message,
            "service": self.service,
        }
        merged = {**self._context, **fields}
        for key in CONTEXT_FIELDS:
            value = merged.pop(key, None)
            if value is not None:
                record[key] = value
        record.update(merged)
        line = orjson.dumps(record, default=str).decode() + "\n"
        stream = (self._err or sys.stderr) if level == "error" else (self._out or sys.stdout)
        try:
            stream.write(line)
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed stdout must never take the server down

    def debug(self, message: str, **fields: Any) -> None:
        if self._min <= 10:
            self._emit("debug", message, fields)

    def info(self, message: str, **fields: Any) -> None:
        self._emit("info", message, fields)

    def warn(self, message: str, **fields: Any) -> None:
        self._emit("warn", message, fields)

    def error(self, message: str, **fields: Any) -> None:
        self._emit("error", message, fields)


_root = Logger()


def get_logger() -> Logger:
    return _root


def configure(service: str, level: str) -> Logger:
    """Reconfigure the process logger in place (modules keep their reference)."""
    _root.service = service
    _root.set_level(level)
    return _root
