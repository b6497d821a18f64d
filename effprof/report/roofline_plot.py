"""Roofline plot of records (the `plot` extra): achieved TFLOP/s against arithmetic intensity, log-log.

Plain data in: records carry `arithmetic_intensity_flop_per_byte`, `tflops_per_s`, `dtype`, `label`
and `verdict` (see `effprof.measure.roofline`); `ceilings` is a mapping (or an object with
`as_dict()`) with `device_name`, `source`, `matmul_tflops` {dtype: TFLOP/s} and `bandwidth_gb_per_s`.
One roof is drawn per dtype of the records: min(peak, intensity × bandwidth)
(Williams, Waterman & Patterson, CACM 2009).
"""
from __future__ import annotations

import math
from typing import Any

from effprof.core.errors import UsageError
from effprof.core.fileio import atomic_path
from effprof.report.plot import require_matplotlib

VERDICT_COLOURS = {"compute": "tab:blue", "memory": "tab:orange", "overhead": "tab:red", None: "tab:gray"}


def plottable(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records with a positive arithmetic intensity and achieved TFLOP/s."""
    return [r for r in records if r.get("status", "ok") == "ok"
            and (r.get("arithmetic_intensity_flop_per_byte") or 0) > 0 and (r.get("tflops_per_s") or 0) > 0]


def roof_points(peak_tflops: float, bandwidth_gb_per_s: float, x_min: float, x_max: float) -> tuple[list, list]:
    """The roof min(peak, AI × bandwidth) as a polyline over [x_min, x_max] (TFLOP/s against FLOP/byte)."""
    ridge = peak_tflops * 1e3 / bandwidth_gb_per_s  # FLOP/byte where the two ceilings meet
    xs = [x_min] + ([ridge] if x_min < ridge < x_max else []) + [x_max]
    return xs, [min(peak_tflops, x * bandwidth_gb_per_s / 1e3) for x in xs]


def ceilings_from_records(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The ceilings a set of saved records were measured against (their `peak_*` columns), as plain data."""
    peaks = {r["dtype"]: r["peak_tflops"] for r in records if r.get("peak_tflops") and r.get("dtype")}
    bandwidth = next((r["peak_gb_per_s"] for r in records if r.get("peak_gb_per_s")), None)
    if not peaks or bandwidth is None:
        raise UsageError("roofline: these records carry no device ceilings (peak_tflops, peak_gb_per_s): "
                         "were they measured on a GPU?")
    first = records[0]
    return {"device_name": first.get("device_name", "device"), "source": first.get("ceilings_source", "unknown"),
            "matmul_tflops": peaks, "bandwidth_gb_per_s": bandwidth}


def plot_roofline(records: list[dict[str, Any]], ceilings: Any, path: str, title: str = "") -> None:
    """Draw the device roofline with one point per record to `path` (PNG, written atomically)."""
    data = ceilings.as_dict() if hasattr(ceilings, "as_dict") else dict(ceilings or {})
    bandwidth = data.get("bandwidth_gb_per_s")
    peaks = {k: v for k, v in (data.get("matmul_tflops") or {}).items() if v}
    points = plottable(records)
    if not points:
        raise UsageError("roofline: no record has both arithmetic intensity and TFLOP/s "
                         "(were bytes and FLOPs counted?)")
    plt = require_matplotlib()
    dtypes = sorted({r.get("dtype") for r in points if r.get("dtype") in peaks}) or sorted(peaks)[:1]
    intensities = [r["arithmetic_intensity_flop_per_byte"] for r in points]
    ridges = [peaks[d] * 1e3 / bandwidth for d in dtypes] if bandwidth else []
    x_min = 10 ** math.floor(math.log10(min(intensities + ridges) / 4))
    x_max = 10 ** math.ceil(math.log10(max(intensities + ridges) * 4))

    fig, ax = plt.subplots(figsize=(9, 5))
    if bandwidth:
        for dtype, style in zip(dtypes, ("-", "--", ":", "-.")):
            xs, ys = roof_points(peaks[dtype], bandwidth, x_min, x_max)
            ax.plot(xs, ys, color="0.25", linestyle=style, linewidth=2, label=f"{dtype} roof: {peaks[dtype]:.0f} TFLOP/s, {bandwidth:,.0f} GB/s")
    for verdict, colour in VERDICT_COLOURS.items():
        chosen = [r for r in points if r.get("verdict") == verdict]
        if chosen:
            ax.scatter([r["arithmetic_intensity_flop_per_byte"] for r in chosen], [r["tflops_per_s"] for r in chosen],
                       color=colour, zorder=3, label=f"{verdict}-bound" if verdict else "no verdict")
    # each point carries a number and a key beside the plot names it: labels written next to close
    # points overprint one another, numbers of two characters rarely do
    for number, r in enumerate(points, start=1):
        ax.annotate(str(number), (r["arithmetic_intensity_flop_per_byte"], r["tflops_per_s"]),
                    textcoords="offset points", xytext=(4, 3), fontsize=8)
    key = "\n".join(f"{number}  {r.get('label', '')}" for number, r in enumerate(points, start=1))
    ax.text(1.02, 1.0, key, transform=ax.transAxes, va="top", ha="left", fontsize=8, family="monospace")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(x_min, x_max)
    ax.set_xlabel("arithmetic intensity, FLOP/byte (bytes: lower bound)")
    ax.set_ylabel("achieved TFLOP/s (FLOPs = 2×MAC)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    source = data.get("source", "unknown")
    ax.set_title(title or f"{data.get('device_name', 'device')} roofline (ceilings: {source})")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)
