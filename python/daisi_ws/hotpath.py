"""THE seam between the asyncio layer and the hot paths.

Imports the compiled twins from `daisi_ws._native` unless they are unavailable or
`DAISI_WS_NO_EXTENSIONS=1`; else the pure-Python twins from `daisi_ws._pure`. Nothing
else in the package imports `_native` or `_pure`. `NATIVE` says which is loaded.
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING

FORCE_PURE = os.environ.get("DAISI_WS_NO_EXTENSIONS", "").strip().lower() in {"1", "true", "yes"}

NATIVE: bool = False

if TYPE_CHECKING:  # both twins share one API; type-check against the pure one
    from daisi_ws._pure.framing import (
        build_close_frame,
        build_error_frame,
        build_event_envelope,
        build_event_frame,
        build_frame_header,
        build_text_frame,
    )
    from daisi_ws._pure.sendqueue import POLICIES, SendQueue, SendStats, fanout, flush_dirty
    from daisi_ws._pure.tokencache import TokenCache
else:
    _twin = "daisi_ws._pure"
    if not FORCE_PURE:
        try:
            import daisi_ws._native.framing
            import daisi_ws._native.sendqueue
            import daisi_ws._native.tokencache  # noqa: F401

            _twin = "daisi_ws._native"
            NATIVE = True
        except ImportError as exc:  # built without a compiler: stay correct, only slower
            warnings.warn(
                f"daisi-ws compiled extensions unavailable ({exc}); using the pure-Python twins",
                RuntimeWarning,
                stacklevel=2,
            )
    import importlib

    _framing = importlib.import_module(f"{_twin}.framing")
    _sendqueue = importlib.import_module(f"{_twin}.sendqueue")
    _tokencache = importlib.import_module(f"{_twin}.tokencache")

    build_close_frame = _framing.build_close_frame
    build_error_frame = _framing.build_error_frame
    build_event_envelope = _framing.build_event_envelope
    build_event_frame = _framing.build_event_frame
    build_frame_header = _framing.build_frame_header
    build_text_frame = _framing.build_text_frame
    POLICIES = _sendqueue.POLICIES
    SendStats = _sendqueue.SendStats
    SendQueue = _sendqueue.SendQueue
    fanout = _sendqueue.fanout
    flush_dirty = _sendqueue.flush_dirty
    TokenCache = _tokencache.TokenCache

__all__ = [
    "NATIVE",
    "POLICIES",
    "SendQueue",
    "SendStats",
    "TokenCache",
    "build_close_frame",
    "build_error_frame",
    "build_event_envelope",
    "build_event_frame",
    "build_frame_header",
    "build_text_frame",
    "fanout",
    "flush_dirty",
]
