"""A pod inherits a low soft descriptor limit (1,024 is common): `daisi-ws serve` raises it to
the hard limit before listening, so it is not capped at about that many sockets."""

from __future__ import annotations

import asyncio
import resource
from pathlib import Path

from websockets.asyncio.client import connect

from daisi_ws.limits import UNLIMITED_NOFILE
from tests.e2e.helpers import recv_json
from tests.support import ServerProcess

INHERITED_SOFT = 128
SOCKETS = 200  # more than the inherited soft limit allows


def lower_soft_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (INHERITED_SOFT, hard))


def soft_nofile_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no 'Max open files' line")


async def test_soft_limit_raised_to_hard_and_sockets_beyond_the_inherited_limit_open() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard > SOCKETS + 100, "the test needs a hard limit above the sockets it opens"
    expected = UNLIMITED_NOFILE if hard == resource.RLIM_INFINITY else hard
    with ServerProcess(preexec=lower_soft_limit) as server:
        assert server.logged("listening")[0]["max_open_files"] == expected
        assert soft_nofile_of(server.pid) == expected
        sockets = []
        try:
            for i in range(SOCKETS):
                sockets.append(await connect(server.user_url("c", "a", f"user-{i}"), open_timeout=5))
            replies = await asyncio.gather(*(recv_json(ws) for ws in sockets))
            assert replies == [{"type": "ready"}] * SOCKETS
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets))
