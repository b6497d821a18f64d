"""What a saved record may hold, declared once: the columns that commands reading records back (`diff`,
`roofline --from-json`) use, each with its type and range, and the check that refuses a file that breaks
them in one line naming the record and the field.

A record is flat: text, numbers, booleans and null, lists of those (the raw timing samples, the per-rank
peaks) and mappings of those at most (`MAX_RECORD_DEPTH`). Columns not declared here pass if they are of
that shape; a declared column must hold its type: `status` one of `STATUSES`, times, rates and sizes
finite and inside [RECORD_VALUE_MIN, RECORD_VALUE_MAX] (zero only where zero can be measured), the timing
samples a list of such positive numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from effprof.core.errors import UsageError
from effprof.core.limits import MAX_RECORD_DEPTH, RECORD_VALUE_MAX, RECORD_VALUE_MIN

STATUSES = ("ok", "error", "OOM", "refused")  # what runner.measure_many writes


@dataclass(frozen=True)
class Column:
    """The type of one saved column: `text`, `int` (at least `low`), `number` (positive, or `zero_ok`),
    `samples` (a list of positive numbers), `choice` (one of `choices`), `flag` (a boolean)."""

    kind: str
    zero_ok: bool = False
    low: int = 0
    choices: tuple[str, ...] = ()
    floor: bool = True  # a nonzero magnitude below RECORD_VALUE_MIN is refused (False: a ratio may be tiny)


TEXT, POSITIVE, NONNEG = Column("text"), Column("number"), Column("number", zero_ok=True)
COLUMNS: dict[str, Column] = {
    **{k: TEXT for k in ("label", "component", "params", "dtype", "device", "unit", "exec_mode", "timing_mode",
                         "device_name", "gpu_name", "driver_version", "torch_version", "cuda_version", "verdict",
                         "error", "ceilings_source")},
    "status": Column("choice", choices=STATUSES),
    "batch": Column("int", low=1),
    **{k: POSITIVE for k in ("latency_ms_median", "latency_ms_p10", "latency_ms_p90", "latency_ms_mean",
                             "throughput_per_s", "peak_tflops", "peak_gb_per_s")},
    **{k: NONNEG for k in ("gflops", "tflops_per_s", "peak_mem_mib", "arithmetic_intensity_flop_per_byte",
                           "mbytes_lower_bound")},
    "latency_cv": Column("number", zero_ok=True, floor=False),
    "latency_samples_ms": Column("samples"),
    "latency_unsteady": Column("flag"),
}


def _number(value: Any, column: Column) -> str | None:
    """Why `value` is not a number of `column`, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "not a finite number"
    if not math.isfinite(value):
        return "not a finite number"
    if value == 0:
        return None if column.zero_ok else "not positive"
    if value < 0:
        return "negative" if column.zero_ok else "not positive"
    if value > RECORD_VALUE_MAX or (column.floor and value < RECORD_VALUE_MIN):
        return f"outside [{RECORD_VALUE_MIN:g}, {RECORD_VALUE_MAX:g}]"
    return None


def _problem(value: Any, column: Column) -> str | None:
    if column.kind == "text":
        return None if isinstance(value, str) else "not text"
    if column.kind == "choice":
        return None if isinstance(value, str) and value in column.choices else f"not one of {', '.join(column.choices)}"
    if column.kind == "flag":
        return None if isinstance(value, bool) else "not true or false"
    if column.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int) or value < column.low:
            return f"not an integer of at least {column.low}"
        return None
    if column.kind == "samples":
        if not isinstance(value, list):
            return "not a list of numbers"
        for i, x in enumerate(value):
            why = _number(x, POSITIVE)
            if why:
                return f"holds {x!r} at position {i}, {why}"
        return None
    return _number(value, column)


def _depth(value: Any, limit: int) -> bool:
    """True when `value` nests no deeper than `limit` lists/mappings (iterative: a deep one cannot recurse)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth >= limit:
                return False
            stack.extend((x, depth + 1) for x in (item.values() if isinstance(item, dict) else item))
    return True


def check_records(doc: Any, where: str) -> list[dict[str, Any]]:
    """The records of a parsed `--json` file, checked against `COLUMNS`; one-line UsageError otherwise."""
    records = doc.get("records") if isinstance(doc, dict) else None
    if not isinstance(records, list):
        raise UsageError(f"{where}: not effprof records (expected an object with a \"records\" list, as --json writes)")
    for i, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise UsageError(f"{where}: record {i} is a {type(record).__name__}, not a mapping of fields")
        for key, value in record.items():
            if value is None:
                continue
            column = COLUMNS.get(key)
            why = _problem(value, column) if column is not None else None
            if why is None and not _depth(value, MAX_RECORD_DEPTH - 2):
                why = f"nested deeper than a record holds ({MAX_RECORD_DEPTH} levels in the file)"
            if why is None and key.startswith("param_") and isinstance(value, (list, dict)):
                why = "not a single value"
            if why:
                shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
                raise UsageError(f"{where}: record {i}: {key} is {shown}, {why}")
    return records
