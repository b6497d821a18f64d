"""fvcore's and thop's counts of the same call beside effprof's (`--flops-crosscheck`, the flops extra)."""
from effprof.trackers.base import Tracker, register_tracker


@register_tracker
class CrosscheckTracker(Tracker):
    name = "crosscheck"

    @classmethod
    def enabled(cls, run):
        return run.options.flops_crosscheck and not run.count_only

    def fields(self, run):
        from effprof.measure.crosscheck import crosscheck

        return crosscheck(run.built, run.input_sets[0])
