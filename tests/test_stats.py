"""Intervals of a median from correlated timing samples (effprof.analysis.stats), on seeded synthetic series
whose true median is known."""
import numpy as np
import pytest

from effprof.analysis.stats import (binomial_median_ci95, block_bootstrap_medians, median_ci95,
                                    pooled_median_ci95)


def clock_states(rng, n=40, levels=(1.0, 1.01), stay=0.9, jitter=0.002):
    """A row timed through GPU clock states: the level persists from sample to sample with probability
    `stay`, small independent jitter on top; the long-run median is the midpoint of the levels' mixture."""
    state, out = int(rng.integers(len(levels))), []
    for _ in range(n):
        if rng.random() > stay:
            state = 1 - state
        out.append(levels[state] * (1 + jitter * rng.standard_normal()))
    return out


def true_median(seed=123, n=400_000):
    rng = np.random.default_rng(seed)
    return float(np.median(clock_states(rng, n)))


def test_drift_aware_interval_covers_the_long_run_median_where_the_binomial_one_does_not():
    truth = true_median()
    rng = np.random.default_rng(0)
    runs = [clock_states(rng) for _ in range(400)]
    covered = lambda ci: ci[0] <= truth <= ci[1]  # noqa: E731
    binomial = np.mean([covered(binomial_median_ci95(r)) for r in runs])
    batch = np.mean([covered(median_ci95(r)) for r in runs])
    # 40 samples with a state lasting 10 on average: i.i.d. order statistics cover the long-run median in
    # about half the runs (0.49 with this seed), batch medians in three of four (0.78): better, not 95%,
    # because a run that switched state only a few times cannot know the states' shares
    assert binomial < 0.6
    assert batch > 0.7


def test_independent_samples_pay_about_a_third_more_width_and_keep_95_percent():
    # no drift: the batch interval is t(4) x 0.94 / 1.96 ~ 1.33 times the binomial one on average (the
    # price of not assuming independence), and both cover the true median (1.0) about 95% of the time
    rng = np.random.default_rng(1)
    runs = [list(1 + 0.01 * rng.standard_normal(200)) for _ in range(300)]
    widths = [(median_ci95(r)[1] - median_ci95(r)[0]) / (binomial_median_ci95(r)[1] - binomial_median_ci95(r)[0])
              for r in runs]
    assert 1.0 <= min(widths) and 1.15 < np.mean(widths) < 1.5
    assert np.mean([median_ci95(r)[0] <= 1.0 <= median_ci95(r)[1] for r in runs]) >= 0.93


def test_block_bootstrap_keeps_the_drift_in_every_resample():
    rng = np.random.default_rng(2)
    drift = [1.0] * 50 + [1.04] * 50        # two halves of one run at two levels
    meds = block_bootstrap_medians(drift, 2000, rng)
    assert np.percentile(meds, 2.5) <= 1.0 + 1e-12 and np.percentile(meds, 97.5) >= 1.04 - 1e-12
    iid = np.random.default_rng(3).permutation(drift)   # the same values without the drift
    meds = block_bootstrap_medians(list(iid), 2000, rng)
    assert np.mean((meds > 1.0) & (meds < 1.04)) < 0.9 and meds.min() >= 1.0 and meds.max() <= 1.04


def test_pooled_interval_covers_what_differs_between_processes():
    rng = np.random.default_rng(4)
    a = list(0.0534 * (1 + 0.001 * rng.standard_normal(40)))   # process 1 settled at one level
    b = list(0.0557 * (1 + 0.001 * rng.standard_normal(40)))   # process 2 at another, 4% higher
    lo_a, hi_a = median_ci95(a)
    lo_b, hi_b = median_ci95(b)
    assert hi_a < lo_b                        # each alone: two runs that disagree beyond their intervals
    lo, hi = pooled_median_ci95([a, b])
    assert lo <= np.median(a) and hi >= np.median(b)   # pooled over processes: both within
    same = list(0.0534 * (1 + 0.001 * rng.standard_normal(40)))
    lo2, hi2 = pooled_median_ci95([a, same])
    assert (hi2 - lo2) < 0.25 * (hi - lo)     # two processes that agree: a narrow interval
    assert pooled_median_ci95([a]) == median_ci95(a)
    with pytest.raises(ValueError):
        pooled_median_ci95([[], []])


def test_interval_stays_within_the_samples():
    values = [1.0] * 8 + [500.0] * 2   # one batch on a host that stalled: sd of the batch medians is huge
    lo, hi = median_ci95(values)
    assert lo == 1.0 and hi == 500.0
