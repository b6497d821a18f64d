"""CSV and JSON output, written atomically (temporary file in the same folder, then rename).

The JSON file is `{"effprof": METADATA, "records": [flat records]}`; METADATA says what wrote it (version,
command line, time), the environment the rows share and, under "columns", each key's unit and meaning (from
the declaration in effprof.core.column_table; `effprof columns` prints the whole dictionary). The records
load into pandas in one call:

    import json, pandas as pd
    df = pd.json_normalize(json.load(open("out.json"))["records"])

(or `pd.read_csv("out.csv")` for the CSV, which holds the same columns).
"""
from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

from effprof.core.columns import leading, lookup
from effprof.core.fileio import is_stream, write_atomic

LEADING = leading()  # the first columns, in the order effprof.core.column_table declares them


def columns(records: list[dict[str, Any]]) -> list[str]:
    """CSV columns: the leading ones, then every other key in first-seen order; lists (the raw timing
    samples, declared with unit `list`) are left to the JSON."""
    seen: dict[str, None] = {}
    for key in LEADING:
        if any(key in r for r in records):
            seen[key] = None
    for r in records:
        for key, value in r.items():
            if not _json_only(key, value):
                seen.setdefault(key, None)
    return list(seen)


def _json_only(key: str, value: Any) -> bool:
    column = lookup(key)
    return (column is not None and column.json_only) or isinstance(value, (list, tuple, dict))


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_csv(records: list[dict[str, Any]]) -> str:
    """One row per record; list fields (the raw timing samples) are left out: they live in the JSON."""
    buf = io.StringIO()
    lists = {k for r in records for k, v in r.items() if _json_only(k, v)}
    names = [c for c in columns(records) if c not in lists]
    writer = csv.DictWriter(buf, fieldnames=names, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: "" if _clean(v) is None else v for k, v in r.items() if k not in lists})
    return buf.getvalue()


# Units and conventions of the columns, written into every JSON file's metadata.
CONVENTIONS = {
    "time": "*_ms columns in milliseconds; *_s columns in seconds",
    "latency_cv": "coefficient of variation std/mean of the latency samples, a fraction (0.02 = 2%)",
    "max_cv": "a fraction, as latency_cv",
    "memory": "*_mib columns in MiB (2^20 bytes); bandwidth *_gb_per_s in GB/s (1e9 bytes per second)",
    "flops": "gflops = GFLOP (1e9) per call for the whole batch, FLOP = 2 x multiply-accumulate; "
             "tflops_per_s = gflops / latency_ms",
    "throughput_per_s": "items (unit column: img, tok, seq) per second at the median latency",
    "peak_mem_mib": "see peak_mem_method: CUDA allocator peak above the start, or the process resident set on CPU",
    "latency_unsteady": "True when latency_cv is above the unsteady threshold; ratios against such a row carry it",
    "mfu": "mfu_*_pct = 100 x counted FLOPs of the whole call / median latency / dense matmul peak of the dtype "
           "(datasheet: NVIDIA's dense figure; measured: effprof calibrate); each row's mfu_convention names its peaks",
    "mbu": "mbu_*_pct (decode and generation rows) = 100 x bytes one decode step reads (weights + KV cache or SSM "
           "state) / time per output token / peak bandwidth (Databricks); each row's mbu_convention says more",
}
LOAD_WITH = 'pandas: pd.json_normalize(json.load(open(PATH))["records"])'
SHARED = ("device_name", "device_type", "cpu_model", "torch_num_threads", "torch_version", "cuda_version",
          "driver_version", "transformers_version", "triton_version", "python_version", "effprof_version")


def column_units(records: list[dict[str, Any]]) -> dict[str, str]:
    """`{key: "unit: meaning"}` for every key of `records` (`effprof columns` prints the whole dictionary)."""
    units: dict[str, str] = {}
    for r in records:
        for key in r:
            if key not in units:
                column = lookup(key)
                units[key] = f"{column.unit}: {column.meaning}" if column else "undeclared"
    return units


def metadata(command_line: str = "", records: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The JSON metadata block: who wrote the file, how to load it, the units, and the environment facts
    that every record agrees on (a fact that differs between rows stays in the rows only)."""
    import datetime as dt
    import platform

    from effprof.core.version import __version__

    meta: dict[str, Any] = {
        "effprof_version": __version__,
        "written_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command_line": command_line or None,
        "hostname": platform.node(),
        "load_with": LOAD_WITH,
        "conventions": CONVENTIONS,
        "columns": column_units(records or []),
    }
    for key in SHARED:
        values = {r.get(key) for r in records or [] if key in r}
        if len(values) == 1:
            meta[key] = values.pop()
    return meta


def to_json(records: list[dict[str, Any]], meta: dict[str, Any] | None = None) -> str:
    """The JSON document; `meta` (e.g. from `metadata`) is completed with the facts the records share."""
    full = {**metadata(records=records), **{k: v for k, v in (meta or {}).items() if v is not None}}
    full["columns"] = column_units(records)
    doc = {"effprof": full, "records": [{k: _clean(v) for k, v in r.items()} for r in records]}
    return json.dumps(doc, indent=1) + "\n"


def write_records(records: list[dict[str, Any]], csv_path: str | None = None, json_path: str | None = None,
                  meta: dict[str, Any] | None = None, partial: bool = False) -> None:
    """Write CSV and/or JSON. "-" is standard output. `partial` (a comparison's rewrite after each row)
    skips standard output and other streams (devices, FIFOs), which get the records once, at the end."""
    for path, render in ((csv_path, lambda: to_csv(records)), (json_path, lambda: to_json(records, meta))):
        if not path:
            continue
        if path == "-":
            if not partial:
                sys.stdout.write(render())
                sys.stdout.flush()
        elif not (partial and is_stream(Path(path).expanduser())):
            write_atomic(path, render())


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """Read a CSV written by effprof back, converting numbers (the inverse of `to_csv`)."""
    with open(path, newline="") as fh:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def read_json(path: str | Path) -> list[dict[str, Any]]:
    with open(path) as fh:
        return json.load(fh)["records"]


def load_records(path: str | Path, option: str = "--from-json", needs: str = "") -> list[dict[str, Any]]:
    """Records saved with `--json`, checked before any is used: a regular file (not a FIFO or a device) of at
    most MAX_RECORDS_BYTES, UTF-8 JSON, an object whose "records" is a list of mappings whose columns hold
    their declared types (`effprof.core.records`). Each refusal is one line naming the file, the record and
    the field. `needs` is what to say when a CSV is given instead."""
    from effprof.core.errors import UsageError
    from effprof.core.fileio import read_bounded
    from effprof.core.limits import MAX_RECORDS_BYTES
    from effprof.core.records import check_records

    where = f"{option} {path}".strip()
    data = read_bounded(path, option, MAX_RECORDS_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{where}: not UTF-8 text") from None
    try:
        doc = json.loads(text)
    except RecursionError:
        raise UsageError(f"{where}: JSON nested deeper than a records file can be") from None
    except ValueError as exc:
        first = text.lstrip().split("\n", 1)[0]
        if str(path).lower().endswith(".csv") or (first.startswith("label,") or ",component," in first):
            raise UsageError(f"{where}: a CSV; {needs or 'this needs the JSON records written with --json'}") \
                from None
        raise UsageError(f"{where}: not JSON ({str(exc).splitlines()[0][:120]})") from None
    return check_records(doc, where)


def _parse(text: str) -> Any:
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(text, text)
