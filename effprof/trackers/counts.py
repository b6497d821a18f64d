"""FLOPs (2 × MAC, FlopCounterMode's formulas plus effprof's) and the bytes lower bound of one call."""
from effprof.measure.bytes import count_flops_and_bytes
from effprof.trackers.base import Tracker, register_tracker


@register_tracker
class CountsTracker(Tracker):
    name = "flops_bytes"

    @classmethod
    def enabled(cls, run):
        return run.options.count_flops and not run.options.train  # --train: the training tracker counts

    def before(self, run):
        counts = count_flops_and_bytes(lambda: run.built.call(run.input_sets[0]))
        run.counted_bytes = counts.bytes
        run.record["gflops"] = counts.flops / 1e9
        run.record["mbytes_lower_bound"] = counts.bytes / 1e6
