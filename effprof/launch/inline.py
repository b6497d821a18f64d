"""The inline launcher: every row in this process, one after another; a `--tp N` row over its N ranks.

When a row leaves this process unable to measure another (a failed CUDA-graph capture whose state
`effprof.measure.modes.recover` cannot put back, a device-side assert), the remaining rows go to a fresh
worker process (`effprof.launch.pool`, one worker on the same device; a worker that is left unfit in turn is
replaced by a fresh one), and each of those records says so in `fresh_process` (the table's footer too).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from effprof.core.registry import is_external
from effprof.launch.base import OnRecord, Plan, register_launcher
from effprof.launch.pool import measure_parallel, plan_slots
from effprof.launch.procs import crash_note
from effprof.launch.rows import measure_row, measure_rows

__all__ = ["launch_inline", "hand_over", "measure_row", "measure_rows"]


def hand_over(rest: list, first_row: int, after: dict[str, Any], on_record: OnRecord | None) -> list[dict[str, Any]]:
    """Measure `rest` (rows `first_row`... of the profile) in a fresh worker process on their device, because
    row `after` left this one unfit; each record gets `fresh_process` and its row number in the profile."""
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
    """Rows of user code (`FILE.py:FUNCTION`) run under `procs.crash_note`: a crash of the interpreter is one
    line that points at `--isolate` (the pool launcher, a worker process per row)."""
    user = [c.label or c.component for c in configs if is_external(c.component) and not c.component.startswith("hf:")]
    with crash_note(user) if user else nullcontext():
        records = measure_rows(configs, on_record, plan.on_phase, plan.raise_refusals,
                               stop_if_unfit=not any(c.options.tp > 1 for c in configs))
    if len(records) < len(configs):  # the last row left this process unfit: the rest run in a fresh one
        records += hand_over(configs[len(records):], len(records), records[-1], on_record)
    return records
