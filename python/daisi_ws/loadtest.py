"""`daisi-ws loadtest`: N real WebSocket clients, events at a set rate, delivery measured.

The coordinator (this process) mints one user token per socket, starts worker processes
that each hold a share of the sockets, then publishes events (core NATS, JetStream or the
server's `/api/publish`) at a fixed rate. Every payload carries its send time
(`"ts":<CLOCK_MONOTONIC ns>`, one clock for all processes of the machine); workers turn it
into a delivery latency. The report: handshakes/s, latency percentiles, delivered frames/s,
drops (expected minus received), the server's CPU and RSS (from its pid, found through the
listening port, or from `/metrics`) and the load generator's own CPU.

Client efficiency matters more than elegance here (one core of clients must outrun the
server): each socket is a plain `asyncio.Protocol` (no Task per socket); websockets'
sans-I/O `ClientProtocol` does the opening handshake and every control frame (ping, close),
while unmasked server text frames are split by a few byte comparisons and the timestamp is
found with `bytes.find` (no JSON parse). `--parser websockets` sends every byte through
`ClientProtocol` instead, for cross-checking. The clients run on uvloop when it is installed
(`--loop`): its C read path cuts their cost per received frame by a third to a half.

Loopback only: the target and NATS must resolve to loopback addresses. Counts, rates and
durations are capped (see `CAPS`).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import faulthandler
import importlib.util
import ipaddress
import json
import math
import multiprocessing
import os
import resource
import signal
import socket
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

from daisi_ws.limits import raise_nofile_limit

T = TypeVar("T")

CAPS = {
    "connections": 100_000,
    "procs": 32,
    "duration": 600.0,
    "warmup": 60.0,
    "drain": 60.0,
    "rate": 200_000.0,  # published events per second
    "frames_rate": 5_000_000.0,  # expected delivered frames per second
    "payload_bytes": 65_536,
    "pairs": 100_000,
    "chats": 10_000,
    "connect_concurrency": 2_000,
}
SATURATED = 0.93  # busy share of a side's cores (or CPU per core) that counts as saturated
PER_PROCESS_SOCKETS = 10_000  # leaves room under a 20,000 descriptor limit
LATENCY_SAMPLES_CAP = 20_000_000  # per worker; beyond it frames are counted, not timed
SUBPROTOCOL = "json.v1"
TS_KEY = b'"ts":'


# --------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------


def is_loopback_host(host: str) -> bool:
    """True iff every address `host` resolves to is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addresses)


def cpu_seconds_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_stat(pid: int | str) -> list[bytes] | None:
    """/proc/<pid>/stat from field 3 (the state) on: fields[0] is field 3 (None if unreadable)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    return raw[raw.rindex(b")") + 2 :].split()


def _stat_cpu_seconds(fields: list[bytes]) -> float:
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime: fields 14 and 15


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of `pid` (None if unreadable)."""
    fields = _proc_stat(pid)
    return None if fields is None else _stat_cpu_seconds(fields)


def proc_kernel_cpu_seconds(pid: int) -> float | None:
    """stime of `pid`: its time in system calls, where a gateway's socket sends and loopback TCP
    work are paid (None if unreadable)."""
    fields = _proc_stat(pid)
    return None if fields is None else int(fields[12]) / _CLK_TCK


def proc_rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def cpu_times_per_core() -> dict[int, list[int]]:
    """/proc/stat per-CPU jiffies: user nice system idle iowait irq softirq steal."""
    out: dict[int, list[int]] = {}
    try:
        with open("/proc/stat") as fh:
            for line in fh:
                if line.startswith("cpu") and line[3:4].isdigit():
                    parts = line.split()
                    out[int(parts[0][3:])] = [int(x) for x in parts[1:9]]
    except OSError:
        pass
    return out


def cores_busy(a: dict[int, list[int]], b: dict[int, list[int]], cpus: Sequence[int]) -> dict[str, float] | None:
    """Busy share of `cpus` between two snapshots, softirq included (loopback TCP does
    much of its work in softirq, which no process's utime/stime shows)."""
    total = idle = softirq = 0
    for cpu in cpus:
        if cpu not in a or cpu not in b:
            return None
        d = [y - x for x, y in zip(a[cpu], b[cpu], strict=True)]
        total += sum(d)
        idle += d[3] + d[4]
        softirq += d[5] + d[6]
    if total <= 0:
        return None
    return {"busy": round(1 - idle / total, 3), "irq_softirq": round(softirq / total, 3)}


_PF_KTHREAD = 0x00200000


def all_process_cpu() -> dict[int, float]:
    """utime + stime of every readable user-space process (for the CPU nobody in the test
    used). Kernel threads are left out: ksoftirqd and kworkers mostly carry the test's own
    network work."""
    out: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        fields = _proc_stat(entry) if entry.isdigit() else None
        if fields is not None and not int(fields[6]) & _PF_KTHREAD:  # flags: field 9
            out[int(entry)] = _stat_cpu_seconds(fields)
    return out


def background_cpu(a: dict[int, float], b: dict[int, float], exclude: set[int]) -> float:
    """CPU seconds used between two snapshots by processes outside `exclude` (a process
    born in between counts from zero; one that died in between is missed)."""
    return round(sum(v - a.get(pid, 0.0) for pid, v in b.items() if pid not in exclude), 3)


def affinity(pid: int) -> list[int] | None:
    try:
        return sorted(os.sched_getaffinity(pid))
    except (OSError, AttributeError):
        return None


def find_listener_pid(port: int) -> int | None:
    """The pid of this user's process listening on TCP `port` (via /proc), else None."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                next(fh)
                for line in fh:
                    parts = line.split()
                    if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(parts[9])
        except OSError:
            continue
    if not inodes:
        return None
    targets = {f"socket:[{i}]" for i in inodes}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fd_dir = f"/proc/{entry}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd}") in targets:
                    return int(entry)
            except OSError:
                continue
    return None


def fetch_metrics(base_http: str, timeout: float = 3.0) -> dict[str, str]:
    """`/metrics` sample lines as {name{labels}: value}; empty if unavailable."""
    import urllib.request

    try:
        with urllib.request.urlopen(base_http.rstrip("/") + "/metrics", timeout=timeout) as resp:
            text = resp.read().decode(errors="replace")
    except Exception:
        return {}
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        out[name] = value
    return out


def percentile(hist: Counter[int], total: int, q: float) -> int:
    """The smallest bucket value v with at least q of `total` samples <= v."""
    if total <= 0:
        return 0
    rank = max(1, math.ceil(q * total))
    seen = 0
    for value in sorted(hist):
        seen += hist[value]
        if seen >= rank:
            return value
    return max(hist)


def bucket_us(v: int) -> int:
    """Latency bucket (µs): exact below 1024 µs, then ~0.1% wide (10 significant bits)."""
    if v < 1024:
        return v if v > 0 else 0
    shift = v.bit_length() - 10
    return (v >> shift) << shift


# --------------------------------------------------------------------------------------
# the load layout: which socket is which user, who receives which event
# --------------------------------------------------------------------------------------


@dataclass
class Layout:
    connections: int
    companies: int
    agents: int
    chats: int
    select_fraction: float
    messages_fraction: float

    @property
    def pairs(self) -> int:
        return self.companies * self.agents

    def pair_of(self, p: int) -> tuple[str, str]:
        return f"c{p // self.agents}", f"a{p % self.agents}"

    tag: str = ""

    def socket(self, i: int) -> tuple[str, str, str, str | None]:
        """(company, agent, user, chat to select or None) of socket i."""
        p = i % self.pairs
        r = i // self.pairs
        company, agent = self.pair_of(p)
        chat = None
        f = self.select_fraction
        if f > 0 and math.floor((r + 1) * f) > math.floor(r * f):
            chat = f"ch{r % self.chats}"
        return company, agent, f"u{self.tag}{i}", chat

    def recipients(self) -> tuple[list[int], dict[tuple[int, str], int]]:
        per_pair = [0] * self.pairs
        per_chat: dict[tuple[int, str], int] = {}
        for i in range(self.connections):
            p = i % self.pairs
            per_pair[p] += 1
            chat = self.socket(i)[3]
            if chat is not None:
                per_chat[(p, chat)] = per_chat.get((p, chat), 0) + 1
        return per_pair, per_chat

    def event_cycle(self) -> list[tuple[str, int]]:
        """A repeating list of (subject, recipients): round robin over pairs; a share of
        `messages` events (to the sockets that selected that chat), the rest `chats` events
        (to every socket of the pair)."""
        per_pair, per_chat = self.recipients()
        m = self.messages_fraction
        rounds = 1 if m <= 0 else max(1, min(100, self.chats * 4))
        cycle: list[tuple[str, int]] = []
        for rnd in range(rounds):
            is_msg = m > 0 and math.floor((rnd + 1) * m) > math.floor(rnd * m)
            for p in range(self.pairs):
                company, agent = self.pair_of(p)
                if is_msg:
                    chat = f"ch{rnd % self.chats}"
                    cycle.append((f"websocket.{company}.{agent}.messages.{chat}", per_chat.get((p, chat), 0)))
                else:
                    cycle.append((f"websocket.{company}.{agent}.chats", per_pair[p]))
        return cycle


def make_payload_template(payload_bytes: int) -> tuple[bytes, bytes]:
    """(head, tail) so that head + b'%d,"event_id":"%d"' + tail ~ payload_bytes long."""
    head = b'{"ts":'
    tail_fixed = b',"row_data":{"pad":""}}'
    pad = max(0, payload_bytes - len(head) - 19 - 20 - len(tail_fixed))
    return head, b',"row_data":{"pad":"' + b"x" * pad + b'"}}'


# --------------------------------------------------------------------------------------
# worker side: the sockets
# --------------------------------------------------------------------------------------


class _Client(asyncio.Protocol):
    __slots__ = (
        "buf",
        "chat",
        "closed",
        "fast",
        "opened_ns",
        "proto",
        "started_ns",
        "transport",
        "w",
        "waiter",
    )

    def __init__(self, w: _Worker, base_uri: Any, path: str, chat: str | None) -> None:
        from websockets.client import ClientProtocol
        from websockets.typing import Subprotocol

        self.w = w
        self.chat = chat
        resource, _, query = path.partition("?")
        uri = dataclasses.replace(base_uri, path=resource, query=query)
        self.proto = ClientProtocol(uri, subprotocols=[Subprotocol(SUBPROTOCOL)], max_size=None)
        self.transport: Any = None
        self.buf = b""
        self.fast = False
        self.closed = False
        self.started_ns = time.monotonic_ns()
        self.opened_ns = 0
        self.waiter: asyncio.Future[None] | None = asyncio.get_running_loop().create_future()

    # asyncio protocol
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        proto = self.proto
        proto.send_request(proto.connect())
        self._flush_proto()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self.w.lost += 1
        self._fail(exc or ConnectionError("connection closed before the ready frame"))

    def _fail(self, exc: BaseException) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.waiter = None

    def _flush_proto(self) -> None:
        transport = self.transport
        for data in self.proto.data_to_send():
            if data:
                if not transport.is_closing():
                    transport.write(data)
            elif transport.can_write_eof() and not transport.is_closing():
                transport.write_eof()

    def data_received(self, data: bytes) -> None:
        if not self.fast:
            self._slow(data)
            return
        if self.buf:
            data = self.buf + data
            self.buf = b""
        n = len(data)
        off = 0
        w = self.w
        now = 0
        mfrom = w.measure_from
        lat = w.lat
        measured = warm = 0
        last = 0
        find = data.find
        while n - off >= 2:
            b0 = data[off]
            ln = data[off + 1] & 0x7F  # server frames are never masked
            if ln < 126:
                h = 2
            elif ln == 126:
                if n - off < 4:
                    break
                ln = (data[off + 2] << 8) | data[off + 3]
                h = 4
            else:
                if n - off < 10:
                    break
                ln = int.from_bytes(data[off + 2 : off + 10], "big")
                h = 10
            end = off + h + ln
            if end > n:
                break
            if b0 == 0x81:  # FIN + text
                i = find(TS_KEY, off + h, end)
                if i >= 0:
                    j = i + 5
                    k = find(b",", j, end)
                    if k < 0:
                        k = find(b"}", j, end)
                    ts = int(data[j:k])
                    if not now:
                        now = time.monotonic_ns()
                    if ts >= mfrom:
                        measured += 1
                        last = now
                        lat.append((now - ts) // 1000)
                    else:
                        warm += 1
                else:
                    self._other_text(data[off + h : end])
            else:  # control frames and fragments: websockets' parser is at a frame boundary
                self._slow(data[off:end])
                if self.closed:
                    return
            off = end
        if off < n:
            self.buf = data[off:]
        if measured:
            w.measured += measured
            w.last_ns = last
            if len(lat) > LATENCY_SAMPLES_CAP:
                del lat[:]
                w.lat_overflow = True
        if warm:
            w.warm += warm

    def _slow(self, data: bytes) -> None:
        """Everything through websockets' ClientProtocol (handshake, control frames)."""
        from websockets.frames import Frame, Opcode
        from websockets.protocol import State

        proto = self.proto
        proto.receive_data(data)
        for event in proto.events_received():
            if not isinstance(event, Frame):  # the handshake response
                if proto.handshake_exc is not None:
                    self._fail(proto.handshake_exc)
                continue
            op = event.opcode
            if op is Opcode.TEXT or op is Opcode.CONT:
                self._slow_text(bytes(event.data), event.fin, op is Opcode.CONT)
        self._flush_proto()
        if proto.state is State.OPEN and not self.fast and self.w.parser == "fast":
            # switch to the fast path once websockets holds no partial frame
            if not proto.reader.buffer and not self.w.fragments.get(id(self)):
                self.fast = True
        elif (proto.state is State.CLOSING or proto.state is State.CLOSED) and not self.closed:
            self.closed = True
            self.w.lost += 1
            self._fail(ConnectionError("closed by the server"))

    def _slow_text(self, data: bytes, fin: bool, cont: bool) -> None:
        frags = self.w.fragments
        if not fin or cont:
            parts = frags.setdefault(id(self), [])
            parts.append(data)
            if not fin:
                return
            data = b"".join(frags.pop(id(self)))
        i = data.find(TS_KEY)
        if i < 0:
            self._other_text(data)
            return
        j = i + 5
        k = data.find(b",", j)
        if k < 0:
            k = data.find(b"}", j)
        ts = int(data[j:k])
        now = time.monotonic_ns()
        w = self.w
        if ts >= w.measure_from:
            w.measured += 1
            w.last_ns = now
            if len(w.lat) <= LATENCY_SAMPLES_CAP:
                w.lat.append((now - ts) // 1000)
        else:
            w.warm += 1

    def _other_text(self, data: bytes) -> None:
        w = self.w
        if data.startswith(b'{"type":"ready"') or data.startswith(b'{"type": "ready"'):
            if self.waiter is not None and not self.waiter.done():
                self.opened_ns = time.monotonic_ns()
                self.waiter.set_result(None)
                self.waiter = None
            return
        if b'"ack"' in data[:24]:
            w.acks += 1
            if w.ack_waiter is not None and w.acks >= w.acks_expected and not w.ack_waiter.done():
                w.ack_waiter.set_result(None)
            return
        if b'"error"' in data[:24]:
            w.errors += 1
            if len(w.error_samples) < 5:
                w.error_samples.append(data[:300].decode(errors="replace"))
            return
        w.other += 1

    def send_text(self, text: str) -> None:
        self.proto.send_text(text.encode())
        self._flush_proto()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.closed = True
            self.transport.abort()


class _Worker:
    """One process's share of the sockets, driven by the coordinator over a pipe."""

    def __init__(self, pipe: Any, spec: dict[str, Any]) -> None:
        self.pipe = pipe
        from websockets.uri import parse_uri

        # one (host, port, base URI) per server; a target names its server by index
        self.endpoints: list[tuple[str, int, Any]] = [(h, p, parse_uri(b + "/")) for h, p, b in spec["endpoints"]]
        self.targets: list[tuple[int, str, str | None]] = spec["targets"]
        self.concurrency: int = spec["connect_concurrency"]
        self.connect_timeout: float = spec["connect_timeout"]
        self.parser: str = spec["parser"]
        self.clients: list[_Client] = []
        self.lat: array[int] = array("q")
        self.lat_overflow = False
        self.measure_from = 1 << 62
        self.measured = 0
        self.warm = 0
        self.last_ns = 0
        self.lost = 0
        self.acks = 0
        self.acks_expected = 0
        self.ack_waiter: asyncio.Future[None] | None = None
        self.errors = 0
        self.other = 0
        self.error_samples: list[str] = []
        self.fragments: dict[int, list[bytes]] = {}
        self.connected = 0
        self.failed = 0
        self.fail_samples: list[str] = []
        self.handshake_us: array[int] = array("q")
        self.cpu_start = 0.0
        self.commands: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self.progress_handle: asyncio.TimerHandle | None = None

    def send(self, *msg: Any) -> None:
        self.pipe.send(msg)

    def _on_pipe(self) -> None:
        try:
            msg = self.pipe.recv()
        except EOFError:
            msg = ("exit",)
            asyncio.get_running_loop().remove_reader(self.pipe.fileno())
        self.commands.put_nowait(msg)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        watch_pipe(self.pipe, self._on_pipe)
        self.send("hello", os.getpid())
        self._progress()
        while True:
            msg = await self.commands.get()
            cmd = msg[0]
            if cmd == "connect":
                await self.connect_all()
            elif cmd == "select":
                await self.select_all(float(msg[1]))
            elif cmd == "start":
                self.measure_from = int(msg[1])
                loop.call_at(self.measure_from / 1e9, self._mark_cpu)
            elif cmd == "stop":
                self.send("result", self.result())
            elif cmd == "exit":
                break
        if self.progress_handle is not None:
            self.progress_handle.cancel()
        for c in self.clients:
            c.close()
        await asyncio.sleep(0)

    def _mark_cpu(self) -> None:
        self.cpu_start = cpu_seconds_self()

    def _progress(self) -> None:
        self.send("progress", self.connected, self.failed, self.measured + self.warm, self.lost)
        self.progress_handle = asyncio.get_running_loop().call_later(0.25, self._progress)

    async def connect_all(self) -> None:
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(self.concurrency)

        async def tcp_connect(host: str, port: int) -> socket.socket:
            # a plain non-blocking connect: create_connection() would re-resolve the
            # address for every socket, which costs the load generator more than the handshake
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            err = sock.connect_ex((host, port))
            if err not in (0, errno.EINPROGRESS):
                sock.close()
                raise OSError(err, os.strerror(err))
            if err:
                fut: asyncio.Future[None] = loop.create_future()
                fd = sock.fileno()
                loop.add_writer(fd, _resolve, fut)
                try:
                    await fut
                finally:
                    loop.remove_writer(fd)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    sock.close()
                    raise OSError(err, os.strerror(err))
            return sock

        async def one(endpoint: int, path: str, chat: str | None) -> None:
            host, port, base_uri = self.endpoints[endpoint]
            async with sem:
                try:
                    sock = await asyncio.wait_for(tcp_connect(host, port), self.connect_timeout)
                    _, client = await loop.create_connection(lambda: _Client(self, base_uri, path, chat), sock=sock)
                    assert isinstance(client, _Client)
                    waiter = client.waiter
                    if waiter is not None:
                        await asyncio.wait_for(waiter, self.connect_timeout)
                    self.clients.append(client)
                    self.connected += 1
                    self.handshake_us.append((client.opened_ns - client.started_ns) // 1000)
                except Exception as exc:
                    self.failed += 1
                    if len(self.fail_samples) < 5:
                        self.fail_samples.append(f"{type(exc).__name__}: {exc}"[:300])

        started = time.monotonic()
        cpu0 = cpu_seconds_self()
        await asyncio.gather(*(one(endpoint, path, chat) for endpoint, path, chat in self.targets))
        self.send(
            "connected",
            {
                "connected": self.connected,
                "failed": self.failed,
                "fail_samples": self.fail_samples,
                "elapsed": time.monotonic() - started,
                "cpu": cpu_seconds_self() - cpu0,
                "handshake_us": self.handshake_us.tobytes(),
            },
        )

    async def select_all(self, timeout: float) -> None:
        selecting = [c for c in self.clients if c.chat is not None and not c.closed]
        self.acks_expected = self.acks + len(selecting)
        loop = asyncio.get_running_loop()
        self.ack_waiter = loop.create_future()
        if not selecting:
            self.ack_waiter.set_result(None)
        for n, c in enumerate(selecting):
            c.send_text(json.dumps({"type": "select_chat", "id": n, "payload": {"chat_id": c.chat}}))
        ok = True
        try:
            await asyncio.wait_for(asyncio.shield(self.ack_waiter), timeout)
        except asyncio.TimeoutError:
            ok = False
        self.send("selected", {"selected": len(selecting), "acked": self.acks, "ok": ok})

    def result(self) -> dict[str, Any]:
        hist: Counter[int] = Counter(map(bucket_us, self.lat))
        return {
            "measured": self.measured,
            "warm": self.warm,
            "last_ns": self.last_ns,
            "lost": self.lost,
            "errors": self.errors,
            "error_samples": self.error_samples,
            "other": self.other,
            "hist": dict(hist),
            "lat_overflow": self.lat_overflow,
            "cpu": cpu_seconds_self() - self.cpu_start if self.cpu_start else 0.0,
        }


def watch_pipe(conn: Any, callback: Callable[..., None], *args: Any) -> None:
    """Call `callback(*args)` whenever the multiprocessing connection `conn` is readable.

    uvloop's add_reader() makes the descriptor non-blocking, and a Connection's recv() or
    send() then stops halfway through a message with BlockingIOError (a 40 KB result or
    handshake report did, now and then). The descriptor is set back to blocking: the callback
    runs only once data has arrived, and the rest of a message follows at once."""
    loop = asyncio.get_running_loop()
    loop.add_reader(conn.fileno(), callback, *args)
    os.set_blocking(conn.fileno(), True)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def uvloop_available() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def run_on(loop: str, main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on the named event loop (measurements: LOADTEST.md, "Evening re-run: the load
    generator on uvloop")."""
    if loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def _worker_main(pipe: Any, spec: dict[str, Any]) -> None:
    faulthandler.enable()  # a worker that crashes in C says where on stderr
    raise_nofile_limit()
    try:
        run_on(spec["loop"], _Worker(pipe, spec).run())
    except KeyboardInterrupt:
        pass


# --------------------------------------------------------------------------------------
# coordinator side: publishers
# --------------------------------------------------------------------------------------


class _NatsPublisher:
    def __init__(self, url: str, jetstream: bool, stream: str) -> None:
        self.url = url
        self.jetstream = jetstream
        self.stream = stream
        self.nc: Any = None
        self.js: Any = None
        self.inflight: set[asyncio.Future[Any]] = set()
        self.errors = 0
        self.error_sample = ""

    async def start(self) -> None:
        import nats

        self.nc = await nats.connect(self.url, connect_timeout=5, max_reconnect_attempts=0, pending_size=64 * 1024 * 1024)
        if self.jetstream:
            self.js = self.nc.jetstream()
            try:
                await self.js.stream_info(self.stream)
            except Exception:
                await self.js.add_stream(name=self.stream, subjects=["websocket.>"])

    async def publish(self, subject: str, payload: bytes) -> None:
        if self.js is None:
            await self.nc.publish(subject, payload)
            return
        while len(self.inflight) >= 512:
            await asyncio.wait(self.inflight, return_when=asyncio.FIRST_COMPLETED)
        fut = asyncio.ensure_future(self.js.publish(subject, payload))
        self.inflight.add(fut)
        fut.add_done_callback(self._done)

    def _done(self, fut: asyncio.Future[Any]) -> None:
        self.inflight.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:
            self.errors += 1
            self.error_sample = repr(fut.exception())[:200]

    async def finish(self) -> None:
        if self.inflight:
            await asyncio.wait(self.inflight, timeout=10)
        if self.nc is not None:
            try:
                await self.nc.flush(timeout=5)
            except Exception:
                pass

    async def close(self) -> None:
        if self.nc is not None:
            try:
                await self.nc.close()
            except Exception:
                pass


class _HttpConn(asyncio.Protocol):
    """One keep-alive connection pipelining POST /api/publish requests."""

    def __init__(self, owner: _HttpPublisher) -> None:
        self.owner = owner
        self.transport: Any = None
        self.buf = b""
        self.inflight = 0
        self.room = asyncio.Event()
        self.room.set()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.errors += self.inflight
        self.inflight = 0
        self.room.set()
        self.owner.conns = [c for c in self.owner.conns if c is not self]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end].lower()
            i = head.find(b"content-length:")
            length = int(head[i + 15 : head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0 else None]) if i >= 0 else 0
            if len(buf) < end + 4 + length:
                break
            if not head.startswith(b"http/1.1 200"):
                self.owner.errors += 1
                self.owner.error_sample = buf[: end + 4 + length][:300].decode(errors="replace")
            buf = buf[end + 4 + length :]
            self.inflight -= 1
        self.buf = buf
        if self.inflight < self.owner.window:
            self.room.set()


class _HttpPublisher:
    def __init__(self, host: str, port: int, api_key: str, conns: int = 4, window: int = 64) -> None:
        self.host = host
        self.port = port
        self.api_key = api_key
        self.n = conns
        self.window = window
        self.conns: list[_HttpConn] = []
        self.next = 0
        self.errors = 0
        self.error_sample = ""

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(self.n):
            _, conn = await loop.create_connection(lambda: _HttpConn(self), self.host, self.port)
            assert isinstance(conn, _HttpConn)
            self.conns.append(conn)

    async def publish(self, subject: str, payload: bytes) -> None:
        if not self.conns:
            raise ConnectionError("every /api/publish connection was closed")
        self.next = (self.next + 1) % len(self.conns)
        conn = self.conns[self.next]
        while conn.inflight >= self.window:
            conn.room.clear()
            await conn.room.wait()
        body = b'{"subject":"' + subject.encode() + b'","payload":' + payload + b"}"
        head = (
            b"POST /api/publish HTTP/1.1\r\nHost: loadtest\r\nContent-Type: application/json\r\nX-API-Key: "
            + self.api_key.encode()
            + b"\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
        )
        conn.inflight += 1
        conn.transport.write(head + body)

    async def finish(self) -> None:
        deadline = time.monotonic() + 10
        while any(c.inflight for c in self.conns) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        for c in self.conns:
            c.transport.close()


# --------------------------------------------------------------------------------------
# coordinator
# --------------------------------------------------------------------------------------


@dataclass
class LoadOptions:
    url: str = "ws://127.0.0.1:8080"
    connections: int = 100
    companies: int = 1
    agents: int = 1
    chats: int = 10
    select_fraction: float = 0.0
    messages_fraction: float = 0.0
    rate: float | None = None  # published events/s
    per_socket_rate: float | None = None  # chats events/s per (company, agent) pair
    duration: float = 10.0
    warmup: float = 2.0
    drain: float = 5.0
    settle: float = 1.0
    via: str = "nats"  # nats | jetstream | http
    nats_url: str = ""
    stream: str = "wa_stream"
    api_key: str = ""
    admin_api_key: str = ""
    aes_key: str = ""
    payload_bytes: int = 300
    procs: int = 0  # 0 = auto
    connect_concurrency: int = 64
    connect_timeout: float = 30.0
    parser: str = "fast"  # fast | websockets
    loop: str = "auto"  # auto | uvloop | asyncio: the client processes' event loop
    server_pids: list[int] = field(default_factory=list)  # one per server (default: found by port)
    helper_pids: list[int] = field(default_factory=list)  # nats-server, redis-server: CPU reported apart
    progress: bool = False
    label: str = ""
    # user ids are u<tag><n>: a fresh tag per run keeps runs from taking over each other's sessions
    user_tag: str = field(default_factory=lambda: os.urandom(3).hex() + "-")

    def urls(self) -> list[str]:
        """The servers: socket i connects to urls()[i % len(urls())] (pods of one cluster)."""
        return [u.strip() for u in self.url.split(",") if u.strip()]

    def validate(self) -> None:
        if not self.urls():
            raise ValueError("--url must be ws://HOST:PORT or http://HOST:PORT")
        for url in self.urls():
            parts = urlsplit(url)
            if parts.scheme not in ("ws", "http") or not parts.hostname or not parts.port:
                raise ValueError("--url must be ws://HOST:PORT or http://HOST:PORT (comma-separated for several pods)")
            if not is_loopback_host(parts.hostname):
                raise ValueError(f"refusing non-loopback target {parts.hostname!r}: loadtest drives loopback servers only")
        if self.server_pids and len(self.server_pids) != len(self.urls()):
            raise ValueError("give one --server-pid per --url server, or none")
        if self.via in ("nats", "jetstream"):
            if not self.nats_url:
                raise ValueError("--via nats needs --nats-url (or nats.url in the config)")
            for one in self.nats_url.split(","):
                host = urlsplit(one.strip() if "://" in one else f"nats://{one.strip()}").hostname or ""
                if not is_loopback_host(host):
                    raise ValueError(f"refusing non-loopback NATS server {host!r}")
        elif self.via != "http":
            raise ValueError("--via must be nats, jetstream or http")
        if not self.api_key:
            raise ValueError("no API key: pass --api-key or configure auth.secret_token")
        if not self.aes_key:
            raise ValueError("no AES key: pass --aes-key or configure auth.token_aes_key")
        if self.via == "http" and not self.admin_api_key and (self.rate or self.per_socket_rate):
            raise ValueError("--via http needs the admin API key (--admin-api-key or auth.admin_secret_token)")
        checks: list[tuple[str, float, float]] = [
            ("connections", self.connections, CAPS["connections"]),
            ("duration", self.duration, CAPS["duration"]),
            ("warmup", self.warmup, CAPS["warmup"]),
            ("drain", self.drain, CAPS["drain"]),
            ("payload_bytes", self.payload_bytes, CAPS["payload_bytes"]),
            ("chats", self.chats, CAPS["chats"]),
            ("pairs", self.companies * self.agents, CAPS["pairs"]),
            ("procs", self.procs, CAPS["procs"]),
            ("connect_concurrency", self.connect_concurrency, CAPS["connect_concurrency"]),
        ]
        for name, value, cap in checks:
            if value > cap:
                raise ValueError(f"--{name.replace('_', '-')} {value} exceeds the cap {cap:g}")
        if self.connections < 1 or self.companies < 1 or self.agents < 1 or self.chats < 1:
            raise ValueError("connections, companies, agents and chats must be >= 1")
        if self.duration <= 0 or self.warmup < 0 or self.drain < 0:
            raise ValueError("--duration must be > 0, --warmup and --drain >= 0")
        if not 0 <= self.select_fraction <= 1 or not 0 <= self.messages_fraction <= 1:
            raise ValueError("fractions must be within [0, 1]")
        if self.rate is not None and self.per_socket_rate is not None:
            raise ValueError("give --rate or --per-socket-rate, not both")
        if self.publish_rate() > CAPS["rate"]:
            raise ValueError(f"publish rate {self.publish_rate():g} events/s exceeds the cap {CAPS['rate']:g}")
        if self.parser not in ("fast", "websockets"):
            raise ValueError("--parser must be fast or websockets")
        if self.loop not in ("auto", "uvloop", "asyncio"):
            raise ValueError("--loop must be auto, uvloop or asyncio")
        if self.loop == "uvloop" and not uvloop_available():
            raise ValueError("--loop uvloop needs the uvloop package: pip install 'daisi-ws[loadtest]'")

    def event_loop(self) -> str:
        """The loop the load generator runs on: `auto` takes uvloop when it is installed."""
        if self.loop == "auto":
            return "uvloop" if uvloop_available() else "asyncio"
        return self.loop

    def publish_rate(self) -> float:
        if self.rate is not None:
            return max(0.0, self.rate)
        if self.per_socket_rate is not None:
            return max(0.0, self.per_socket_rate) * self.companies * self.agents
        return 0.0

    def layout(self) -> Layout:
        return Layout(
            self.connections,
            self.companies,
            self.agents,
            self.chats,
            self.select_fraction,
            self.messages_fraction,
            self.user_tag,
        )


class _Progress:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.last = 0.0

    def show(self, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.last < 0.2:
            return
        self.last = now
        sys.stderr.write("\r\x1b[2K" + text)
        sys.stderr.flush()

    def bar(self, done: float, total: float, width: int = 28) -> str:
        frac = 0.0 if total <= 0 else min(1.0, done / total)
        full = int(frac * width)
        return "[" + "#" * full + "-" * (width - full) + f"] {frac * 100:5.1f}%"

    def end(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()


class Coordinator:
    def __init__(self, opts: LoadOptions) -> None:
        self.o = opts
        self.endpoints: list[tuple[str, int]] = []
        for url in opts.urls():
            parts = urlsplit(url)
            assert parts.hostname is not None and parts.port is not None
            self.endpoints.append((parts.hostname, parts.port))
        # the first server takes /api/publish (--via http) and answers /metrics questions
        self.host, self.port = self.endpoints[0]
        self.http_base = f"http://{self.host}:{self.port}"
        self.pids: list[int] = []  # every server's pid, once known (CPU and RSS are summed)
        self.pipes: list[Any] = []
        self.procs: list[Any] = []
        self.progress: dict[int, tuple[int, int, int, int]] = {}
        self.inbox: dict[str, list[Any]] = {}
        self.waiters: list[tuple[str, int, asyncio.Future[None]]] = []
        self.bar = _Progress(opts.progress)

    # --- workers -----------------------------------------------------------------------
    def _targets(self) -> list[tuple[int, str, str | None]]:
        from daisi_ws.auth.tokens import TokenCipher, mint_user_token, parse_aes_key

        cipher = TokenCipher(parse_aes_key(self.o.aes_key))
        expires = datetime.now(timezone.utc) + timedelta(seconds=self.o.duration + self.o.warmup + 3600)
        key = quote(self.o.api_key, safe="")
        layout = self.o.layout()
        out: list[tuple[int, str, str | None]] = []
        servers = len(self.endpoints)
        for i in range(self.o.connections):
            company, agent, user, chat = layout.socket(i)
            token = mint_user_token(cipher, company, agent, user, expires)
            out.append((i % servers, f"/ws/{company}/{agent}?token={quote(token, safe='')}&x-api-key={key}", chat))
        return out

    def n_procs(self) -> int:
        if self.o.procs:
            return self.o.procs
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        by_fd = math.ceil(self.o.connections / PER_PROCESS_SOCKETS)
        by_cpu = min(cores, math.ceil(self.o.connections / 500))
        return max(1, by_fd, by_cpu)

    def _start_workers(self, targets: list[tuple[int, str, str | None]]) -> None:
        ctx = multiprocessing.get_context("spawn")
        n = self.n_procs()
        per_conc = max(1, self.o.connect_concurrency // n)
        for k in range(n):
            parent, child = ctx.Pipe()
            spec = {
                "endpoints": [(h, p, f"ws://{h}:{p}") for h, p in self.endpoints],
                "targets": targets[k::n],
                "connect_concurrency": per_conc,
                "connect_timeout": self.o.connect_timeout,
                "parser": self.o.parser,
                "loop": self.o.event_loop(),
            }
            proc = ctx.Process(target=_worker_main, args=(child, spec), daemon=True, name=f"loadtest-{k}")
            proc.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(proc)
            watch_pipe(parent, self._on_pipe, k)

    def _raise_if_a_worker_died(self) -> None:
        """Its sockets and counts are gone: no phase may go on as if they were measured."""
        if self.inbox.get("died"):
            raise RuntimeError(f"a load generator worker died ({self._exit_statuses()})")

    def _exit_statuses(self) -> str:
        """How each worker whose pipe closed ended (its exit is reaped a moment after)."""
        statuses = []
        for k in self.inbox.get("died", []):
            proc = self.procs[k]
            proc.join(2.0)
            code = proc.exitcode
            if code is None:
                statuses.append(f"worker {k}: still running")
            elif code < 0:
                statuses.append(f"worker {k}: killed by {signal.Signals(-code).name}")
            else:
                statuses.append(f"worker {k}: exit code {code}")
        return ", ".join(statuses)

    def _on_pipe(self, k: int) -> None:
        pipe = self.pipes[k]
        try:
            msg = pipe.recv()
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(pipe.fileno())
            msg = ("dead", k)
        kind = msg[0]
        if kind == "progress":
            self.progress[k] = msg[1:]
            return
        self.inbox.setdefault(kind, []).append(msg[1] if len(msg) > 1 else None)
        if kind == "dead":
            self.inbox.setdefault("died", []).append(k)
        for kind_w, count, fut in list(self.waiters):
            if not fut.done() and (len(self.inbox.get(kind_w, [])) >= count or self.inbox.get("died")):
                fut.set_result(None)

    async def _gather(self, kind: str, timeout: float, show: Callable[[], str] | None = None) -> list[Any]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        n = len(self.procs)
        self.waiters.append((kind, n, fut))
        if len(self.inbox.get(kind, [])) >= n:
            fut.set_result(None)
        deadline = time.monotonic() + timeout
        while not fut.done():
            if show is not None:
                self.bar.show(show())
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers did not report {kind!r} within {timeout:.0f} s")
            await asyncio.wait([fut], timeout=0.2)
        self._raise_if_a_worker_died()
        got = self.inbox.pop(kind)
        return got

    def _broadcast(self, *msg: Any) -> None:
        for pipe in self.pipes:
            pipe.send(msg)

    def _received(self) -> int:
        return sum(p[2] for p in self.progress.values())

    def _own_pids(self, server_pid: int | None) -> set[int]:
        pids = {os.getpid(), *(p.pid for p in self.procs if p.pid is not None)}
        pids.update(self.o.helper_pids)
        pids.update(self.pids)
        if server_pid is not None:
            pids.add(server_pid)
        return pids

    def _stop_workers(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("exit",))
            except OSError:
                pass
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)

    # --- server probes -------------------------------------------------------------------
    def _servers_sum(self, of_pid: Callable[[int], Any], metric: str) -> float | None:
        """Sum over every server: from /proc when the pids are known, else from /metrics."""
        if self.pids:
            values = [of_pid(p) for p in self.pids]
            return None if any(v is None for v in values) else float(sum(values))
        total = 0.0
        for host, port in self.endpoints:
            value = fetch_metrics(f"http://{host}:{port}").get(metric)
            if not value:
                return None
            total += float(value)
        return total

    def server_rss(self, pid: int | None) -> int | None:
        if pid is not None and len(self.pids) <= 1:
            return proc_rss_bytes(pid)
        value = self._servers_sum(proc_rss_bytes, "process_resident_memory_bytes")
        return None if value is None else int(value)

    def server_cpu(self, pid: int | None) -> float | None:
        if pid is not None and len(self.pids) <= 1:
            return proc_cpu_seconds(pid)
        value = self._servers_sum(proc_cpu_seconds, "process_cpu_seconds_total")
        return None if value is None else round(value, 3)

    def server_kernel_cpu(self, pid: int | None) -> float | None:
        """The servers' summed stime; None unless every server's /proc is readable (/metrics
        has only the sum of user and system time)."""
        total = None
        for p in self.pids or ([pid] if pid is not None else []):
            value = proc_kernel_cpu_seconds(p)
            if value is None:
                return None
            total = (total or 0.0) + value
        return None if total is None else round(total, 3)

    def server_affinity(self) -> list[int] | None:
        """The CPUs any server may run on (None if unknown)."""
        cpus: set[int] = set()
        for pid in self.pids:
            one = affinity(pid)
            if one is None:
                return None
            cpus.update(one)
        return sorted(cpus) if cpus else None

    def server_native(self) -> bool | None:
        for key in fetch_metrics(self.http_base):
            if key.startswith("dws_build_info{"):
                return 'native="true"' in key
        return None

    # --- the run -------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        o = self.o
        loop = asyncio.get_running_loop()
        nofile = raise_nofile_limit()
        found: list[int | None] = [*o.server_pids] or [find_listener_pid(port) for _, port in self.endpoints]
        self.pids = [p for p in found if p is not None] if None not in found else []
        pid = self.pids[0] if self.pids else None
        native = self.server_native()
        res: dict[str, Any] = {
            "label": o.label,
            "options": {k: v for k, v in asdict(o).items() if k not in ("api_key", "admin_api_key", "aes_key")},
            "machine": machine_info(),
            "loadgen": {"nofile_limit": nofile, "procs": self.n_procs(), "parser": o.parser, "loop": o.event_loop()},
            "server": {"pid": pid, "pids": list(self.pids), "servers": len(self.endpoints), "native": native},
        }
        targets = self._targets()
        rss0 = self.server_rss(pid)
        cpu_conn0 = self.server_cpu(pid)
        self._start_workers(targets)
        try:
            await self._run(res, pid, rss0, cpu_conn0, loop)
        finally:
            self.bar.end()
            self._stop_workers()
        return res

    async def _run(
        self, res: dict[str, Any], pid: int | None, rss0: int | None, cpu_conn0: float | None, loop: Any
    ) -> None:
        o = self.o
        n = o.connections

        def conn_text() -> str:
            done = sum(p[0] + p[1] for p in self.progress.values())
            fail = sum(p[1] for p in self.progress.values())
            return f"connecting {self.bar.bar(done, n)} {done}/{n} failed {fail}"

        # phase 1: handshakes (once every worker has started up)
        await self._gather("hello", 60.0)
        t_conn = time.monotonic()
        cpu_lg0 = cpu_seconds_self()
        cores0 = cpu_times_per_core()
        procs0 = all_process_cpu()
        self._broadcast("connect")
        reports = await self._gather("connected", o.connect_timeout + 60 + n / 500, conn_text)
        conn_wall = time.monotonic() - t_conn
        worker_wall = max(r["elapsed"] for r in reports)
        cpu_conn1 = self.server_cpu(pid)
        cores1 = cpu_times_per_core()
        procs1 = all_process_cpu()
        connected = sum(r["connected"] for r in reports)
        failed = sum(r["failed"] for r in reports)
        hs = array("q")
        for r in reports:
            hs.frombytes(r["handshake_us"])
        hs_hist: Counter[int] = Counter(map(bucket_us, hs))
        res["handshake"] = {
            "requested": n,
            "connected": connected,
            "failed": failed,
            "fail_samples": [s for r in reports for s in r["fail_samples"]][:5],
            "wall_s": round(worker_wall, 3),
            "coordinator_wall_s": round(conn_wall, 3),
            "per_s": round(connected / worker_wall, 1) if worker_wall > 0 else None,
            "latency_ms": {
                "p50": percentile(hs_hist, len(hs), 0.50) / 1000,
                "p99": percentile(hs_hist, len(hs), 0.99) / 1000,
                "max": (max(hs) / 1000) if hs else 0,
            },
            "server_cpu_s": _delta(cpu_conn0, cpu_conn1),
            "server_cpu_us_per_handshake": _per(_delta(cpu_conn0, cpu_conn1), connected, 1e6),
            "loadgen_cpu_s": round(sum(r["cpu"] for r in reports) + cpu_seconds_self() - cpu_lg0, 3),
            "background_cpu_s": background_cpu(procs0, procs1, self._own_pids(pid)),
        }
        server_cpus = self.server_affinity()
        loadgen_cpus = affinity(os.getpid())
        if server_cpus and loadgen_cpus and not set(server_cpus) & set(loadgen_cpus):
            res["handshake"]["server_cores_busy"] = (cores_busy(cores0, cores1, server_cpus) or {}).get("busy")
            res["handshake"]["loadgen_cores_busy"] = (cores_busy(cores0, cores1, loadgen_cpus) or {}).get("busy")
        # phase 2: select_chat (acked) for the sockets that select one
        if o.select_fraction > 0:
            sel = await self._gather_after("select", "selected", 60.0, o.connect_timeout)
            res["select_chat"] = {
                "selected": sum(r["selected"] for r in sel),
                "all_acked": all(r["ok"] for r in sel),
            }
        await asyncio.sleep(o.settle)
        rss1 = self.server_rss(pid)
        res["memory"] = {
            "server_rss_before_mb": _mb(rss0),
            "server_rss_connected_mb": _mb(rss1),
            "growth_mb": _mb(rss1 - rss0) if rss0 is not None and rss1 is not None else None,
            "per_connection_kb": round((rss1 - rss0) / connected / 1024, 2)
            if rss0 is not None and rss1 is not None and connected
            else None,
        }
        rate = o.publish_rate()
        if rate <= 0:  # idle: hold the sockets
            t_end = time.monotonic() + o.duration
            while time.monotonic() < t_end:
                self._raise_if_a_worker_died()
                self.bar.show(f"idle {connected} sockets {self.bar.bar(o.duration - (t_end - time.monotonic()), o.duration)}")
                await asyncio.sleep(0.2)
            rss2 = self.server_rss(pid)
            res["memory"]["server_rss_end_mb"] = _mb(rss2)
            lost = sum(p[3] for p in self.progress.values())
            res["idle"] = {"held_s": o.duration, "lost": lost}
            return
        await self._publish_phase(res, pid, rate, loop)

    async def _gather_after(self, cmd: str, kind: str, arg: float, timeout: float) -> list[Any]:
        self._broadcast(cmd, arg)
        return await self._gather(kind, timeout + 10)

    async def _publish_phase(self, res: dict[str, Any], pid: int | None, rate: float, loop: Any) -> None:
        o = self.o
        layout = o.layout()
        cycle = layout.event_cycle()
        mean_fanout = sum(r for _, r in cycle) / len(cycle)
        if rate * mean_fanout > CAPS["frames_rate"]:
            raise ValueError(f"expected {rate * mean_fanout:g} frames/s exceeds the cap {CAPS['frames_rate']:g}")
        publisher: _NatsPublisher | _HttpPublisher
        if o.via == "http":
            publisher = _HttpPublisher(self.host, self.port, o.admin_api_key)
        else:
            publisher = _NatsPublisher(o.nats_url, o.via == "jetstream", o.stream)
        await publisher.start()
        head, tail = make_payload_template(o.payload_bytes)
        clen = len(cycle)
        t0 = time.monotonic()
        measure_from = t0 + o.warmup
        t_end = measure_from + o.duration
        measure_from_ns = int(measure_from * 1e9)
        self._broadcast("start", measure_from_ns)
        sent = 0
        sent_measured = 0
        expected_warm = 0
        expected = 0
        cpu_server0: float | None = None
        kernel_server0: float | None = None
        cores0: dict[int, list[int]] = {}
        procs0: dict[int, float] = {}
        cpu_self0 = 0.0
        marked = False
        pub = publisher.publish
        monotonic_ns = time.monotonic_ns
        max_burst = max(1, int(rate * 0.05))
        try:
            while True:
                now = time.monotonic()
                if now >= t_end:
                    break
                self._raise_if_a_worker_died()
                if not marked and now >= measure_from:
                    marked = True
                    cpu_server0 = self.server_cpu(pid)
                    kernel_server0 = self.server_kernel_cpu(pid)
                    cpu_self0 = cpu_seconds_self()
                    cores0 = cpu_times_per_core()
                    procs0 = all_process_cpu()
                due = min(int((now - t0) * rate) - sent, max_burst)
                for _ in range(due):
                    subject, recipients = cycle[sent % clen]
                    ts = monotonic_ns()
                    await pub(subject, head + b"%d" % ts + b',"event_id":"%d"' % sent + tail)
                    sent += 1
                    if ts >= measure_from_ns:
                        sent_measured += 1
                        expected += recipients
                    else:
                        expected_warm += recipients
                if o.progress:
                    got = self._received()
                    self.bar.show(
                        f"publishing {self.bar.bar(now - t0, o.warmup + o.duration)} "
                        f"events {sent} frames {got}/{expected + expected_warm}"
                    )
                await asyncio.sleep(0.001)
            await publisher.finish()
            publish_end = time.monotonic()
            # drain: until every expected frame arrived, or the drain timeout
            drain_deadline = publish_end + o.drain
            total_expected = expected + expected_warm
            while time.monotonic() < drain_deadline:
                got = self._received()
                self.bar.show(f"draining {self.bar.bar(got, total_expected)} frames {got}/{total_expected}")
                if got >= total_expected:
                    break
                await asyncio.sleep(0.05)
            cpu_server1 = self.server_cpu(pid)
            kernel_server1 = self.server_kernel_cpu(pid)
            cpu_self1 = cpu_seconds_self()
            cores1 = cpu_times_per_core()
            procs1 = all_process_cpu()
            t_stop = time.monotonic()
            self._broadcast("stop")
            results = await self._gather("result", 60)
        finally:
            await publisher.close()
        rss2 = self.server_rss(pid)
        res["memory"]["server_rss_end_mb"] = _mb(rss2)
        hist: Counter[int] = Counter()
        for r in results:
            hist.update({int(k): v for k, v in r["hist"].items()})
        measured = sum(r["measured"] for r in results)
        samples = sum(hist.values())
        last_ns = max((r["last_ns"] for r in results), default=0)
        deliver_wall = (last_ns - measure_from_ns) / 1e9 if last_ns > measure_from_ns else 0.0
        window = t_stop - measure_from
        server_cpu = _delta(cpu_server0, cpu_server1)
        loadgen_cpu = sum(r["cpu"] for r in results) + (cpu_self1 - cpu_self0)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        res["events"] = {
            "via": o.via,
            "publish_rate_target": rate,
            "published": sent,
            "published_measured": sent_measured,
            "publish_rate_achieved": round(sent_measured / o.duration, 1),
            "publish_errors": publisher.errors,
            "publish_error_sample": publisher.error_sample,
            "mean_fanout": round(mean_fanout, 2),
            "payload_bytes": len(head) + 19 + 20 + len(tail),
        }
        res["delivery"] = {
            "expected": expected,
            "received": measured,
            "drops": expected - measured,
            "drop_ratio": round((expected - measured) / expected, 6) if expected else 0.0,
            "warmup_expected": expected_warm,
            "warmup_received": sum(r["warm"] for r in results),
            "offered_fps": round(expected / o.duration, 1),
            "delivered_fps": round(measured / deliver_wall, 1) if deliver_wall > 0 else 0.0,
            "latency_ms": {
                "p50": percentile(hist, samples, 0.50) / 1000,
                "p90": percentile(hist, samples, 0.90) / 1000,
                "p99": percentile(hist, samples, 0.99) / 1000,
                "max": (max(hist) / 1000) if hist else 0.0,
                "samples": samples,
            },
            "sockets_lost": sum(r["lost"] for r in results),
            "error_frames": sum(r["errors"] for r in results),
            "error_samples": [s for r in results for s in r["error_samples"]][:5],
        }
        res["cpu"] = {
            "window_s": round(window, 3),
            "server_cpu_s": server_cpu,
            "server_util": round(server_cpu / window, 3) if server_cpu is not None and window > 0 else None,
            "server_us_per_frame": _per(server_cpu, measured, 1e6),
            # the part of it spent in the kernel (stime): the floor no user-space code removes
            "server_kernel_us_per_frame": _per(_delta(kernel_server0, kernel_server1), measured, 1e6),
            "loadgen_cpu_s": round(loadgen_cpu, 3),
            "loadgen_cores": cores,
            "loadgen_util": round(loadgen_cpu / window / cores, 3) if window > 0 else None,
            "loadgen_us_per_frame": _per(loadgen_cpu, measured, 1e6),
            "helpers_cpu_s": round(sum(procs1.get(h, 0.0) - procs0.get(h, 0.0) for h in o.helper_pids), 3),
            # every other process on the machine: non-zero means the numbers are disturbed
            "background_cpu_s": background_cpu(procs0, procs1, self._own_pids(pid)),
        }
        server_cpus = self.server_affinity()
        loadgen_cpus = affinity(os.getpid())
        su = res["cpu"]["server_util"] or 0.0
        lu = res["cpu"]["loadgen_util"] or 0.0
        if server_cpus and loadgen_cpus and not set(server_cpus) & set(loadgen_cpus):
            sb = cores_busy(cores0, cores1, server_cpus)
            lb = cores_busy(cores0, cores1, loadgen_cpus)
            res["cpu"]["server_cores"] = {"cpus": server_cpus, **(sb or {})}
            res["cpu"]["loadgen_cpus"] = {"cpus": loadgen_cpus, **(lb or {})}
            if sb is not None and measured:
                busy_s = sb["busy"] * window * len(server_cpus)
                res["cpu"]["server_core_us_per_frame"] = round(busy_s / measured * 1e6, 3)
            su = sb["busy"] if sb else su
            lu = lb["busy"] if lb else lu
        res["saturated"] = "server" if su >= SATURATED and su >= lu else "loadgen" if lu >= SATURATED else "neither"


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(b - a, 3)


def _per(total: float | None, count: int, scale: float) -> float | None:
    return None if total is None or not count else round(total / count * scale, 3)


def _mb(v: int | None) -> float | None:
    return None if v is None else round(v / (1 << 20), 2)


def machine_info() -> dict[str, Any]:
    import platform

    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


# --------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `daisi-ws loadtest` flags (cli.py adds --config)."""
    p.add_argument(
        "--url",
        default=None,
        help="server base URL, loopback only (default ws://127.0.0.1:<server.http_port>); several pods: comma-separated, sockets round-robin over them",
    )
    p.add_argument("-n", "--connections", type=int, default=1000, help="sockets to open (default 1000)")
    p.add_argument("--companies", type=int, default=10, help="companies the users spread over (default 10)")
    p.add_argument("--agents", type=int, default=1, help="agents per company (default 1)")
    p.add_argument("--chats", type=int, default=10, help="chats per (company, agent) (default 10)")
    p.add_argument("--select-fraction", type=float, default=0.0, help="share of sockets that send select_chat (default 0)")
    p.add_argument("--messages-fraction", type=float, default=0.0, help="share of events that are `messages` to a chat (default 0)")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--rate", type=float, default=None, help="published events/s in total")
    rate.add_argument(
        "--per-socket-rate",
        type=float,
        default=None,
        help="events/s each socket receives: --rate = this x companies x agents (default 10)",
    )
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds of publishing (or holding idle sockets when the rate is 0)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of publishing before the measurement (default 2)")
    p.add_argument("--drain", type=float, default=5.0, help="max seconds to wait for late frames (default 5)")
    p.add_argument("--settle", type=float, default=1.0, help="seconds between connecting and reading the server's RSS")
    p.add_argument("--via", choices=("nats", "jetstream", "http"), default=None, help="event path (default nats if a NATS URL is known, else http)")
    p.add_argument("--nats-url", default=None, help="NATS server, loopback only (default nats.url)")
    p.add_argument("--stream", default=None, help="JetStream stream for --via jetstream (default nats.stream_name)")
    p.add_argument("--api-key", default=None, help="general API key (default auth.secret_token)")
    p.add_argument("--admin-api-key", default=None, help="admin API key for --via http (default auth.admin_secret_token)")
    p.add_argument("--aes-key", default=None, help="user token AES key, 64 hex (default auth.token_aes_key)")
    p.add_argument("--payload-bytes", type=int, default=300, help="approximate event payload size (default 300)")
    p.add_argument("--procs", type=int, default=0, help="client processes (default: enough for 10,000 sockets each, up to one per core)")
    p.add_argument("--connect-concurrency", type=int, default=64, help="handshakes in flight (default 64)")
    p.add_argument("--connect-timeout", type=float, default=30.0)
    p.add_argument("--parser", choices=("fast", "websockets"), default="fast", help="client frame parsing (default fast)")
    p.add_argument(
        "--loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="the client processes' event loop (default auto: uvloop when installed, from the loadtest extra)",
    )
    p.add_argument(
        "--server-pid",
        type=int,
        action="append",
        default=[],
        help="server pid for CPU/RSS, one per --url server (default: the process listening on the port, else /metrics); CPU and RSS are summed over servers",
    )
    p.add_argument(
        "--helper-pid",
        type=int,
        action="append",
        default=[],
        help="pid of a helper of the test (nats-server, redis-server): its CPU is reported apart (repeatable)",
    )
    p.add_argument("--label", default="", help="a name for this run in the output")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def options_from_args(args: argparse.Namespace, settings: Any | None) -> LoadOptions:
    auth = settings.auth if settings is not None else None
    nats_cfg = settings.nats if settings is not None else None
    port = settings.server.http_port if settings is not None else 8080
    nats_url = args.nats_url if args.nats_url is not None else (nats_cfg.url if nats_cfg else "")
    via = args.via or ("nats" if nats_url else "http")
    per_socket = args.per_socket_rate
    if args.rate is None and per_socket is None:
        per_socket = 10.0
    return LoadOptions(
        url=args.url or f"ws://127.0.0.1:{port}",
        connections=args.connections,
        companies=args.companies,
        agents=args.agents,
        chats=args.chats,
        select_fraction=args.select_fraction,
        messages_fraction=args.messages_fraction,
        rate=args.rate,
        per_socket_rate=per_socket,
        duration=args.duration,
        warmup=args.warmup,
        drain=args.drain,
        settle=args.settle,
        via=via,
        nats_url=nats_url,
        stream=args.stream or (nats_cfg.stream_name if nats_cfg else "wa_stream"),
        api_key=args.api_key or (auth.secret_token if auth else ""),
        admin_api_key=args.admin_api_key or (auth.admin_secret_token if auth else ""),
        aes_key=args.aes_key or (auth.token_aes_key if auth else ""),
        payload_bytes=args.payload_bytes,
        procs=args.procs,
        connect_concurrency=args.connect_concurrency,
        connect_timeout=args.connect_timeout,
        parser=args.parser,
        loop=args.loop,
        server_pids=list(args.server_pid),
        helper_pids=list(args.helper_pid),
        progress=not args.no_progress and not args.json and sys.stderr.isatty(),
        label=args.label,
    )


def run_loadtest(opts: LoadOptions) -> dict[str, Any]:
    """Validate, run, return the result dict (raises ValueError on bad options)."""
    opts.validate()
    return run_on(opts.event_loop(), Coordinator(opts).run())


def format_summary(res: dict[str, Any]) -> str:
    o = res["options"]
    lines = [f"daisi-ws loadtest {res.get('label') or ''}".rstrip()]
    srv = res["server"]
    lines.append(
        f"  target {o['url']}  server pid {srv['pid']}  native {srv['native']}  "
        f"client procs {res['loadgen']['procs']} ({res['loadgen']['parser']} parser, {res['loadgen']['loop']} loop)"
    )
    h = res["handshake"]
    lines.append(
        f"  sockets    {h['connected']}/{h['requested']} connected, {h['failed']} failed in {h['wall_s']} s"
        f" = {h['per_s']} handshakes/s (p50 {h['latency_ms']['p50']} ms, p99 {h['latency_ms']['p99']} ms;"
        f" server {h['server_cpu_us_per_handshake']} µs CPU each)"
    )
    if "server_cores_busy" in h:
        lines.append(
            f"             during handshakes: server cores busy {h['server_cores_busy']},"
            f" load generator cores busy {h['loadgen_cores_busy']}"
        )
    for s in h["fail_samples"]:
        lines.append(f"             failure: {s}")
    if "select_chat" in res:
        sc = res["select_chat"]
        lines.append(f"  select     {sc['selected']} sockets selected a chat, all acked: {sc['all_acked']}")
    m = res["memory"]
    lines.append(
        f"  memory     server RSS {m['server_rss_before_mb']} -> {m['server_rss_connected_mb']} MB"
        f" (+{m['growth_mb']} MB, {m['per_connection_kb']} KB per socket)"
    )
    if "idle" in res:
        lines.append(f"  idle       held {res['idle']['held_s']} s, sockets lost {res['idle']['lost']}")
        return "\n".join(lines)
    e, d, c = res["events"], res["delivery"], res["cpu"]
    lat = d["latency_ms"]
    lines += [
        f"  events     {e['published_measured']} measured via {e['via']} at {e['publish_rate_achieved']}/s"
        f" (target {e['publish_rate_target']:g}), fan-out {e['mean_fanout']}, payload {e['payload_bytes']} B,"
        f" publish errors {e['publish_errors']}",
        f"  delivery   {d['received']}/{d['expected']} frames, drops {d['drops']} ({d['drop_ratio'] * 100:.3f}%),"
        f" offered {d['offered_fps']:,.0f}/s, delivered {d['delivered_fps']:,.0f} frames/s",
        f"  latency    p50 {lat['p50']:.2f} ms  p90 {lat['p90']:.2f} ms  p99 {lat['p99']:.2f} ms  max {lat['max']:.2f} ms"
        f" ({lat['samples']} samples)",
        f"  server CPU {c['server_cpu_s']} s over {c['window_s']} s (util {c['server_util']}),"
        f" {c['server_us_per_frame']} µs per frame ({c['server_kernel_us_per_frame']} in the kernel)",
        f"  loadgen    {c['loadgen_cpu_s']} s CPU on {c['loadgen_cores']} core(s) (util {c['loadgen_util']}),"
        f" {c['loadgen_us_per_frame']} µs per frame; helpers {c['helpers_cpu_s']} s, other processes {c['background_cpu_s']} s CPU",
    ]
    if "server_cores" in c:
        sc, lc = c["server_cores"], c["loadgen_cpus"]
        lines.append(
            f"  cores      server CPUs {sc['cpus']} busy {sc.get('busy')} (irq+softirq {sc.get('irq_softirq')},"
            f" {c.get('server_core_us_per_frame')} µs per frame); load generator CPUs {lc['cpus']} busy {lc.get('busy')}"
        )
    lines.append(f"  saturated  {res['saturated']}")
    if d["sockets_lost"] or d["error_frames"]:
        lines.append(f"  problems   sockets lost {d['sockets_lost']}, error frames {d['error_frames']} {d['error_samples']}")
    return "\n".join(lines)


def main(args: argparse.Namespace, settings_loader: Callable[[str | None], Any] | None = None) -> int:
    settings = None
    if settings_loader is not None:
        settings = settings_loader(getattr(args, "config", None))
    try:
        opts = options_from_args(args, settings)
        res = run_loadtest(opts)
    except (ValueError, OSError, TimeoutError, RuntimeError) as exc:
        sys.stderr.write(f"loadtest error: {exc}\n")
        return 2
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(format_summary(res))
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="daisi-ws loadtest")
    parser.add_argument("--config", default=None)
    add_arguments(parser)
    args = parser.parse_args(argv)

    def load(path: str | None) -> Any:
        from daisi_ws.config import load_settings

        return load_settings(path)

    return main(args, load)


if __name__ == "__main__":
    raise SystemExit(cli())
