"""A client that floods select_chat faster than Redis can take the changes: the messages waiting
behind the one in flight are bounded (the server stops reading), so memory stays bounded."""

from __future__ import annotations

import threading
import time

from tests.e2e.helpers import OP_TEXT, RawWS, client_frame, push_until_blocked, ws_path
from tests.integration.servers import NatsServer, RedisServer, start_pods, stop_pods
from tests.support import http_request, rss_kib

FLOOD_SECONDS = 4.0
RSS_BOUND_KIB = 24 * 1024


def drain_forever(ws: RawWS, stop: threading.Event) -> None:
    """Read and discard: this client reads everything, so the server is never write-blocked."""
    ws.sock.settimeout(0.2)
    while not stop.is_set():
        try:
            if not ws.sock.recv(1 << 16):
                return
        except (TimeoutError, BlockingIOError):
            continue
        except OSError:
            return


def test_select_chat_flood_is_bounded(nats_server: NatsServer, redis_server: RedisServer) -> None:
    [pod] = start_pods(nats_server, redis_server, 1, prefix="flood")
    try:
        path = ws_path("flood", "a", pod.keys.user_token("flood", "a", "u"), pod.keys.api)
        with RawWS(pod.port, path) as ws:
            assert ws.status == 101
            stop = threading.Event()
            reader = threading.Thread(target=drain_forever, args=(ws, stop), daemon=True)
            reader.start()
            # alternating chats: every message is a real change, i.e. a Redis write
            blob = b"".join(client_frame(OP_TEXT, b'{"type":"select_chat","chat_id":"c%d"}' % (i % 2)) for i in range(2048))
            before = rss_kib(pod.pid)
            deadline = time.monotonic() + FLOOD_SECONDS
            sent = 0
            while time.monotonic() < deadline:
                sent += push_until_blocked(ws.sock, blob, 1 << 20, stall=0.2)
            grown = rss_kib(pod.pid) - before
            stop.set()
            assert sent > 1 << 20, "the flood never got going"
            assert grown < RSS_BOUND_KIB, f"RSS grew {grown} KiB for {sent >> 20} MiB of select_chat"
            assert http_request(pod.http + "/health")[0] == 200
    finally:
        stop_pods([pod])
