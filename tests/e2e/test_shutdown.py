"""SPEC §10.2: SIGTERM closes every socket with the shutdown frame and 1001, exits 0 within
app.shutdown_timeout_seconds; a second signal exits at once with status 1."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from websockets.asyncio.client import connect

from tests.e2e.helpers import OP_CLOSE, OP_TEXT, RawWS, expect_close, recv_text, ws_path
from tests.support import ServerProcess, free_port, http_request, wait_for

SHUTDOWN_FRAME = '{"type":"error","payload":{"code":"InternalServerError","message":"Service shutting down","details":"The WebSocket service is being gracefully terminated."}}'
TIMEOUT = 3


async def test_sigterm_closes_every_socket_and_exits_0() -> None:
    server = ServerProcess(env={"DAISI_WS_APP_SHUTDOWN_TIMEOUT_SECONDS": str(TIMEOUT)}).start()
    try:
        users = [await connect(server.user_url("sd", "a", f"u{i}")) for i in range(3)]
        admin = await connect(server.admin_url("sd-admin"))
        sockets = [*users, admin]
        for ws in sockets:
            assert await recv_text(ws) == '{"type":"ready"}'
        # a raw client that never reads and never answers the close must not hold the exit
        stuck = RawWS(server.port, ws_path("sd", "b", server.keys.user_token("sd", "b", "stuck"), server.keys.api), rcvbuf=4096)
        assert stuck.status == 101
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        for ws in sockets:
            assert await recv_text(ws) == SHUTDOWN_FRAME
            assert await expect_close(ws) == (1001, "Server is shutting down")
        rc = await asyncio.to_thread(server.wait, TIMEOUT + 2)
        elapsed = time.monotonic() - started
        assert rc == 0
        assert elapsed <= TIMEOUT + 1, elapsed
        # the stuck client finds the same frames once it reads
        assert stuck.recv_json() == {"type": "ready"}
        op, data = stuck.recv_data()
        assert (op, data.decode()) == (OP_TEXT, SHUTDOWN_FRAME)
        op, data = stuck.recv_data()
        assert op == OP_CLOSE and data[2:] == b"Server is shutting down"
        stuck.close()
        assert server.logged("stopped")
    finally:
        server.kill()


async def test_sigterm_with_no_sockets_exits_quickly() -> None:
    server = ServerProcess(env={"DAISI_WS_APP_SHUTDOWN_TIMEOUT_SECONDS": "30"}).start()
    try:
        started = time.monotonic()
        server.signal(signal.SIGINT)
        assert await asyncio.to_thread(server.wait, 10) == 0
        assert time.monotonic() - started < 3
    finally:
        server.kill()


def test_stops_accepting_then_second_signal_exits_1() -> None:
    server = ServerProcess(env={"DAISI_WS_APP_SHUTDOWN_TIMEOUT_SECONDS": "20"}).start()
    try:
        # a client that never answers the close keeps the drain waiting
        stuck = RawWS(server.port, ws_path("s2", "a", server.keys.user_token("s2", "a", "u"), server.keys.api), rcvbuf=4096)
        assert stuck.status == 101
        server.signal(signal.SIGTERM)

        def refused() -> bool:
            try:
                http_request(server.http + "/health", timeout=1)
            except OSError:
                return True
            return False

        assert wait_for(refused, timeout=5)
        assert server.proc is not None and server.proc.poll() is None  # still draining
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        assert server.wait(5) == 1
        assert time.monotonic() - started < 2
        stuck.close()
    finally:
        server.kill()


@pytest.mark.parametrize("sig", [signal.SIGTERM])
def test_exit_code_0_even_with_idle_keepalive_http(sig: int) -> None:
    import http.client

    server = ServerProcess(env={"DAISI_WS_APP_SHUTDOWN_TIMEOUT_SECONDS": "5"}).start()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("GET", "/health")
        assert conn.getresponse().read() == b'{"status":"OK"}\n'  # the connection stays open, idle
        started = time.monotonic()
        server.signal(sig)
        assert server.wait(10) == 0
        assert time.monotonic() - started < 3
    finally:
        conn.close()
        server.kill()


ORIGIN_WARNING = "app.allowed_origins is empty: WebSocket connections from any Origin are accepted"


def starting_against_unreachable_nats() -> ServerProcess:
    """A shared-mode pod whose NATS is down: start-up waits for it (up to 2 s). Returned once
    the event loop runs (the first warning is logged), before the pod listens."""
    env = {
        "DAISI_WS_NATS_URL": f"nats://127.0.0.1:{free_port()}",
        "DAISI_WS_REDIS_ADDRESS": f"127.0.0.1:{free_port()}",
    }
    server = ServerProcess(env=env).start(until=ORIGIN_WARNING)
    assert not server.logged("listening")
    return server


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_stop_signal_during_start_up_still_exits_0(sig: int) -> None:
    server = starting_against_unreachable_nats()
    try:
        server.signal(sig)
        assert await asyncio.to_thread(server.wait, 15) == 0
        assert server.logged("stopped")
        assert not server.logged("listening")  # SPEC §10.2 step 1: no longer accepting
        assert "Traceback" not in "".join(server.stderr)
    finally:
        server.kill()


async def test_sighup_during_start_up_reloads_instead_of_killing_the_pod() -> None:
    server = starting_against_unreachable_nats()
    try:
        server.signal(signal.SIGHUP)
        assert wait_for(lambda: bool(server.logged("listening")), timeout=10), "".join(server.stderr)
        assert server.logged("config reloaded")
        assert server.proc is not None and server.proc.poll() is None
        assert http_request(server.http + "/health")[0] == 200
    finally:
        server.stop(10)
        server.kill()
