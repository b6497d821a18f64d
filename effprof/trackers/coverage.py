"""`flop_coverage`: the share of one call's time in ops with a FLOP formula (see `effprof.measure.coverage`)."""
from effprof.measure.coverage import coverage_fields
from effprof.trackers.base import Tracker, register_tracker


@register_tracker
class CoverageTracker(Tracker):
    name = "flop_coverage"

    @classmethod
    def enabled(cls, run):
        return run.options.count_flops and not run.count_only

    def before(self, run):
        self.found = coverage_fields(lambda: run.built.call(run.input_sets[0]), run.device)

    def fields(self, run):
        return self.found
