"""Session-wide real servers: one nats-server (JetStream, stream `wa_stream`) and one
redis-server, each on a free port (never 4222 / 6379). Tests that restart a server start
their own (see servers.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.servers import NatsServer, RedisServer, create_stream


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    srv = NatsServer(Path(tmp_path_factory.mktemp("nats"))).start()
    try:
        asyncio.run(create_stream(srv.url))
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    srv = RedisServer().start()
    try:
        yield srv
    finally:
        srv.stop()
