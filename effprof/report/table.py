"""Rich tables of records: every column names its unit."""
from __future__ import annotations

import re
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich import box
from rich.table import Table

from effprof.core.columns import views
from effprof.report.cells import (ABOVE_ROOF, BELOW_RESOLUTION, UNRELIABLE, UNSTEADY,  # noqa: F401
                                  _num, cell_function, plain)

def _columns():
    return [(view.header, cell_function(view)) for view in views()]


COLUMNS = _columns()  # (header, function of a record), one per view, in the order of the declaration
VIEWS = views()
HOISTED = ("batch", "dtype", "device", "mode")  # shown once in the title when every row agrees
RATIOS = ("speedup", "params_ratio", "gflops_ratio", "mem_ratio")


def column_key(header: str) -> str:
    for view in VIEWS:
        if header in (view.header, view.brief_header):
            return view.key

    return re.sub(r"[^a-z0-9]+", "_", header.split("\n")[0].lower()).strip("_")


def column_keys() -> list[str]:
    return [view.key for view in VIEWS]


def chosen_columns(records: list[dict[str, Any]], columns: str = "brief") -> list[int]:
    """Indices into COLUMNS for `--columns full|brief|KEY,KEY,...` (a list keeps its order). Brief shows the
    views declared `brief`, and those declared `present` when a row has a value (what a component or flag
    exists for: fidelity, tokens in→out, top-1, fvcore/thop, TTFT/TPOT, MFU, ...); it shows the median latency
    only, leaves out a ratio column whose value is the same on every row (params ratio 1 when only the input
    changes), and adds the FLOP coverage when a row is marked below --min-flop-coverage; `records_table`
    puts the parameters under the row's label."""
    from effprof.core.errors import UsageError

    keys = column_keys()
    if columns == "full":
        return [i for i, k in enumerate(keys) if k != "latency_median"]
    if columns == "brief":
        wanted = []
        for i, view in enumerate(VIEWS):
            if view.shown == "brief" or (view.shown == "present" and any(
                    COLUMNS[i][1](r) not in (None, "-") for r in records)):
                wanted.append(view.key)
        for i, k in enumerate(keys):
            if k in RATIOS and k != "speedup" and k in wanted and len(records) > 1 and \
                    len({COLUMNS[i][1](r) for r in records}) == 1:
                wanted.remove(k)
        if any(r.get("flop_coverage_low") for r in records):
            wanted.append("flop_cov")
        return [i for i, k in enumerate(keys) if k in wanted]
    picked = [k.strip() for k in columns.split(",") if k.strip()]
    unknown = [k for k in picked if k not in keys]
    if unknown or not picked:
        raise UsageError(f"--columns: unknown column {unknown[0] if unknown else columns!r}; use full, brief or "
                         f"a comma-separated list of: {', '.join(keys)}")
    return [keys.index(k) for k in picked]


def cell_text(header: str, value: Any, newline: str = "\n") -> str:
    """A cell as text; a params string breaks after its commas (never inside a name=value)."""
    text = "-" if value is None else str(value)
    return ("," + newline).join(param_items({"params": text})) if column_key(header) == "params" else text


def table_cells(records: list[dict[str, Any]], columns: str = "brief", newline: str = "\n"
                ) -> tuple[list[str], list[str], list[list[str]], list[bool]]:
    """What a table of `records` shows: (facts common to every row, for the title; headers; rows of cell
    text; left-justified per column). Shared by the terminal table and the Markdown/HTML files; `newline`
    is how a cell breaks a line."""
    return _table_parts(records, columns, newline)[:4]


def _table_parts(records, columns="brief", newline="\n", leave_out=()):
    """`table_cells`, and the views shown (indices into VIEWS); `leave_out`: view keys not to show."""
    cells = [[fn(r) for _, fn in COLUMNS] for r in records]
    headers = [h for h, _ in COLUMNS]
    shown = [i for i in chosen_columns(records, columns) if any(row[i] not in (None, "-") for row in cells)
             and VIEWS[i].key not in leave_out]
    common = []
    for name in HOISTED:
        i = headers.index(name)
        values = {row[i] for row in cells}
        if len(records) > 0 and len(values) == 1 and i in shown:
            shown.remove(i)
            common.append(f"{name} {values.pop()}")
    if columns == "brief" and records:  # the parameters that tell rows apart go under the label, one a line
        differ = [varying_params(records, r) for r in records]
        if len(records) > 1:
            common += [kv for kv in param_items(records[0]) if kv not in differ[0]]
        for row, r, extra in zip(cells, records, differ):
            row[0] = newline.join([str(row[0])] + [kv for kv in extra if kv not in str(r.get("label") or "")])
    names = [(VIEWS[i].brief_header or headers[i]) if columns == "brief" else headers[i] for i in shown]
    rows = [[cell_text(headers[i], row[i], newline) for i in shown] for row in cells]
    return common, names, rows, [i < 6 for i in shown], shown


def records_table(records: list[dict[str, Any]], title: str = "", columns: str = "brief",
                  width: int | None = None, left_out: list[str] | None = None) -> Table:
    """The rich table. With `width` (the terminal's), views are left out, least needed first (`View.priority`),
    until the table fits without cutting a cell: a number is never truncated; the headers of the views left
    out (their keys) are appended to `left_out`."""
    dropped: list[str] = []
    while True:
        table, shown = _rich_table(records, title, columns, dropped)
        if width is None or _min_width(table) <= width:
            break
        candidates = [i for i in shown if VIEWS[i].priority > 0]
        if not candidates:
            break
        worst = max(candidates, key=lambda i: (VIEWS[i].priority, i))
        dropped.append(VIEWS[worst].key)
    if left_out is not None:
        left_out += dropped
    return table


def _min_width(table: Table) -> int:
    from rich.console import Console

    probe = Console(width=10_000)
    return probe.measure(table).minimum


def _rich_table(records, title, columns, leave_out):
    common, headers, rows, left, shown = _table_parts(records, columns, leave_out=leave_out)
    if common:
        title = f"{title}  ({', '.join(common)})" if title else ", ".join(common)
    table = Table(title=title or None, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True)
    for j, (header, is_left) in enumerate(zip(headers, left)):
        lines = [line for row in rows for line in row[j].split("\n")]
        words = lines if VIEWS[shown[j]].fmt == "stages" else [w for line in lines for w in line.split(" ")]
        words += header.split()
        # a number (or a word) is never cut: the column is at least as wide as its longest word
        table.add_column(escape(header), justify="left" if is_left else "right",
                         no_wrap=column_key(header) in ("params", "row"),
                         min_width=max((len(w) for w in words), default=1))
    for row in rows:
        table.add_row(*[escape(cell) for cell in row])
    return table, shown


def param_items(record: dict[str, Any]) -> list[str]:
    """The `name=value` items of a record's params text; a value may hold commas (depths=1,1,2,1)."""
    return [kv for kv in re.split(r",(?=[A-Za-z_][A-Za-z0-9_]*=)", str(record.get("params") or "")) if kv]


def varying_params(records: list[dict[str, Any]], record: dict[str, Any]) -> list[str]:
    """`name=value` items of `record`'s params text that are not the same on every row (all of them for one row)."""
    items = param_items
    common = set(items(records[0])).intersection(*(set(items(r)) for r in records[1:])) if len(records) > 1 else set()
    return [kv for kv in items(record) if kv not in common]


def footer(records: list[dict[str, Any]], columns: str = "brief", left_out: tuple[str, ...] | list[str] = ()) -> str:
    """Notes that apply to the whole table (environment, conventions); a note that explains a column is
    written only when the table (`columns`, less the view keys `left_out`) shows that column."""
    if not records:
        return ""
    shown = {VIEWS[i].key for i in _table_parts(records, columns, leave_out=tuple(left_out))[4]}
    r = records[0]
    bits = [f"{r.get('device_name', '?')}", f"torch {r.get('torch_version', '?')}"]
    if r.get("timing_method"):
        bits.append(f"timing: {r['timing_method']}, {r.get('timing_mode', 'warm')}")
    notes = {x.get("peak_mem_note") for x in records if x.get("peak_mem_note")}
    methods = sorted({x["peak_mem_method"] for x in records if x.get("peak_mem_method")})
    errors = [f"{x['label']}: {x['error']}" for x in records if x.get("error")]
    lines = ["; ".join(bits) + "; FLOPs = 2×MAC per call (whole batch); MiB = 2^20 bytes"
             + ("; CV = std/mean of the samples, a fraction" if "cv" in shown else "")]
    lines += [f"peak mem = {m}" for m in methods if "peak_mem" in shown]
    phases = {name: sum(x.get(f"phase_{name}_s") or 0.0 for x in records)
              for name in ("build", "count", "warmup", "timing", "passes")}
    if any(phases.values()):  # every phase: the rest of the rows' wall time (process start, imports) as "other"
        wall = sum(x.get("wall_s") or 0.0 for x in records)
        phases["other"] = max(0.0, wall - sum(phases.values())) if wall else 0.0
        lines.append("time spent (all rows): " + ", ".join(
            f"{name.replace('warmup', 'warm-up').replace('passes', 'passes after timing')} {seconds:.1f} s"
            for name, seconds in phases.items()) + (f" (wall {wall:.1f} s)" if wall else ""))
    lines += (sorted(notes) + exec_notes(records) + unsteady_notes(records) + ratio_notes(records, shown)
              + host_bound_notes(records) + stage_split_notes(records)
              + (train_notes(records) if "train_mib" in shown else [])
              + (coverage_notes(records) if "flop_cov" in shown else [])
              + (energy_notes(records) if shown & {"energy", "energy_above_idle"} else [])
              + utilization_notes(records, shown) + column_notes(records, shown) + errors + fresh_process_notes(records))
    return "\n".join(lines)


def exec_notes(records: list[dict[str, Any]]) -> list[str]:
    """How the rows were executed where that differs from what the profile or the options asked (a graphs
    default that falls back to eager off CUDA; eager by request: the host-bound, as-deployed figure)."""
    notes: dict[str, list[str]] = {}
    for r in records:
        if r.get("exec_note"):
            notes.setdefault(str(r["exec_note"]), []).append(str(r.get("label", "?")))
    return [f"{note} ({', '.join(rows) if len(rows) < len(records) else 'every row'})" for note, rows in notes.items()]


def stage_split_notes(records: list[dict[str, Any]]) -> list[str]:
    """One line naming the rows whose stage split does not add up to their latency (within 5%)."""
    rows = [r for r in records if r.get("stages_additive") is False]
    if not rows:
        return []
    parts = ", ".join(f"{r.get('label', '?')} (stages sum / whole = {r['stages_sum_over_whole']:.2f})" for r in rows)
    return [f"stage split not additive: {parts}: the stage times (a separate run, stamped between stages) do not add "
            "up to the row's latency within 5%, so they are not a split of it (host-bound eager rows and a busy "
            "host do this; --graphs times the device's work)"]


def fresh_process_notes(records: list[dict[str, Any]]) -> list[str]:
    """Rows that left their process unfit for the next, and rows measured in a fresh process because of it."""
    lines = [f"{r.get('label', '?')}: left its process unfit for the next row ({r['process_unfit']}); the rows after "
             "it ran in a fresh process" for r in records if r.get("process_unfit")]
    moved = [r for r in records if r.get("fresh_process")]
    if moved:
        lines.append(f"{', '.join(str(r.get('label', '?')) for r in moved)}: measured in a fresh worker process "
                     f"({moved[0]['fresh_process']})")
    return lines


def ratio_notes(records: list[dict[str, Any]], shown: set[str]) -> list[str]:
    """Why a ratio reads `~` (too unsteady to mean anything) and what `below resolution` is."""
    lines = []
    unreliable = [r for r in records if r.get("ratio_unreliable")]
    if unreliable and shown & set(RATIOS):
        reasons = sorted({str(r.get("speedup_note")) for r in unreliable if r.get("speedup_note")})
        lines.append(f"{UNRELIABLE} ratio not shown: {', '.join(str(r.get('label', '?')) for r in unreliable)}"
                     + (f": {'; '.join(reasons)}" if reasons else ": the rows are too unsteady for it"))
    below = [r for r in records if r.get("peak_mem_below_resolution")]
    if below and "peak_mem" in shown:
        resolution = {r.get("peak_mem_resolution_mib") for r in below} - {None}
        lines.append(f"{BELOW_RESOLUTION}: the peak memory is below what the method resolves"
                     + (f" ({', '.join(_num(x) for x in sorted(resolution))} MiB)" if resolution else "")
                     + (f"; its mem ratio reads {UNRELIABLE}" if "mem_ratio" in shown else ""))
    return lines


def utilization_notes(records: list[dict[str, Any]], shown: set[str]) -> list[str]:
    """The conventions of the MFU and MBU columns shown (each row's own text is in mfu_convention)."""
    lines = []
    if shown & {"mfu", "mfu_measured"}:
        lines += sorted({str(r["mfu_convention"]) for r in records if r.get("mfu_convention")})
    if shown & {"mbu", "mbu_measured"}:
        lines += merged_conventions({str(r["mbu_convention"]) for r in records if r.get("mbu_convention")})
    return lines


def merged_conventions(texts: set[str]) -> list[str]:
    """Conventions that differ only after their first ": " (a decode row's bytes per step and a generation's
    bytes per token, under the same definition) as one line: the shared head once, the tails joined by " | "."""
    by_head: dict[str, list[str]] = {}
    for text in sorted(texts):
        head, sep, tail = text.partition(": ")
        by_head.setdefault(head + sep, []).append(tail)
    return [head + " | ".join(tails) for head, tails in by_head.items()]


def column_notes(records: list[dict[str, Any]], shown: set[str]) -> list[str]:
    """What the columns a flag or a component added mean (TTFT/TPOT, the stage split, fvcore/thop, top-k)."""
    lines = []
    if shown & {"fvcore_g", "thop_g"}:
        lines.append("fvcore G / thop G = their counts of the same call in GMAC (fvcore leaves out attention's "
                     "matmuls, thop counts module hooks): compare with GFLOP/call / 2")
    if shown & {"top_1", "top_5"}:
        sets = sorted({f"{r.get('eval_images')} images of {r.get('eval_data')}" for r in records
                       if r.get("top1_pct") is not None})
        lines.append("top-1 / top-5 % = images whose label is the first / among the first 5 logits (" +
                     "; ".join(sets) + ")")
    if "ttft" in shown or "tpot" in shown:
        lines.append("TTFT = time to first token (median over generations); TPOT = time per output token after the "
                     "first, (last - first token) / (new tokens - 1) per generation, vLLM's definition (mean); "
                     "p50-p99 of TTFT, TPOT, ITL (every gap) and E2E are in the files")
    if "stages" in shown:
        lines.append("stages ms = median time of each stage of the call (device-timeline stamps between stages)")
    if "gb_s" in shown and any(r.get("roofline_above") for r in records):
        lines.append(f"{ABOVE_ROOF} = faster than the device's roofline allows for the counted bytes or FLOPs: they "
                     "did not all reach DRAM or the units (served from L2 across calls, or fused away by compiled "
                     "code), so GB/s is not a lower bound there")
    return lines


def unsteady_notes(records: list[dict[str, Any]]) -> list[str]:
    """One line naming the rows whose CV is above the threshold (marked `!`), and what it means for ratios."""
    from effprof.measure import UNSTEADY_CV

    shaky = [f"{r.get('label', '?')}: {r['speedup_note']}" for r in records if r.get("ratio_unreliable")]
    lines = [f"~ speedup not shown, the rows too unsteady for it: {'; '.join(shaky)}"] if shaky else []
    rows = [str(r.get("label", "?")) for r in records if r.get("latency_unsteady")]
    if not rows:
        return lines
    return lines + [f"{UNSTEADY} unsteady (CV > {UNSTEADY_CV:g}): {', '.join(rows)}: the latency varied between samples "
            "(a loaded host?); ratios against such a row carry that noise; rerun or raise --min-time"]


def train_notes(records: list[dict[str, Any]]) -> list[str]:
    """What a --train row's columns mean."""
    rows = [r for r in records if r.get("train")]
    if not rows:
        return []
    methods = sorted({str(r.get("train_memory_method")) for r in rows})
    return ["train rows: a call is one training step (forward, loss, backward, optimizer step, zero_grad); GFLOP = "
            "forward+backward (optimizer updates count 0); train MiB = weights/gradients/optimizer state/activations "
            "(" + "; ".join(methods) + "; act. = saved for backward on cpu, allocated by the forward on cuda)"]


def host_bound_notes(records: list[dict[str, Any]]) -> list[str]:
    """One line for the eager rows whose verdict is `overhead`: their latency is the host's launch work,
    so it moves with the host's speed between runs and machines (benchmarks/RESULTS.md, issue 3)."""
    rows = [r for r in records if r.get("verdict") == "overhead" and r.get("exec_mode", "eager") == "eager"]
    if not rows:
        return []
    names = ", ".join(str(r.get("label", "?")) for r in rows)
    return [f"{names}: overhead-bound (launch and host work, not the device, set the time): the latency follows "
            "the host's speed and may not repeat on a shared machine; --graphs times the device's work"]


def energy_notes(records: list[dict[str, Any]]) -> list[str]:
    """Which energy figure is which (NVML board energy over the timed region, per item)."""
    rows = [r for r in records if r.get("energy_j_per_item") is not None]
    if not rows:
        return []
    idle = [r for r in rows if r.get("idle_power_w") is not None]
    text = ("J/item total = the board's energy over the timed region per item, idle power included (as Zeus and "
            "the ML.ENERGY leaderboard report it)")
    if idle:
        watts = ", ".join(sorted({"%.0f W" % r["idle_power_w"] for r in idle}))
        when = ("measured once, before the process's first timed region" if all(
            "once per process" in (r.get("idle_power_method") or "") for r in idle) else "measured just before the region")
        text += f"; above idle = minus idle power ({watts}, {when}) × the region's time"
    return [text]


def coverage_notes(records: list[dict[str, Any]]) -> list[str]:
    """What `FLOP cov. %` is, and which rows fall below --min-flop-coverage (marked !)."""
    rows = [r for r in records if r.get("flop_coverage") is not None]
    if not rows:
        return []
    method = "kernel time on the device" if rows[0].get("device") == "cuda" else "aten op CPU time"
    lines = [f"FLOP cov. % = share of the call's {method} in ops with a FLOP formula (effprof breakdown "
             "--uncovered lists the rest)"]
    low = [r for r in rows if r.get("flop_coverage_low")]
    if low:
        lines.append(", ".join(f"{r.get('label')} ({r.get('flop_uncovered_top') or '?'} uncounted)" for r in low)
                     + ": FLOP coverage below --min-flop-coverage (!): their TFLOP/s leaves out the uncounted ops' time")
    return lines


def make_console(stderr: bool = False) -> Console:
    """A console that does not squeeze tables to 80 columns when writing to a file or pipe."""
    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=220)


def print_records(records: list[dict[str, Any]], title: str = "", console: Console | None = None,
                  columns: str = "brief") -> None:
    console = console or make_console()
    left_out: list[str] = []
    console.print(records_table(records, escape(title), columns, width=console.width, left_out=left_out))
    text = footer(records, columns, left_out)
    if left_out:
        headers = [VIEWS[column_keys().index(k)].header.replace("\n", " ") for k in left_out]
        text += (f"\nnot shown, to fit {console.width} columns: {', '.join(headers)} (a wider terminal, "
                 "--columns KEY,..., or --csv/--json, which hold every column)")
    if text:
        console.print(escape(text), style="dim", highlight=False)
