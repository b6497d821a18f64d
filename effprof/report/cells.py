"""How a table cell is written: plain numbers (never 1.23e-05), units, the `!` of an unsteady latency, the `~` of
an unreliable ratio; one renderer per `fmt` of a view (effprof.core.column_table.VIEWS)."""
from __future__ import annotations

import math
from typing import Any

from effprof.core.columns import View

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
UNRELIABLE = "~"  # a ratio between rows too unsteady to bear it
BELOW_RESOLUTION = "below resolution"  # a CPU peak memory below what the method resolves
ABOVE_ROOF = "^"  # a bandwidth above the device's ceiling: the counted bytes did not all come from DRAM


def _latency(r):
    if r.get("latency_ms_median") is None:
        return "-"
    text = f"{plain(r['latency_ms_median'], 4)} [{plain(r['latency_ms_p10'], 4)}, {plain(r['latency_ms_p90'], 4)}]"
    return text + (f" {UNSTEADY}" if r.get("latency_unsteady") else "")


def _cv(r):
    if r.get("latency_cv") is None:
        return None
    return f"{r['latency_cv']:.3f}" + (f" {UNSTEADY}" if r.get("latency_unsteady") else "")


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


def _fixed(digits: int, scale: float = 1.0):
    def cell(value):
        return f"{scale * value:.{digits}f}"
    return cell


def _status(r):
    return None if r.get("status") == "ok" else r.get("status")


def _latency_median(r):
    if r.get("latency_ms_median") is None:
        return None
    return plain(r["latency_ms_median"], 4) + (f" {UNSTEADY}" if r.get("latency_unsteady") else "")


def _peak_mem(r):
    if r.get("peak_mem_below_resolution"):
        return BELOW_RESOLUTION
    return None if r.get("peak_mem_mib") is None else _num(r["peak_mem_mib"])


def _unreliable(r) -> bool:
    return bool(r.get("ratio_unreliable"))


def _speedup(r):
    if r.get("speedup") is None:
        return None
    if _unreliable(r):
        return UNRELIABLE
    return f"{r['speedup']:.2f}" + (f" {UNSTEADY}" if r.get("speedup_unsteady") else "")


def _mem_ratio(r):
    if r.get("peak_mem_ratio") is None:
        return None
    return UNRELIABLE if r.get("peak_mem_below_resolution") else f"{r['peak_mem_ratio']:.3f}"


def _stages(r):
    names = [n for n in str(r.get("stage_names") or "").split(",") if n]
    times = [(n, r.get(f"stage_{n}_ms")) for n in names]
    if not times or any(t is None for _, t in times):
        return None
    return "\n".join(f"{n} {plain(t, 3)}" for n, t in times)


# Renderers of a view (effprof.core.column_table.VIEWS, `fmt`): a function of the record, or of the value of
# the view's first source key (`VALUE_FORMATS`).
RECORD_FORMATS = {
    "status": _status,
    "latency": _latency,
    "latency_median": _latency_median,
    "cv": _cv,
    "throughput": _throughput,
    "peak_mem": _peak_mem,
    "params_m": lambda r: None if r.get("params_total") is None else _params_m(r),
    "train_split": _train_split,
    "flop_cov": lambda r: None if r.get("flop_coverage") is None
    else f"{100 * r['flop_coverage']:.0f}" + (" !" if r.get("flop_coverage_low") else ""),
    "gb_s": lambda r: None if r.get("achieved_gb_per_s") is None or r.get("device") != "cuda"
    else _num(r["achieved_gb_per_s"]) + (f" {ABOVE_ROOF}" if r.get("roofline_above") else ""),
    "sm_mhz": lambda r: None if r.get("sm_clock_mhz_median") is None
    else f"{r['sm_clock_mhz_median']:.0f}" + (" throttled" if r.get("throttled") else ""),
    "mode": lambda r: None if r.get("exec_mode") in (None, "eager") else
    r["exec_mode"] + (f" ({r['compile_s']:.1f} s compile)" if r.get("compile_s") is not None else ""),
    "tokens": lambda r: None if r.get("tokens_in") is None else f"{r['tokens_in']}→{r['tokens_out']}",
    "image_tokens": lambda r: None if r.get("image_tokens_in") is None
    else f"{r['image_tokens_in']}→{r['image_tokens_out']}",
    "stages": _stages,
    "gpu": lambda r: None if r.get("gpu_index") is None else f"{r['gpu_index']}: {r.get('gpu_name') or '?'}",
    "tp": lambda r: None if not r.get("tp") else str(r["tp"]),
    "speedup": _speedup,
    "ratio3": None,  # filled below: a ratio of the view's key, ~ when unreliable
    "mem_ratio": _mem_ratio,
}
VALUE_FORMATS = {
    "num": _num, "num4": lambda v: _num(v, 4), "int": lambda v: _num(v), "text": lambda v: v or None,
    "pct0": _fixed(0, 100), "pct1": _fixed(1, 100), "fixed1": _fixed(1), "fixed2": _fixed(2), "fixed3": _fixed(3),
    "fixed4": _fixed(4),
}


def cell_function(view: View):
    """The function of a record that writes `view`'s cell (None or "-": no value)."""
    if view.fmt == "ratio3":
        key = view.sources[0]
        return lambda r: None if r.get(key) is None else (UNRELIABLE if _unreliable(r) else f"{r[key]:.3f}")
    if view.fmt in RECORD_FORMATS:
        return RECORD_FORMATS[view.fmt]
    fmt, key = VALUE_FORMATS[view.fmt], view.sources[0]
    return lambda r: None if r.get(key) is None else fmt(r[key])
