"""A pod inherits a low soft descriptor limit (1,024 is common): `daisi-ws serve` raises it to
the hard limit before listening, so it is not capped at about that many sockets."""

from __future__ import annotations

import asyncio
import json
import resource
from pathlib import Path

from websockets.asyncio.client import connect

from daisi_ws.limits import UNLIMITED_NOFILE
from tests.e2e.helpers import eventually, recv_json
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


HARD_CAP = 48  # soft and hard: the server cannot raise it


def cap_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (HARD_CAP, HARD_CAP))


async def test_out_of_descriptors_is_logged_as_json_and_serving_resumes() -> None:
    with ServerProcess(preexec=cap_descriptors) as server:
        assert server.logged("listening")[0]["max_open_files"] == HARD_CAP
        opened = []
        try:
            for i in range(HARD_CAP + 10):
                try:
                    ws = await connect(server.user_url("c", "a", f"user-{i}"), open_timeout=1)
                except TimeoutError:
                    break  # accept() failed with EMFILE: the connection waits in the backlog
                opened.append(ws)
                assert await recv_json(ws) == {"type": "ready"}
            else:
                raise AssertionError("the server never ran out of descriptors")
            assert 0 < len(opened) < HARD_CAP

            # asyncio's report goes through the JSON logger (stderr, level error), not plain text
            assert await eventually(lambda: any("out of system resource" in line for line in server.stderr))
            records = [json.loads(line) for line in server.stderr]
            assert any(r["level"] == "error" and "socket.accept()" in r["message"] for r in records)

            # descriptors freed: accepting resumes (asyncio retries after 1 s), nothing crashed
            await asyncio.gather(*(ws.close() for ws in opened[:10]))
            del opened[:10]
            late = await connect(server.user_url("c", "a", "late"), open_timeout=5)
            opened.append(late)
            assert await recv_json(late) == {"type": "ready"}
            assert server.proc is not None and server.proc.poll() is None
        finally:
            await asyncio.gather(*(ws.close() for ws in opened))
