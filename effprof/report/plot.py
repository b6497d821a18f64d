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
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


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
    fig.suptitle(f"{title}: log-log fit, 95% CI of the exponent")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
