"""Composition root: build every part from Settings, start, reload on SIGHUP, drain, stop.

The only module that knows the gateway, the auth service and the cluster backends at once.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
import time
import traceback
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

from daisi_ws import __version__, hotpath
from daisi_ws.auth import AuthService
from daisi_ws.auth.tokens import TokenCipher, mint_user_token, parse_aes_key
from daisi_ws.cluster.base import Backend
from daisi_ws.cluster.embedded import EmbeddedBackend
from daisi_ws.config import (
    EPHEMERAL_KEYS,
    ConfigError,
    Settings,
    get_value,
    keep_restart_keys,
    load_settings,
    validate,
    with_ephemeral_keys,
)
from daisi_ws.gateway.server import Gateway
from daisi_ws.limits import raise_nofile_limit
from daisi_ws.log import Logger, configure
from daisi_ws.metrics import Metrics, metrics


def build_auth(settings: Settings) -> AuthService:
    return AuthService(**auth_kwargs(settings))


def auth_kwargs(settings: Settings) -> dict[str, Any]:
    a = settings.auth
    return {
        "token_aes_key": a.token_aes_key,
        "admin_token_aes_key": a.admin_token_aes_key,
        "jwt_secret": a.jwt_secret,
        "token_cache_ttl_seconds": a.token_cache_ttl_seconds,
        "admin_token_cache_ttl_seconds": a.admin_token_cache_ttl_seconds,
        "token_cache_max_entries": a.token_cache_max_entries,
    }


def build_backend(settings: Settings, m: Metrics, log: Logger) -> Backend:
    if settings.embedded:
        return EmbeddedBackend(settings.server.pod_id)
    from daisi_ws.cluster.shared import SharedBackend

    return SharedBackend(settings, m, log)


# Garbage collection: a full collection walks every tracked object, and with 5,000 sockets
# one held the event loop for 70-150 ms (benchmarks/LOADTEST.md, "Latency stalls"). Frozen
# start-up objects leave every scan; a young generation of 10,000 objects instead of 700 lets
# short-lived work (a renewal pass, a burst of events) die by reference counting before a
# collection promotes it. The collector stays on: closed sockets leave reference cycles.
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> int:
    """Once start-up is done, before the first socket: collect, freeze what is alive, widen the
    young generation. Returns the number of frozen objects."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)
    return gc.get_freeze_count()


class App:
    def __init__(self, settings: Settings, cli_config: str | None = None, env: Mapping[str, str] | None = None) -> None:
        self.cli_config = cli_config
        self.env = env
        self.settings, self.generated = with_ephemeral_keys(settings)
        self.log = configure(settings.app.service_name, settings.log.level)
        self.metrics = metrics()
        self.metrics.build_info.labels(settings.app.version, "true" if hotpath.NATIVE else "false").set(1)
        self.auth = build_auth(self.settings)
        self.backend = build_backend(self.settings, self.metrics, self.log)
        self.gateway = Gateway(self.settings, self.auth, self.backend, self.metrics, self.log)
        self.backend.attach(self.gateway)
        self._stop = asyncio.Event()
        self._signals = 0

    # --- run ------------------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._on_loop_error)
        # Before the backends: start-up can wait seconds for NATS, and a signal then must stop
        # (or reload) the pod as it would later, not kill it.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        for w in self.settings.warnings:
            self.log.warn(w)
        if not self.settings.app.allowed_origins:
            self.log.warn("app.allowed_origins is empty: WebSocket connections from any Origin are accepted")
        if not self.settings.embedded:
            for key in ("secret_token", "admin_secret_token", "token_aes_key", "admin_token_aes_key"):
                if not getattr(self.settings.auth, key):
                    self.log.warn(f"auth.{key} is not configured: the endpoints that need it answer 500")
        max_open_files = raise_nofile_limit()
        started = time.monotonic()
        try:
            await self.backend.start()
            if self._stop.is_set():  # stopped while waiting for the backends: never listen
                await self.shutdown()
                return 0
            await self.gateway.start()
        except OSError as exc:
            self.log.error("cannot listen", error=str(exc), host=self.settings.server.host, port=self.settings.server.http_port)
            await self.backend.stop()
            return 1
        frozen = tune_gc()
        s = self.settings.server
        self.log.info(
            "listening",
            pod_id=s.pod_id,
            host=s.host,
            port=self.gateway.port,
            mode=self.backend.mode,
            native=hotpath.NATIVE,
            version=__version__,
            startup_ms=round((time.monotonic() - started) * 1000, 1),
            gc_frozen=frozen,
            max_open_files=max_open_files,
        )
        if self.generated:
            print_ephemeral_banner(self.settings, self.gateway.port, self.generated)
        await self._stop.wait()
        await self.shutdown()
        return 0

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """asyncio's reports (a failed accept, an exception in a callback) as JSON log lines;
        its default handler would print plain text to stderr. The context's protocol and
        transport reprs are left out: they can carry client addresses and request data."""
        fields: dict[str, Any] = {}
        exc = context.get("exception")
        if exc is not None:
            fields["error"] = f"{type(exc).__name__}: {exc}"
            fields["traceback"] = "".join(traceback.format_exception(exc)).rstrip()
        self.log.error(str(context.get("message") or "event loop error"), **fields)

    def _on_stop_signal(self) -> None:
        self._signals += 1
        if self._signals > 1:
            os._exit(1)  # a second signal: leave now (SPEC §10.2)
        self.log.info("shutting down")
        self._stop.set()

    async def shutdown(self) -> None:
        timeout = float(self.settings.app.shutdown_timeout_seconds)
        deadline = time.monotonic() + timeout
        self.gateway.stop_accepting()
        try:
            await asyncio.wait_for(self.backend.stop_intake(), max(0.1, deadline - time.monotonic()))
        except Exception as exc:
            self.log.warn("stopping intake failed", error=repr(exc))
        await self.gateway.drain(max(0.1, deadline - time.monotonic() - 0.5))
        try:
            await asyncio.wait_for(self.backend.stop(), max(0.1, deadline - time.monotonic()))
        except Exception as exc:
            self.log.warn("closing backends failed", error=repr(exc))
        self.log.info("stopped")

    # --- reload (SPEC §8.2) -------------------------------------------------------------------
    def reload(self) -> None:
        try:
            fresh = load_settings(self.cli_config, self.env)
        except ConfigError as exc:
            self.log.error("config reload rejected; keeping the running config", error=str(exc))
            return
        # Restart-only keys first: they decide the mode (so whether keys may be generated),
        # and the rules across keys must hold for what will run, not only for the file.
        fresh, restart = keep_restart_keys(self.settings, fresh)
        try:
            validate(fresh)
        except ConfigError as exc:
            self.log.error(
                "config reload rejected; keeping the running config",
                error=f"{exc} (with the running values of the restart-only keys)",
            )
            return
        # A key left empty keeps its running value: a generated one survives, and a configured
        # one removed from the file is not swapped for a random key nobody was shown.
        running = {dotted: get_value(self.settings, dotted) for dotted in EPHEMERAL_KEYS}
        fresh, _ = with_ephemeral_keys(fresh, reuse=running)
        if restart:
            self.log.warn("config change needs restart; running values kept", keys=restart)
        self.settings = fresh
        configure(fresh.app.service_name, fresh.log.level)
        self.auth.reload(**auth_kwargs(fresh))
        self.gateway.apply_settings(fresh)
        reload_backend = getattr(self.backend, "apply_settings", None)
        if reload_backend is not None:
            reload_backend(fresh)
        self.log.info("config reloaded")


def print_ephemeral_banner(settings: Settings, port: int, generated: dict[str, str]) -> None:
    """Embedded mode without keys: show the generated ones and a ready-to-run example."""
    a = settings.auth
    cipher = TokenCipher(parse_aes_key(a.token_aes_key))
    expires = datetime.now(timezone.utc) + timedelta(hours=24)
    token = mint_user_token(cipher, "demo", "demo", "demo", expires)

    def shown(dotted: str, value: str) -> str:
        """A generated key as it is; a configured one stays a secret (a placeholder)."""
        return value if dotted in generated else f"<{dotted}>"

    api_key = shown("auth.secret_token", quote(a.secret_token, safe=""))
    admin_key = shown("auth.admin_secret_token", a.admin_secret_token)
    url = f"ws://127.0.0.1:{port}/ws/demo/demo?token={quote(token, safe='')}&x-api-key={api_key}"
    lines = [
        "",
        "=" * 78,
        "daisi-ws is running in EMBEDDED mode (no NATS, no Redis) with EPHEMERAL keys.",
        "These keys were generated for this process only and VANISH ON RESTART:",
    ]
    for dotted in sorted(generated):
        lines.append(f"  {dotted} = {get_value(settings, dotted)}")
    lines += [
        "",
        "Try it: connect a WebSocket client (24 h token for company/agent/user 'demo'):",
        f"  {url}",
        "",
        "then publish an event to it:",
        f"  daisi-ws publish --url http://127.0.0.1:{port} --api-key '{admin_key}' \\",
        "    websocket.demo.demo.chats '{\"event_id\":\"e1\",\"row_data\":{\"hello\":\"world\"}}'",
        "",
        "Set auth.* (or DAISI_WS_AUTH_* env vars) to keep keys across restarts.",
        "=" * 78,
        "",
    ]
    sys.stderr.write("\n".join(lines))
    sys.stderr.flush()


def run_server(cli_config: str | None) -> int:
    # Until the event loop takes it over, a SIGHUP (reload) must not end the process: the
    # config being loaded is the one a reload would read anyway.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        settings = load_settings(cli_config)
    except ConfigError as exc:
        sys.stderr.write(f"config error: {exc}\n")
        return 2
    app = App(settings, cli_config)
    return asyncio.run(app.run())
