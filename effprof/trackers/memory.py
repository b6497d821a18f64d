"""Peak memory of the timed calls above what was allocated before them (activations and workspaces).

With `--graphs` the window opens before the capture, since the graph's private pool holds the
activations. On CPU torch keeps no allocator statistics: the column stays empty and a note says why.
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

    def fields(self, run):
        return cpu_note() if self.mib is None else {"peak_mem_mib": self.mib}
