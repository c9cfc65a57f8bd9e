"""The upgrade path in process: an HttpProtocol fed a real handshake over a recording transport."""

from __future__ import annotations

import asyncio
import base64
import os
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

from daisi_ws import hotpath
from daisi_ws.app import build_auth
from daisi_ws.auth.tokens import TokenCipher, mint_user_token, parse_aes_key
from daisi_ws.cluster.embedded import EmbeddedBackend
from daisi_ws.config import AuthSettings, LogSettings, ServerSettings, Settings
from daisi_ws.gateway.http import HttpProtocol
from daisi_ws.gateway.server import Gateway
from daisi_ws.log import Logger
from daisi_ws.metrics import metrics
from tests.unit.fakes import RecordingTransport

API_KEY = "k" * 32
AES = os.urandom(32).hex()


def gateway() -> Gateway:
    settings = Settings(
        server=ServerSettings(host="127.0.0.1", http_port=0, pod_id="unit"),
        log=LogSettings(level="error"),
        auth=AuthSettings(secret_token=API_KEY, admin_secret_token=API_KEY + "x", token_aes_key=AES, admin_token_aes_key=AES),
    )
    backend = EmbeddedBackend("unit")
    gw = Gateway(settings, build_auth(settings), backend, metrics(), Logger(level="error"))
    backend.attach(gw)
    return gw


def user_token(user: str) -> str:
    expires = datetime.now(timezone.utc) + timedelta(hours=1)
    return mint_user_token(TokenCipher(parse_aes_key(AES)), "c1", "a1", user, expires)


def open_http() -> tuple[Gateway, HttpProtocol, RecordingTransport]:
    """A gateway and one accepted TCP connection to it, before any byte arrived."""
    gw = gateway()
    http = HttpProtocol(gw)
    transport = RecordingTransport()
    http.connection_made(transport)
    return gw, http, transport


def handshake(token: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /ws/c1/a1?token={quote(token, safe='')}&x-api-key={API_KEY} HTTP/1.1\r\n"
        "Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def test_101_and_ready_leave_in_one_write() -> None:
    gw, http, transport = open_http()
    http.data_received(handshake(user_token("u1")))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert len(transport.writes) == 1, transport.writes
    data = transport.writes[0]
    assert data.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert data.endswith(b"\r\n\r\n" + hotpath.build_text_frame(b'{"type":"ready"}'))
    assert len(gw.registry) == 1
    http.connection_lost(None)


async def test_early_client_frames_are_answered_after_101_and_ready() -> None:
    """A client frame that arrives with the handshake is handled only after 101 + ready."""
    _, http, transport = open_http()
    ping = bytes([0x89, 0x80]) + os.urandom(4)  # masked, empty ping
    http.data_received(handshake(user_token("u2")) + ping)
    await asyncio.sleep(0)
    stream = b"".join(transport.writes)
    head, _, rest = stream.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    ready = hotpath.build_text_frame(b'{"type":"ready"}')
    assert rest == ready + bytes([0x8A, 0x00])  # ready, then the pong
