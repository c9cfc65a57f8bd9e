from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import Keys, ServerProcess


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
