"""A client that sends faster than the server can answer, and reads nothing, must not grow the
server's memory: while the server cannot write to it, the server stops reading from it."""

from __future__ import annotations

from tests.e2e.helpers import OP_PING, RawWS, client_frame, push_until_blocked, ws_path
from tests.support import ServerProcess, http_request, rss_kib

FLOOD_BYTES = 96 << 20  # what the client tries to push: 96 MiB of pings
MAX_ACCEPTED = 32 << 20  # loopback socket buffers on both sides hold far less than this
RSS_BOUND_KIB = 24 * 1024


def test_ping_flood_from_a_client_that_never_reads(server: ServerProcess) -> None:
    path = ws_path("flood", "a", server.keys.user_token("flood", "a", "u"), server.keys.api)
    with RawWS(server.port, path, rcvbuf=4096) as ws:
        assert ws.status == 101
        before = rss_kib(server.pid)
        sent = push_until_blocked(ws.sock, client_frame(OP_PING, b"p" * 125) * 512, FLOOD_BYTES)
        # every ping would have queued a pong of the same size: the server stopped reading instead
        assert sent < MAX_ACCEPTED, f"the server kept reading: {sent >> 20} MiB accepted"
        assert rss_kib(server.pid) - before < RSS_BOUND_KIB
        # everyone else is served meanwhile
        assert http_request(server.http + "/health")[0] == 200
