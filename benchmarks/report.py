"""`make benchmark-report`: benchmarks/RESULTS.md from the saved pytest-benchmark runs.

Reads every run saved under .benchmarks/ (`make benchmark` autosaves one; `make
benchmark-pure` saves the in-process benchmarks run with the pure twins under
.benchmarks/pure/); with none, it runs the suite first. For each benchmark the newest run
holding it is used. Writes, for every figure the Go service published: the figure, what it
measured, ours with the compiled twins, ours with the pure twins, the ratio, and the
real-server variants; then our other measurements, the hot-path table, the throughput
comparisons, the project's targets, and the machine.

    python benchmarks/report.py [--root .benchmarks] [--out benchmarks/RESULTS.md] [--run]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MY_GROUPS = ("auth", "messages", "connections", "sessions", "integration")


# --- the published figures and our benchmarks of the same operation --------------------------------------


@dataclass(frozen=True)
class Ref:
    """One of our benchmarks: test function name + its parameters other than the twin."""

    name: str
    params: tuple[tuple[str, str], ...] = ()
    label: str = ""
    extra: str = ""  # report this extra_info key instead of the time per op
    unit: str = ""  # for `extra`: "B", "ratio", "/s"

    @staticmethod
    def of(name: str, label: str = "", extra: str = "", unit: str = "", **params: Any) -> Ref:
        return Ref(name, tuple(sorted((k, str(v)) for k, v in params.items())), label, extra, unit)


@dataclass(frozen=True)
class Row:
    group: str
    op: str
    published: str  # as published
    published_ns: float | None  # the lowest published figure, for the ratio (None: no ratio)
    ours: Ref | None
    real: tuple[Ref, ...] = ()
    note: str = ""
    alt: tuple[Ref, ...] = ()  # other in-process variants, shown in the notes (compiled twins)


R = Ref.of
ROWS: list[Row] = [
    # auth
    Row("auth", "Token validation (user, cache hit)", "859 ns", 859, R("test_validate_cache_hit", kind="user"),
        note="Go: a Go map as the cache"),
    Row("auth", "Cache hit ratio", "86-93 %", None,
        R("test_hit_ratio_mixed_workload", extra="hit_ratio", unit="ratio"),
        (R("test_hit_ratio_mixed_workload", label="cost per validation in that workload"),),
        note="Go: cumulative mock counters; ours: measured over the stated workload (below)"),
    Row("auth", "Admin token validation (cache hit)", "1.1 µs", 1100, R("test_validate_cache_hit", kind="admin")),
    Row("auth", "Token generation, user", "1.1 µs", 1100, R("test_generate_token", kind="user"),
        (R("test_generate_token_request", label="whole /generate-token body path", kind="user"),)),
    Row("auth", "Token generation, admin", "1.3 µs", 1300, R("test_generate_token", kind="admin"),
        (R("test_generate_token_request", label="whole /admin/generate-token body path", kind="admin"),)),
    # messages
    Row("messages", "NATS message processing", "2.6 µs", 2600, R("test_nats_message_processing"),
        note="Go: json.Unmarshal after a direct call; ours: parse + validate + encode (Hub.build)"),
    Row("messages", "Broadcast, 1 connection", "297 ns", 297, R("test_broadcast_inproc", n=1, stage="fanout"),
        (R("test_broadcast_sockets", label="real server + socket, HTTP publish -> received", n=1),),
        note="fan-out of the encoded frame + flush", alt=(R("test_broadcast_inproc", label="full dispatch", n=1, stage="dispatch"),)),
    Row("messages", "Broadcast, 10 connections", "4 µs", 4000, R("test_broadcast_inproc", n=10, stage="fanout"),
        (R("test_broadcast_sockets", label="real server + 10 sockets", n=10),),
        alt=(R("test_broadcast_inproc", label="full dispatch", n=10, stage="dispatch"),)),
    Row("messages", "Broadcast, 100 connections", "46 µs", 46000, R("test_broadcast_inproc", n=100, stage="fanout"),
        (R("test_broadcast_sockets", label="real server + 100 sockets", n=100),),
        alt=(R("test_broadcast_inproc", label="full dispatch", n=100, stage="dispatch"),)),
    Row("messages", "Broadcast, 500 connections", "239 µs", 239000, R("test_broadcast_inproc", n=500, stage="fanout"),
        (R("test_broadcast_sockets", label="real server + 500 sockets", n=500),),
        alt=(R("test_broadcast_inproc", label="full dispatch", n=500, stage="dispatch"),)),
    Row("messages", "Client message processing (select_chat)", "886 ns", 886,
        R("test_client_message_processing", mode="reselect"),
        (R("test_client_message_processing", label="in process, chat switch with route moves", mode="switch"),),
        note="reselect: parse + validate + ack; switch: + route register/unregister + persist"),
    Row("messages", "End-to-end message flow", "9.1 µs", 9100, R("test_end_to_end_inproc"),
        (R("test_end_to_end_nats", label="real NATS -> shared-mode pod -> 10 sockets"),)),
    # connections
    Row("connections", "Connection registration", "5.3 µs", 5300, R("test_connection_registration")),
    Row("connections", "Connection deregistration", "10.9 µs", 10900, R("test_connection_deregistration")),
    Row("connections", "Registry at 100 connections", "2.6 µs", 2600, R("test_registry_scale", size=100)),
    Row("connections", "Registry at 1,000 connections", "6.2 µs", 6200, R("test_registry_scale", size=1000)),
    Row("connections", "Registry at 5,000 connections", "5.0 µs", 5000, R("test_registry_scale", size=5000)),
    # sessions
    Row("sessions", "Chat route registration", "856 ns", 856, R("test_route_register_chat_inproc"),
        (R("test_route_register_chat_redis", label="real Redis"),)),
    Row("sessions", "Message route registration", "1.0 µs", 1000, R("test_route_register_message_inproc"),
        (R("test_route_register_message_redis", label="real Redis"),)),
    Row("sessions", "Route lookup", "625 ns", 625, R("test_route_lookup_inproc"),
        (R("test_route_lookup_redis", label="real Redis"),)),
    Row("sessions", "Route unregistration", "1.3 µs", 1300, R("test_route_unregister_inproc"),
        (R("test_route_unregister_redis", label="real Redis"),)),
    Row("sessions", "Kill-switch publishing", "580 ns", 580, R("test_kill_switch_inproc"),
        (R("test_kill_switch_publish_redis", label="real Redis PUBLISH, received by a subscriber"),),
        note="Go: a counter; ours in process: encode + parse + dispatch, no Redis hop"),
    Row("sessions", "Session lifecycle", "1.7 µs", 1700, R("test_session_lifecycle_inproc"),
        (R("test_session_lifecycle_redis", label="real Redis (7 round trips)"),)),
    # integration
    Row("integration", "Full user flow", "16.6-32.7 µs", 16600, R("test_full_user_flow_inproc"),
        (R("test_full_user_flow_real", label="real socket, embedded pod", mode="embedded"),
         R("test_full_user_flow_real", label="real socket, shared pod (Redis lock)", mode="shared"))),
    Row("integration", "Concurrent user flow", "11.2-23.2 µs", 11200, R("test_concurrent_user_flow_inproc"),
        (R("test_concurrent_user_flow_real", label="100 at once, embedded pod", mode="embedded"),
         R("test_concurrent_user_flow_real", label="100 at once, shared pod", mode="shared"))),
    Row("integration", "Single message flow", "4.7-6.9 µs", 4700, R("test_message_flow_inproc", n=1),
        (R("test_message_flow_real", label="real server + socket", n=1),)),
    Row("integration", "Bulk message flow, 10 conns", "4.7-5.9 µs", 4700, R("test_message_flow_inproc", n=10),
        (R("test_message_flow_real", label="real server + 10 sockets", n=10),)),
    Row("integration", "Bulk message flow, 100 conns", "4.5 µs", 4500, R("test_message_flow_inproc", n=100),
        (R("test_message_flow_real", label="real server + 100 sockets", n=100),)),
    Row("integration", "Session conflict resolution", "26.7 µs", 26700, R("test_session_conflict_inproc"),
        (R("test_session_conflict_real", label="real shared pod + Redis: re-login, old socket 4402"),)),
    Row("integration", "Multi-pod session handoff", "18.4 µs", 18400, R("test_multi_pod_handoff_inproc"),
        (R("test_multi_pod_handoff_real", label="two real pods, Redis kill switch, 4402"),)),
    Row("integration", "High concurrency (1,000 users \u00d7 10 msgs)", "10.5 ms", 10.5e6, R("test_high_concurrency_inproc"),
        (R("test_high_concurrency_real", label="real NATS -> shared pod -> 1,000 sockets, 10,000 frames"),)),
    Row("integration", "Memory pressure (5,000 connections)", "11.2 ms", 11.2e6, R("test_memory_pressure_inproc"),
        (R("test_memory_pressure_real", label="real pod, one event to 5,000 sockets"),
         R("test_memory_pressure_real", label="server RSS per socket", extra="rss_per_connection_bytes", unit="B"))),
]

# Extra_info keys worth showing in the generic tables (in this order).
INFO_KEYS = (
    "latency_ms", "overhead", "takeover_ms", "target",
    "hit_ratio", "workload", "distinct_tokens", "connections", "sockets", "resident_connections",
    "rss_per_connection_bytes", "rss_growth_bytes", "handshakes_per_second", "server_cpu_us_per_event",
    "server_cpu_us_per_message", "server_cpu_ms_per_broadcast", "publish_to_all_received_p50_us",
    "publish_to_all_received_p50_ms", "python_heap_per_connection_bytes", "commands_per_tick",
    "best_fps", "p99_ms", "saturated", "server_us_per_frame", "server_kernel_us_per_frame", "server_core_us_per_frame",
    "loadgen_us_per_frame", "per_socket_kb", "growth_mb", "handshakes_per_s", "server_us_per_handshake",
    "us_per_socket", "vs_raw", "websockets_vs_daisi", "vs_baseline", "pinned",
)


# --- saved runs ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    path: Path
    data: dict[str, Any]
    when: datetime
    pure_storage: bool

    @property
    def machine(self) -> dict[str, Any]:
        return self.data.get("machine_info", {})

    @property
    def commit(self) -> dict[str, Any]:
        return self.data.get("commit_info", {})


@dataclass
class Result:
    bench: dict[str, Any]
    run: Run

    @property
    def info(self) -> dict[str, Any]:
        return self.bench.get("extra_info", {}) or {}

    @property
    def per_op(self) -> float | None:
        stats = self.bench.get("stats") or {}
        median = stats.get("median")
        if median is None:
            return None
        return float(median) / float(self.info.get("ops_per_call", 1) or 1)


@dataclass
class Index:
    runs: list[Run]
    by_key: dict[tuple[Any, bool], Result] = field(default_factory=dict)

    @classmethod
    def build(cls, runs: list[Run]) -> Index:
        """Newer runs win. A run that ran a benchmark function replaces every older result of
        that function (all its parameters) from the same kind of storage, so a single-group
        run (`make benchmark-auth`) leaves the other results alone; results of functions no
        longer in the source are dropped."""
        idx = cls(runs)
        for run in sorted(runs, key=lambda r: r.when):
            covered = {function_of(b) for b in run.data.get("benchmarks", [])}
            for k in [k for k, r in idx.by_key.items() if function_of(r.bench) in covered and r.run.pure_storage == run.pure_storage]:
                del idx.by_key[k]
            for b in run.data.get("benchmarks", []):
                key = bench_key(b)
                native = bool((b.get("extra_info") or {}).get("native", run.machine.get("daisi_ws_native", False)))
                # a `make benchmark-pure` run only fills the pure column of gateway-level
                # benchmarks; both twins of a hot-path benchmark come from one main run
                if run.pure_storage and (native or "twin" in (b.get("params") or {})) and (key, native) in idx.by_key:
                    continue
                idx.by_key[(key, native)] = Result(b, run)
        for k in [k for k, r in idx.by_key.items() if not still_defined(r.bench)]:
            del idx.by_key[k]
        return idx

    def get(self, ref: Ref, native: bool) -> Result | None:
        return self.by_key.get(((ref.name, frozenset(ref.params)), native))


def function_of(b: dict[str, Any]) -> str:
    """`benchmarks/test_bench_x.py::test_name` (without parameters)."""
    return str(b.get("fullname", "")).split("[", 1)[0]


def still_defined(b: dict[str, Any]) -> bool:
    module, _, name = function_of(b).partition("::")
    path = REPO / module
    if not path.exists():
        return False
    try:
        return f"def {name}(" in path.read_text()
    except OSError:
        return True


def natural(key: tuple[str, frozenset[tuple[str, str]]]) -> tuple[Any, ...]:
    params = tuple((a, int(v) if v.isdigit() else 0, v) for a, v in sorted(key[1]))
    return (key[0], params)


def bench_key(b: dict[str, Any]) -> tuple[str, frozenset[tuple[str, str]]]:
    name = b["name"].split("[", 1)[0]
    params = b.get("params") or {}
    return name, frozenset((k, str(v)) for k, v in params.items() if k != "twin")


def load_runs(root: Path) -> list[Run]:
    runs = []
    for path in sorted(root.glob("**/*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if "benchmarks" not in data:
            continue
        try:
            when = datetime.fromisoformat(str(data.get("datetime", "")).replace("Z", "+00:00"))
        except ValueError:
            when = datetime.fromtimestamp(path.stat().st_mtime)
        if when.tzinfo is not None:
            when = when.replace(tzinfo=None)
        runs.append(Run(path, data, when, "pure" in path.relative_to(root).parts[:-1]))
    return runs


def run_suite() -> None:
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "benchmarks", "--benchmark-only", "--benchmark-autosave", "-q"]
    sys.stderr.write(f"no saved benchmark run: running the suite ({' '.join(cmd[1:])})\n")
    subprocess.run(cmd, cwd=REPO, check=False)


# --- formatting --------------------------------------------------------------------------------------------------


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    ns = seconds * 1e9
    if ns < 1000:
        return f"{ns:.0f} ns"
    if ns < 1e6:
        return f"{ns / 1e3:.1f} µs" if ns < 1e5 else f"{ns / 1e3:.0f} µs"
    if ns < 1e9:
        return f"{ns / 1e6:.2f} ms" if ns < 1e8 else f"{ns / 1e6:.0f} ms"
    return f"{ns / 1e9:.2f} s"


def fmt_extra(value: Any, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "ratio":
        return f"{float(value) * 100:.1f} %"
    if unit == "B":
        v = float(value)
        return f"{v / 1024:.1f} KiB" if v >= 1024 else f"{v:.0f} B"
    return str(value)


def fmt_ratio(published_ns: float | None, ours: float | None) -> str:
    if published_ns is None or ours is None or ours <= 0:
        return "—"
    r = published_ns / (ours * 1e9)
    return f"{r:.2f}\u00d7" if r < 10 else f"{r:.0f}\u00d7"


def value_of(res: Result | None, ref: Ref) -> tuple[str, float | None]:
    if res is None:
        return "not run", None
    if ref.extra:
        return fmt_extra(res.info.get(ref.extra), ref.unit), None
    v = res.per_op
    return fmt_time(v), v


def cell(idx: Index, ref: Ref | None, native: bool) -> tuple[str, float | None, Result | None]:
    if ref is None:
        return "—", None, None
    res = idx.get(ref, native)
    text, v = value_of(res, ref)
    return text, v, res


def info_summary(info: dict[str, Any], limit: int = 5) -> str:
    parts = []
    for k in INFO_KEYS:
        if k in info and info[k] not in (None, ""):
            v = info[k]
            if isinstance(v, dict):
                v = ", ".join(f"{a}={b}" for a, b in v.items())
            parts.append(f"{k}={v}")
        if len(parts) >= limit:
            break
    return "; ".join(parts)


# --- the document ------------------------------------------------------------------------------------------------


def main_table(idx: Index) -> tuple[list[str], set[tuple[Any, bool]]]:
    used: set[tuple[Any, bool]] = set()
    out = []
    group = ""
    for row in ROWS:
        if row.group != group:
            group = row.group
            out += ["", f"### {group}", "",
                    "| Operation | Published (Go, mocks) | Ours, compiled twins | Ours, pure twins | Published ÷ ours | Real servers / sockets (ours) | Notes |",
                    "|---|---|---|---|---|---|---|"]
        nat_text, nat_v, nat_res = cell(idx, row.ours, True)
        pure_text, _, pure_res = cell(idx, row.ours, False)
        if nat_res is not None and pure_res is not None and nat_res.run is not pure_res.run:
            pure_text += " †"
        reals = []
        for ref in row.real:
            res = idx.get(ref, True) or idx.get(ref, False)
            text, _ = value_of(res, ref)
            twin = "" if res is None or res.info.get("native", True) else " (pure)"
            reals.append(f"{ref.label}: **{text}**{twin}")
            if res is not None:
                used.add((bench_key(res.bench), bool(res.info.get("native"))))
        for res in (nat_res, pure_res):
            if res is not None:
                used.add((bench_key(res.bench), bool(res.info.get("native"))))
        notes = [row.note] if row.note else []
        for ref in row.alt:
            a_text, _, a_res = cell(idx, ref, True)
            p_text, _, p_res = cell(idx, ref, False)
            notes.append(f"{ref.label}: {a_text} (pure {p_text})")
            for res in (a_res, p_res):
                if res is not None:
                    used.add((bench_key(res.bench), bool(res.info.get("native"))))
        out.append(
            f"| {row.op} | {row.published} | **{nat_text}** | {pure_text} | {fmt_ratio(row.published_ns, nat_v)} | "
            f"{'<br>'.join(reals) or '—'} | {'; '.join(notes)} |"
        )
    return out, used


def generic_table(idx: Index, keys: Iterable[tuple[Any, bool]], title_native: str = "compiled", show_info: bool = True) -> list[str]:
    """name/params, native and pure per-op, pure÷native, key extra_info."""
    pairs: dict[Any, dict[bool, Result]] = {}
    for key, native in keys:
        res = idx.by_key.get((key, native))
        if res is not None:
            pairs.setdefault(key, {})[native] = res
    out = [
        f"| Benchmark | Ours, {title_native} twins | Ours, pure twins | pure ÷ compiled | Details |",
        "|---|---|---|---|---|",
    ]
    for key in sorted(pairs, key=natural):
        by = pairs[key]
        name = key[0] + (f"[{', '.join(f'{a}={b}' for a, b in sorted(key[1]))}]" if key[1] else "")
        nat, pure = by.get(True), by.get(False)
        nv = nat.per_op if nat else None
        pv = pure.per_op if pure else None
        ratio = f"{pv / nv:.2f}" if nv and pv else "—"
        details = info_summary((nat or pure).info) if show_info and (nat or pure) else ""  # type: ignore[union-attr]
        if nat and pure and nat.run is not pure.run:
            ratio += " †"
        out.append(f"| `{name}` | {fmt_time(nv)} | {fmt_time(pv)} | {ratio} | {details} |")
    return out


def group_keys(idx: Index, groups: tuple[str, ...], exclude: set[tuple[Any, bool]] | None = None) -> list[tuple[Any, bool]]:
    out = []
    for (key, native), res in idx.by_key.items():
        if res.bench.get("group") in groups and (exclude is None or key not in {k for k, _ in exclude}):
            out.append((key, native))
    return out


def targets(idx: Index) -> list[str]:
    """The project's targets (issue: 'Targets on this machine'), where a saved run measured them."""

    def find(name: str, **params: Any) -> Result | None:
        return idx.get(Ref.of(name, **params), True) or idx.get(Ref.of(name, **params), False)

    def throughput(name_prefix: str) -> list[Result]:
        return [r for (k, _), r in idx.by_key.items() if k[0].startswith(name_prefix) and r.bench.get("group") == "throughput"]

    lines = ["| Target | Measured | Met? |", "|---|---|---|"]
    mem = find("test_memory_per_connection", n=10000)
    if mem is not None:
        g = mem.info.get("rss_growth_bytes")
        per = mem.info.get("rss_per_connection_bytes")
        ok = g is not None and g <= 120 * 1024 * 1024 and per is not None and per <= 12 * 1024
        lines.append(f"| 10,000 idle sockets: server RSS growth ≤ 120 MB (≤ 12 KB/socket) | "
                     f"{(g or 0) / 2**20:.1f} MiB, {fmt_extra(per, 'B')}/socket (test_memory_per_connection[10000]) | {'yes' if ok else 'NO'} |")
    for r in throughput("test_broadcast_real"):
        info = r.info
        if "vs_raw" in info:
            ok_raw = info["vs_raw"] <= 1.3
            lines.append(f"| Real-socket broadcast ≤ 1.3\u00d7 a raw transport.write loop | {info['vs_raw']}\u00d7 ({info.get('sockets')} sockets, same run) | {'yes' if ok_raw else 'NO'} |")
        if "websockets_vs_daisi" in info:
            ok_ws = info["websockets_vs_daisi"] >= 1.6
            lines.append(f"| Real-socket broadcast ≥ 1.6\u00d7 faster than websockets.broadcast() | {info['websockets_vs_daisi']}\u00d7 | {'yes' if ok_ws else 'NO'} |")
    def delay_note(info: dict[str, Any]) -> str:
        """The latency a write-delay run paid for its figure, said next to it."""
        ms = info.get("write_delay_ms")
        return f", with app.websocket_write_delay_ms = {ms}: p50 {info.get('p50_ms')} ms, p99 {info.get('p99_ms')} ms" if ms else ""

    def baseline_of(r: Result) -> Result | None:
        """The same benchmark's baseline entry (same size) from the same saved runs."""
        size = (r.bench.get("params") or {}).get("size")
        for b in throughput(r.bench["name"].split("[")[0]):
            params = b.bench.get("params") or {}
            if params.get("kind") == "baseline" and params.get("size") == size:
                return b
        return None

    for r in throughput("test_max_throughput"):
        kind = (r.bench.get("params") or {}).get("kind")
        name = r.bench["name"]
        if kind == "baseline":
            continue
        if not r.info.get("best_fps"):
            points = r.info.get("points") or []
            if points:
                first = min(points, key=lambda p: p["offered_fps"])
                lines.append(f"| ≥ 2\u00d7 the baseline's delivered frames/s at p99 ≤ 100 ms ({name}) | none of its points passed: "
                             f"the lowest, {first['offered_fps']:,.0f}/s, had p99 {first['p99_ms']} ms{delay_note(r.info)} | NO |")
            continue
        head = f"| ≥ 2\u00d7 the baseline's delivered frames/s at p99 ≤ 100 ms ({name}) | {r.info['best_fps']} frames/s, "
        if r.info.get("vs_baseline") is not None:
            lines.append(f"{head}{r.info['vs_baseline']}\u00d7 baseline{delay_note(r.info)} | {'yes' if r.info['vs_baseline'] >= 2 else 'NO'} |")
            continue
        base = baseline_of(r)
        points = (base.info.get("points") or []) if base is not None else []
        if base is not None and not base.info.get("best_fps") and points:
            # The baseline passed none of its points: its best lies below the lowest one offered.
            lowest = min(points, key=lambda p: p["offered_fps"])
            bound = r.info["best_fps"] / lowest["offered_fps"]
            lines.append(f"{head}> {bound:.2f}\u00d7 baseline (it passed none of its points; the lowest, {lowest['offered_fps']:,.0f}/s, "
                         f"had p99 {lowest['p99_ms']} ms){delay_note(r.info)} | {'yes' if bound >= 2 else 'not shown'} |")
    for r in throughput("test_fixed_load"):
        if r.info.get("vs_baseline") is not None:
            name = r.bench["name"]
            verdict = "yes" if r.info["vs_baseline"] <= 0.5 else "NO"
            base = baseline_of(r)
            overload = ""
            if base is not None and base.info.get("sockets") and base.info.get("per_socket_rate"):
                offered = base.info["sockets"] * base.info["per_socket_rate"]
                if base.info.get("drops") or (base.info.get("delivered_fps") or 0) < 0.99 * offered:
                    # An overloaded server pays more per frame: the ratio flatters daisi-ws.
                    overload = f"; the baseline was overloaded (delivered {base.info.get('delivered_fps'):,.0f} of {offered:,.0f} frames/s)"
                    verdict = "not comparable" if verdict == "yes" else verdict
            kernel = r.info.get("server_kernel_us_per_frame")
            base_total = base.info.get("server_us_per_frame") if base is not None else None
            # The kernel's share is the floor of what user-space work can save.
            kernel_note = f"; {kernel} µs of it in the kernel = {kernel / base_total:.2f}\u00d7 the baseline's whole frame" if kernel and base_total else ""
            lines.append(f"| ≤ 0.5\u00d7 the baseline's server CPU per delivered frame ({name}) | "
                         f"{r.info.get('server_us_per_frame')} µs/frame, {r.info['vs_baseline']}\u00d7 baseline{kernel_note}{delay_note(r.info)}{overload} | {verdict} |")
    for r in throughput("test_handshake_rate"):
        if r.info.get("vs_baseline") is not None and (r.bench.get("params") or {}).get("kind") == "daisi-embedded":
            lines.append(f"| Handshake + auth + lock (embedded) ≥ the baseline's handshakes/s | "
                         f"{r.info.get('handshakes_per_s')}/s, {r.info['vs_baseline']}\u00d7 baseline | {'yes' if r.info['vs_baseline'] >= 1 else 'NO'} |")
    for name, label in (("test_interest_latency", "Interest mode, 1 pod, 1,000 sockets x 20 ev/s: NATS publish -> socket p99 ≤ 5 ms"),
                        ("test_takeover", "Takeover across two pods (B ready, A closed 4402): p50 ≤ 30 ms")):
        r = find(name)
        if r is not None and r.info.get("target"):
            measured = r.info.get("latency_ms") or r.info.get("takeover_ms")
            lines.append(f"| {label} | {info_summary({'latency_ms': measured}) if isinstance(measured, dict) else measured} | {r.info['target'].rsplit(': ', 1)[-1]} |")
    if len(lines) == 2:
        lines.append("| (no saved run measured the targets yet: `make benchmark`) | | |")
    return lines


def machine_section(runs: list[Run], used: list[Run]) -> list[str]:
    main = [r for r in (used or runs) if not r.pure_storage] or used or runs
    newest = max(main, key=lambda r: r.when)
    m = newest.machine
    cpu = m.get("cpu_model") or (m.get("cpu") or {}).get("brand_raw") or m.get("processor") or "?"
    cores = m.get("cpu_count") or (m.get("cpu") or {}).get("count") or "?"
    py = f"{m.get('python_implementation', '')} {m.get('python_version', '')}".strip()
    os_name = m.get("os") or f"{m.get('system', '')} {m.get('release', '')}"
    lines = [
        f"- CPU: {cpu}, {cores} cores (the load generator, the servers and NATS/Redis all share them)",
        f"- Python: {py}; OS: {os_name}",
        f"- Compiled twins loaded in the main run: {'yes' if m.get('daisi_ws_native') else 'no'}",
        f"- Load generator's event loop (throughput and delivery groups): {m.get('loadgen_loop') or 'not recorded by that run'}",
        "- Runs used (newest run holding each benchmark wins):",
    ]
    for r in sorted(used, key=lambda r: r.when):
        kind = "pure twins, in-process only" if r.pure_storage else ("compiled twins" if r.machine.get("daisi_ws_native") else "pure twins")
        c = r.commit
        commit = f"commit {str(c.get('id', '?'))[:10]}{' + uncommitted changes' if c.get('dirty') else ''}"
        lines.append(f"  - {r.when:%Y-%m-%d %H:%M} UTC: `{r.path.relative_to(REPO) if r.path.is_relative_to(REPO) else r.path}` ({kind}, {len(r.data.get('benchmarks', []))} benchmarks, {commit})")
    return lines


def render(idx: Index) -> str:
    main, used_keys = main_table(idx)
    used_runs = sorted({id(r.run): r.run for r in idx.by_key.values()}.values(), key=lambda r: r.when)
    newest = max(used_runs, key=lambda r: r.when)
    doc = [
        "# Benchmark results: daisi-ws beside the Go service's published figures",
        "",
        f"Generated by `make benchmark-report` (benchmarks/report.py) on {datetime.now():%Y-%m-%d %H:%M}, from pytest-benchmark runs saved on this machine "
        f"(newest: {newest.when:%Y-%m-%d %H:%M} UTC). Machine at the end.",
        "",
        "How to read this:",
        "- **Published (Go, mocks)**: the Go service's figures. They measured in-process mocks: a Go map for Redis,",
        "  a direct function call for NATS, a Go channel for a socket (benchmarks/PUBLISHED.md says what each did).",
        "- **Ours, compiled / pure twins**: our in-process twin of the same operation (real AuthService, Hub, Gateway,",
        "  embedded backend; counting transports instead of sockets), median per operation. Hot-path benchmarks run",
        "  both twins in the same run; gateway-level ones run under the process's twin, so their pure figure comes",
        "  from `make benchmark-pure` (a different run: marked †).",
        "- **Published ÷ ours**: > 1 means ours is faster than the published figure (lowest figure of a published range).",
        "  It compares a Python implementation on this machine with Go figures from another machine and, for Go, mocks.",
        "- **Real servers / sockets**: the same flow against real processes (real redis-server, nats-server,",
        "  `daisi-ws serve` pods, loopback sockets read by real clients in the benchmark process). The Go suite has no",
        "  counterpart; these are the numbers to plan capacity with. Per operation unless stated.",
        "- The machine is shared and noisy (2 cores; other work ran alongside): compare ratios measured in one run,",
        "  not absolute figures across runs.",
        "",
        "## Published figures beside ours",
        *main,
        "",
    ]
    wl = idx.get(Ref.of("test_hit_ratio_mixed_workload"), True) or idx.get(Ref.of("test_hit_ratio_mixed_workload"), False)
    if wl is not None and wl.info.get("workload"):
        doc += [f"Hit-ratio workload: {wl.info['workload']}; measured hit ratio {fmt_extra(wl.info.get('hit_ratio'), 'ratio')}.", ""]
    doc += [
        "## Our other measurements (no published counterpart)",
        "",
        "Time per operation (median ÷ operations per timed call).",
        "",
        *generic_table(idx, group_keys(idx, MY_GROUPS, exclude=used_keys)),
        "",
    ]
    hot = group_keys(idx, ("hotpath",))
    if hot:
        doc += ["## Hot path: compiled vs pure twins (same run)", "",
                "Where pure ÷ compiled is ≤ 1, the compiled twin does not win.", "",
                *generic_table(idx, hot, show_info=False), ""]
    thr = group_keys(idx, ("throughput",))
    if thr:
        doc += ["## Throughput, CPU and memory against the baseline gateway (benchmarks/test_bench_throughput.py)", "",
                "Time = wall time of the load run; the figures are in Details.", "",
                *generic_table(idx, thr), ""]
    dlv = group_keys(idx, ("delivery",))
    if dlv:
        doc += ["## Delivery latency, queue-mode forwarding, takeover (benchmarks/test_bench_delivery.py, issue 4)", "",
                "Time = wall time of the load runs (takeover: per takeover); the figures are in Details.", "",
                *generic_table(idx, dlv), ""]
    doc += ["## The project's targets on this machine", "", *targets(idx), "",
            "## Machine", "", *machine_section(idx.runs, used_runs), ""]
    return "\n".join(doc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=REPO / ".benchmarks", help="pytest-benchmark storage (default .benchmarks)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    p.add_argument("--run", action="store_true", help="run the whole suite (autosaved) first")
    args = p.parse_args(argv)
    runs = load_runs(args.root) if args.root.exists() else []
    if args.run or not runs:
        run_suite()
        runs = load_runs(args.root) if args.root.exists() else []
    if not runs:
        sys.stderr.write(f"no pytest-benchmark runs under {args.root}\n")
        return 1
    idx = Index.build(runs)
    args.out.write_text(render(idx))
    print(f"wrote {args.out} from {len(runs)} saved run(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
