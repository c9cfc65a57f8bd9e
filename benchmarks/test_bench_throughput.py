"""throughput: daisi-ws against the baseline gateway (benchmarks/baseline_gateway.py).

Real processes, real loopback sockets, real NATS and Redis. Each server is pinned to CPU 0,
the load generator (`daisi-ws loadtest`), nats-server and redis-server to CPU 1 (when
`taskset` exists and both CPUs are ours; `extra_info["pinned"]` says). Events go through core
NATS for both servers; daisi-ws runs in shared mode (NATS + Redis, interest delivery) except
where `daisi-embedded` says otherwise; `daisi-wd50` is shared mode with
app.websocket_write_delay_ms = 50.

The timed figure of the load benchmarks is the wall time of a whole load run; the numbers
that matter are in `extra_info` (report.py: group "throughput"):
- max_throughput:   `best_fps` (delivered frames/s at p99 <= 100 ms, drops <= 0.1 %), `p99_ms`,
                    `saturated` (which side's core was >= 93 % busy), `vs_baseline`;
- fixed_load:       `server_us_per_frame` (utime+stime per delivered frame), `server_kernel_us_per_frame`
                    (its stime part: socket sends and loopback TCP), `server_core_us_per_frame`
                    (core busy time incl. softirq), `loadgen_us_per_frame`, `vs_baseline`;
- idle_memory:      `per_socket_kb`, `growth_mb`;
- handshake_rate:   `handshakes_per_s`, `server_us_per_handshake`, `vs_baseline`;
- broadcast_real:   per-socket cost = median / ops_per_call; `vs_raw`, `websockets_vs_daisi`.
Numbers and their analysis: LOADTEST.md. `pytest benchmarks --benchmark-disable` runs every
one once with tiny sizes and asserts the path it measures (all frames delivered, handshakes).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from tests.support import Keys

from benchmarks import loadcompare as lc
from benchmarks.harness import is_smoke

pytestmark = [pytest.mark.benchmark(group="throughput"), pytest.mark.real, pytest.mark.timeout(3600)]


RESULTS: dict[str, dict[str, Any]] = {}  # baseline figures, for the daisi-ws ratios
FIXED_RATE = {1000: 100, 5000: 20}
# daisi-ws with app.websocket_write_delay_ms = 50: its latency for fewer kernel sends (LOADTEST.md)
WITH_WRITE_DELAY = "daisi-wd50"


def _common(benchmark: Any) -> None:
    benchmark.extra_info["pinned"] = lc.can_pin()
    benchmark.extra_info["native"] = lc.native_flag()


def _note_server(benchmark: Any, res: dict[str, Any]) -> None:
    benchmark.extra_info["server_native"] = res["server"].get("native")
    benchmark.extra_info["background_cpu_s"] = res.get("cpu", {}).get("background_cpu_s")


def smoke_rates(kind: str) -> list[float]:
    """Events/s per socket of the smoke runs. With a write delay, two: events five delays apart
    (every socket stays quiet for the delay, so each event is written at once) and events 2/5
    of a delay apart (each socket was written just before, so its events wait for the window)."""
    delay = lc.write_delay_ms(kind)
    return [20.0] if not delay else [1000.0 / (delay * 5), 2500.0 / delay]


def _assert_delivered(res: dict[str, Any], kind: str, smoke: bool) -> None:
    h, d = res["handshake"], res["delivery"]
    assert h["connected"] == h["requested"], h["fail_samples"]
    assert d["received"] > 0
    assert d["sockets_lost"] == 0 and d["error_frames"] == 0, d["error_samples"]
    delay = lc.write_delay_ms(kind)
    if delay:
        spacing_ms = 1000.0 / res["options"]["per_socket_rate"]
        p50 = d["latency_ms"]["p50"]
        if spacing_ms <= delay / 2:
            # The held path ran: a busy socket's events wait for the window's end, so half of
            # them wait more than a fifth of the delay (without a delay p50 is 1-3 ms).
            assert p50 >= delay / 5, (spacing_ms, d["latency_ms"])
        elif spacing_ms >= 2 * delay and smoke:
            # Quiet sockets are written at once (a full load run may queue for other reasons).
            assert p50 < delay / 5, (spacing_ms, d["latency_ms"])


# --- highest delivered frames/s at p99 <= 100 ms ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("size", [1000, 5000])
@pytest.mark.parametrize("kind", ["baseline", "daisi", WITH_WRITE_DELAY])
def test_max_throughput(benchmark: Any, request: pytest.FixtureRequest, stack: lc.Stack, keys: Keys, kind: str, size: int) -> None:
    _common(benchmark)
    smoke = is_smoke(request.config)
    n = 20 if smoke else size
    rates = smoke_rates(kind) if smoke else lc.SWEEP_RATES[size]
    duration = 1.0 if smoke else 20.0
    out: dict[str, Any] = {}

    def run() -> None:
        out.update(
            lc.sweep(
                kind,
                keys,
                stack,
                n,
                rates,
                duration=duration,
                warmup=0.3 if smoke else 2.0,
                log=lambda _: None,
                quiet=not smoke,
                settle=0.1 if smoke else 1.0,
            )
        )

    benchmark.pedantic(run, rounds=1, iterations=1)
    best = out["best"]
    assert out["points"], "no load point ran"
    for point in out["points"]:
        _assert_delivered(point, kind, smoke)
    if smoke:
        assert len(out["points"]) == len(rates), "every smoke rate must run"
        assert best is not None and best["delivery"]["drops"] == 0
    info = benchmark.extra_info
    info["sockets"] = n
    info["write_delay_ms"] = lc.write_delay_ms(kind) or 0
    info["points"] = [
        {
            "offered_fps": p["delivery"]["offered_fps"],
            "delivered_fps": p["delivery"]["delivered_fps"],
            "p99_ms": p["delivery"]["latency_ms"]["p99"],
            "drop_ratio": p["delivery"]["drop_ratio"],
            "saturated": p["saturated"],
        }
        for p in out["points"]
    ]
    if best is not None:
        _note_server(benchmark, best)
        info["best_fps"] = best["delivery"]["delivered_fps"]
        info["p50_ms"] = best["delivery"]["latency_ms"]["p50"]
        info["p99_ms"] = best["delivery"]["latency_ms"]["p99"]
        info["saturated"] = best["saturated"]
        info["server_us_per_frame"] = best["cpu"]["server_us_per_frame"]
    key = f"max-{size}"
    if kind == "baseline":
        RESULTS[key] = dict(info)
    elif key in RESULTS and RESULTS[key].get("best_fps") and info.get("best_fps"):
        info["vs_baseline"] = round(info["best_fps"] / RESULTS[key]["best_fps"], 2)


# --- CPU per delivered frame at a fixed load -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("size", [1000, 5000])
@pytest.mark.parametrize("kind", ["baseline", "daisi", WITH_WRITE_DELAY])
def test_fixed_load(benchmark: Any, request: pytest.FixtureRequest, stack: lc.Stack, keys: Keys, kind: str, size: int) -> None:
    _common(benchmark)
    smoke = is_smoke(request.config)
    n = 20 if smoke else size
    out: dict[str, Any] = {}

    def run() -> None:
        if smoke:
            with lc.target(kind, keys, stack) as t:
                out.update(
                    lc.loadtest(t, stack, connections=n, per_socket_rate=smoke_rates(kind)[-1], duration=1, warmup=0.3, drain=3, via="nats", companies=2, settle=0.1)
                )
        else:
            out.update(lc.fixed(kind, keys, stack, n, FIXED_RATE[size], log=lambda _: None))

    benchmark.pedantic(run, rounds=1, iterations=1)
    _assert_delivered(out, kind, smoke)
    d, c = out["delivery"], out["cpu"]
    if smoke:
        assert d["drops"] == 0
    assert c["server_us_per_frame"] is not None, "server CPU not measured"
    assert c["server_kernel_us_per_frame"] is not None, "the server's kernel time not measured"
    _note_server(benchmark, out)
    info = benchmark.extra_info
    info.update(
        sockets=n,
        per_socket_rate=out["options"]["per_socket_rate"],
        delivered_fps=d["delivered_fps"],
        drops=d["drops"],
        p50_ms=d["latency_ms"]["p50"],
        p99_ms=d["latency_ms"]["p99"],
        server_us_per_frame=c["server_us_per_frame"],
        server_kernel_us_per_frame=c["server_kernel_us_per_frame"],
        server_core_us_per_frame=c.get("server_core_us_per_frame"),
        server_core_busy=c.get("server_cores", {}).get("busy"),
        loadgen_us_per_frame=c["loadgen_us_per_frame"],
        loadgen_core_busy=c.get("loadgen_cpus", {}).get("busy"),
        saturated=out["saturated"],
        write_delay_ms=lc.write_delay_ms(kind) or 0,
    )
    key = f"fixed-{size}"
    if kind == "baseline":
        RESULTS[key] = dict(info)
    elif key in RESULTS and RESULTS[key].get("server_us_per_frame"):
        info["vs_baseline"] = round(info["server_us_per_frame"] / RESULTS[key]["server_us_per_frame"], 3)


# --- idle sockets: server memory -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["baseline", "daisi-embedded", "daisi"])
def test_idle_memory(benchmark: Any, request: pytest.FixtureRequest, stack: lc.Stack, keys: Keys, kind: str) -> None:
    _common(benchmark)
    smoke = is_smoke(request.config)
    n = 50 if smoke else 10_000
    out: dict[str, Any] = {}

    def run() -> None:
        out.update(lc.idle(kind, keys, stack, connections=n, hold=0.2 if smoke else 5.0, log=lambda _: None, settle=0.2 if smoke else 2.0))

    benchmark.pedantic(run, rounds=1, iterations=1)
    h, m = out["handshake"], out["memory"]
    assert h["connected"] == n, h["fail_samples"]
    assert out["idle"]["lost"] == 0
    assert m["growth_mb"] is not None, "server RSS not measured"
    _note_server(benchmark, out)
    benchmark.extra_info.update(sockets=n, growth_mb=m["growth_mb"], per_socket_kb=m["per_connection_kb"])


# --- handshake + auth + session lock -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["baseline", "daisi-embedded", "daisi"])
def test_handshake_rate(benchmark: Any, request: pytest.FixtureRequest, stack: lc.Stack, keys: Keys, kind: str) -> None:
    _common(benchmark)
    smoke = is_smoke(request.config)
    n = 20 if smoke else 5000
    out: dict[str, Any] = {}

    def run() -> None:
        out.update(lc.handshakes(kind, keys, stack, connections=n, repeat=1 if smoke else 3, log=lambda _: None, quiet=not smoke))

    benchmark.pedantic(run, rounds=1, iterations=1)
    h = out["median"]
    assert h["connected"] == n, h["fail_samples"]
    info = benchmark.extra_info
    info.update(
        sockets=n,
        handshakes_per_s=h["per_s"],
        server_us_per_handshake=h["server_cpu_us_per_handshake"],
        server_core_busy=h.get("server_cores_busy"),
        loadgen_core_busy=h.get("loadgen_cores_busy"),
        runs=[r["per_s"] for r in out["runs"]],
    )
    if kind == "baseline":
        RESULTS["handshake"] = dict(info)
    elif RESULTS.get("handshake", {}).get("handshakes_per_s"):
        info["vs_baseline"] = round(info["handshakes_per_s"] / RESULTS["handshake"]["handshakes_per_s"], 2)


# --- real-socket broadcast: one event to N sockets ----------------------------------------------------------


@pytest.fixture(scope="module")
def rig(request: pytest.FixtureRequest) -> Iterator[lc.BroadcastRig]:
    """The sockets, and this process pinned to the server's CPU while they are measured."""
    pin = lc.can_pin()
    saved = os.sched_getaffinity(0) if pin else None
    if pin:
        os.sched_setaffinity(0, {int(lc.SERVER_CPUS)})
    r = lc.BroadcastRig(10 if is_smoke(request.config) else 1000)
    r.pinned = pin
    try:
        yield r
    finally:
        r.close()
        if saved is not None:
            os.sched_setaffinity(0, saved)


@pytest.mark.parametrize("contender", ["raw", "websockets", "daisi"])
def test_broadcast_real(benchmark: Any, rig: lc.BroadcastRig, contender: str) -> None:
    """Same frame, same kind of loopback sockets, same run: a raw `transport.write` loop (the
    floor), `websockets.broadcast()`, and daisi-ws's hub (dispatch: parse + validate + encode
    once + fan-out; flush: one write per socket). Drained between rounds, outside the timing."""
    _common(benchmark)
    benchmark.extra_info["native"] = rig.native
    benchmark.extra_info["pinned"] = rig.pinned
    fn = getattr(rig, contender)
    benchmark.pedantic(fn, setup=lambda: rig.drain() and None, rounds=300, iterations=1, warmup_rounds=5)
    assert rig.drain() == rig.expected_bytes(), "every socket must receive exactly one frame"
    if contender == "daisi":
        assert rig.daisi_transport_writes() == 0, "the flushes must send straight to the sockets"
    info = benchmark.extra_info
    info.update(sockets=rig.n, ops_per_call=rig.n, frame_bytes=len(rig.frame))
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable
        return
    median = stats.stats.median
    info["us_per_socket"] = round(median / rig.n * 1e6, 3)
    RESULTS[f"broadcast-{contender}"] = {"median": median}
    if contender == "daisi":
        raw = RESULTS.get("broadcast-raw", {}).get("median")
        ws = RESULTS.get("broadcast-websockets", {}).get("median")
        if raw:
            info["vs_raw"] = round(median / raw, 3)
        if ws:
            info["websockets_vs_daisi"] = round(ws / median, 3)
