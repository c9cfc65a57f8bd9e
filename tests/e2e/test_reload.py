"""SPEC §8.2: SIGHUP re-reads file and env; an invalid result keeps the running config;
restart-only keys are logged and kept."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.e2e.helpers import recv_text
from tests.support import ServerProcess, free_port, http_request, wait_for


def stderr_records(proc: ServerProcess, message: str) -> list[dict[str, object]]:
    out = []
    for line in "".join(proc.stderr).splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("message") == message:
            out.append(record)
    return out


async def origin_status(proc: ServerProcess, origin: str, user: str) -> int:
    try:
        async with connect(proc.user_url("rl", "a", user), origin=origin) as ws:  # type: ignore[arg-type]
            assert await recv_text(ws) == '{"type":"ready"}'
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


def reload(proc: ServerProcess, message: str, count: int, stderr: bool = False) -> None:
    proc.signal(signal.SIGHUP)
    if stderr:
        assert wait_for(lambda: len(stderr_records(proc, message)) >= count, timeout=5), "".join(proc.stderr)
    else:
        assert wait_for(lambda: len(proc.logged(message)) >= count, timeout=5), proc.lines[-5:]


async def test_sighup_reload(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("app:\n  allowed_origins: []\n")
    with ServerProcess(env={"DAISI_WS_CONFIG": str(config)}) as proc:
        assert await origin_status(proc, "https://evil.example", "u1") == 101

        # a socket setting applies at once to new sockets
        config.write_text("app:\n  allowed_origins: [https://ok.example]\n")
        reload(proc, "config reloaded", 1)
        assert await origin_status(proc, "https://evil.example", "u2") == 403
        assert await origin_status(proc, "https://OK.example", "u3") == 101

        # an invalid file is rejected: the running config stays
        config.write_text("app:\n  allowed_origins: []\n  ping_interval_seconds: 0\n")
        reload(proc, "config reload rejected; keeping the running config", 1, stderr=True)
        assert proc.proc is not None and proc.proc.poll() is None
        assert await origin_status(proc, "https://evil.example", "u4") == 403

        # a restart-only key is logged ("needs restart") and kept; the rest applies
        config.write_text("app:\n  allowed_origins: []\n  service_name: renamed\n")
        reload(proc, "config reloaded", 2)
        warned = [r for r in proc.lines if "needs restart" in str(r.get("message"))]
        assert warned and warned[-1]["keys"] == ["app.service_name"], warned
        assert proc.logged("config reloaded")[-1]["service"] == "daisi-ws"
        assert http_request(proc.http + "/health")[0] == 200
        assert await origin_status(proc, "https://evil.example", "u5") == 101


@pytest.mark.parametrize("sig", [signal.SIGHUP])
async def test_reload_keeps_ephemeral_keys(tmp_path: Path, sig: int) -> None:
    proc = ServerProcess(cwd=tmp_path)
    for name in proc.keys.env():
        proc.env.pop(name)
    with proc:
        rule = "=" * 78
        assert wait_for(lambda: sum(rule in line for line in proc.stderr) >= 2, timeout=5)
        url = next(line.strip() for line in "".join(proc.stderr).splitlines() if line.strip().startswith("ws://"))
        proc.signal(sig)
        assert wait_for(lambda: len(proc.logged("config reloaded")) >= 1, timeout=5)
        async with connect(url) as ws:
            assert await recv_text(ws) == '{"type":"ready"}'


def mint_status(proc: ServerProcess, api_key: str) -> tuple[int, bytes]:
    body = json.dumps({"company_id": "c", "agent_id": "a", "user_id": "u", "expires_in_seconds": 60}).encode()
    headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
    status, _, reply = http_request(proc.http + "/generate-token", "POST", body, headers)
    return status, reply


def unreachable_backends() -> str:
    return f"nats:\n  url: nats://127.0.0.1:{free_port()}\nredis:\n  address: 127.0.0.1:{free_port()}\n"


async def test_reload_into_shared_mode_keeps_the_ephemeral_keys(tmp_path: Path) -> None:
    """The backends only change on restart, so the running embedded pod keeps its keys."""
    config = tmp_path / "config.yaml"
    config.write_text("log:\n  level: info\n")
    proc = ServerProcess(env={"DAISI_WS_CONFIG": str(config)})
    for name in proc.keys.env():
        proc.env.pop(name)
    with proc:
        assert wait_for(lambda: "auth.secret_token = " in "".join(proc.stderr), timeout=5)
        key = "".join(proc.stderr).split("auth.secret_token = ", 1)[1].split()[0]
        assert mint_status(proc, key)[0] == 200
        config.write_text("log:\n  level: info\n" + unreachable_backends())
        reload(proc, "config reloaded", 1)
        assert proc.logged("config change needs restart; running values kept")[-1]["keys"] == ["nats.url", "redis.address"]
        assert mint_status(proc, key)[0] == 200


async def test_reload_into_embedded_mode_generates_no_keys(tmp_path: Path) -> None:
    """A shared-mode pod never generates keys (SPEC §8.4), reload or not."""
    config = tmp_path / "config.yaml"
    config.write_text(unreachable_backends())
    proc = ServerProcess(env={"DAISI_WS_CONFIG": str(config)})
    for name in proc.keys.env():
        proc.env.pop(name)
    with proc:
        not_configured = (500, b'{"code":"InternalServerError","message":"Server configuration error",'
                          b'"details":"API authentication cannot be performed."}\n')
        assert mint_status(proc, "anything") == not_configured
        config.write_text("log:\n  level: info\n")
        reload(proc, "config reloaded", 1)
        assert mint_status(proc, "anything") == not_configured
        assert "EPHEMERAL" not in "".join(proc.stderr)


async def test_reload_checks_cross_key_rules_against_the_running_restart_keys(tmp_path: Path) -> None:
    """The file alone is valid, but its refresh interval only applies after a restart: with
    the running one (10 s) a 4 s session TTL would let locks expire between renewals."""
    config = tmp_path / "config.yaml"
    config.write_text("app:\n  session_ttl_seconds: 30\n")
    with ServerProcess(env={"DAISI_WS_CONFIG": str(config)}) as proc:
        config.write_text("app:\n  ttl_refresh_interval_seconds: 2\n  session_ttl_seconds: 4\n")
        reload(proc, "config reload rejected; keeping the running config", 1, stderr=True)
        error = str(stderr_records(proc, "config reload rejected; keeping the running config")[-1]["error"])
        assert error.startswith("app.session_ttl_seconds: must be greater than app.ttl_refresh_interval_seconds (10)"), error
        assert not proc.logged("config reloaded")
        # a change that holds with the running refresh interval still applies
        config.write_text("app:\n  session_ttl_seconds: 20\n  allowed_origins: [https://ok.example]\n")
        reload(proc, "config reloaded", 1)
        assert await origin_status(proc, "https://evil.example", "u1") == 403


async def test_an_api_key_removed_from_the_file_keeps_working_in_embedded_mode(tmp_path: Path) -> None:
    """Embedded mode fills empty keys; on reload a key that was configured and is now gone
    keeps its running value (it used to become a fresh random key that no one was shown)."""
    config = tmp_path / "config.yaml"
    proc = ServerProcess(env={"DAISI_WS_CONFIG": str(config)})
    for name in proc.keys.env():
        proc.env.pop(name)
    config.write_text(f"auth:\n  secret_token: {proc.keys.api}\n")
    with proc:
        assert mint_status(proc, proc.keys.api)[0] == 200
        config.write_text("log:\n  level: info\n")
        reload(proc, "config reloaded", 1)
        assert mint_status(proc, proc.keys.api)[0] == 200
