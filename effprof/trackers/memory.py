"""Peak memory above what was allocated before the timed calls (activations and workspaces), in MiB.

CUDA: the caching allocator's peak during the timed calls; with `--graphs` the window opens before the
capture, since the graph's private pool holds the activations. CPU: torch keeps no allocator statistics,
so the process's resident-set growth during one more call (`effprof.measure.rss`). `peak_mem_method`
says which.
"""
from effprof.measure.memory import PeakMemory, cpu_note
from effprof.trackers.base import Tracker, register_tracker


@register_tracker
class MemoryTracker(Tracker):
    name = "peak_memory"

    @classmethod
    def enabled(cls, run):
        return not run.count_only

    def before(self, run):
        self.peak = PeakMemory(run.device)
        if run.options.graphs:  # before the capture: the graph pool holds the activations
            self.peak.start()

    def start(self, run):
        if not run.options.graphs:
            self.peak.start()

    def stop(self, run):
        self.mib = self.peak.peak_mib()
        if self.mib is None and run.device.type == "cpu" and run.timing is not None:
            self.mib = self.peak.cpu_peak_mib(getattr(run.call, "fn", run.call))

    def fields(self, run):
        return cpu_note() if self.mib is None else {"peak_mem_mib": self.mib, "peak_mem_method": self.peak.method}
