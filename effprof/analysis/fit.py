"""Power-law fits of cost against a numeric parameter: `effprof compare ... --fit seq_len`.

For each series (the `ok` rows that differ only in the fitted parameter: same component, same other
parameters, batch, dtype and modes) and each metric (latency median, GFLOP per call, peak activation
memory), an ordinary least-squares line through (log x, log y): y ∝ x^k. `k` is reported with its 95%
confidence interval from the slope's standard error and Student's t with n − 2 degrees of freedom; two
points give the exponent without an interval. The interval measures how far the points depart from a
straight line on log-log axes, so a series whose fixed cost dominates at small x (launch overhead) reads
a low exponent with a wide interval: that is a property of the data, not a flaw of the fit.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from effprof.analysis.stats import t_quantile_975  # noqa: F401  (re-exported)
from effprof.core.errors import UsageError

METRICS = (("latency", "latency_ms_median"), ("GFLOP", "gflops"), ("peak mem", "peak_mem_mib"))
SERIES_FIELDS = ("batch", "dtype", "exec_mode", "timing_mode")


def fit_power_law(xs: list[float], ys: list[float]) -> dict[str, Any]:
    """Least squares of log y on log x. Returns exponent, ci95_low/high (None for 2 points), prefactor
    (y at x = 1), r2 and n. Needs positive values and at least two distinct x."""
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    if x.size != y.size or x.size < 2 or np.any(x <= 0) or np.any(y <= 0) or np.unique(x).size < 2:
        raise ValueError("a power-law fit needs at least two distinct positive x and positive y")
    lx, ly = np.log(x), np.log(y)
    mx = lx.mean()
    sxx = float(((lx - mx) ** 2).sum())
    slope = float(((lx - mx) * (ly - ly.mean())).sum() / sxx)
    intercept = float(ly.mean() - slope * mx)
    resid = ly - (intercept + slope * lx)
    ss_tot = float(((ly - ly.mean()) ** 2).sum())
    fit = {"exponent": slope, "prefactor": math.exp(intercept), "n": int(x.size),
           "r2": 1 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else 1.0, "ci95_low": None, "ci95_high": None}
    if x.size > 2:
        se = math.sqrt(float((resid**2).sum()) / (x.size - 2) / sxx)
        half = t_quantile_975(x.size - 2) * se
        fit.update(ci95_low=slope - half, ci95_high=slope + half)
    return fit


def _x(record: dict[str, Any], param: str) -> Any:
    return record.get("batch") if param == "batch" else record.get(f"param_{param}")


def series(records: list[dict[str, Any]], param: str) -> list[tuple[str, list[dict[str, Any]]]]:
    """(label, rows) per series: `ok` rows equal in everything but `param`, in first-seen order."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("status", "ok") != "ok" or not isinstance(_x(r, param), (int, float)) or isinstance(_x(r, param), bool):
            continue
        fixed = tuple(sorted((k, repr(v)) for k, v in r.items() if k.startswith("param_") and k != f"param_{param}"))
        rest = tuple(repr(r.get(k)) for k in SERIES_FIELDS if k != param)
        groups.setdefault((r.get("component"),) + fixed + rest, []).append(r)
    labels = {}
    for key, rows in groups.items():
        same_component = [k for k in groups if k[0] == key[0]]
        first = rows[0]
        varying = []
        if len(same_component) > 1:
            others = [groups[k][0] for k in same_component]
            for name in [k for k in first if k.startswith("param_") and k != f"param_{param}"] + list(SERIES_FIELDS):
                if name != param and len({repr(o.get(name)) for o in others}) > 1:
                    varying.append(f"{name.removeprefix('param_')}={first.get(name)}")
        labels[key] = str(key[0]) + (f" ({', '.join(varying)})" if varying else "")
    return [(labels[k], sorted(rows, key=lambda r: _x(r, param))) for k, rows in groups.items()]


def parse_fit(text: str) -> tuple[str, float | None, float | None]:
    """`seq_len` or `seq_len:4096-16384` (also `:4096-`, `:-8192`) -> (param, low, high)."""
    param, _, span = text.partition(":")
    if not param.strip():
        raise UsageError(f"--fit {text!r}: name a parameter, e.g. --fit seq_len or --fit seq_len:4096-16384")
    low = high = None
    if span:
        lo, sep, hi = span.partition("-")
        try:
            low, high = (float(lo) if lo else None), (float(hi) if hi else None)
        except ValueError:
            sep = ""
        if not sep:
            raise UsageError(f"--fit {text}: expected PARAM or PARAM:LOW-HIGH (e.g. seq_len:4096-16384)")
    return param.strip().replace("-", "_"), low, high


def fit_records(records: list[dict[str, Any]], param: str, low: float | None = None,
                high: float | None = None) -> list[dict[str, Any]]:
    """One entry per series and metric that can be fitted: series, metric, key, exponent, interval, n,
    x_min, x_max, over the rows whose `param` lies in [low, high] (all when None). Refuses (UsageError) a
    parameter that no row has as a number."""
    def inside(r):
        x = _x(r, param)
        return not isinstance(x, (int, float)) or ((low is None or x >= low) and (high is None or x <= high))

    found = series([r for r in records if inside(r)], param)
    if not any(len({_x(r, param) for r in rows}) >= 2 for _, rows in found):
        raise UsageError(f"--fit {param}: no series has two or more numeric values of {param!r} "
                         "(fit a parameter that varies between rows, e.g. one in --grid)")
    fits = []
    for label, rows in found:
        for metric, key in METRICS:
            points = [(_x(r, param), r.get(key)) for r in rows]
            points = [(x, y) for x, y in points if x is not None and y is not None and x > 0 and y > 0]
            if len({x for x, _ in points}) < 2:
                continue
            fit = fit_power_law([x for x, _ in points], [y for _, y in points])
            fits.append({"series": label, "metric": metric, "key": key, "param": param,
                         "x_min": min(x for x, _ in points), "x_max": max(x for x, _ in points), **fit})
    return fits


def exponent_text(fit: dict[str, Any]) -> str:
    """`seq_len^1.02 [0.98, 1.06]` (the interval is the 95% CI; none with two points)."""
    text = f"{fit['param']}^{fit['exponent']:.2f}"
    if fit["ci95_low"] is not None:
        text += f" [{fit['ci95_low']:.2f}, {fit['ci95_high']:.2f}]"
    return text


def fit_lines(fits: list[dict[str, Any]]) -> list[str]:
    """Lines to print under a table: one per series, its metrics' exponents."""
    if not fits:
        return []
    param = fits[0]["param"]
    lines = [f"log-log least-squares fit against {param}: cost ∝ {param}^k, k with its 95% CI (Student t; "
             "none from 2 points)"]
    by_series: dict[str, list[dict[str, Any]]] = {}
    for f in fits:
        by_series.setdefault(f["series"], []).append(f)
    for label, items in by_series.items():
        first = items[0]
        parts = ", ".join(f"{f['metric']} {exponent_text(f)}" for f in items)
        lines.append(f"  {label}: {parts}  ({first['n']} points, {param} {first['x_min']:g}–{first['x_max']:g})")
    return lines
