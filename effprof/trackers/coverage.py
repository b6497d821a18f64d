"""`flop_coverage`: the share of one call's time in ops with a FLOP formula (see `effprof.measure.coverage`).

One profiler pass after the timed region, so the row's own timing never runs under the profiler. On CUDA it
is opt-in (`--flop-coverage`, or `--min-flop-coverage`): the CUDA profiler loads CUPTI, which stays loaded
after the session and can slow later kernels of the process by 10-20% (pytorch/pytorch#144455), so the rows
measured after it in a comparison would not be clean (`compare --isolate` gives each row its own process).
"""
from effprof.measure.coverage import coverage_fields
from effprof.trackers.base import Tracker, register_tracker


@register_tracker
class CoverageTracker(Tracker):
    name = "flop_coverage"

    @classmethod
    def enabled(cls, run):
        wanted = run.options.flop_coverage
        if wanted is None:
            wanted = run.device.type == "cpu"
        return bool(wanted) and run.options.count_flops and not run.count_only

    def fields(self, run):
        return coverage_fields(lambda: run.built.call(run.input_sets[0]), run.device)
