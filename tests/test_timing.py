import statistics
import time
from collections import Counter

import numpy as np
import pytest
import torch

from effprof.measure.timing import TimingResult, coefficient_of_variation, quantile, time_callable


def test_quantile_matches_numpy_linear_interpolation():
    rng = np.random.default_rng(0)
    xs = list(rng.exponential(size=37))
    for q in (0.0, 0.1, 0.5, 0.9, 1.0):
        assert abs(quantile(xs, q) - np.quantile(xs, q)) < 1e-12


def test_sleep_is_timed_in_milliseconds_with_ordered_statistics():
    result = time_callable(lambda: time.sleep(0.002), torch.device("cpu"), warmup_s=0, min_time_s=0.06)
    assert result.method == "perf_counter-blocked"
    assert 2.0 <= result.median_ms < 20.0
    assert result.quantile_ms(0.1) <= result.median_ms <= result.quantile_ms(0.9)
    assert len(result.block_medians_ms) >= 5
    assert result.n_calls == len(result.samples_ms) * result.calls_per_sample >= 5
    lo, hi = result.median_ci95_ms()
    assert lo <= result.median_ms <= hi
    assert sum(result.samples_ms) * result.calls_per_sample / 1e3 >= 0.06


def test_warm_samples_are_block_means_and_setup_gives_per_call_samples():
    warm = time_callable(lambda: time.sleep(0.001), torch.device("cpu"), warmup_s=0, min_time_s=0.1)
    assert warm.calls_per_block > 1 and warm.calls_per_sample == warm.calls_per_block
    assert len(warm.samples_ms) == len(warm.block_medians_ms)  # one sample (the mean) per block
    assert all(1.0 <= s < 10.0 for s in warm.samples_ms)
    cold = time_callable(lambda: time.sleep(0.001), torch.device("cpu"), warmup_s=0, min_time_s=0.1,
                         setup=lambda: None)
    assert cold.method == "perf_counter-per-call" and cold.calls_per_sample == 1
    assert len(cold.samples_ms) == cold.calls_per_block * len(cold.block_medians_ms)


def test_blocks_are_sized_from_the_time_budget():
    calls = []
    result = time_callable(lambda: calls.append(1), torch.device("cpu"), warmup_s=0, min_time_s=0.01)
    # a call of ~1 µs and a budget of 10 ms: blocks of many calls, not one call per block
    assert result.calls_per_block > 50
    assert result.n_calls == result.calls_per_block * len(result.block_medians_ms)
    assert len(calls) >= result.n_calls + result.warmup_calls


def test_setup_runs_outside_the_timed_region():
    # a call of some 20 µs, not an empty one: blocks are sized from the call alone, so an empty call would get
    # thousands of 1 ms setups per block (seconds) before min_time_s of timed work is reached
    result = time_callable(lambda: sum(range(1000)), torch.device("cpu"), warmup_s=0, min_time_s=0.005,
                           setup=lambda: time.sleep(0.001))
    assert result.median_ms < 0.5  # the 1 ms setup never lands in a sample


def test_max_cv_keeps_timing_until_steady_or_budget():
    state = {"n": 0}

    def jittery():
        state["n"] += 1
        time.sleep(0.004 if state["n"] % 7 == 0 else 0.001)

    result = time_callable(jittery, torch.device("cpu"), warmup_s=0, min_time_s=0.02, max_time_s=0.3, max_cv=1e-9)
    assert result.block_cv > 1e-9  # never steady enough, so the budget ended it
    assert sum(result.samples_ms) * result.calls_per_sample / 1e3 >= 0.02


def test_cv_definition():
    r = TimingResult([1.0, 2.0, 3.0], 3, [2.0], "perf_counter", 1)
    assert abs(r.cv - statistics.stdev([1, 2, 3]) / 2) < 1e-12
    assert coefficient_of_variation([5.0]) == 0.0


def test_l2_flusher_is_one_buffer_per_device(monkeypatch):
    # a fresh 256 MiB buffer between runs flips µs kernels between two states (RESULTS.md, issue 3)
    from effprof.measure.timing import L2Flusher

    made = []
    monkeypatch.setattr(L2Flusher, "__init__", lambda self, device: made.append(device))
    monkeypatch.setattr(L2Flusher, "_per_device", {})
    first = L2Flusher.shared(torch.device("cuda", 0))
    assert L2Flusher.shared(torch.device("cuda", 0)) is first
    assert L2Flusher.shared(torch.device("cuda", 1)) is not first
    assert len(made) == 2


class LaunchCounter:
    """Stands in for a CUDA tensor: every zero_() is one kernel launch on the stream."""

    def __init__(self, stream: list):
        self.stream = stream

    def zero_(self):
        self.stream.append("kernel")


def flusher_on(stream: list, stagger: bool):
    from effprof.measure.timing import L2Flusher

    flusher = L2Flusher.__new__(L2Flusher)  # no GPU here: the buffers only count launches
    flusher.buffer, flusher.spacer = LaunchCounter(stream), LaunchCounter(stream)
    flusher.stagger, flusher.calls = stagger, 0
    return flusher


@pytest.mark.parametrize("kernels_per_call", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("period", [2, 4, 8])
def test_staggered_flush_visits_every_launch_phase_equally(kernels_per_call, period):
    # the timed call's event overhead depends on its launch count modulo a small power of two
    # (diag_timing.py, sections state and spacer): each phase must come up equally often in a run
    stream: list = []
    flush = flusher_on(stream, stagger=True)
    phases = []
    for _ in range(8 * period):
        flush()
        phases.append(len(stream) % period)  # the phase the timed call's first kernel launches at
        stream.extend(["kernel"] * kernels_per_call)
    for window in range(4):  # every window of 2 × period consecutive calls, not only the whole run
        counts = Counter(phases[window * 2 * period:(window + 1) * 2 * period])
        assert sorted(counts) == list(range(period)) and set(counts.values()) == {2}


def test_plain_flush_keeps_one_launch_phase_for_a_whole_run():
    # the failure the stagger removes: one flush and one kernel per call never leave the start phase
    stream: list = ["kernel"]  # whatever ran before the run sets its phase
    flush = flusher_on(stream, stagger=False)
    phases = []
    for _ in range(16):
        flush()
        phases.append(len(stream) % 2)
        stream.append("kernel")
    assert set(phases) == {0}



class FakeClock:
    """perf_counter for the timer: each call of `work` advances it by the next duration (seconds)."""

    def __init__(self, durations):
        self.now, self.durations, self.calls = 100.0, durations, 0

    def perf_counter(self):
        return self.now

    def work(self):
        self.now += self.durations(self.calls)
        self.calls += 1


def fake_timer(monkeypatch, durations):
    import effprof.measure.timing as timing

    clock = FakeClock(durations)
    monkeypatch.setattr(timing.time, "perf_counter", clock.perf_counter)
    return clock


def test_a_steady_row_stops_at_min_time_once_its_cv_is_below_target(monkeypatch):
    clock = fake_timer(monkeypatch, lambda i: 1e-4)  # 0.1 ms per call, no noise
    result = time_callable(clock.work, torch.device("cpu"), warmup_s=0.01, min_time_s=0.05, max_cv=0.02)
    assert result.stop == "steady"
    timed_s = sum(result.samples_ms) * result.calls_per_sample / 1e3
    assert 0.05 <= timed_s < 0.05 + 0.05 / 25 + 1e-9  # stops at the first block after min_time
    assert result.median_ms == pytest.approx(0.1)
    # the block size is sized from the estimate: min_time / 25 of calls of 0.1 ms = 20 calls
    assert result.calls_per_block == 20 and result.warmup_s == pytest.approx(0.01 + 5e-4)


def test_a_noisy_row_keeps_timing_until_the_cap_and_says_so(monkeypatch):
    # alternating slow and fast blocks: block CV about 0.5, never below 0.02
    clock = fake_timer(monkeypatch, lambda i: 3e-4 if (i // 20) % 2 else 1e-4)
    result = time_callable(clock.work, torch.device("cpu"), warmup_s=0.0, min_time_s=0.05, max_cv=0.02)
    assert result.stop == "cap" and result.block_cv > 0.02
    assert 0.5 <= result.timing_s < 0.5 + 0.05  # the cap: 10 × min_time of blocks
    # without a CV target the same row stops at min_time
    plain = time_callable(clock.work, torch.device("cpu"), warmup_s=0.0, min_time_s=0.05, max_cv=None)
    assert plain.stop == "min-time" and plain.timing_s < 0.1


def test_max_time_bounds_warmup_setup_and_calls(monkeypatch):
    clock = fake_timer(monkeypatch, lambda i: 1e-3)

    def flush():  # 5 ms of setup per call: outside the samples, inside the bound
        clock.now += 5e-3

    start = clock.now
    result = time_callable(clock.work, torch.device("cpu"), warmup_s=1.0, min_time_s=1.0, max_time_s=0.05,
                           max_cv=0.02, setup=flush)
    elapsed = clock.now - start
    assert result.stop == "max-time"
    # warm-up stops at a quarter of the bound and block sizing takes at most a quarter of the rest, so
    # timing starts well inside it; it ends within one block (here one call of 6 ms) past the bound
    assert result.calls_per_block == 1 and result.warmup_s < 0.05 * 0.75
    assert elapsed <= 0.05 + 0.006 + 1e-9
    assert all(s == pytest.approx(1.0) for s in result.samples_ms)  # the flush never lands in a sample


def test_max_time_bounds_a_real_cold_run_on_cpu():
    start = time.perf_counter()
    result = time_callable(lambda: time.sleep(0.001), torch.device("cpu"), warmup_s=0.5, min_time_s=2.0,
                           max_time_s=0.1, setup=lambda: time.sleep(0.004))
    assert time.perf_counter() - start < 0.1 + 0.15  # the bound plus at most one block on a loaded host
    assert result.stop == "max-time" and result.n_calls >= 1


def test_a_jittery_row_stops_once_its_median_is_pinned_down(monkeypatch):
    # per-call samples (a setup per call, as with --cold): 40% of calls at 0.1 ms, 30% each at 0.08 and
    # 0.12 ms in a fixed pseudo-random order. Blocks of 20 calls have medians of 0.09-0.11 ms (block CV
    # about 0.05, never steady at 0.02), but the median over all calls is 0.1 ms with a 95% interval of
    # zero width after a few hundred calls: the row stops "precise" at min_time, not at the 10x cap.
    levels = [1e-4] * 4 + [0.8e-4] * 3 + [1.2e-4] * 3
    clock = fake_timer(monkeypatch, lambda i: levels[(i * 7 + (i * i) % 13) % 10])
    result = time_callable(clock.work, torch.device("cpu"), warmup_s=0.0, min_time_s=0.05, max_cv=0.02,
                           setup=lambda: None)
    assert result.block_cv > 0.02
    assert result.stop == "precise" and result.median_ms == pytest.approx(0.1)
    lo, hi = result.median_ci95_ms()
    assert (hi - lo) / 2 <= 0.02 / 4 * result.median_ms
    assert result.timing_s < 0.1  # at min_time (0.05 s of calls), not at the 0.5 s cap


def test_median_precision_widens_with_drift_but_not_with_shuffled_jitter():
    import random

    from effprof.analysis.stats import binomial_median_ci95
    from effprof.measure.timing import median_ci95, median_is_precise

    values = [float(v) for v in range(1, 101)]  # n = 100: the binomial interval is the 40th..61st order statistics
    assert binomial_median_ci95(values) == (41.0, 60.0)
    # the same values taken in rising order are a drift across the run: batch medians 10.5, 30.5, ... 90.5
    # (sd 31.6), so the interval is 50.5 +- 2.776 * 31.6 / sqrt(5)
    lo, hi = median_ci95(values)
    assert (hi - lo) / 2 == pytest.approx(2.776 * statistics.stdev([10.5, 30.5, 50.5, 70.5, 90.5]) / 5 ** 0.5)
    random.Random(0).shuffle(values)  # no drift: back to about the binomial interval
    lo, hi = median_ci95(values)
    assert 41.0 - 8 <= lo <= 41.0 and 60.0 <= hi <= 60.0 + 8
    assert not median_is_precise(values, 0.02)
    assert median_is_precise([1.0] * 50 + [0.5, 2.0] * 5, 0.02)