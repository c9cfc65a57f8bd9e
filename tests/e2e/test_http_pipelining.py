"""HTTP/1.1 keep-alive and pipelining on the gateway's port (SPEC §1): every pipelined request
is answered, in order; a client that does not read its answers is no longer read (memory stays
bounded) and the read/idle timeouts end it; the read timeout bounds each request once its
first bytes arrive."""

from __future__ import annotations

import socket

import pytest

from tests.e2e.helpers import raw_http
from tests.support import ServerProcess

Response = tuple[int, dict[str, str], bytes]


def parse_responses(data: bytes) -> list[Response]:
    """Every complete response in `data` (Content-Length framing; 1xx and 101 have no body)."""
    out: list[Response] = []
    pos = 0
    while True:
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            return out
        status_line, *lines = data[pos:end].decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
        status = int(status_line.split()[1])
        length = 0 if status < 200 else int(headers.get("content-length", "0"))
        body = data[end + 4 : end + 4 + length]
        if len(body) < length:
            return out
        out.append((status, headers, body))
        pos = end + 4 + length


def pipelined(path: str, n: int) -> bytes:
    """`n` GET requests in one blob, the last one asking to close (so the reader sees EOF)."""
    one = f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode()
    return (one + b"\r\n") * (n - 1) + one + b"Connection: close\r\n\r\n"


@pytest.mark.parametrize(("path", "status"), [("/health", 200), ("/metrics", 200), ("/nope", 404)])
def test_thousands_of_pipelined_requests_in_one_write_are_all_answered(server: ServerProcess, path: str, status: int) -> None:
    """Buffered requests are answered one after the other, not one stack frame deeper each
    (that overflowed after ~330: RecursionError, the connection cut, sometimes a 500)."""
    n = 2000
    before = len(server.stderr)
    replies = parse_responses(raw_http(server.port, pipelined(path, n), timeout=20))
    assert len(replies) == n
    assert {r[0] for r in replies} == {status}
    assert len({r[1]["x-request-id"] for r in replies}) == n
    assert len(server.stderr) == before, server.stderr[before:]
    assert not [line for line in server.lines if line.get("level") == "error"]
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:  # still serving
        s.sendall(pipelined("/health", 1))
        assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
