"""Process limits a socket server needs raised before it accepts connections."""

from __future__ import annotations

import resource

# Where the hard limit is unlimited: the kernel's default fs.nr_open, the most setrlimit accepts.
UNLIMITED_NOFILE = 1 << 20


def raise_nofile_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; returns the soft limit in force.

    Each socket is a descriptor, and a common default soft limit (1,024) would cap a pod at
    about a thousand browser tabs while the hard limit allows far more (the Go service's
    runtime raises it the same way). A limit that cannot be raised is left as it is.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return UNLIMITED_NOFILE
    target = UNLIMITED_NOFILE if hard == resource.RLIM_INFINITY else hard
    if soft >= target:
        return int(soft)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return int(soft)
    return int(target)
