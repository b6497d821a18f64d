"""Clocks, power, temperature, throttling and energy per item during the timed region (NVML, CUDA only)."""
from effprof.measure.nvml import NvmlSampler
from effprof.trackers.base import Tracker, register_tracker

IDLE_S = 0.3  # seconds of idle power measured before the process's first timed region


@register_tracker
class NvmlTracker(Tracker):
    name = "nvml"

    @classmethod
    def enabled(cls, run):
        return run.device.type == "cuda" and not run.count_only

    def start(self, run):
        self.sampler = NvmlSampler(run.device, idle_s=IDLE_S, idle_once=True)  # idle power: energy above idle
        self.sampler.__enter__()

    def stop(self, run):
        self.sampler.__exit__(None, None, None)

    def fields(self, run):
        return self.sampler.fields(run.calls * run.items_per_call)
