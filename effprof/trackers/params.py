"""Parameters and weight bytes of the component (total and trainable; LoRA's frozen base is not trainable)."""
from effprof.measure.memory import MIB, count_params, tensor_bytes
from effprof.trackers.base import Tracker, register_tracker


@register_tracker
class ParamsTracker(Tracker):
    name = "params"

    def before(self, run):
        total, trainable = count_params(run.built.module)
        run.record.update(params_total=total, params_trainable=trainable,
                          weights_mib=tensor_bytes(run.built.module) / MIB)
