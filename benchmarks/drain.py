"""A separate client process for broadcast-cost benchmarks: N WebSocket sockets that read and
discard everything, so the measuring process only pays for sending.

    python benchmarks/drain.py PORT N PATH

Connects N sockets to 127.0.0.1:PORT, sends a WebSocket upgrade request for PATH on each,
prints `ready` once all are connected, then reads until stdin closes and prints the number
of bytes received after the HTTP response headers (the frames).
"""

from __future__ import annotations

import base64
import os
import selectors
import socket
import sys


def main() -> int:
    port, n, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    sel = selectors.DefaultSelector()
    pending_head: dict[socket.socket, bytes] = {}
    frame_bytes = 0
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        pending_head[s] = b""
        socks.append(s)
    sel.register(sys.stdin, selectors.EVENT_READ)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        for key, _ in sel.select():
            if key.fileobj is sys.stdin:
                if not sys.stdin.readline():
                    sys.stdout.write(f"{frame_bytes}\n")
                    sys.stdout.flush()
                    return 0
                # any line: report the running count
                sys.stdout.write(f"{frame_bytes}\n")
                sys.stdout.flush()
                continue
            s = key.fileobj
            assert isinstance(s, socket.socket)
            try:
                data = s.recv(262144)
            except BlockingIOError:
                continue
            if not data:
                sel.unregister(s)
                continue
            head = pending_head.get(s)
            if head is not None:
                head += data
                end = head.find(b"\r\n\r\n")
                if end < 0:
                    pending_head[s] = head
                    continue
                del pending_head[s]
                frame_bytes += len(head) - end - 4
            else:
                frame_bytes += len(data)


if __name__ == "__main__":
    sys.exit(main())
