"""Rows measured in this process, the step every launcher's process takes (inline, a pool worker, a Ray task):
`runner.measure_many` with `--tp` rows routed to their ranks (`effprof.launch.torchrun`)."""
from __future__ import annotations

from typing import Any

from effprof.launch.base import OnRecord
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
