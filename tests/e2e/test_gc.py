"""`daisi-ws serve` tunes the garbage collector once start-up is done (app.tune_gc)."""

from __future__ import annotations

from tests.support import ServerProcess


def test_server_freezes_start_up_objects_before_listening() -> None:
    proc = ServerProcess().start()
    try:
        (listening,) = proc.logged("listening")
        assert listening["gc_frozen"] > 10_000
    finally:
        proc.stop(10)
        proc.kill()
