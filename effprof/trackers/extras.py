"""Facts a component computes once on real inputs (`Built.extras`: fidelity figures, state sizes)."""
from effprof.trackers.base import Tracker, register_tracker


@register_tracker
class ExtrasTracker(Tracker):
    name = "extras"

    @classmethod
    def enabled(cls, run):
        return run.built.extras is not None and not run.count_only and not run.options.train

    def before(self, run):
        run.record.update(run.built.extras(run.built.module, run.input_sets[0]))
