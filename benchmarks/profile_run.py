"""`make profile`: where a loaded daisi-ws server spends CPU, and what its heap holds.

1. CPU: a `daisi-ws serve` under load (`daisi-ws loadtest`: N sockets, events through NATS
   when nats-server and redis-server are available (shared mode), else POST /api/publish in
   embedded mode), sampled by py-spy -> profile/cpu-flame.svg (+ speedscope JSON).
2. Memory: the same app run in a child with tracemalloc on; snapshots before and after N idle
   sockets connected and M events delivered -> profile/memory-top.txt (top allocation sites
   by growth, total traced growth per socket).

    python benchmarks/profile_run.py [--connections 1000] [--rate 20] [--duration 15]

Never uses the default NATS/Redis ports: every server is started here on free ports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

OUT = REPO / "profile"
TRACE_FRAMES = 6  # deeper tracebacks slow a traced server down enough to time out Redis connects


def log(msg: str) -> None:
    sys.stderr.write(f"[profile] {msg}\n")
    sys.stderr.flush()


# --- the traced server child --------------------------------------------------------------------------


def traced_serve(out_path: str) -> int:
    """Run the real App. SIGUSR1 #1 = start tracemalloc + baseline snapshot, #2 = compare and
    write `out_path`. SIGTERM shuts down as usual."""
    import tracemalloc

    from daisi_ws.app import App
    from daisi_ws.config import load_settings

    snaps: list[Any] = []

    def on_usr1(signum: int, frame: Any) -> None:
        if not snaps:
            # tracing from here on: imports and start-up are not what we look for (and
            # tracing them with deep tracebacks takes minutes)
            tracemalloc.start(TRACE_FRAMES)
        snaps.append(tracemalloc.take_snapshot())
        if len(snaps) == 2:
            write_memory_report(snaps[0], snaps[1], out_path)

    signal.signal(signal.SIGUSR1, on_usr1)
    app = App(load_settings(None))
    return asyncio.run(app.run())


def write_memory_report(before: Any, after: Any, out_path: str) -> None:
    import tracemalloc

    filters = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap*>")]
    before, after = before.filter_traces(filters), after.filter_traces(filters)
    by_line = after.compare_to(before, "lineno")
    by_file = after.compare_to(before, "filename")
    total = sum(s.size_diff for s in by_line)
    n = int(os.environ.get("DWS_PROFILE_SOCKETS", "0") or 0)
    lines = [
        "# tracemalloc: heap growth of a daisi-ws server between two snapshots",
        f"# before: idle server; after: {n} sockets connected and events delivered (sockets still open)",
        f"total traced growth: {total / 1024:.1f} KiB" + (f" = {total / max(n, 1):.0f} B per socket" if n else ""),
        "",
        "## top 40 sites by growth (file:line, growth, count growth)",
    ]
    for s in by_line[:40]:
        fr = s.traceback[0]
        lines.append(f"{s.size_diff / 1024:10.1f} KiB  {s.count_diff:+8d}  {fr.filename}:{fr.lineno}")
    lines += ["", "## by file (top 20)"]
    for s in by_file[:20]:
        lines.append(f"{s.size_diff / 1024:10.1f} KiB  {s.count_diff:+8d}  {s.traceback[0].filename}")
    lines += ["", "## the largest site's allocation stack"]
    if by_line:
        lines += [f"  {fr.filename}:{fr.lineno}" for fr in by_line[0].traceback]
    Path(out_path).write_text("\n".join(lines) + "\n")


# --- the driver ------------------------------------------------------------------------------------------


def have(binary: str) -> bool:
    from tests.support import executable

    try:
        executable(binary)
    except RuntimeError:
        return False
    return True


class Env:
    """Keys, and NATS + Redis when available (shared mode), else embedded mode."""

    def __init__(self, shared: bool) -> None:
        from tests.support import Keys

        self.keys = Keys()
        self.tmp = tempfile.TemporaryDirectory(prefix="dws-profile-")
        self.nats: Any = None
        self.redis: Any = None
        if shared:
            from tests.integration.servers import NatsServer, RedisServer

            self.nats = NatsServer(Path(self.tmp.name)).start()
            self.redis = RedisServer().start()

    @property
    def mode(self) -> str:
        return "shared" if self.nats else "embedded"

    def server_env(self, pod: str) -> dict[str, str]:
        env = {"DAISI_WS_SERVER_POD_ID": pod, "DAISI_WS_LOG_LEVEL": "info"}
        if self.nats:
            env.update(DAISI_WS_NATS_URL=self.nats.url, DAISI_WS_REDIS_ADDRESS=self.redis.address)
        return env

    def stop(self) -> None:
        if self.nats:
            self.nats.stop()
        if self.redis:
            self.redis.stop()
        self.tmp.cleanup()


def loadtest_cmd(env: Env, port: int, pid: int, n: int, rate: float, duration: float) -> list[str] | None:
    from tests.support import executable

    try:
        exe = executable("daisi-ws")
    except RuntimeError:
        return None
    probe = subprocess.run([exe, "loadtest", "--help"], capture_output=True, text=True)
    if probe.returncode != 0:
        return None
    k = env.keys
    cmd = [
        exe, "loadtest", "--url", f"ws://127.0.0.1:{port}", "-n", str(n), "--per-socket-rate", str(rate),
        "--duration", str(duration), "--warmup", "2", "--api-key", k.api, "--admin-api-key", k.admin_api,
        "--aes-key", k.aes, "--server-pid", str(pid), "--json", "--no-progress",
    ]
    if env.nats:
        cmd += ["--via", "nats", "--nats-url", env.nats.url]
    else:
        cmd += ["--via", "http"]
    return cmd


async def builtin_load(port: int, keys: Any, n: int, events: int, nats_url: str | None, concurrency: int = 200) -> dict[str, Any]:
    """N sockets over 10 agents, `events` chats events spread over the agents; waits for all."""
    from benchmarks.harness import chat_event
    from benchmarks.wsclient import HttpPublisher, Tally, close_all, connect_many, user_path

    agents = 10
    tally = Tally()
    paths = [user_path("prof", f"a{i % agents}", keys.user_token("prof", f"a{i % agents}", f"u{i}"), keys.api) for i in range(n)]
    clients = await connect_many(port, paths, tally, concurrency=concurrency)
    per_agent = n // agents
    expected = 0
    t0 = time.perf_counter()
    if nats_url:
        import nats

        nc = await nats.connect(nats_url)
        await asyncio.sleep(0.5)  # interest subscriptions
        for e in range(events):
            await nc.publish(f"websocket.prof.a{e % agents}.chats", chat_event(e))
            expected += per_agent
        await nc.flush()
        await nc.close()
    else:
        pub = await HttpPublisher(port, keys.admin_api).open()
        for e in range(events):
            expected += await pub.publish(f"websocket.prof.a{e % agents}.chats", chat_event(e))
        await pub.close()
    try:
        await asyncio.wait_for(tally.expect(expected), 60)
    except asyncio.TimeoutError:
        pass
    took = time.perf_counter() - t0
    result = {"sockets": len(clients), "frames_expected": expected, "frames_received": tally.frames, "seconds": round(took, 3)}
    result["clients"] = clients
    result["close"] = close_all
    return result


def cpu_phase(env: Env, args: argparse.Namespace) -> dict[str, Any]:
    from tests.support import ServerProcess, executable

    spy = shutil.which("py-spy") or (executable("py-spy") if have("py-spy") else None)
    srv = ServerProcess(env=env.server_env("profile-cpu"), keys=env.keys).start()
    out: dict[str, Any] = {"mode": env.mode}
    try:
        time.sleep(1.0 if env.nats else 0.2)
        spy_proc = None
        duration = args.duration + 6  # warmup + connect + drain
        raw_proc = None
        if spy:
            base = [spy, "record", "--pid", str(srv.pid), "--duration", str(int(duration)), "--nonblocking"]
            spy_proc = subprocess.Popen([*base, "--rate", "200", "--format", "flamegraph", "-o", str(OUT / "cpu-flame.svg")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            # the same samples as collapsed stacks, for the top-functions table
            raw_proc = subprocess.Popen([*base, "--rate", "100", "--format", "raw", "-o", str(OUT / "cpu-stacks.txt")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
            if spy_proc.poll() is not None:
                err = spy_proc.stderr.read() if spy_proc.stderr else ""
                log(f"py-spy could not attach ({err.strip()[:300]}); no flame graph")
                spy_proc = None
        else:
            log("py-spy not found (pip install -e '.[bench]'); no flame graph")
        cmd = loadtest_cmd(env, srv.port, srv.pid, args.connections, args.rate, args.duration)
        if cmd is not None:
            log(f"load: daisi-ws loadtest, {args.connections} sockets x {args.rate} events/s for {args.duration} s ({env.mode})")
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + 300)
            try:
                out["loadtest"] = json.loads(res.stdout)
            except ValueError:
                out["loadtest_error"] = (res.stderr or res.stdout)[-2000:]
        else:
            log("load: built-in (daisi-ws loadtest unavailable)")
            events = int(args.rate * args.duration * 10)
            r = asyncio.run(_builtin_and_close(srv.port, env, args.connections, events))
            out["builtin_load"] = r
        if spy_proc is not None:
            try:
                spy_proc.wait(duration + 60)
            except subprocess.TimeoutExpired:
                spy_proc.send_signal(signal.SIGINT)
                spy_proc.wait(30)
            out["flame_graph"] = str(OUT / "cpu-flame.svg") if (OUT / "cpu-flame.svg").exists() else None
        if raw_proc is not None:
            try:
                raw_proc.wait(duration + 60)
            except subprocess.TimeoutExpired:
                raw_proc.kill()
            if (OUT / "cpu-stacks.txt").exists():
                out["top_functions"] = str(write_top_functions(OUT / "cpu-stacks.txt", OUT / "cpu-top.txt"))
    finally:
        srv.stop(15)
        srv.kill()
    return out


_LINE = re.compile(r":\d+\)$")


def write_top_functions(stacks: Path, out: Path, top: int = 30) -> Path:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    self_n: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in stacks.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        if not frames or not count.isdigit():
            continue
        n = int(count)
        total += n
        names = [_LINE.sub(")", f) for f in frames.split(";")]  # per function, not per line
        for f in set(names):
            incl[f] = incl.get(f, 0) + n
        self_n[names[-1]] = self_n.get(names[-1], 0) + n
    lines = [f"# py-spy samples of the loaded server while busy: {total} (idle time not sampled)", "", "## self time", ""]
    for f, n in sorted(self_n.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{n / max(total, 1) * 100:6.1f} %  {f}")
    lines += ["", "## inclusive time", ""]
    for f, n in sorted(incl.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{n / max(total, 1) * 100:6.1f} %  {f}")
    out.write_text("\n".join(lines) + "\n")
    return out


async def _builtin_and_close(port: int, env: Env, n: int, events: int) -> dict[str, Any]:
    r = await builtin_load(port, env.keys, n, events, env.nats.url if env.nats else None)
    clients, close = r.pop("clients"), r.pop("close")
    await close(clients)
    return r


def memory_phase(env: Env, args: argparse.Namespace) -> dict[str, Any]:
    from tests.support import ServerProcess

    report = OUT / "memory-top.txt"
    if report.exists():
        report.unlink()
    srv = ServerProcess(env={**env.server_env("profile-mem"), "DWS_PROFILE_SOCKETS": str(args.connections)}, keys=env.keys)
    # same process setup as `daisi-ws serve`, with tracemalloc: this script's --traced-serve
    srv_cmd = [sys.executable, str(Path(__file__).resolve()), "--traced-serve", str(report)]
    srv.proc = subprocess.Popen(srv_cmd, env=srv.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    import threading

    threading.Thread(target=srv._read_stdout, daemon=True).start()
    threading.Thread(target=srv._read_stderr, daemon=True).start()
    if not srv._listening.wait(30):
        srv.kill()
        raise RuntimeError("traced server did not start: " + "".join(srv.stderr)[-2000:])
    out: dict[str, Any] = {}
    try:
        time.sleep(1.0 if env.nats else 0.3)
        os.kill(srv.pid, signal.SIGUSR1)
        time.sleep(0.5)

        async def load_and_snapshot() -> dict[str, Any]:
            r = await builtin_load(srv.port, env.keys, args.connections, 200, env.nats.url if env.nats else None, concurrency=20)
            clients, close = r.pop("clients"), r.pop("close")
            await asyncio.sleep(0.5)
            os.kill(srv.pid, signal.SIGUSR1)
            deadline = time.monotonic() + 60
            while not report.exists() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await close(clients)
            return r

        try:
            out["load"] = asyncio.run(load_and_snapshot())
        except Exception:
            problems = [r for r in srv.lines if r.get("level") in ("warn", "error")][-5:]
            log(f"memory phase load failed; server said: {problems} {''.join(srv.stderr)[-1000:]}")
            raise
        out["report"] = str(report) if report.exists() else None
    finally:
        srv.stop(15)
        srv.kill()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--rate", type=float, default=20.0, help="events/s each socket receives (CPU phase)")
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds of the CPU phase")
    p.add_argument("--embedded", action="store_true", help="embedded mode even if NATS and Redis exist")
    p.add_argument("--traced-serve", metavar="OUT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.traced_serve:
        return traced_serve(args.traced_serve)
    from daisi_ws.limits import raise_nofile_limit

    raise_nofile_limit()
    OUT.mkdir(exist_ok=True)
    shared = not args.embedded and have("nats-server") and have("redis-server")
    env = Env(shared)
    summary: dict[str, Any] = {}
    try:
        log(f"CPU phase ({env.mode} mode)")
        summary["cpu"] = cpu_phase(env, args)
        log("memory phase (tracemalloc)")
        summary["memory"] = memory_phase(env, args)
    finally:
        env.stop()
    (OUT / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    cpu = summary["cpu"]
    lt = cpu.get("loadtest") or {}
    print(f"flame graph:   {cpu.get('flame_graph') or 'not recorded (see messages above)'}")
    print(f"top functions: {cpu.get('top_functions') or 'not written'}")
    print(f"memory report: {summary['memory'].get('report') or 'not written'}")
    print(f"summary:       {OUT / 'summary.json'}")
    if lt:
        d, c = lt.get("delivery") or {}, lt.get("cpu") or {}
        lat = d.get("latency_ms") or {}
        print(
            f"load:          {d.get('delivered_fps')} frames/s delivered, p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms, "
            f"drops {d.get('drops')}, server {c.get('server_us_per_frame')} µs CPU/frame ({c.get('server_util')} of a core)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
