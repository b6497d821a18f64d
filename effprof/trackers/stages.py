"""The stage split of a staged component (`Built.stages`): time, params, FLOPs, bytes and peak memory per stage.

Time: after the whole call has been timed, a second run of the same call stamps the device timeline
between the stages (`effprof.measure.stages`). Under `--graphs` each stage is captured as its own CUDA
graph, chained through the static output of the one before, so the split times the device's work as the
whole does; otherwise the stages run eagerly. Under `--compile` each stage is its compiled step, as the row
timed it (`effprof.measure.execution.compiled_stages`; Dynamo's cache serves the compiled code again). Each
stage's FLOPs and bytes are counted on the input it receives in the call; its peak memory is the peak
above the allocation before one eager run of it alone (CUDA).

Columns: `stage_names`, per stage `stage_<name>_ms` (median), `stage_<name>_share` (of the stages' sum),
`stage_<name>_params`, `stage_<name>_gflops`, `stage_<name>_moved_mib`, `stage_<name>_peak_mem_mib`, and
`stages_sum_ms` with `stages_sum_over_whole` = that sum / the whole call's median latency (1.0 = the parts add
up to the whole; above 1 by the cost of the stamps and of running stages apart), `stages_whole_ms` = the median
of the stamped calls' whole (first stamp to last, the same calls as the stages), and `stages_additive` = the
sum is within 5% of the latency. A split that is not additive is kept in the record but is not a split of the
row's latency: the table's footer names such rows with their ratio. Eager rows whose time is the host's launch
work (batch 1 on a GPU) and any row on a busy CPU host (the whole and the split are two runs, minutes apart
in a loaded machine's terms) are where it happens; under `--graphs` each stage replays its own graph and
the split adds up.
"""
from __future__ import annotations

from effprof.measure.bytes import count_flops_and_bytes
from effprof.measure.execution import compile_stages, compiles_by_stage
from effprof.measure.memory import PeakMemory, count_params
from effprof.measure.modes import graphed_callable, graphed_stages
from effprof.measure.stages import time_stages
from effprof.trackers.base import Tracker, register_tracker

ADDITIVE_TOLERANCE = 0.05  # |stages sum / whole - 1| at most this: the split adds up to the latency


def counts_and_peaks(run, stages, fields: dict) -> None:
    """Along one eager run of the chain, per stage: its params, its FLOPs and bytes (those the counts tracker made
    along its own chain, `run.shared["stage_counts"]`, else counted here) and its peak memory (CUDA), the run that
    measures the peak giving the next stage its input. A count-only row whose counts are all made runs nothing."""
    counted = run.shared.get("stage_counts", {})
    carry = run.input_sets[0]
    for i, stage in enumerate(stages):
        key = f"stage_{stage.name}"
        fields[f"{key}_params"] = count_params(stage.module)[0]
        out: list = []
        if run.options.count_flops:
            counts = counted.get(stage.name) or count_flops_and_bytes(lambda: out.append(stage.run(carry)))
            fields[f"{key}_gflops"] = counts.flops / 1e9
            fields[f"{key}_moved_mib"] = counts.bytes / 2**20
        if not run.count_only:
            peak = PeakMemory(run.device)
            if peak.supported:
                peak.start()
                out = [stage.run(carry)]
                fields[f"{key}_peak_mem_mib"] = peak.peak_mib()
        later = stages[i + 1:]
        if later and (not run.count_only or (run.options.count_flops and any(s.name not in counted for s in later))):
            carry = out[0] if out else stage.run(carry)  # a later stage runs on it


@register_tracker
class StagesTracker(Tracker):
    name = "stages"

    @classmethod
    def enabled(cls, run):
        # not in --tp ranks: its time-sized loops would leave the ranks waiting on each other's collectives
        return (bool(run.built.stages) and len(run.built.stages) > 1 and not run.options.train
                and run.options.tp == 1)

    def fields(self, run):
        stages = run.built.stages
        fields = {"stage_names": ",".join(s.name for s in stages)}
        with run.built.counted():  # counts and peaks of one eager call (Built.counting)
            counts_and_peaks(run, stages, fields)
        if run.count_only:
            return fields
        names = [s.name for s in stages]
        compiled = compiles_by_stage(run.built, run.options)
        if compiled:  # the steps the row timed (`execution.compiled_stages`): Dynamo's cache, no new compile
            stages = compile_stages(stages)
        if run.options.graphs and not run.built.handles_exec_mode and any(s.host_sync for s in stages):
            fns = [s.run for s in graphed_stages(stages, run.device, {s.name for s in stages if s.host_sync})]
            method = "cuda-events between stages, a CUDA graph per stage (host read-back stages eager)"
        elif run.options.graphs and not run.built.handles_exec_mode:
            fns, static = [], run.input_sets[0]
            for stage in stages:
                replay = graphed_callable(lambda s=stage, x=static: s.run(x), None, run.device)
                static = replay()
                fns.append(lambda _carry, r=replay: r())
            method = "cuda-events between stages, one CUDA graph per " + ("compiled stage" if compiled else "stage")
        else:
            fns = [s.run for s in stages]
            method = ("cuda-events between stages" if run.device.type == "cuda" else "perf_counter between stages")
            method += (", as the component runs them" if run.built.handles_exec_mode
                       else ", compiled" if compiled else ", eager")
        timing = time_stages(names, fns, run.input_sets[0], run.device, warmup_s=run.options.warmup,
                             min_time_s=run.options.min_time)
        total = sum(timing.median_ms(i) for i in range(len(stages)))
        for i, name in enumerate(names):
            fields[f"stage_{name}_ms"] = timing.median_ms(i)
            fields[f"stage_{name}_share"] = timing.median_ms(i) / total if total > 0 else None
        ratio = total / run.timing.median_ms if run.timing.median_ms > 0 else None
        fields.update(stages_sum_ms=total, stage_method=method, stages_sum_over_whole=ratio,
                      stages_whole_ms=timing.whole_median_ms,
                      stages_additive=None if ratio is None else abs(ratio - 1.0) <= ADDITIVE_TOLERANCE)
        return fields
