"""The host's load during a CPU row's timed calls (`effprof.measure.host`), on every CPU row, not only
under `--workers`: `host_cpu_busy_pct` (all CPUs' busy share over the timed region, this process
included), `host_other_busy_pct` (the part of it that was not this process: other processes competing for
the cores), `host_load_1min` (the load average when timing ended) and `host_cpus`."""
from __future__ import annotations

import os
import time

from effprof.measure.host import busy_pct, cpu_times, load_1min
from effprof.trackers.base import Tracker, register_tracker


@register_tracker
class HostTracker(Tracker):
    name = "host_load"

    @classmethod
    def enabled(cls, run):
        return run.device.type == "cpu"

    def start(self, run):
        self.before = cpu_times(), time.process_time()

    def stop(self, run):
        (jiffies, own_s), after = self.before, cpu_times()
        self.busy = busy_pct(jiffies, after)
        self.other = None
        if self.busy is not None:
            ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
            own_pct = 100.0 * (time.process_time() - own_s) * ticks / (after[1] - jiffies[1])
            self.other = max(0.0, self.busy - own_pct)
        self.load = load_1min()

    def fields(self, run):
        return {"host_cpu_busy_pct": self.busy, "host_other_busy_pct": self.other, "host_load_1min": self.load,
                "host_cpus": os.cpu_count()}
