"""Process limits for benchmarks that hold thousands of sockets in one process.

The real servers themselves (nats-server, redis-server, `daisi-ws serve` pods) come from the
integration suite's helpers (tests/integration/servers.py, tests/support.py).
"""

from __future__ import annotations

import resource


def raise_nofile() -> int:
    """Raise this process's descriptor limit to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 65536)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
