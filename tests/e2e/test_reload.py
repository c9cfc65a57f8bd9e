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
from tests.support import ServerProcess, http_request, wait_for


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
