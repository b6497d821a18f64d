"""`effprof diff BASE.json NEW.json`: did a row get faster or slower, beyond noise and beyond a threshold?

Rows of the two files are matched by what was measured: component, every `param_*` value, batch, dtype,
execution mode (eager / graphs / compile) and timing mode (warm / cold); a key that occurs several times in
a file is matched in order. For each pair:

- `ratio` = median(NEW samples) / median(BASE samples) of the raw per-call latencies each record keeps in
  `latency_samples_ms` (> 1 = slower);
- `ratio_ci95_low/high`: percentile bootstrap 95% interval of that ratio: both sample sets resampled
  `n_boot` times (numpy Generator seeded with `seed`, so a diff is reproducible) and the ratio of the
  resampled medians taken each time (Efron & Tibshirani, *An Introduction to the Bootstrap*, ch. 13). The
  samples are a time series (clocks drift while a row is timed), so they are resampled in moving blocks of
  a fifth of the run (Künsch 1989; `effprof.analysis.stats`): an i.i.d. resampling would call a drift
  between the two halves of one run a significant difference;
- `verdict` at `threshold` t (0.03 = 3%): `slower` when the whole interval lies above 1 + t (significantly
  slower, and by more than t), `faster` when it lies below 1 − t, else `no significant change` (no change
  larger than t is established; the interval may still exclude 1 by less than t, `ci_excludes_1` says so),
  unless the interval is too wide to bear that verdict: when high / low > max(NOISY_FACTOR, ((1 + t) /
  (1 − t))²) — the interval spans more than a factor of 2, or more than twice the width of the band of
  "no change" (1 − t, 1 + t) on a log scale — the verdict is `inconclusive (the runs are too noisy)`: data
  that cannot tell a halving from a doubling (e.g. ratio 606 with the interval [0.98, 880]) establish
  nothing either way. It never fails the gate; the notes say which rows to measure again (longer
  `--min-time`, a quieter machine).

Records without samples (files from before they were kept) get the ratio of their stored medians and the
verdict `no samples`, which never fails a gate.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from effprof.analysis.stats import block_bootstrap_medians

MATCH_FIELDS = ("batch", "dtype", "exec_mode", "timing_mode")
ENV_FIELDS = (("device_name", "device"), ("gpu_name", "GPU"), ("driver_version", "driver"),
              ("torch_version", "torch"), ("cuda_version", "CUDA"))
INCONCLUSIVE = "inconclusive (the runs are too noisy)"
VERDICTS = ("faster", "slower", "no significant change", INCONCLUSIVE, "no samples")
NOISY_FACTOR = 2.0  # an interval wider than this factor (high / low) cannot say "no significant change"


def match_key(record: dict[str, Any]) -> tuple:
    """What identifies a measurement across runs: component, parameters, batch, dtype and modes."""
    params = tuple(sorted((k, repr(v)) for k, v in record.items() if k.startswith("param_")))
    return (record.get("component"), params) + tuple(repr(record.get(k, "eager" if k == "exec_mode" else None))
                                                       for k in MATCH_FIELDS)


def bootstrap_ratio_ci(base: list[float], new: list[float], n_boot: int = 2000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float, float]:
    """(ratio of medians new/base, low, high): percentile interval at `level` of a moving-block bootstrap
    of each side (`effprof.analysis.stats.block_bootstrap_medians`)."""
    a, b = np.asarray(base, dtype=float), np.asarray(new, dtype=float)
    if a.size == 0 or b.size == 0:
        raise ValueError("bootstrap needs samples on both sides")
    rng = np.random.default_rng(seed)
    ratios = block_bootstrap_medians(b, n_boot, rng) / block_bootstrap_medians(a, n_boot, rng)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(np.median(b) / np.median(a)), float(low), float(high)


def verdict(low: float, high: float, threshold: float) -> str:
    """The verdict of an interval [low, high] of new/base at `threshold` (see the module docstring)."""
    if low > 1 + threshold:
        return "slower"
    if high < 1 - threshold:
        return "faster"
    if high / low > max(NOISY_FACTOR, ((1 + threshold) / (1 - threshold)) ** 2):
        return INCONCLUSIVE
    return "no significant change"


def diff_records(base: list[dict[str, Any]], new: list[dict[str, Any]], threshold: float = 0.03,
                 n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Compare two runs. Returns {"rows": [...], "only_base": [labels], "only_new": [labels],
    "warnings": [lines]}; each row has label, params, base/new medians (ms), ratio, its interval,
    change_pct, ci_excludes_1 and verdict."""
    if not 0 <= threshold < 1:
        raise ValueError("threshold must be in [0, 1)")
    ok_base = [r for r in base if r.get("status", "ok") == "ok" and r.get("latency_ms_median") is not None]
    ok_new = [r for r in new if r.get("status", "ok") == "ok" and r.get("latency_ms_median") is not None]
    pool: dict[tuple, list[dict[str, Any]]] = {}
    for r in ok_new:
        pool.setdefault(match_key(r), []).append(r)
    rows, only_base = [], []
    for i, b in enumerate(ok_base):
        candidates = pool.get(match_key(b))
        if not candidates:
            only_base.append(str(b.get("label")))
            continue
        n = candidates.pop(0)
        rows.append(_compare(b, n, threshold, n_boot, seed + i))
    only_new = [str(r.get("label")) for rs in pool.values() for r in rs]
    failing_keys = {match_key(r) for r in new if r.get("status", "ok") != "ok"}
    now_failing = [str(b.get("label")) for b in ok_base
                   if str(b.get("label")) in only_base and match_key(b) in failing_keys]
    return {"rows": rows, "only_base": only_base, "only_new": only_new, "now_failing": now_failing,
            "threshold": threshold, "warnings": environment_warnings(base, new)}


def _compare(b: dict[str, Any], n: dict[str, Any], threshold: float, n_boot: int, seed: int) -> dict[str, Any]:
    row = {"label": b.get("label"), "component": b.get("component"), "params": b.get("params", ""),
           "base_ms": b["latency_ms_median"], "new_ms": n["latency_ms_median"]}
    sa, sb = b.get("latency_samples_ms"), n.get("latency_samples_ms")
    if sa and sb:
        ratio, low, high = bootstrap_ratio_ci(sa, sb, n_boot, seed)
        row.update(base_ms=float(np.median(sa)), new_ms=float(np.median(sb)), ratio=ratio, ratio_ci95_low=low,
                   ratio_ci95_high=high, ci_excludes_1=bool(low > 1 or high < 1),
                   verdict=verdict(low, high, threshold), base_samples=len(sa), new_samples=len(sb))
    else:
        row.update(ratio=n["latency_ms_median"] / b["latency_ms_median"], ratio_ci95_low=None, ratio_ci95_high=None,
                   ci_excludes_1=None, verdict="no samples")
    row["change_pct"] = 100 * (row["ratio"] - 1)
    if b.get("label") != n.get("label"):
        row["new_label"] = n.get("label")
    return row


def environment_warnings(base: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[str]:
    """One line per environment fact (device, GPU, driver, torch, CUDA) that differs between the two runs."""
    lines = []
    for key, name in ENV_FIELDS:
        a = sorted({str(r[key]) for r in base if r.get(key) not in (None, "")})
        b = sorted({str(r[key]) for r in new if r.get(key) not in (None, "")})
        if a and b and a != b:
            lines.append(f"{name} differs: {', '.join(a)} (base) vs {', '.join(b)} (new); "
                         "a difference may be the environment's, not the code's")
    return lines


def regressions(result: dict[str, Any]) -> list[str]:
    """What `--fail-on-regression` fails on: labels of rows significantly slower by more than the threshold,
    and of rows measured in BASE that now fail (error, OOM, refused) in NEW."""
    return [str(r["label"]) for r in result["rows"] if r["verdict"] == "slower"] + list(result["now_failing"])
