"""FLOPs (2 × MAC, FlopCounterMode's formulas plus effprof's) and the bytes lower bound of one call.

A call that is its stages (`Built.stages` with no forward of its own, or `stages_count_the_call`) is counted
stage by stage along the chain, and the per-stage counts are left in `run.shared["stage_counts"]` for the stage
split (`effprof.trackers.stages`), which would otherwise count the same ops a second time (a whole generation of
a 7B LM: about 50 s on an H100's host)."""
from effprof.measure.bytes import count_flops_and_bytes
from effprof.trackers.base import Tracker, register_tracker


@register_tracker
class CountsTracker(Tracker):
    name = "flops_bytes"

    @classmethod
    def enabled(cls, run):
        return run.options.count_flops and not run.options.train  # --train: the training tracker counts

    def before(self, run):
        built = run.built
        if built.stages and (built.forward is None or built.stages_count_the_call):
            carry, per_stage = run.input_sets[0], {}
            for stage in built.stages:
                out = []
                per_stage[stage.name] = count_flops_and_bytes(lambda: out.append(stage.run(carry)))
                carry = out[0]
            run.shared["stage_counts"] = per_stage
            flops, nbytes = sum(c.flops for c in per_stage.values()), sum(c.bytes for c in per_stage.values())
        else:
            counts = count_flops_and_bytes(lambda: built.call(run.input_sets[0]))
            flops, nbytes = counts.flops, counts.bytes
        run.counted_bytes = nbytes
        run.record["gflops"] = flops / 1e9
        run.record["moved_mib_lower_bound"] = nbytes / 2**20
