"""THE seam between the asyncio layer and the hot paths.

Imports the compiled twins from `daisi_ws._native` unless they are unavailable or
`DAISI_WS_NO_EXTENSIONS=1`; else the pure-Python twins from `daisi_ws._pure`. Nothing
else in the package imports `_native` or `_pure`. `NATIVE` says which is loaded.
"""

from __future__ import annotations

import os
import warnings

_FORCE_PURE = os.environ.get("DAISI_WS_NO_EXTENSIONS", "").strip().lower() in {"1", "true", "yes"}

NATIVE: bool = False
if not _FORCE_PURE:
    try:
        from daisi_ws._native.framing import (  # type: ignore[import-not-found]
            build_close_frame,
            build_error_frame,
            build_event_envelope,
            build_event_frame,
            build_frame_header,
            build_text_frame,
        )
        from daisi_ws._native.sendqueue import (  # type: ignore[import-not-found]
            POLICIES,
            DropStats,
            SendQueue,
            fanout,
            flush_dirty,
        )
        from daisi_ws._native.tokencache import TokenCache  # type: ignore[import-not-found]

        NATIVE = True
    except ImportError as exc:  # no compiler at install time: stay correct, only slower
        warnings.warn(
            f"daisi-ws compiled extensions unavailable ({exc}); using the pure-Python twins",
            RuntimeWarning,
            stacklevel=2,
        )

if not NATIVE:
    from daisi_ws._pure.framing import (  # type: ignore[assignment]
        build_close_frame,
        build_error_frame,
        build_event_envelope,
        build_event_frame,
        build_frame_header,
        build_text_frame,
    )
    from daisi_ws._pure.sendqueue import (  # type: ignore[assignment]
        POLICIES,
        DropStats,
        SendQueue,
        fanout,
        flush_dirty,
    )
    from daisi_ws._pure.tokencache import TokenCache  # type: ignore[assignment]

__all__ = [
    "NATIVE",
    "POLICIES",
    "DropStats",
    "SendQueue",
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
