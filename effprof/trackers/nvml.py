"""Clocks, power, temperature, throttling and energy per item during the timed region (NVML, CUDA only)."""
from effprof.measure.nvml import NvmlSampler
from effprof.trackers.base import Tracker, register_tracker


@register_tracker
class NvmlTracker(Tracker):
    name = "nvml"

    @classmethod
    def enabled(cls, run):
        return run.device.type == "cuda" and not run.count_only

    def start(self, run):
        self.sampler = NvmlSampler(run.device)
        self.sampler.__enter__()

    def stop(self, run):
        self.sampler.__exit__(None, None, None)

    def fields(self, run):
        return self.sampler.fields(run.calls * run.items_per_call)
