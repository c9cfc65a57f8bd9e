"""Fixtures and conventions shared by every benchmark group.

Conventions (report.py relies on them):
- `extra_info["native"]`: True when the compiled twins ran this benchmark.
- `extra_info["ops_per_call"]`: operations per timed call (batches); the per-op figure is the
  median divided by it.
- Real servers/sockets are marked `real`; multi-second ones also `slow`.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.harness import TWINS, hotpath_twin, is_smoke, load_twin  # noqa: E402
from daisi_ws import hotpath  # noqa: E402
from daisi_ws.limits import raise_nofile_limit  # noqa: E402
from daisi_ws.loadtest import LoadOptions  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "real: starts real processes (daisi-ws, nats-server, redis-server) or real sockets")
    config.addinivalue_line("markers", "slow: takes several seconds even in smoke mode")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    machine_info["cpu_model"] = cpu_model()
    machine_info["cpu_count"] = os.cpu_count()
    machine_info["daisi_ws_native"] = bool(hotpath.NATIVE)
    machine_info["loadgen_loop"] = LoadOptions().event_loop()  # the clients of the load benchmarks
    machine_info["os"] = f"{platform.system()} {platform.release()}"
    try:
        with open("/etc/os-release") as fh:
            for line in fh:
                if line.startswith("PRETTY_NAME="):
                    machine_info["os"] += f" ({line.split('=', 1)[1].strip().strip(chr(34))})"
    except OSError:
        pass


@pytest.fixture(autouse=True)
def _bench_info(request: pytest.FixtureRequest) -> None:
    """Every benchmark records which twin ran it and its batch size (default 1)."""
    if "benchmark" in request.fixturenames:
        bm = request.getfixturevalue("benchmark")
        bm.extra_info.setdefault("native", bool(hotpath.NATIVE))
        bm.extra_info.setdefault("ops_per_call", 1)


@pytest.fixture
def smoke(request: pytest.FixtureRequest) -> bool:
    return is_smoke(request.config)


@pytest.fixture(params=TWINS)
def twin(request: pytest.FixtureRequest, benchmark: Any) -> Iterator[SimpleNamespace]:
    """The compiled or the pure twin, switched in for the duration of one benchmark."""
    ns = load_twin(request.param)
    if ns is None:
        pytest.skip("compiled twins not built (pip install -e . with a C compiler)")
    benchmark.extra_info["native"] = ns.native
    benchmark.extra_info["twin"] = ns.name
    with hotpath_twin(ns):
        yield ns


# --- real servers (one set per benchmark session, on free ports) -----------------------------------
# The processes are the integration suite's (tests/integration/servers.py): same flags, never
# the default ports.


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.integration.servers import NatsServer

    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Any]:
    from tests.integration.servers import RedisServer

    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session", autouse=True)
def _descriptors() -> None:
    """Thousands of client sockets live in this process."""
    raise_nofile_limit()


# --- load runs through benchmarks/loadcompare.py (groups throughput and delivery) ---------------
@pytest.fixture(scope="module")
def stack() -> Iterator[Any]:
    """nats-server and redis-server pinned to the load generator's CPU (loadcompare.Stack)."""
    from benchmarks.loadcompare import Stack

    s = Stack()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def keys() -> Any:
    """One set of API and AES keys for every server of a module (baseline and pods alike)."""
    from tests.support import Keys

    return Keys()


@pytest.fixture
def aloop() -> Iterator[Any]:
    """A private event loop for a benchmark's client side (sync tests drive it)."""
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


@pytest.fixture(scope="module")
def embedded_server() -> Iterator[Any]:
    """One `daisi-ws serve` in embedded mode per benchmark module (inherits this env's twin)."""
    from tests.support import ServerProcess

    proc = ServerProcess().start()
    try:
        yield proc
    finally:
        proc.stop(15)
        proc.kill()


@pytest.fixture(scope="module")
def shared_pods(nats_server: Any, redis_server: Any) -> Iterator[list[Any]]:
    """Two `daisi-ws serve` pods in shared mode (real NATS + Redis, interest delivery, same
    keys) per benchmark module; each answered /ready 200."""
    from tests.integration.servers import start_pods, stop_pods

    pods = start_pods(nats_server, redis_server, 2, prefix="bench")
    try:
        yield pods
    finally:
        stop_pods(pods)


@pytest.fixture(scope="module")
def shared_server(shared_pods: list[Any], nats_server: Any) -> Any:
    """The first shared-mode pod and the NATS URL."""
    return shared_pods[0], nats_server.url
