"""The host's load while a row ran, for honest figures on a shared CPU: how busy all CPUs were (from
/proc/stat jiffies, Linux) and the 1-minute load average (os.getloadavg). A CPU row measured while other
processes held the cores reads slower and less steady; the record says how loaded the host was."""
from __future__ import annotations

import os


def cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat (Linux), or None."""
    try:
        with open("/proc/stat") as fh:
            values = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


def busy_pct(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Percent of all CPUs' time that was busy between two `cpu_times()` (this process included)."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return 100.0 * (after[0] - before[0]) / (after[1] - before[1])


def load_1min() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None
