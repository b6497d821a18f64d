"""Plots of records (the `plot` extra: matplotlib). Imported only when a plot is asked for."""
from __future__ import annotations

from typing import Any

from effprof.core.errors import MissingExtra
from effprof.core.fileio import atomic_path


def require_matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingExtra("--plot needs matplotlib: pip install 'effprof[plot]'") from None
    return plt


def save_figure(fig, title: str, path: str) -> None:
    """Title the figure, lay it out, write it to `path` as PNG atomically and free it."""
    plt = require_matplotlib()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def plot_records(records: list[dict[str, Any]], path: str, varied: list[str] | None, title: str) -> None:
    """Latency and peak memory against the varied parameter (or the row label)."""
    plt = require_matplotlib()
    ok = [r for r in records if r.get("status") == "ok"]
    key = f"param_{varied[0]}" if varied and len(varied) == 1 and f"param_{varied[0]}" in (ok[0] if ok else {}) else None
    xs = [r[key] for r in ok] if key else list(range(len(ok)))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.errorbar(xs, [r["latency_ms_median"] for r in ok],
                 yerr=[[r["latency_ms_median"] - r["latency_ms_p10"] for r in ok],
                       [r["latency_ms_p90"] - r["latency_ms_median"] for r in ok]], marker="o", capsize=3)
    ax1.set_ylabel("latency, ms (median, p10–p90)")
    mem = [r.get("peak_mem_mib") for r in ok]
    if all(m is not None for m in mem) and mem:
        ax2.plot(xs, mem, marker="o")
        ax2.set_ylabel("peak activation memory, MiB")
    else:
        ax2.text(0.5, 0.5, "peak memory not measured on this device", ha="center", va="center")
    for ax in (ax1, ax2):
        ax.set_xlabel(varied[0] if key else "row")
        if not key:
            ax.set_xticks(xs, [r["label"] for r in ok], rotation=30, ha="right")
        ax.grid(alpha=0.3)
    save_figure(fig, title, path)


def plot_fits(records: list[dict[str, Any]], fits: list[dict[str, Any]], path: str, title: str) -> None:
    """Log-log panels (latency, GFLOP, peak memory as measured) with each series' points and fitted line."""
    from effprof.analysis.fit import exponent_text, series

    plt = require_matplotlib()
    param = fits[0]["param"]
    metrics = [m for m in dict.fromkeys(f["metric"] for f in fits)]
    labels = {"latency": "latency, ms (median)", "GFLOP": "GFLOP per call (2×MAC)",
              "peak mem": "peak activation memory, MiB"}
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    rows_of = dict(series(records, param))
    for ax, metric in zip(axes[0], metrics):
        for i, f in enumerate(x for x in fits if x["metric"] == metric):
            rows = rows_of.get(f["series"], [])
            xs = [r.get("batch") if param == "batch" else r.get(f"param_{param}") for r in rows]
            ys = [r.get(f["key"]) for r in rows]
            color = f"C{i}"
            ax.loglog(xs, ys, "o", color=color)
            grid = [f["x_min"] * (f["x_max"] / f["x_min"]) ** (j / 50) for j in range(51)]
            ax.loglog(grid, [f["prefactor"] * x ** f["exponent"] for x in grid], "-", color=color,
                      label=f"{f['series']}: {exponent_text(f)}")
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        xs_all = sorted({x for f in fits for x in (f["x_min"], f["x_max"])} |
                        {r.get("batch") if param == "batch" else r.get(f"param_{param}") for rs in rows_of.values() for r in rs})
        ax.set_xticks([x for x in xs_all if x])  # the measured values, written plainly
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(param)
        ax.set_ylabel(labels.get(metric, metric))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    save_figure(fig, f"{title}: log-log fit, 95% CI of the exponent", path)


# (x key, x label, smaller x is better; y key, y label, larger y is better): the trade-offs a comparison can show
# once a quality column exists. The first pair whose keys two ok rows hold is drawn (and the others that exist).
PARETO_PAIRS = [
    ("ttft_ms", "TTFT, ms (median)", True, "fidelity_cos", "fidelity (cosine to the full model)", True),
    ("latency_ms_median", "latency, ms (median)", True, "fidelity_cos", "fidelity (cosine to the full model)", True),
    ("tokens_out", "tokens kept", True, "fidelity_cos", "fidelity (cosine to the full model)", True),
    ("image_tokens_out", "image tokens kept", True, "fidelity_cos", "fidelity (cosine to the full model)", True),
    ("throughput_per_s", "throughput, img/s", False, "top1_pct", "top-1 accuracy, %", True),
    ("latency_ms_median", "step time, ms (median)", True, "params_trainable", "trainable parameters", True),
]


def pareto_front(points: list[tuple[float, float]], x_smaller_better: bool = True,
                 y_larger_better: bool = True) -> list[int]:
    """Indices of the points no other point dominates (at least as good on both axes, better on one), in
    order of x. E.g. latency (smaller better) against fidelity (larger better)."""
    def key(p):
        return (p[0] if x_smaller_better else -p[0], -p[1] if y_larger_better else p[1])

    front = []
    for i, p in enumerate(points):
        kp = key(p)
        dominated = any(kq[0] <= kp[0] and kq[1] <= kp[1] and kq != kp
                        for kq in (key(q) for j, q in enumerate(points) if j != i))
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: key(points[i]))


def _numbers(records: list[dict[str, Any]], x: str, y: str) -> list[dict[str, Any]]:
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    return [r for r in records if r.get("status") == "ok" and number(r.get(x)) and number(r.get(y))]


def pareto_pairs(records: list[dict[str, Any]]) -> list[tuple]:
    """The PARETO_PAIRS that at least two ok rows hold numbers for (latency vs fidelity only without TTFT; step
    time vs trainable parameters only for --train rows whose trainable parameters differ)."""
    found = [pair for pair in PARETO_PAIRS if len(_numbers(records, pair[0], pair[3])) >= 2]
    if any(p[0] == "ttft_ms" for p in found):
        found = [p for p in found if not (p[0] == "latency_ms_median" and p[3] == "fidelity_cos")]
    rows = _numbers(records, "latency_ms_median", "params_trainable")
    if not any(r.get("train") for r in rows) or len({r["params_trainable"] for r in rows}) < 2:
        found = [p for p in found if p[3] != "params_trainable"]
    return found


def plot_pareto(records: list[dict[str, Any]], path: str, title: str) -> bool:
    """One panel per trade-off (`pareto_pairs`): every row a point, labelled, the Pareto front joined. False
    (and no file) when the records hold no quality column."""
    pairs = pareto_pairs(records)
    if not pairs:
        return False
    plt = require_matplotlib()
    ok = [r for r in records if r.get("status") == "ok"]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 4.2), squeeze=False)
    for ax, (x, x_label, x_small, y, y_label, y_large) in zip(axes[0], pairs):
        rows = _numbers(ok, x, y)
        points = [(float(r[x]), float(r[y])) for r in rows]
        front = pareto_front(points, x_small, y_large)
        ax.scatter([p[0] for p in points], [p[1] for p in points], color="C0", zorder=2)
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "-o", color="C3", zorder=3,
                label="Pareto front")
        for r, (px, py) in zip(rows, points):
            ax.annotate(str(r.get("label")), (px, py), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(x_label + (" (lower is better)" if x_small else " (higher is better)"))
        ax.set_ylabel(y_label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, f"{title}: trade-offs", path)
    return True
