"""Issue 5's load generator, `daisi-ws loadtest`, against a real embedded-mode server.

It runs as the user runs it: a subprocess with worker processes of its own, real sockets over
loopback, events through the server's `/api/publish`. Every event must come back as a frame
on each socket of its (company, agent) pair, on either client event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from daisi_ws import loadtest
from tests.support import Keys, ServerProcess, clean_env, executable


@pytest.fixture(scope="module")
def keys_and_server() -> Iterator[tuple[Keys, ServerProcess]]:
    keys = Keys()
    proc = ServerProcess(keys=keys).start()
    try:
        yield keys, proc
    finally:
        proc.stop(10)
        proc.kill()


def run_loadtest(keys: Keys, server: ServerProcess, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    cmd = [
        executable("daisi-ws"),
        "loadtest",
        "--url", server.ws,
        "--api-key", keys.api,
        "--admin-api-key", keys.admin_api,
        "--aes-key", keys.aes,
        "--server-pid", str(server.pid),
        "--via", "http",
        *args,
    ]  # fmt: skip
    return subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_every_event_reaches_every_socket_of_its_pair(keys_and_server: tuple[Keys, ServerProcess], loop: str) -> None:
    keys, server = keys_and_server
    # 40 sockets over 4 (company, agent) pairs: each event fans out to 10 sockets
    result = run_loadtest(
        keys, server,
        "--json", "--loop", loop, "--procs", "2",
        "--connections", "40", "--companies", "2", "--agents", "2",
        "--per-socket-rate", "20", "--duration", "1", "--warmup", "0.3", "--drain", "3", "--settle", "0.2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    res = json.loads(result.stdout)
    assert res["loadgen"]["loop"] == loop
    assert res["loadgen"]["procs"] == 2
    h, d = res["handshake"], res["delivery"]
    assert (h["connected"], h["failed"]) == (40, 0)
    assert d["expected"] > 0
    assert d["received"] == d["expected"] and d["drop_ratio"] == 0
    assert 0 <= d["latency_ms"]["p50"] <= d["latency_ms"]["p99"]
    c = res["cpu"]
    assert c["server_kernel_us_per_frame"] is not None, "the server's pid was given: its stime must be read"
    assert 0 <= c["server_kernel_us_per_frame"] <= c["server_us_per_frame"]


def test_kernel_time_is_the_system_part_of_a_process_cpu() -> None:
    """`server_kernel_us_per_frame` reads stime: a process busy in system calls shows it there,
    and never more than its utime + stime."""
    pid = os.getpid()
    cpu0, kernel0 = loadtest.proc_cpu_seconds(pid), loadtest.proc_kernel_cpu_seconds(pid)
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        end = time.monotonic() + 0.4
        while time.monotonic() < end:
            for _ in range(1000):
                os.write(fd, b"x" * 4096)
    finally:
        os.close(fd)
    cpu1, kernel1 = loadtest.proc_cpu_seconds(pid), loadtest.proc_kernel_cpu_seconds(pid)
    assert None not in (cpu0, cpu1, kernel0, kernel1)
    kernel = kernel1 - kernel0  # type: ignore[operator]
    assert kernel > 0.02, f"400 ms of write(2) showed {kernel} s of system time"
    assert kernel <= cpu1 - cpu0 + 0.02  # type: ignore[operator]
    assert loadtest.proc_kernel_cpu_seconds(2**22 + 12345) is None  # no such process


def test_human_summary_names_the_loop(keys_and_server: tuple[Keys, ServerProcess]) -> None:
    keys, server = keys_and_server
    result = run_loadtest(keys, server, "--loop", "asyncio", "--connections", "5", "--rate", "0", "--duration", "0.2", "--settle", "0.1")
    assert result.returncode == 0, result.stderr
    assert "asyncio loop" in result.stdout
    assert "5/5 connected" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "ws://10.1.2.3:8080"], "refusing non-loopback target"),
        (["--connections", "100001"], "exceeds the cap"),
        (["--loop", "trio"], "invalid choice"),
    ],
)
def test_bad_options_are_refused_with_a_clear_error(keys_and_server: tuple[Keys, ServerProcess], args: list[str], message: str) -> None:
    keys, server = keys_and_server
    result = run_loadtest(keys, server, *args, timeout=20)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_uvloop_asked_for_but_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loadtest, "uvloop_available", lambda: False)
    opts = loadtest.LoadOptions(api_key="k", aes_key="ab" * 32, via="http", loop="uvloop")
    with pytest.raises(ValueError, match=r"pip install 'daisi-ws\[loadtest\]'"):
        opts.validate()
    assert loadtest.LoadOptions(loop="auto").event_loop() == "asyncio"  # auto falls back


def test_auto_takes_uvloop_when_installed() -> None:
    assert loadtest.uvloop_available()  # the test extra brings it
    assert loadtest.LoadOptions(loop="auto").event_loop() == "uvloop"
    assert loadtest.LoadOptions(loop="asyncio").event_loop() == "asyncio"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_large_pipe_message_arrives_whole_on_either_loop(loop: str) -> None:
    """The coordinator and its workers talk over multiprocessing pipes watched by the event
    loop. On uvloop a 40 KB report used to end in BlockingIOError halfway through recv(), and
    the run failed with "a load generator worker died" while the worker was still running."""
    import multiprocessing
    import threading

    message = ("result", bytes(range(256)) * 16_384)  # 4 MiB: many times the socket buffer

    async def receive() -> tuple[str, bytes]:
        parent, child = multiprocessing.Pipe()
        got: asyncio.Future[tuple[str, bytes]] = asyncio.get_running_loop().create_future()

        def on_readable() -> None:
            if not got.done():
                got.set_result(parent.recv())

        loadtest.watch_pipe(parent, on_readable)
        sender = threading.Thread(target=child.send, args=(message,))
        sender.start()
        try:
            return await asyncio.wait_for(got, 20)
        finally:
            sender.join(20)
            asyncio.get_running_loop().remove_reader(parent.fileno())
            parent.close()
            child.close()

    assert loadtest.run_on(loop, receive()) == message


@pytest.mark.parametrize(
    "phase",
    [
        ["--rate", "0"],  # holding idle sockets
        ["--via", "http", "--per-socket-rate", "5", "--warmup", "0"],  # publishing
    ],
    ids=["idle", "publishing"],
)
def test_a_killed_worker_ends_the_run_at_once_with_its_signal(keys_and_server: tuple[Keys, ServerProcess], phase: list[str]) -> None:
    """Its sockets are gone: the run must not go on, or end, as if they had been measured."""
    import signal
    import time

    import psutil

    keys, server = keys_and_server
    cmd = [
        executable("daisi-ws"), "loadtest",
        "--url", server.ws, "--api-key", keys.api, "--admin-api-key", keys.admin_api, "--aes-key", keys.aes,
        "--server-pid", str(server.pid), "--connections", "5", "--duration", "60", "--settle", "0.1", *phase,
    ]  # fmt: skip
    run = subprocess.Popen(cmd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        workers: list[psutil.Process] = []
        while not workers and time.monotonic() < deadline:
            time.sleep(0.2)
            # the spawned worker, not multiprocessing's resource tracker
            workers = [p for p in psutil.Process(run.pid).children() if "spawn_main" in " ".join(p.cmdline())]
        assert workers, "no worker process appeared"
        time.sleep(1.5)  # connected, and holding or receiving
        for w in workers:
            w.send_signal(signal.SIGKILL)
        _, err = run.communicate(timeout=20)  # far less than --duration
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(10)
    assert run.returncode == 2
    assert "a load generator worker died (worker 0: killed by SIGKILL)" in err
    assert "Traceback" not in err
