"""The gateway's heartbeat sweep (SPEC §4.4) without sockets: a real Gateway and real
Connections (websockets' frame protocol, OPEN) on transports that record what is written.

The sweep must keep SPEC's behaviour (a ping every app.ping_interval_seconds, a pong-timeout
close within 2 s of app.pong_wait_seconds, close deadlines) while never holding the event loop
for all sockets at once: each pass visits a slice of them, and sockets that connect together
are not pinged together.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from websockets.protocol import State

from daisi_ws.auth.tokens import UserClaims
from daisi_ws.cluster.embedded import EmbeddedBackend
from daisi_ws.config import AppSettings, LogSettings, ServerSettings, Settings
from daisi_ws.gateway import server as server_mod
from daisi_ws.gateway.connection import USER, WS_LOGGER, Connection, FrameProtocol
from daisi_ws.gateway.server import SWEEP_INTERVAL, SWEEP_PASSES, Gateway
from daisi_ws.log import Logger
from daisi_ws.metrics import metrics
from daisi_ws.protocol import user_session_key
from tests.unit.fakes import RecordingTransport

PING_FRAME = b"\x89\x00"
PING = 20
PONG_WAIT = 60


def pings_sent(transport: RecordingTransport) -> int:
    return sum(1 for d in transport.writes if d == PING_FRAME)


class NoLoop:
    def call_soon(self, callback: Any, *args: Any) -> None:
        return None


class Rig:
    def __init__(self, **app: Any) -> None:
        settings = Settings(
            server=ServerSettings(host="127.0.0.1", http_port=0, pod_id="sweep-test"),
            log=LogSettings(level="error"),
            app=replace(AppSettings(), **app),
        )
        self.backend = EmbeddedBackend("sweep-test")
        self.gw = Gateway(settings, None, self.backend, metrics(), Logger(level="error"))  # type: ignore[arg-type]
        self.backend.attach(self.gw)
        self.gw.hub._loop = NoLoop()  # type: ignore[assignment]
        self.n = 0

    def connect(self) -> Connection:
        gw = self.gw
        self.n += 1
        claims = UserClaims("c", "a", f"u{self.n}", datetime.now(timezone.utc) + timedelta(hours=1))
        proto = FrameProtocol(state=State.OPEN, max_size=gw.settings.app.max_message_bytes, logger=WS_LOGGER)
        conn = Connection(gw, proto, USER, user_session_key("c", "a", f"u{self.n}"), claims, "req", 0)
        conn.connection_made(RecordingTransport())
        gw.register(conn)
        gw.hub.flush()
        return conn


@pytest.fixture
def rig() -> Iterator[Rig]:
    yield Rig(ping_interval_seconds=PING, pong_wait_seconds=PONG_WAIT)


def pings(conns: list[Connection]) -> int:
    return sum(pings_sent(c.transport) for c in conns)


def test_a_pass_touches_a_slice_of_the_sockets(rig: Rig) -> None:
    """1,000 sockets all due for a ping: one pass pings at most 1/SWEEP_PASSES of them, the
    passes of one SWEEP_INTERVAL ping each exactly once."""
    conns = [rig.connect() for _ in range(1000)]
    now = conns[-1].opened_at
    for c in conns:
        c.next_ping = now  # all due at once (e.g. connected together, before any spreading)
    per_pass = []
    for k in range(SWEEP_PASSES):
        before = pings(conns)
        rig.gw.sweep(now + k * SWEEP_INTERVAL / SWEEP_PASSES)
        per_pass.append(pings(conns) - before)
    assert max(per_pass) <= math.ceil(1000 / SWEEP_PASSES), per_pass
    assert all(pings_sent(c.transport) == 1 for c in conns)


def test_sockets_connecting_together_get_their_first_pings_spread(rig: Rig) -> None:
    """A burst of connects is not pinged in one burst: the first pings spread over at least
    half the interval, none later than the interval."""
    conns = [rig.connect() for _ in range(2000)]
    offsets = sorted(c.next_ping - c.opened_at for c in conns)
    assert offsets[-1] <= PING
    assert offsets[0] >= PING / 2 - 1e-9
    assert offsets[-1] - offsets[0] >= PING / 2 * 0.9
    # no tenth of the spread holds more than a fifth of the sockets
    lo = PING / 2
    buckets = [0] * 10
    for off in offsets:
        buckets[min(9, int((off - lo) / (PING / 2) * 10))] += 1
    assert max(buckets) <= len(conns) / 5, buckets


def test_every_socket_is_pinged_every_interval(rig: Rig) -> None:
    """Simulated 70 s of sweeping: each socket's pings are at most ping_interval + one sweep
    round apart, and it was pinged at least once per interval."""
    conns = [rig.connect() for _ in range(50)]
    t0 = max(c.opened_at for c in conns)
    step = SWEEP_INTERVAL / SWEEP_PASSES
    ping_times: dict[int, list[float]] = {id(c): [] for c in conns}
    t = t0
    while t < t0 + 70:
        t += step
        counts = {id(c): pings_sent(c.transport) for c in conns}
        for c in conns:
            c.last_pong = t  # a polite client answers at once
        rig.gw.sweep(t)
        for c in conns:
            if pings_sent(c.transport) > counts[id(c)]:
                ping_times[id(c)].append(t)
    for c in conns:
        times = ping_times[id(c)]
        assert len(times) >= 3, times
        assert times[0] - c.opened_at <= PING + SWEEP_INTERVAL + step
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(PING - 1e-6 <= g <= PING + SWEEP_INTERVAL + step for g in gaps), gaps
        assert not c.ended


def test_pong_timeout_closes_within_two_seconds(rig: Rig) -> None:
    """SPEC §4.4: the last pong older than pong_wait -> error frame and close 1011 within 2 s."""
    conns = [rig.connect() for _ in range(300)]
    silent = conns[::7]
    t0 = max(c.opened_at for c in conns)
    step = SWEEP_INTERVAL / SWEEP_PASSES
    closed_at: dict[int, float] = {}
    t = t0
    while t < t0 + PONG_WAIT + 3:
        t += step
        for c in conns:
            if c not in silent:
                c.last_pong = t
        rig.gw.sweep(t)
        for c in silent:
            if c.ended and id(c) not in closed_at:
                closed_at[id(c)] = t
    assert len(closed_at) == len(silent)
    for c in silent:
        late = closed_at[id(c)] - (c.last_pong + PONG_WAIT)
        assert 0 < late <= 2.0, late
        sent = b"".join(c.transport.writes)
        assert b"Pong timeout" in sent and b"No pong responses received" in sent
        assert c.proto.close_sent is not None and c.proto.close_sent.code == 1011
    assert not any(c.ended for c in conns if c not in silent)


def test_close_deadline_still_aborts(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """A socket whose peer never answers our close frame is dropped after write_timeout."""
    conns = [rig.connect() for _ in range(30)]
    victim = conns[3]
    victim.close(1000, "bye")
    assert victim in rig.gw.closing
    deadline = victim.close_deadline
    t = deadline - 0.5
    step = SWEEP_INTERVAL / SWEEP_PASSES
    while t < deadline + SWEEP_INTERVAL + step and not victim.transport.aborted:
        rig.gw.sweep(t)
        t += step
    assert victim.transport.aborted
    assert t - deadline <= SWEEP_INTERVAL + step
    assert victim not in rig.gw.closing


def test_sweep_loop_runs_a_pass_every_fraction_of_the_interval() -> None:
    assert SWEEP_PASSES >= 5
    assert server_mod.SWEEP_INTERVAL == 1.0  # each socket visited once per second, as before


def test_a_reload_applies_heartbeat_settings_to_later_sockets_only(rig: Rig) -> None:
    """SPEC §8.2: socket settings apply to sockets opened afterwards. A socket pinged every
    20 s must not be held to a 5 s pong wait that came with a reload."""
    before = rig.connect()
    app = replace(rig.gw.settings.app, ping_interval_seconds=2, pong_wait_seconds=5)
    rig.gw.apply_settings(replace(rig.gw.settings, app=app))
    after = rig.connect()
    t = max(before.opened_at, after.opened_at)
    step = SWEEP_INTERVAL / SWEEP_PASSES
    answered = {id(before): 0, id(after): 0}
    end = t + 30
    while t < end:
        t += step
        rig.gw.sweep(t)
        for c in (before, after):  # a client that answers every ping at once
            if pings_sent(c.transport) > answered[id(c)]:
                answered[id(c)] = pings_sent(c.transport)
                c.last_pong = t
    assert not before.ended and not after.ended
    assert 1 <= pings_sent(before.transport) <= 2  # every 20 s (the first after 10-20 s)
    assert pings_sent(after.transport) >= 12  # every 2 s
