"""Rich tables of records: every column names its unit."""
from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich import box
from rich.table import Table

UNIT_RATE = {"img": "img/s", "tok": "tok/s", "seq": "seq/s"}


def plain(value: float, digits: int = 3) -> str:
    """`value` with `digits` significant digits in plain notation (0.0000123, 12.3, 1,235), never 1.23e-05."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    if abs(value) >= 10 ** (digits - 1):
        return f"{value:,.0f}"
    decimals = digits - 1 - math.floor(math.log10(abs(value)))
    return f"{value:.{decimals}f}" if decimals <= 9 else f"{value:.{digits}g}"  # 1e-12 fits no plain column


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return plain(value, digits)
    return str(value)


def _params_m(r):
    total, trainable = r.get("params_total"), r.get("params_trainable")
    if total is None:
        return "-"
    text = f"{total / 1e6:.3f}"
    if trainable is not None and trainable != total:
        text += f" ({trainable / 1e6:.3f} train.)"
    return text


UNSTEADY = "!"  # marks a latency whose CV is above UNSTEADY_CV, and the ratios computed from it


def _latency(r):
    if r.get("latency_ms_median") is None:
        return "-"
    text = f"{plain(r['latency_ms_median'], 4)} [{plain(r['latency_ms_p10'], 4)}, {plain(r['latency_ms_p90'], 4)}]"
    return text + (f" {UNSTEADY}" if r.get("latency_unsteady") else "")


def _cv(r):
    if r.get("latency_cv") is None:
        return None
    return f"{r['latency_cv']:.3f}" + (f" {UNSTEADY}" if r.get("latency_unsteady") else "")


def _ratio(key: str, digits: int, flagged: bool = False):
    def cell(r):
        if r.get(key) is None:
            return None
        if key == "speedup" and r.get("ratio_unreliable"):  # too unsteady for the ratio: see the footer
            return "~"
        return f"{r[key]:.{digits}f}" + (f" {UNSTEADY}" if flagged and r.get("speedup_unsteady") else "")
    return cell


def _throughput(r):
    value = r.get("throughput_per_s")
    return "-" if value is None else f"{_num(value)} {UNIT_RATE.get(r.get('unit'), '/s')}"


def _train_split(r):
    """Training-step memory by part (effprof.measure.training): weights/gradients/optimizer/activations, MiB."""
    if not r.get("train"):
        return None
    act = r.get("train_activations_mib")
    act = r.get("train_saved_activations_mib") if act is None else act
    return "/".join(_num(r.get(k)) for k in ("train_weights_mib", "train_grads_mib", "train_optimizer_mib")) + \
        "/" + _num(act)


# (header, function of a record) pairs; a column is shown when any record has a value for it.
COLUMNS = [
    ("row", lambda r: r.get("label")),
    ("params", lambda r: r.get("params") or "-"),
    ("batch", lambda r: _num(r.get("batch"))),
    ("dtype", lambda r: r.get("dtype")),
    ("device", lambda r: r.get("device")),
    ("status", lambda r: None if r.get("status") == "ok" else r.get("status")),
    ("latency ms\nmedian [p10, p90]", _latency),
    ("latency\nms (median)", lambda r: None if r.get("latency_ms_median") is None
     else _latency(r).split(" [")[0] + (f" {UNSTEADY}" if r.get("latency_unsteady") else "")),
    ("CV\n(fraction)", _cv),
    ("throughput", _throughput),
    ("peak mem\nMiB", lambda r: (f"<{r['peak_mem_resolution_mib']:g}" if r.get("peak_mem_below_resolution") else None)
     if r.get("peak_mem_mib") is None else _num(r["peak_mem_mib"])),
    ("weights\nMiB", lambda r: _num(r.get("weights_mib"))),
    ("params M", _params_m),
    ("train MiB\nwts/grad/opt/act", _train_split),
    ("train peak\nMiB", lambda r: None if r.get("train_peak_mib") is None else _num(r["train_peak_mib"])),
    ("GFLOP/call\n(2×MAC)", lambda r: _num(r.get("gflops"), 4)),
    ("TFLOP/s", lambda r: None if r.get("tflops_per_s") is None else _num(r["tflops_per_s"])),
    ("FLOP\ncov. %", lambda r: None if r.get("flop_coverage") is None
     else f"{100 * r['flop_coverage']:.0f}" + (" !" if r.get("flop_coverage_low") else "")),
    ("% of\npeak", lambda r: None if r.get("pct_of_compute_ceiling") is None else f"{r['pct_of_compute_ceiling']:.1f}"),
    ("GB/s\n(≥, lower bd.)", lambda r: None if r.get("achieved_gb_per_s") is None or r.get("device") != "cuda"
     else _num(r["achieved_gb_per_s"])),
    ("bound", lambda r: r.get("verdict")),
    ("J/item\ntotal", lambda r: None if r.get("energy_j_per_item") is None else _num(r["energy_j_per_item"])),
    ("J/item\nabove idle", lambda r: None if r.get("energy_above_idle_j_per_item") is None
     else _num(r["energy_above_idle_j_per_item"])),
    ("SM MHz\n(median)", lambda r: None if r.get("sm_clock_mhz_median") is None
     else f"{r['sm_clock_mhz_median']:.0f}" + (" throttled" if r.get("throttled") else "")),
    ("mode", lambda r: None if r.get("exec_mode") in (None, "eager") else
     r["exec_mode"] + (f" ({r['compile_s']:.1f} s compile)" if r.get("compile_s") is not None else "")),
    ("tokens\nin→out", lambda r: None if r.get("tokens_in") is None else f"{r['tokens_in']}→{r['tokens_out']}"),
    ("fidelity\n(cos)", lambda r: None if r.get("fidelity_cos") is None else f"{r['fidelity_cos']:.4f}"),
    ("scan", lambda r: r.get("scan_backend")),
    ("scan K\n(seqs)", lambda r: r.get("scan_sequences")),
    ("paper G/img\n(MAC, fvcore)", lambda r: None if r.get("paper_gmacs_per_img") is None
     else _num(r["paper_gmacs_per_img"], 4)),
    ("GPU", lambda r: None if r.get("gpu_index") is None else f"{r['gpu_index']}: {r.get('gpu_name') or '?'}"),
    ("tp", lambda r: None if not r.get("tp") else str(r["tp"])),
    ("peak act. MiB\nper rank", lambda r: r.get("peak_mem_mib_per_rank") or None),
    ("comm %\n(profiler)", lambda r: None if r.get("comm_share") is None else f"{100 * r['comm_share']:.1f}"),
    ("tp scaling\neff. %", lambda r: None if r.get("tp_scaling_efficiency") is None
     else f"{100 * r['tp_scaling_efficiency']:.0f}"),
    ("fvcore G\n(MAC, no attn)", lambda r: None if r.get("fvcore_gmacs") is None else _num(r["fvcore_gmacs"], 4)),
    ("thop G\n(MAC, modules)", lambda r: None if r.get("thop_gmacs") is None else _num(r["thop_gmacs"], 4)),
    ("top-1 %", lambda r: None if r.get("top1_pct") is None else f"{r['top1_pct']:.2f}"),
    ("top-5 %", lambda r: None if r.get("top5_pct") is None else f"{r['top5_pct']:.2f}"),
    ("eval img/s\n(decode incl.)", lambda r: None if r.get("eval_img_per_s") is None else _num(r["eval_img_per_s"])),
    ("speedup\n×", _ratio("speedup", 2, flagged=True)),
    ("params\nratio", _ratio("params_ratio", 3)),
    ("GFLOP\nratio", _ratio("gflops_ratio", 3)),
    ("mem\nratio", _ratio("peak_mem_ratio", 3)),
]


HOISTED = ("batch", "dtype", "device", "mode")  # shown once in the title when every row agrees

# `--columns` names: a header listed here has this key; any other header's key is its first line, slugged.
COLUMN_KEYS = {"latency ms\nmedian [p10, p90]": "latency", "latency\nms (median)": "latency_median", "peak mem\nMiB": "peak_mem", "weights\nMiB": "weights",
               "params M": "params_m", "GFLOP/call\n(2×MAC)": "gflops", "TFLOP/s": "tflops", "FLOP\ncov. %": "flop_cov",
               "% of\npeak": "pct_peak", "speedup\n×": "speedup", "params\nratio": "params_ratio",
               "GFLOP\nratio": "gflops_ratio", "mem\nratio": "mem_ratio",
               "J/item\ntotal": "energy", "J/item\nabove idle": "energy_above_idle"}
# The default set: fits a 120-column terminal for the usual rows. Files always hold every field.
BRIEF = ("row", "batch", "dtype", "device", "mode", "status", "latency_median", "throughput", "peak_mem", "params_m",
         "gflops", "tflops", "bound", "speedup", "params_ratio", "gflops_ratio", "mem_ratio")
BRIEF_HEADERS = {"latency_median": "latency\nms\n(median)", "peak_mem": "peak\nmem\nMiB", "gflops": "GFLOP/\ncall\n(2×MAC)",
                 "params_m": "params\nM"}  # narrower spellings of the same headers
RATIOS = ("speedup", "params_ratio", "gflops_ratio", "mem_ratio")


def column_key(header: str) -> str:
    import re

    return COLUMN_KEYS.get(header) or re.sub(r"[^a-z0-9]+", "_", header.split("\n")[0].lower()).strip("_")


def column_keys() -> list[str]:
    return [column_key(h) for h, _ in COLUMNS]


def chosen_columns(records: list[dict[str, Any]], columns: str = "brief") -> list[int]:
    """Indices into COLUMNS for `--columns full|brief|KEY,KEY,...` (a list keeps its order). Brief shows the
    median latency only, leaves out a ratio column whose value is the same on every row (params ratio 1 when
    only the input changes), and adds the FLOP coverage when a row is marked below --min-flop-coverage;
    `records_table` puts the parameters under the row's label."""
    from effprof.core.errors import UsageError

    keys = column_keys()
    if columns == "full":
        return [i for i, k in enumerate(keys) if k != "latency_median"]
    if columns == "brief":
        wanted = list(BRIEF)
        for i, k in enumerate(keys):
            if k in RATIOS and k != "speedup" and len({COLUMNS[i][1](r) for r in records}) == 1 and len(records) > 1:
                wanted.remove(k)
        if any(r.get("flop_coverage_low") for r in records):
            wanted.append("flop_cov")
        if any(r.get("train") for r in records):  # --train rows: the step's memory by part
            wanted += ["train_mib", "train_peak"]
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
    return text.replace(",", "," + newline) if column_key(header) == "params" else text


def table_cells(records: list[dict[str, Any]], columns: str = "brief", newline: str = "\n"
                ) -> tuple[list[str], list[str], list[list[str]], list[bool]]:
    """What a table of `records` shows: (facts common to every row, for the title; headers; rows of cell
    text; left-justified per column). Shared by the terminal table and the Markdown/HTML files; `newline`
    is how a cell breaks a line."""
    cells = [[fn(r) for _, fn in COLUMNS] for r in records]
    headers = [h for h, _ in COLUMNS]
    shown = [i for i in chosen_columns(records, columns) if any(row[i] not in (None, "-") for row in cells)]
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
            common += [kv for kv in str(records[0].get("params") or "").split(",") if kv and kv not in differ[0]]
        for row, r, extra in zip(cells, records, differ):
            row[0] = newline.join([str(row[0])] + [kv for kv in extra if kv not in str(r.get("label") or "")])
    names = [BRIEF_HEADERS.get(column_key(headers[i]), headers[i]) if columns == "brief" else headers[i] for i in shown]
    rows = [[cell_text(headers[i], row[i], newline) for i in shown] for row in cells]
    return common, names, rows, [i < 6 for i in shown]


def records_table(records: list[dict[str, Any]], title: str = "", columns: str = "brief") -> Table:
    common, headers, rows, left = table_cells(records, columns)
    if common:
        title = f"{title}  ({', '.join(common)})" if title else ", ".join(common)
    table = Table(title=title or None, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True)
    for header, is_left in zip(headers, left):
        table.add_column(escape(header), justify="left" if is_left else "right",
                         no_wrap=column_key(header) in ("params", "row"))
    for row in rows:
        table.add_row(*[escape(cell) for cell in row])
    return table


def varying_params(records: list[dict[str, Any]], record: dict[str, Any]) -> list[str]:
    """`name=value` items of `record`'s params text that are not the same on every row (all of them for one row)."""
    def items(r):
        return [kv for kv in str(r.get("params") or "").split(",") if kv]

    common = set(items(records[0])).intersection(*(set(items(r)) for r in records[1:])) if len(records) > 1 else set()
    return [kv for kv in items(record) if kv not in common]


def footer(records: list[dict[str, Any]]) -> str:
    """Notes that apply to the whole table (environment, conventions)."""
    if not records:
        return ""
    r = records[0]
    bits = [f"{r.get('device_name', '?')}", f"torch {r.get('torch_version', '?')}"]
    if r.get("timing_method"):
        bits.append(f"timing: {r['timing_method']}, {r.get('timing_mode', 'warm')}")
    notes = {x.get("peak_mem_note") for x in records if x.get("peak_mem_note")}
    methods = sorted({x["peak_mem_method"] for x in records if x.get("peak_mem_method")})
    errors = [f"{x['label']}: {x['error']}" for x in records if x.get("error")]
    lines = ["; ".join(bits) + "; FLOPs = 2×MAC per call (whole batch); MiB = 2^20 bytes; "
             "CV = std/mean of the samples, a fraction"]
    lines += [f"peak mem = {m}" for m in methods]
    phases = {name: sum(x.get(f"phase_{name}_s") or 0.0 for x in records)
              for name in ("build", "count", "warmup", "timing", "passes")}
    if any(phases.values()):  # every phase: the rest of the rows' wall time (process start, imports) as "other"
        wall = sum(x.get("wall_s") or 0.0 for x in records)
        phases["other"] = max(0.0, wall - sum(phases.values())) if wall else 0.0
        lines.append("time spent (all rows): " + ", ".join(
            f"{name.replace('warmup', 'warm-up').replace('passes', 'passes after timing')} {seconds:.1f} s"
            for name, seconds in phases.items()) + (f" (wall {wall:.1f} s)" if wall else ""))
    lines += (sorted(notes) + unsteady_notes(records) + host_bound_notes(records) + train_notes(records)
              + coverage_notes(records) + energy_notes(records) + errors)
    return "\n".join(lines)


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
    console.print(records_table(records, escape(title), columns))
    text = footer(records)
    if text:
        console.print(escape(text), style="dim", highlight=False)
