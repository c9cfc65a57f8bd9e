from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import Keys, ServerProcess, kill_leftover_servers


@pytest.fixture
def keys() -> Keys:
    return Keys()


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """One embedded-mode server per test module (tests must not depend on each other)."""
    proc = ServerProcess().start()
    try:
        yield proc
    finally:
        proc.stop(10)
        proc.kill()


@pytest.fixture(scope="session", autouse=True)
def no_server_outlives_the_session() -> Iterator[None]:
    """A test that fails between starting a server and handing it to its cleanup must not
    leave a `daisi-ws serve` behind."""
    yield
    kill_leftover_servers()
