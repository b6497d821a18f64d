"""Confidence intervals for medians of timing samples that are not independent.

A GPU's latency drifts while it is timed: boost clocks move with power and temperature, and a row can sit
at one level for a few hundred milliseconds and at another a percent or a few percent away for the next
(on an H200, `compare projectors`' 53 µs row reads 0.0533 ms in one half of a run and 0.0552 ms in the
other). Samples taken one after another are then correlated, and the binomial interval of the median,
which assumes independent samples, is far too narrow. Two standard remedies for a correlated series:

- `median_ci95`: **batch medians** (the method of batch means, e.g. Law & Kelton, *Simulation Modeling and
  Analysis*, ch. 9): the samples, in the order they were taken, are cut into `batches` consecutive batches;
  the median's standard error is the spread of the batch medians over √batches, and the interval is
  median ± t(batches − 1) × that, widened to the binomial interval where that is wider. A steady run
  gets the binomial interval; a run that drifted gets an interval as wide as its drift warrants.
- `block_bootstrap_medians`: a **moving-block bootstrap** (Künsch 1989) for `effprof diff`: resampling
  whole runs of consecutive samples (blocks of a fifth of the run) keeps the drift in every resample.
- `pooled_median_ci95`: samples from several processes (`compare --processes N`): a two-level bootstrap
  (processes, then blocks within each), so the interval also covers what differs from one process to
  the next (where the allocator put the weights, which state the GPU was in when the process ran).

No torch here; numpy only where resampling needs it.
"""
from __future__ import annotations

import math
import statistics
from typing import Sequence

# Student's t, 0.975 quantile, for 1..30 degrees of freedom (any statistics table).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)
BATCHES = 5          # batch medians per interval: enough degrees of freedom (t = 2.78), batches of a fifth
MIN_PER_BATCH = 2    # fewer samples than BATCHES * this: fewer batches (at least 2), else binomial only


def t_quantile_975(df: int) -> float:
    """0.975 quantile of Student's t: the table up to 30 degrees of freedom, then the Cornish–Fisher
    expansion around the normal quantile (Abramowitz & Stegun 26.7.5; error < 1e-4 beyond 30)."""
    if df < 1:
        raise ValueError("degrees of freedom must be at least 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959963984540054
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def binomial_median_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Distribution-free 95% interval of the median of independent samples (binomial order statistics)."""
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        raise ValueError("no samples")
    half = 1.96 * math.sqrt(n) / 2
    lo = max(0, math.floor(n / 2 - half))
    hi = min(n - 1, math.ceil(n / 2 + half) - 1)
    return xs[lo], xs[max(lo, hi)]


def batch_medians(values: Sequence[float], batches: int = BATCHES) -> list[float]:
    """Medians of `batches` consecutive, near-equal batches of `values` (in the order given)."""
    n = len(values)
    k = min(batches, n // MIN_PER_BATCH)
    if k < 2:
        return []
    edges = [round(i * n / k) for i in range(k + 1)]
    return [statistics.median(values[edges[i]:edges[i + 1]]) for i in range(k)]


def median_ci95(values: Sequence[float], batches: int = BATCHES) -> tuple[float, float]:
    """95% interval of the median of a series of samples **in the order they were taken** (see the module
    docstring): the wider of the binomial interval and median ± t × sd(batch medians) / √batches, within
    the samples' range (one batch spoiled by a loaded host can make the second far wider than the data)."""
    lo, hi = binomial_median_ci95(values)
    meds = batch_medians(list(values), batches)
    if meds:
        median = statistics.median(values)
        half = t_quantile_975(len(meds) - 1) * statistics.stdev(meds) / math.sqrt(len(meds))
        lo, hi = max(min(lo, median - half), min(values)), min(max(hi, median + half), max(values))
    return lo, hi


def _block_indices(n: int, k: int, rng, blocks: int = BATCHES):
    """[k, n] indices of `k` moving-block resamples of a series of n: `blocks` runs of ceil(n / blocks)
    consecutive positions (circular), cut to n."""
    import numpy as np

    length = max(1, math.ceil(n / blocks))
    starts = rng.integers(0, n, size=(k, math.ceil(n / length), 1))
    return ((starts + np.arange(length)) % n).reshape(k, -1)[:, :n]


def block_bootstrap_medians(values: Sequence[float], n_boot: int, rng, blocks: int = BATCHES):
    """Medians of `n_boot` moving-block resamples of `values` (a numpy array of shape [n_boot])."""
    import numpy as np

    a = np.asarray(values, dtype=float)
    if a.size == 0:
        raise ValueError("bootstrap needs samples")
    out = np.empty(n_boot)
    step = max(1, 2_000_000 // a.size)  # bounded memory for long per-call (--cold) sample sets
    for start in range(0, n_boot, step):
        k = min(step, n_boot - start)
        out[start:start + k] = np.median(a[_block_indices(a.size, k, rng, blocks)], axis=1)
    return out


def pooled_median_ci95(groups: Sequence[Sequence[float]], n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval of the median of the pooled samples of several processes (`groups`, each in its own
    time order): a percentile bootstrap that draws as many processes as there are, with replacement,
    resamples each drawn process by moving blocks and takes the median of the pooled draw; never
    narrower than `median_ci95` of the pooled series."""
    import numpy as np

    arrays = [np.asarray(g, dtype=float) for g in groups if len(g)]
    if not arrays:
        raise ValueError("no samples")
    pooled_values = np.concatenate(arrays)
    lo_b, hi_b = median_ci95(pooled_values.tolist())
    if len(arrays) == 1:
        return lo_b, hi_b
    rng = np.random.default_rng(seed)
    p, width = len(arrays), max(a.size for a in arrays)
    medians = np.empty(n_boot)
    step = max(1, 2_000_000 // (p * width))
    for start in range(0, n_boot, step):
        k = min(step, n_boot - start)
        chosen = rng.integers(0, p, size=(k, p))
        draw = np.full((k, p, width), np.nan)
        for g, a in enumerate(arrays):
            rows, slots = np.nonzero(chosen == g)
            if rows.size:
                draw[rows, slots, :a.size] = a[_block_indices(a.size, rows.size, rng)]
        medians[start:start + k] = np.nanmedian(draw.reshape(k, -1), axis=1)
    low, high = np.percentile(medians, [2.5, 97.5])
    return float(min(low, lo_b)), float(max(high, hi_b))
