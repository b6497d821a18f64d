"""Peak memory above what was allocated before the timed calls (activations and workspaces), in MiB.

CUDA: the caching allocator's peak during the timed calls; with `--graphs` the window opens before the
capture, since the graph's private pool holds the activations. CPU: torch keeps no allocator statistics,
so the process's resident-set growth during one more call (`effprof.measure.rss`); growth below that
method's resolution (64 KiB) is recorded as `peak_mem_below_resolution: true` with `peak_mem_mib` None and
`peak_mem_resolution_mib`, never as a tiny number. `peak_mem_method` says which method.
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
        if self.mib is None:
            return cpu_note()
        if run.device.type == "cpu":
            from effprof.measure.rss import RESOLUTION_BYTES

            resolution = RESOLUTION_BYTES / 2**20
            if self.mib < resolution:  # a page or two of noise is not a figure: say so, print no number
                return {"peak_mem_mib": None, "peak_mem_below_resolution": True,
                        "peak_mem_resolution_mib": resolution, "peak_mem_method": self.peak.method}
        return {"peak_mem_mib": self.mib, "peak_mem_method": self.peak.method}
