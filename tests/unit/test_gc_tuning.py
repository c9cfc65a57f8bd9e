"""The server's garbage-collector settings (app.tune_gc), in a fresh interpreter: freezing and
thresholds are process-wide, so they are never applied to the test process itself."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import gc, json
before = gc.get_threshold()
from daisi_ws.app import GC_YOUNG_THRESHOLD, tune_gc
frozen = tune_gc()
print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": frozen,
                  "freeze_count": gc.get_freeze_count(), "young": GC_YOUNG_THRESHOLD,
                  "enabled": gc.isenabled()}))
"""


def run() -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def test_start_up_objects_are_frozen_and_the_young_generation_is_larger() -> None:
    r = run()
    # everything alive after start-up (modules, settings, metrics) leaves the collector's
    # scans: full collections only walk what sockets and work created later
    assert r["frozen"] == r["freeze_count"] > 10_000
    assert r["enabled"], "the collector stays on: closed sockets leave reference cycles"
    assert r["young"] >= 5_000
    assert r["after"] == [r["young"], r["before"][1], r["before"][2]]
