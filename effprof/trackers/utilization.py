"""MFU and MBU on every row, each against the dense datasheet peak and the measured ceiling
(see `effprof.measure.utilization` for the conventions). Uses the FLOPs (`gflops`) and the bytes
(`moved_mib_lower_bound`, the stage split's `stage_decode_moved_mib`) that the counting trackers recorded,
so it runs after them; no extra pass over the model.
"""
from effprof.trackers.base import Tracker, register_tracker


@register_tracker
class UtilizationTracker(Tracker):
    name = "utilization"

    @classmethod
    def enabled(cls, run):
        return not run.count_only

    def fields(self, run):
        from effprof.measure.calibrate import CalibrationCacheError, cache_path, datasheet_ceilings, read_cached
        from effprof.measure.env import device_name
        from effprof.measure.utilization import utilization_fields

        on_cuda = run.device.type == "cuda"
        sheet = datasheet_ceilings(device_name(run.device)) if on_cuda else None
        try:
            measured = read_cached(cache_path(run.device))
        except CalibrationCacheError:  # the roofline tracker's row says so; MFU just goes without
            measured = None
        allow_tf32 = False
        if on_cuda:
            from effprof.measure.calibrate import tf32_enabled

            allow_tf32 = tf32_enabled()
        return utilization_fields(run.record, sheet, measured, allow_tf32)
