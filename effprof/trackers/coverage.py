"""`flop_coverage`: the share of one call's time in ops with a FLOP formula (see `effprof.measure.coverage`).

One profiler pass after the timed region, so the row's own timing never runs under the profiler. Opt-in
on every device (`--flop-coverage`, or `--min-flop-coverage`): on CPU the pass costs about as much wall time
as the row's measurement (VMamba-T at 64 px: 23-29 s with it, 12 s without); on CUDA the profiler loads
CUPTI, which stays loaded after the session and can slow later kernels of the process by 10-20%
(pytorch/pytorch#144455), so the rows measured after it in a comparison would not be clean (`compare
--isolate` gives each row its own process). Its wall time is the record's `phase_coverage_s`.
"""
from effprof.measure.coverage import coverage_fields
from effprof.trackers.base import Tracker, register_tracker


@register_tracker
class CoverageTracker(Tracker):
    name = "flop_coverage"

    @classmethod
    def enabled(cls, run):
        return bool(run.options.flop_coverage) and run.options.count_flops and not run.count_only

    def fields(self, run):
        import time

        start = time.perf_counter()
        fields = coverage_fields(lambda: run.built.call(run.input_sets[0]), run.device)
        return {**fields, "phase_coverage_s": time.perf_counter() - start}
