"""The row on the device's roofline: floors, achieved rates, verdict (see `effprof.measure.roofline`)."""
from effprof.measure.roofline import roofline_fields
from effprof.trackers.base import Tracker, register_tracker


@register_tracker
class RooflineTracker(Tracker):
    name = "roofline"

    @classmethod
    def enabled(cls, run):
        return not run.count_only

    def fields(self, run):
        if run.device.type == "cuda":
            from effprof.measure.calibrate import ceilings, tf32_enabled

            return roofline_fields(run.record.get("gflops"), run.counted_bytes, run.timing.median_ms,
                                   ceilings(run.device), run.record["dtype"], allow_tf32=tf32_enabled())
        if run.counted_bytes is None:
            return {}
        return roofline_fields(run.record.get("gflops"), run.counted_bytes, run.timing.median_ms, None,
                               run.record["dtype"])
