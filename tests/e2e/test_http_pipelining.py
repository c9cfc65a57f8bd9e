"""HTTP/1.1 keep-alive and pipelining on the gateway's port (SPEC §1): every pipelined request
is answered, in order; a client that does not read its answers is no longer read (memory stays
bounded) and the read/idle timeouts end it; the read timeout bounds each request once its
first bytes arrive."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests.e2e.helpers import READY, client_frame, raw_http, ws_path
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
    n = 1000  # the recursion overflowed after ~330
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


# --- a client that pipelines and does not read ----------------------------------------------------
READ_TIMEOUT = 4
IDLE_TIMEOUT = 6


def server_with_timeouts(read: int, idle: int) -> Iterator[ServerProcess]:
    env = {"DAISI_WS_APP_READ_TIMEOUT_SECONDS": str(read), "DAISI_WS_APP_IDLE_TIMEOUT_SECONDS": str(idle)}
    with ServerProcess(env) as proc:
        yield proc


@pytest.fixture(scope="module")
def timed_server() -> Iterator[ServerProcess]:
    yield from server_with_timeouts(READ_TIMEOUT, IDLE_TIMEOUT)


def rss_kib(server: ServerProcess) -> int:
    assert server.proc is not None
    with open(f"/proc/{server.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def small_socket(port: int) -> socket.socket:
    """A client socket with a small receive buffer (the kernel holds few of our answers)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    return s


def push_for(s: socket.socket, blob: bytes, seconds: float) -> tuple[int, float]:
    """Send `blob` again and again for `seconds`: (bytes the server took, seconds since the
    last byte it took)."""
    s.settimeout(0.1)
    view = memoryview(blob)
    sent, pos = 0, 0
    now = last = time.monotonic()
    deadline = now + seconds
    while now < deadline:
        try:
            n = s.send(view[pos:])
        except TimeoutError:
            n = 0
        now = time.monotonic()
        if n:
            sent += n
            pos = (pos + n) % len(view)
            last = now
    return sent, now - last


def read_until_closed(s: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (EOF or reset); (data, closed in time)."""
    s.settimeout(timeout)
    data = bytearray()
    try:
        while chunk := s.recv(1 << 20):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        return bytes(data), False
    return bytes(data), True


def test_a_client_that_does_not_read_its_answers_is_no_longer_read(timed_server: ServerProcess) -> None:
    """Answers wait in the transport only up to its high-water mark: then the server stops
    answering and reading (the client's sends block), memory stays flat; the idle timeout then
    ends the connection although the client never reads (close() alone would wait for it)."""
    server = timed_server
    rss0 = rss_kib(server)
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    with small_socket(server.port) as s:
        sent, stalled = push_for(s, request * 1000, seconds=2)
        assert stalled > 1, "the server kept reading requests while nobody read the answers"
        time.sleep(2)  # neither sending nor reading: tens of thousands of requests are buffered
        grown = rss_kib(server) - rss0
        print(f"sent {sent} bytes, stalled {stalled:.1f} s, server RSS +{grown} KiB")
        assert grown < 4 * 1024, "answers nobody reads piled up in the server"
        time.sleep(max(READ_TIMEOUT, IDLE_TIMEOUT) - 2 + 1.5)  # still not reading
        data, closed = read_until_closed(s, timeout=5)
        assert closed, "the connection outlived its timeouts"
    assert data.startswith(b"HTTP/1.1 200 ")
    assert len(parse_responses(data)) < sent // len(request)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:  # still serving
        s.sendall(pipelined("/health", 1))
        assert s.recv(65536).startswith(b"HTTP/1.1 200 ")


def test_an_upgrade_behind_answers_the_client_has_not_read_yet_opens_a_working_socket(timed_server: ServerProcess) -> None:
    """The upgrade is reached once the client reads (the transport paused, then resumed): all
    answers, then 101 and ready, in order; then the socket answers a ping."""
    server = timed_server
    n = 600  # 13 KB each: more than the kernel buffers and the transport's high-water mark
    token = server.keys.user_token("pipe", "a", "u")
    upgrade = (
        f"GET {ws_path('pipe', 'a', token, server.keys.api)} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    with small_socket(server.port) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * n + upgrade + client_frame(0x9, b"early"))
        time.sleep(1)  # not reading: the server pauses
        s.settimeout(10)
        data = bytearray()
        at = head_end = -1
        while head_end < 0:
            chunk = s.recv(1 << 20)
            assert chunk, "closed before the 101"
            data += chunk
            if at < 0:
                at = data.find(b"HTTP/1.1 101 ", max(0, len(data) - len(chunk) - 16))
            if at >= 0 and (head_end := data.find(b"\r\n\r\n", at)) >= 0:
                head_end += 4
        replies = parse_responses(bytes(data[:at]))
        assert len(replies) == n and {r[0] for r in replies} == {200}
        frames = bytes(data[head_end:])
        ready = b"\x81" + bytes([len(READY)]) + READY.encode()
        pong = b"\x8a\x05early"
        deadline = time.monotonic() + 5
        while len(frames) < len(ready) + len(pong) and time.monotonic() < deadline:
            frames += s.recv(65536)
        assert frames == ready + pong  # ready first, then the answer to the ping sent with the handshake
        s.sendall(client_frame(0x9, b"later"))
        assert s.recv(65536) == b"\x8a\x05later"


# --- read timeout versus idle timeout --------------------------------------------------------------
SHORT_READ = 1
LONG_IDLE = 4


@pytest.fixture(scope="module")
def idle_server() -> Iterator[ServerProcess]:
    yield from server_with_timeouts(SHORT_READ, LONG_IDLE)


def trickle_until_closed(s: socket.socket, limit: float) -> float:
    """Send a header line every half second until the server closes; seconds it took."""
    t0 = time.monotonic()
    s.settimeout(0.5)
    while time.monotonic() - t0 < limit:
        try:
            s.sendall(b"X-Slow: 1\r\n")
            if s.recv(65536) == b"":
                break
        except TimeoutError:
            continue
        except OSError:
            break
    return time.monotonic() - t0


def test_the_first_request_has_the_read_timeout(idle_server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", idle_server.port)) as s:
        s.sendall(b"GET /health HTTP/1.1\r\n")
        assert SHORT_READ - 0.5 < trickle_until_closed(s, LONG_IDLE + 5) < SHORT_READ + 1.5


@pytest.mark.parametrize("pipelined_start", [False, True], ids=["after-the-answer", "with-the-first-request"])
def test_a_later_request_has_the_read_timeout_from_its_first_byte(idle_server: ServerProcess, pipelined_start: bool) -> None:
    """Between requests the idle timeout applies; once bytes of the next request arrive, the
    read timeout does (it was the idle timeout until the connection was cut)."""
    with socket.create_connection(("127.0.0.1", idle_server.port)) as s:
        s.settimeout(5)
        first = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        if pipelined_start:  # and then nothing more: the read timeout runs from its arrival
            s.sendall(first + b"GET /health HTTP/1.1\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
            t0 = time.monotonic()
            s.settimeout(LONG_IDLE + 5)
            assert s.recv(65536) == b""
            assert SHORT_READ - 0.5 < time.monotonic() - t0 < SHORT_READ + 1.5
        else:
            s.sendall(first)
            assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
            s.sendall(b"GET /health HTTP/1.1\r\n")
            assert SHORT_READ - 0.5 < trickle_until_closed(s, LONG_IDLE + 5) < SHORT_READ + 1.5


def test_a_keep_alive_connection_waits_the_idle_timeout_for_the_next_request(idle_server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", idle_server.port)) as s:
        s.settimeout(5)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
        time.sleep(SHORT_READ + 1)  # longer than the read timeout, shorter than the idle one
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
        t0 = time.monotonic()
        s.settimeout(LONG_IDLE + 5)
        assert s.recv(65536) == b""  # then the idle timeout closes it
        assert LONG_IDLE - 0.5 < time.monotonic() - t0 < LONG_IDLE + 1.5


@pytest.mark.parametrize("rest", [b"", b"abc"], ids=["no-body-yet", "part-of-the-body"])
def test_a_pipelined_request_whose_headers_arrived_has_the_read_timeout(idle_server: ServerProcess, rest: bytes) -> None:
    """The next request's headers arrived with the first request (h11 parsed them, nothing is
    left in its buffer) and its body stalls: the read timeout, not the idle one, ends it."""
    with socket.create_connection(("127.0.0.1", idle_server.port)) as s:
        s.settimeout(LONG_IDLE + 5)
        first = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        stalled = b"POST /generate-token HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n" + rest
        t0 = time.monotonic()
        s.sendall(first + stalled)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.1 200 ") and data.count(b"HTTP/1.1 ") == 1
        assert SHORT_READ - 0.5 < time.monotonic() - t0 < SHORT_READ + 1.5
