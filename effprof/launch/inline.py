"""The inline launcher: every row in this process, one after another; a `--tp N` row over its N ranks."""
from __future__ import annotations

from typing import Any

from effprof.core.registry import is_external
from effprof.launch.base import OnRecord, Plan, register_launcher
from effprof.launch.procs import crash_note
from effprof.launch.torchrun import in_rank, measure_tp
from effprof.runner import measure, measure_many


def measure_row(config, timer=None, on_phase=None) -> dict[str, Any]:
    """One row here: `runner.measure`, or, for a `--tp N` row outside its ranks, the ranks started (or
    joined, under torchrun) by `effprof.launch.torchrun`, each of which measures its slice with the runner."""
    if config.options.tp > 1 and not in_rank():
        return measure_tp(config)
    return measure(config, on_phase=on_phase) if timer is None else measure(config, timer, on_phase)


def measure_rows(configs: list, on_record: OnRecord | None = None, on_phase=None,
                 raise_refusals: bool = False) -> list[dict[str, Any]]:
    """`runner.measure_many` (failures stay in their rows) with `--tp` rows routed to their ranks."""
    return measure_many(configs, on_record=on_record, on_phase=on_phase, raise_refusals=raise_refusals,
                        measure_one=measure_row)


@register_launcher("inline")
def launch_inline(configs: list, plan: Plan, on_record: OnRecord | None = None) -> list[dict[str, Any]]:
    """Rows of user code (`FILE.py:FUNCTION`) run under `procs.crash_note`: a crash of the interpreter is one
    line that points at `--isolate` (the pool launcher, a worker process per row)."""
    user = [c.label or c.component for c in configs if is_external(c.component) and not c.component.startswith("hf:")]
    if not user:
        return measure_rows(configs, on_record, plan.on_phase, plan.raise_refusals)
    with crash_note(user):
        return measure_rows(configs, on_record, plan.on_phase, plan.raise_refusals)
