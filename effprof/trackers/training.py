"""`--train`: the training step's memory split, FLOPs and parameter counts (see `effprof.measure.training`).

`before` makes the step (a fresh optimizer over the trainable parameters), measures the memory split on
its first step (weights, gradients, optimizer state, activations; CUDA allocator deltas, CPU live tensor
sizes) and counts forward and forward+backward FLOPs; `gflops` is then forward+backward, so TFLOP/s is the
step's. The runner times `run.shared["train_step"]` (a `StepCall`) in the execution mode asked for.
"""
from effprof.trackers.base import Tracker, register_tracker


@register_tracker
class TrainingTracker(Tracker):
    name = "training"

    @classmethod
    def enabled(cls, run):
        return run.options.train and not run.count_only

    def before(self, run):
        from effprof.measure.training import TrainOptions, train_mode

        opts = run.options
        call, fields = train_mode(run.built, run.input_sets[0],
                                  TrainOptions(opts.optimizer, grad_checkpointing=opts.grad_checkpointing),
                                  graphs=opts.graphs, name=run.config.component, count_flops=opts.count_flops)
        run.shared["train_step"] = call
        run.record.update(fields)
