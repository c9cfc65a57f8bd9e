"""In-process harness shared by the benchmark groups.

Nothing here fakes the code under test: a benchmark drives the real AuthService, Hub,
Registry, Gateway and EmbeddedBackend. What is replaced is only what surrounds them:
- the socket's transport by `CountingTransport` (counts writes and bytes, so every broadcast
  benchmark can assert what reached each "socket");
- the event loop's `call_soon` (`NoLoop`): the hub's coalesced flush is called explicitly,
  inside the timed operation, instead of on the next loop tick;
- `Gateway.spawn`: coroutines of the embedded backend never suspend, so `drive()` runs them
  to completion synchronously, inside the timed operation.
"""

from __future__ import annotations

import importlib
import os
import secrets
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import orjson

from daisi_ws import hotpath

# --- sizes -------------------------------------------------------------------------------------


def is_smoke(config: Any) -> bool:
    """`--benchmark-disable`: every benchmark runs its body once; use small sizes."""
    return bool(config.getoption("benchmark_disable"))


def scaled(config: Any, full: int, smoke: int) -> int:
    return smoke if is_smoke(config) else full


# --- the two hot-path twins ----------------------------------------------------------------------

# Everything hotpath.py exports, by module.
_TWIN_EXPORTS = {
    "framing": (
        "build_close_frame",
        "build_error_frame",
        "build_event_envelope",
        "build_event_frame",
        "build_frame_header",
        "build_text_frame",
    ),
    "sendqueue": ("POLICIES", "SendStats", "SendQueue", "fanout", "flush_dirty"),
    "tokencache": ("TokenCache",),
}
TWINS = ("native", "pure")


def load_twin(name: str) -> SimpleNamespace | None:
    """The `daisi_ws._native` or `daisi_ws._pure` twin as one namespace; None if not built."""
    package = "daisi_ws._native" if name == "native" else "daisi_ws._pure"
    ns = SimpleNamespace(name=name, native=name == "native")
    try:
        for module, names in _TWIN_EXPORTS.items():
            mod = importlib.import_module(f"{package}.{module}")
            for attr in names:
                setattr(ns, attr, getattr(mod, attr))
    except (ImportError, AttributeError):
        return None
    return ns


@contextmanager
def hotpath_twin(twin: SimpleNamespace) -> Iterator[None]:
    """Point `daisi_ws.hotpath` (and the modules that copied names from it) at `twin`.

    Hub and framing callers look names up on `hotpath` at call time, so this switches them.
    `Connection` subclasses `hotpath.SendQueue` at import: gateway-level benchmarks therefore
    run under the process's own twin (see `hotpath.NATIVE`), never under this switch.
    """
    from daisi_ws.auth import service

    saved = {}
    for names in _TWIN_EXPORTS.values():
        for attr in names:
            saved[attr] = getattr(hotpath, attr)
            setattr(hotpath, attr, getattr(twin, attr))
    saved_cache = service.TokenCache
    service.TokenCache = twin.TokenCache  # type: ignore[misc]
    try:
        yield
    finally:
        for attr, value in saved.items():
            setattr(hotpath, attr, value)
        service.TokenCache = saved_cache  # type: ignore[misc]


# --- stand-ins for what surrounds the code under test -----------------------------------------


class CountingTransport:
    """An asyncio transport that accepts everything and counts it."""

    __slots__ = ("bytes", "writes")

    def __init__(self) -> None:
        self.writes = 0
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.bytes += len(data)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        return None

    def abort(self) -> None:
        return None

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class NoLoop:
    """Stands in for the event loop in `Hub._loop`: the benchmark calls `hub.flush()` itself."""

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        return None


def drive(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends (embedded backend) to completion, synchronously."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("coroutine suspended: this is not an in-process path")


def queue_class(twin: Any) -> type:
    """A socket stand-in: the twin's SendQueue plus the one attribute the Hub reads."""
    return type(f"BenchConn_{getattr(twin, 'name', 'current')}", (twin.SendQueue,), {"__slots__": ("deflate_bits",)})


def make_queues(twin: Any, n: int, capacity: int = 100) -> list[Any]:
    cls = queue_class(twin)
    stats = twin.SendStats()
    policy = twin.POLICIES["drop_oldest"]
    out = []
    for _ in range(n):
        q = cls(capacity, policy, stats)
        q.deflate_bits = 0
        q.transport = CountingTransport()
        out.append(q)
    return out


# --- events --------------------------------------------------------------------------------------

COMPANY = "company-1"
AGENT = "agent-1"


def message_event(chat: str = "chat-1", seq: int = 0) -> bytes:
    """A ~300-byte `messages` event as upstream publishes it (SPEC §7.1)."""
    return orjson.dumps(
        {
            "event_id": f"evt-{seq:08d}",
            "event_time": "2030-01-01T00:00:00.000Z",
            "company_id": COMPANY,
            "agent_id": AGENT,
            "message_id": f"msg-{seq:08d}",
            "chat_id": chat,
            "row_data": {
                "from": "6281234567890",
                "to": "6289876543210",
                "body": "Hello, I would like to know the status of my order please.",
                "status": "delivered",
                "ts": 1893456000,
            },
        }
    )


def chat_event(seq: int = 0) -> bytes:
    return orjson.dumps(
        {
            "event_id": f"evt-{seq:08d}",
            "event_time": "2030-01-01T00:00:00.000Z",
            "company_id": COMPANY,
            "agent_id": AGENT,
            "chat_id": "chat-1",
            "row_data": {"unread": 3, "last_message": "Hello, I would like to know the status."},
        }
    )


def messages_subject(chat: str = "chat-1", company: str = COMPANY, agent: str = AGENT) -> str:
    return f"websocket.{company}.{agent}.messages.{chat}"


def chats_subject(company: str = COMPANY, agent: str = AGENT) -> str:
    return f"websocket.{company}.{agent}.chats"


# --- keys and tokens -------------------------------------------------------------------------------


@dataclass
class BenchKeys:
    api: str = field(default_factory=lambda: secrets.token_hex(16))
    admin_api: str = field(default_factory=lambda: secrets.token_hex(16))
    aes: str = field(default_factory=lambda: secrets.token_hex(32))
    admin_aes: str = field(default_factory=lambda: secrets.token_hex(32))


def expiry(seconds: float) -> datetime:
    return datetime.now(timezone.utc) + timedelta(seconds=seconds)


# --- an in-process gateway ------------------------------------------------------------------------


class InProcessGateway:
    """The real Gateway + AuthService + EmbeddedBackend, with counting transports.

    `connect()` does what `HttpProtocol.switch()` does after the 101 (a FrameProtocol, a
    Connection on the transport, `Gateway.register`), so register/end/handle_client_text run
    exactly as in a served socket; only the bytes go to a CountingTransport.
    """

    def __init__(self, keys: BenchKeys | None = None, pod_id: str = "bench-pod", **app: Any) -> None:
        from dataclasses import replace

        from daisi_ws.app import build_auth
        from daisi_ws.cluster.embedded import EmbeddedBackend
        from daisi_ws.config import AppSettings, AuthSettings, LogSettings, ServerSettings, Settings
        from daisi_ws.gateway.server import Gateway
        from daisi_ws.log import Logger
        from daisi_ws.metrics import metrics

        self.keys = keys or BenchKeys()
        k = self.keys
        settings = Settings(
            server=ServerSettings(host="127.0.0.1", http_port=0, pod_id=pod_id),
            log=LogSettings(level="error"),
            auth=AuthSettings(secret_token=k.api, admin_secret_token=k.admin_api, token_aes_key=k.aes, admin_token_aes_key=k.admin_aes),
            app=replace(AppSettings(), **app),
        )
        self.settings = settings
        self.auth = build_auth(settings)
        self.backend = EmbeddedBackend(pod_id)
        self.gw = Gateway(settings, self.auth, self.backend, metrics(), Logger(level="error"))
        self.backend.attach(self.gw)
        self.gw.hub._loop = NoLoop()  # type: ignore[assignment]
        self.gw.spawn = drive  # type: ignore[method-assign,assignment]

    @property
    def hub(self) -> Any:
        return self.gw.hub

    @property
    def registry(self) -> Any:
        return self.gw.registry

    def user_claims(self, company: str, agent: str, user: str) -> Any:
        from daisi_ws.auth.tokens import UserClaims

        return UserClaims(company, agent, user, expiry(3600))

    def connect(self, claims: Any, request_id: str = "bench") -> Any:
        """Socket upgraded and registered (ready frame queued), as after a 101."""
        from websockets.protocol import State

        from daisi_ws.gateway.connection import USER, Connection
        from daisi_ws.gateway.http import FrameProtocol
        from daisi_ws.protocol import user_session_key

        gw = self.gw
        proto = FrameProtocol(state=State.OPEN, max_size=gw.settings.app.max_message_bytes)
        key = user_session_key(claims.company_id, claims.agent_id, claims.user_id)
        conn = Connection(gw, proto, USER, key, claims, request_id, 0)
        conn.connection_made(CountingTransport())
        gw.register(conn)
        return conn

    def flush(self) -> None:
        self.gw.hub.flush()


def native_flag() -> bool:
    return bool(hotpath.NATIVE)


def env_native() -> bool:
    """Will a `daisi-ws serve` child started from this process load the compiled twins?"""
    return bool(hotpath.NATIVE) and os.environ.get("DAISI_WS_NO_EXTENSIONS", "") not in {"1", "true", "yes"}


def now() -> float:
    return time.time()


# --- Redis-backed pieces ----------------------------------------------------------------------


def shared_settings(redis_address: str, nats_url: str = "nats://127.0.0.1:1", pod_id: str = "bench-pod") -> Any:
    """Settings for the shared-mode backends (only the keys they read)."""
    from daisi_ws.config import LogSettings, NatsSettings, RedisSettings, ServerSettings, Settings

    return Settings(
        server=ServerSettings(host="127.0.0.1", http_port=0, pod_id=pod_id),
        nats=NatsSettings(url=nats_url),
        redis=RedisSettings(address=redis_address),
        log=LogSettings(level="error"),
    )


class RedisCommands:
    """Counts commands a benchmark sends, from the server's own INFO commandstats."""

    def __init__(self, port: int) -> None:
        import redis

        self.client = redis.Redis(host="127.0.0.1", port=port)
        self.before: dict[str, int] = {}

    def snapshot(self) -> dict[str, int]:
        stats = self.client.info("commandstats")
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}

    def start(self) -> None:
        self.before = self.snapshot()

    def delta(self) -> dict[str, int]:
        after = self.snapshot()
        out = {k: n - self.before.get(k, 0) for k, n in after.items() if n != self.before.get(k, 0)}
        out.pop("info", None)
        return out

    def close(self) -> None:
        self.client.close()
