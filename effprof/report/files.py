"""CSV and JSON output, written atomically (temporary file in the same folder, then rename)."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from effprof.fileio import write_atomic

# Leading columns in this order; every other key follows in first-seen order.
LEADING = ["label", "component", "params", "batch", "dtype", "device", "unit", "status",
           "latency_ms_median", "latency_ms_p10", "latency_ms_p90", "latency_cv", "throughput_per_s",
           "peak_mem_mib", "weights_mib", "params_total", "params_trainable", "gflops", "tflops_per_s"]


def columns(records: list[dict[str, Any]]) -> list[str]:
    """CSV columns: the leading ones, then every other key in first-seen order; lists (the raw timing
    samples) are left to the JSON."""
    seen: dict[str, None] = {}
    for key in LEADING:
        if any(key in r for r in records):
            seen[key] = None
    for r in records:
        for key, value in r.items():
            if not isinstance(value, (list, tuple, dict)):
                seen.setdefault(key, None)
    return list(seen)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_csv(records: list[dict[str, Any]]) -> str:
    """One row per record; list fields (the raw timing samples) are left out: they live in the JSON."""
    buf = io.StringIO()
    lists = {k for r in records for k, v in r.items() if isinstance(v, (list, tuple, dict))}
    names = [c for c in columns(records) if c not in lists]
    writer = csv.DictWriter(buf, fieldnames=names, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: "" if _clean(v) is None else v for k, v in r.items() if k not in lists})
    return buf.getvalue()


def to_json(records: list[dict[str, Any]], meta: dict[str, Any] | None = None) -> str:
    doc = {"effprof": meta or {}, "records": [{k: _clean(v) for k, v in r.items()} for r in records]}
    return json.dumps(doc, indent=1) + "\n"


def write_records(records: list[dict[str, Any]], csv_path: str | None = None, json_path: str | None = None,
                  meta: dict[str, Any] | None = None) -> None:
    if csv_path:
        write_atomic(csv_path, to_csv(records))
    if json_path:
        write_atomic(json_path, to_json(records, meta))


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """Read a CSV written by effprof back, converting numbers (the inverse of `to_csv`)."""
    with open(path, newline="") as fh:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def read_json(path: str | Path) -> list[dict[str, Any]]:
    with open(path) as fh:
        return json.load(fh)["records"]


def _parse(text: str) -> Any:
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(text, text)
