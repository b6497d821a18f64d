"""Rich tables of records: every column names its unit."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

UNIT_RATE = {"img": "img/s", "tok": "tok/s", "seq": "seq/s"}


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def _params_m(r):
    total, trainable = r.get("params_total"), r.get("params_trainable")
    if total is None:
        return "-"
    text = f"{total / 1e6:.3f}"
    if trainable is not None and trainable != total:
        text += f" ({trainable / 1e6:.3f} train.)"
    return text


def _latency(r):
    if r.get("latency_ms_median") is None:
        return "-"
    return f"{r['latency_ms_median']:.4g} [{r['latency_ms_p10']:.4g}, {r['latency_ms_p90']:.4g}]"


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
    ("CV %", lambda r: None if r.get("latency_cv") is None else f"{100 * r['latency_cv']:.1f}"),
    ("throughput", _throughput),
    ("peak act.\nMiB", lambda r: None if r.get("peak_mem_mib") is None else _num(r["peak_mem_mib"])),
    ("weights\nMiB", lambda r: _num(r.get("weights_mib"))),
    ("params M", _params_m),
    ("train MiB\nwts/grad/opt/act", _train_split),
    ("train peak\nMiB", lambda r: None if r.get("train_peak_mib") is None else _num(r["train_peak_mib"])),
    ("GFLOP/call\n(2×MAC)", lambda r: _num(r.get("gflops"), 4)),
    ("TFLOP/s", lambda r: None if r.get("tflops_per_s") is None else _num(r["tflops_per_s"])),
    ("% of\npeak", lambda r: None if r.get("pct_of_compute_ceiling") is None else f"{r['pct_of_compute_ceiling']:.1f}"),
    ("GB/s\n(≥, lower bd.)", lambda r: None if r.get("achieved_gb_per_s") is None or r.get("device") != "cuda"
     else _num(r["achieved_gb_per_s"])),
    ("bound", lambda r: r.get("verdict")),
    ("J/item", lambda r: None if r.get("energy_j_per_item") is None else f"{r['energy_j_per_item']:.3g}"),
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
    ("speedup\n×", lambda r: None if r.get("speedup") is None else f"{r['speedup']:.2f}"),
    ("params\nratio", lambda r: None if r.get("params_ratio") is None else f"{r['params_ratio']:.3f}"),
    ("GFLOP\nratio", lambda r: None if r.get("gflops_ratio") is None else f"{r['gflops_ratio']:.3f}"),
    ("mem\nratio", lambda r: None if r.get("peak_mem_ratio") is None else f"{r['peak_mem_ratio']:.3f}"),
]


HOISTED = ("batch", "dtype", "device")  # shown once in the title when every row agrees


def records_table(records: list[dict[str, Any]], title: str = "") -> Table:
    cells = [[fn(r) for _, fn in COLUMNS] for r in records]
    headers = [h for h, _ in COLUMNS]
    shown = [i for i in range(len(COLUMNS)) if any(row[i] not in (None, "-") for row in cells)]
    common = []
    for name in HOISTED:
        i = headers.index(name)
        values = {row[i] for row in cells}
        if len(records) > 0 and len(values) == 1 and i in shown:
            shown.remove(i)
            common.append(f"{name} {values.pop()}")
    if common:
        title = f"{title}  ({', '.join(common)})" if title else ", ".join(common)
    table = Table(title=title or None, title_justify="left")
    for i in shown:
        table.add_column(escape(COLUMNS[i][0]), justify="left" if i < 6 else "right")
    for row in cells:
        table.add_row(*["-" if row[i] is None else escape(str(row[i])) for i in shown])
    return table


def footer(records: list[dict[str, Any]]) -> str:
    """Notes that apply to the whole table (environment, conventions)."""
    if not records:
        return ""
    r = records[0]
    bits = [f"{r.get('device_name', '?')}", f"torch {r.get('torch_version', '?')}"]
    if r.get("timing_method"):
        bits.append(f"timing: {r['timing_method']}, {r.get('timing_mode', 'warm')}")
    notes = {x.get("peak_mem_note") for x in records if x.get("peak_mem_note")}
    errors = [f"{x['label']}: {x['error']}" for x in records if x.get("error")]
    lines = ["; ".join(bits) + "; FLOPs = 2×MAC per call (whole batch); peak act. = activations above weights+inputs"]
    lines += sorted(notes) + host_bound_notes(records) + train_notes(records) + errors
    return "\n".join(lines)


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


def make_console(stderr: bool = False) -> Console:
    """A console that does not squeeze tables to 80 columns when writing to a file or pipe."""
    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=220)


def print_records(records: list[dict[str, Any]], title: str = "", console: Console | None = None) -> None:
    console = console or make_console()
    console.print(records_table(records, escape(title)))
    text = footer(records)
    if text:
        console.print(escape(text), style="dim", highlight=False)
