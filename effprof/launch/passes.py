"""`compare --processes N`: measure every row in N fresh processes, one pass after another, and pool them.

One process sees one state of the machine: where its allocator put the weights and inputs, which clock and
power state the GPU was in while each row ran. Two runs of the same command on an H200 moved a 53 µs row by
4% and a 0.25 ms row by 0.4%, beyond what one run's samples can show (benchmarks/RESULTS.md, compare-speed).
asv answers that by running each benchmark in two processes (its `processes`); effprof does the same:

- the profile is measured N times, each pass in its own worker process (effprof/launch/pool.py's pool, so
  `--gpus` / `--isolate` apply within a pass), passes one after another so that no two share the device;
  with `--gpus`, each pass runs a row on a GPU it has not used yet (while there is one: the first such
  GPU to free up takes it), so a row meets several boards (`gpu_index_by_process`) and its interval
  covers what differs between boards of one model too;
- a row's record is its first pass's record with the timing columns recomputed over the pooled samples:
  median, quantiles, mean, CV, calls, throughput, TFLOP/s and the roofline figures that divide by the
  latency; its 95% interval comes from a two-level bootstrap over processes and blocks of samples
  (`effprof.analysis.stats.pooled_median_ci95`), so it covers what differs between processes;
- `processes`, `latency_ms_process_medians`, `latency_samples_process_sizes`, `worker_by_process` (the pooled
  `latency_samples_ms` are the passes' samples one after another) say what was pooled. Columns that are
  not the whole-call latency (stages, energy, peak memory, generation) stay the first pass's.

A row that fails in some passes is pooled over the passes where it succeeded (`processes_ok`); one that
fails in every pass keeps its first failure.
"""
from __future__ import annotations

from typing import Any, Callable

from effprof.analysis.stats import pooled_median_ci95
from effprof.core.errors import UsageError
from effprof.measure.roofline import verdict
from effprof.measure.timing import TimingResult
from effprof.launch.base import OnRecord, Plan, register_launcher
from effprof.launch.pool import measure_parallel, plan_slots

# the roofline tracker's columns that are (something) / latency: rescaled by first median / pooled median
# (timing_fields recomputes throughput and TFLOP/s itself)
PER_LATENCY = ("achieved_gb_per_s", "pct_of_compute_ceiling", "pct_of_bandwidth_ceiling", "roofline_fraction")
MAX_PROCESSES = 16  # passes run one after another: past this, a typo rather than a plan


def check_processes(processes: int, tp: bool, device: str | None = None) -> None:
    if not 1 <= processes <= MAX_PROCESSES:
        raise UsageError(f"--processes: {processes} is not in 1..{MAX_PROCESSES}")
    if processes > 1 and device == "meta":
        raise UsageError("--processes with --device meta: nothing is timed, so there is nothing to pool")
    if processes > 1 and tp:
        raise UsageError("--processes with --tp: tensor-parallel rows start their own processes; "
                         "measure them in one pass")


def merge_passes(passes: list[dict[str, Any]]) -> dict[str, Any]:
    """One record from the same row's records of several passes (see the module docstring)."""
    from effprof.runner import timing_fields

    ok = [r for r in passes if r.get("status") == "ok" and r.get("latency_samples_ms")]
    if not ok:
        return dict(passes[0])
    first = ok[0]
    merged = dict(first)
    groups = [list(r["latency_samples_ms"]) for r in ok]
    pooled = TimingResult([x for g in groups for x in g], first.get("calls_per_block", 1), [],
                          first.get("timing_method", ""), 0, first.get("calls_per_sample", 1))
    merged.update(timing_fields(pooled, first["items_per_call"], first.get("gflops")))
    scale = first["latency_ms_median"] / merged["latency_ms_median"] if merged["latency_ms_median"] > 0 else 1.0
    for key in PER_LATENCY:  # the roofline columns, computed by their tracker from the first pass's median
        if first.get(key) is not None:
            merged[key] = first[key] * scale
    lo, hi = pooled_median_ci95(groups)
    merged.update(
        latency_ms_ci95_low=lo, latency_ms_ci95_high=hi,
        n_calls=sum(r.get("n_calls", 0) for r in ok), processes=len(passes), processes_ok=len(ok),
        latency_ms_process_medians=[r["latency_ms_median"] for r in ok],
        latency_samples_process_sizes=[len(g) for g in groups],
        timing_stop="/".join(str(r.get("timing_stop")) for r in ok),
        phase_timing_s=sum(r.get("phase_timing_s") or 0.0 for r in ok),
        wall_s=sum(r.get("wall_s") or 0.0 for r in passes),
    )
    merged["worker_by_process"] = [r.get("worker") for r in ok]
    if any(r.get("gpu_index") is not None for r in ok):
        merged["gpu_index_by_process"] = [r.get("gpu_index") for r in ok]
    if merged.get("verdict") is not None:
        merged["verdict"] = verdict(merged["latency_ms_median"], merged.get("compute_floor_ms"),
                                    merged.get("memory_floor_ms"))
    return merged


def measure_passes(configs: list, slots: list, processes: int, isolate: bool = False,
                   on_record: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Measure `configs` `processes` times, each pass on a fresh pool of `slots`; return merged records.
    `on_record` gets every row's merged record so far after each finished row (files stay current)."""
    per_row: list[list[dict[str, Any]]] = [[] for _ in configs]
    for _ in range(processes):
        # each pass puts a row on a slot (GPU) it has not used yet, while one is free: boards differ too
        avoid = {row: {r.get("worker") for r in records} for row, records in enumerate(per_row) if records}
        def finished(record: dict[str, Any]) -> None:
            row = record.get("row", 0)
            per_row[row].append(record)
            if on_record is not None:
                merged = merge_passes(per_row[row])
                merged["row"] = row
                on_record(merged)

        measure_parallel(configs, slots, on_record=finished, isolate=isolate, avoid=avoid)
    out = []
    for row, records in enumerate(per_row):
        merged = merge_passes(records)
        merged["row"] = row
        out.append(merged)
    return out


@register_launcher("passes")
def launch_passes(configs: list, plan: Plan, on_record: OnRecord | None = None) -> list[dict[str, Any]]:
    slots = plan.slots or plan_slots(None, 1, False, None)  # each pass in one fresh worker on the device
    return measure_passes(configs, slots, plan.processes, plan.isolate, on_record)
