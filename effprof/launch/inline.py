"""The inline launcher: every row in this process, one after another; a `--tp N` row over its N ranks.

When a row leaves this process unable to measure another (a failed CUDA-graph capture whose state
`effprof.measure.modes.recover` cannot put back, a device-side assert), the remaining rows go to a fresh
worker process (`effprof.launch.pool`, one worker on the same device; a worker that is left unfit in turn is
replaced by a fresh one), and each of those records says so in `fresh_process` (the table's footer too).
"""
from __future__ import annotations

from typing import Any

from effprof.launch.base import OnRecord, Plan, register_launcher
from effprof.launch.torchrun import in_rank, measure_tp
from effprof.runner import measure, measure_many


def measure_row(config, timer=None, on_phase=None) -> dict[str, Any]:
    """One row here: `runner.measure`, or, for a `--tp N` row outside its ranks, the ranks started (or
    joined, under torchrun) by `effprof.launch.torchrun`, each of which measures its slice with the runner."""
    if config.options.tp > 1 and not in_rank():
        return measure_tp(config)
    return measure(config, on_phase=on_phase) if timer is None else measure(config, timer, on_phase)


def measure_rows(configs: list, on_record: OnRecord | None = None, on_phase=None,
                 raise_refusals: bool = False, stop_if_unfit: bool = False) -> list[dict[str, Any]]:
    """`runner.measure_many` (failures stay in their rows) with `--tp` rows routed to their ranks; with
    `stop_if_unfit` it stops after a row that left the process unfit (see `runner.measure_many`)."""
    return measure_many(configs, on_record=on_record, on_phase=on_phase, raise_refusals=raise_refusals,
                        measure_one=measure_row, stop_if_unfit=stop_if_unfit)


def hand_over(rest: list, first_row: int, after: dict[str, Any], on_record: OnRecord | None) -> list[dict[str, Any]]:
    """Measure `rest` (rows `first_row`... of the profile) in a fresh worker process on their device, because
    row `after` left this one unfit; each record gets `fresh_process` and its row number in the profile."""
    from effprof.launch.pool import measure_parallel, plan_slots

    note = f"after {after.get('label')!s} left the first process unfit ({after.get('process_unfit')})"

    def renumber(record):
        record["row"] = first_row + record.get("row", 0)
        record["fresh_process"] = note
        if on_record is not None:
            on_record(record)

    slots = plan_slots(None, 1, False, rest[0].options.device)
    return measure_parallel(rest, slots, renumber)


@register_launcher("inline")
def launch_inline(configs: list, plan: Plan, on_record: OnRecord | None = None) -> list[dict[str, Any]]:
    records = measure_rows(configs, on_record, plan.on_phase, plan.raise_refusals,
                           stop_if_unfit=not any(c.options.tp > 1 for c in configs))
    if len(records) < len(configs):  # the last row left this process unfit: the rest run in a fresh one
        records += hand_over(configs[len(records):], len(records), records[-1], on_record)
    return records
