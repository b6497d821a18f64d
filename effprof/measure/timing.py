"""Latency measurement on CUDA and CPU.

The method follows the two timers engineers in this field trust:

- `torch.utils.benchmark.Timer.blocked_autorange`: group calls into blocks and time each block as a
  whole, so that neither a per-call synchronisation nor the per-call cost of recording a timer leaks
  into the figure; keep going until the time budget is spent.
- `triton.testing.do_bench`: warm up, estimate the time of one call, size the repetition count from a
  time budget, flush the L2 cache between calls (`--cold`), and time each call with a pair of CUDA
  events recorded back to back without synchronising in between.

Warm timing (no per-call setup): each block of `calls_per_block` calls runs between one pair of CUDA
events (one `perf_counter` pair on CPU); a sample is the block's time divided by its calls. Recording
an event pair per call would add host work to every call, and on work of a few microseconds the GPU
then waits on the host (an H100 1024³ matmul reads 21.7 µs that way against 9.9 µs of kernel time).
With a per-call `setup` (L2 flush, input rotation) each call gets its own event pair, as in do_bench,
and a sample is one call. Blocks last about `min_time / 25` seconds and the host synchronises once per
block.

How long: timing is sized by the steadiness it reaches, not by a fixed budget. After `min_time` seconds
of timed calls (and at least 5 blocks) it stops as soon as the coefficient of variation of the block
medians is at most `max_cv` ("steady"), or the median is already known precisely: its 95% confidence
interval no wider than ±`max_cv` / 4 of it ("precise"; a µs kernel timed per call jitters by a few
percent from call to call, so its block medians may never get steady although thousands of samples pin
its median down). That interval (`effprof.analysis.stats.median_ci95`) takes the samples in the order they
were taken and widens with drift across the run (clock states), so a row that moved between two levels is
not called precise. A quiet sub-millisecond row is done in a tenth of a second, a noisy one keeps going
until the cap (`max_time`, or 10 × `min_time`), and `max_time` bounds everything, warm-up and flushes
included. The result says why it stopped (`stop`).

Processes that must time together (the ranks of a tensor-parallel row, whose call contains a collective)
pass a `Consensus`: the warm-up ends when every process has warmed up, the blocks are sized from the
slowest estimate and one process decides when to stop (effprof.launch.torchrun). Alone, each decision is
the process's own.

All times are in milliseconds.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from effprof.analysis.stats import median_ci95
from effprof.measure import UNSTEADY_CV  # noqa: F401  (re-exported)


@dataclass
class TimingResult:
    """Per-call latencies (ms) grouped in blocks, plus how they were taken."""

    samples_ms: list[float]
    calls_per_block: int
    block_medians_ms: list[float]
    method: str
    warmup_calls: int
    calls_per_sample: int = 1  # calls_per_block when whole blocks are timed, else 1
    warmup_s: float = 0.0       # wall seconds of warm-up and block sizing
    timing_s: float = 0.0       # wall seconds of the timed blocks (setup and synchronisation included)
    stop: str = ""              # why timing ended: steady | precise | min-time | cap | max-time

    @property
    def n_calls(self) -> int:
        return len(self.samples_ms) * self.calls_per_sample

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def mean_ms(self) -> float:
        return statistics.fmean(self.samples_ms)

    def quantile_ms(self, q: float) -> float:
        return quantile(self.samples_ms, q)

    @property
    def cv(self) -> float:
        """Coefficient of variation (std / mean) of the per-call latencies; 0 for a single call."""
        return coefficient_of_variation(self.samples_ms)

    @property
    def block_cv(self) -> float:
        """Coefficient of variation of the block medians: the stopping criterion of `max_cv`."""
        return coefficient_of_variation(self.block_medians_ms)

    def median_ci95_ms(self) -> tuple[float, float]:
        """95% confidence interval of the median, drift-aware (`effprof.analysis.stats.median_ci95`)."""
        return median_ci95(self.samples_ms)


class Consensus:
    """How the timing's three decisions are taken: alone, each process takes its own (this base class).
    `all(flag)`: every process agrees (the warm-up is over); `max(value)`: the largest estimate (block sizing);
    `decide(code)`: the deciding process's stop code (0 = go on), so every process runs the same blocks."""

    def all(self, flag: bool) -> bool:
        return flag

    def max(self, value: float) -> float:
        return value

    def decide(self, code: int) -> int:
        return code


ALONE = Consensus()
STOPS = ("max-time", "min-time", "steady", "precise", "cap")  # why timing ended; decide() passes 1 + index


def median_is_precise(values: list[float], max_cv: float) -> bool:
    """True when the 95% confidence interval of the median (`median_ci95`: drift within the run widens
    it) is within ±max_cv / 4 of it."""
    lo, hi = median_ci95(values)
    return (hi - lo) / 2 <= max_cv / 4 * statistics.median(values)


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default), q in [0, 1]."""
    xs = sorted(values)
    if not xs:
        raise ValueError("no samples")
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def coefficient_of_variation(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = statistics.fmean(values)
    return statistics.stdev(values) / mean if mean > 0 else 0.0


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def estimate_call_ms(fn: Callable[[], Any], device: torch.device, setup: Callable[[], None] | None = None,
                     max_calls: int = 5, max_s: float = 0.2) -> float:
    """Mean wall time of a few synchronised calls: enough to size the blocks, not a measurement."""
    sync(device)
    calls, start = 0, time.perf_counter()
    while calls < max_calls:
        if setup is not None:
            setup()
        fn()
        calls += 1
        sync(device)
        if time.perf_counter() - start > max_s:
            break
    return (time.perf_counter() - start) / calls * 1e3


def time_callable(fn: Callable[[], Any], device: torch.device, *, warmup_s: float = 0.1, min_time_s: float = 0.1,
                  max_time_s: float | None = None, max_cv: float | None = None, min_blocks: int = 5,
                  setup: Callable[[], None] | None = None,
                  on_phase: Callable[[str], None] | None = None, consensus: Consensus = ALONE) -> TimingResult:
    """Time `fn()` on `device` (see the module docstring for the method).

    - warm-up: at least one call, then calls until `warmup_s` seconds have passed;
    - blocks of `ceil((budget / 25) / estimate)` calls (budget = min_time_s, or max_time_s if smaller),
      one synchronisation per block; without `setup` a block is one sample (its mean), with `setup`
      every call is a sample;
    - stop ("steady") once `min_time_s` of timed work and `min_blocks` blocks are done and, when `max_cv`
      is given, the coefficient of variation of the block medians is at most `max_cv`, or ("precise") the
      median's 95% confidence interval is within ±max_cv / 4 of it (without `max_cv`: "min-time" at that
      point). A row that never gets that steady stops at the cap ("cap"): `max_time_s`
      when given, else 10 × min_time_s of blocks.
    - `max_time_s` bounds the whole call: warm-up, the estimate, setup/flush and timed calls all count
      against it, and it ends the timing as soon as it is reached once one block is done ("max-time"),
      even before `min_time_s` or `min_blocks`.

    `setup()`, when given, runs before every call outside the timed region (L2 flush, input rotation).
    `on_phase(name)` is told when "warm-up" and "timing" begin (progress display). `consensus` takes the
    decisions together with other processes (see `Consensus`).
    """
    if min_time_s <= 0:
        raise ValueError("min_time_s must be positive")
    if max_time_s is not None and max_time_s <= 0:
        raise ValueError("max_time_s must be positive")
    on_cuda = device.type == "cuda"
    t0 = time.perf_counter()
    deadline = None if max_time_s is None else t0 + max_time_s

    def past(limit: float | None) -> bool:
        return limit is not None and time.perf_counter() >= limit

    if on_phase is not None:
        on_phase("warm-up")
    warmup_end = t0 + warmup_s if deadline is None else min(t0 + warmup_s, t0 + max_time_s / 4)
    warmup_calls = 0
    while True:  # at least one call, then until warmup_end
        if setup is not None:
            setup()
        fn()
        warmup_calls += 1
        sync(device)
        if consensus.all(time.perf_counter() >= warmup_end):
            break
    budget_s = min_time_s if max_time_s is None else min(min_time_s, max_time_s)
    est_max_s = 0.2 if deadline is None else max(0.0, min(0.2, (deadline - time.perf_counter()) / 4))
    est_ms = consensus.max(max(estimate_call_ms(fn, device, setup, max_s=est_max_s), 1e-4))
    calls_per_block = max(1, min(100_000, math.ceil(budget_s * 1e3 / 25 / est_ms)))
    if setup is None:
        run_block = cuda_block_mean if on_cuda else cpu_block_mean
    else:
        run_block = cuda_block_per_call if on_cuda else cpu_block_per_call

    if on_phase is not None:
        on_phase("timing")
    samples: list[float] = []
    block_medians: list[float] = []
    timed_s = 0.0
    wall_start = time.perf_counter()
    cap = deadline if deadline is not None else wall_start + 10 * min_time_s

    def stop_reason(timed_s: float, block_medians: list[float], samples: list[float]) -> str | None:
        if past(deadline):
            return "max-time"
        if not (timed_s >= min_time_s and len(block_medians) >= min_blocks):
            return None
        if max_cv is None:
            return "min-time"
        if coefficient_of_variation(block_medians) <= max_cv:
            return "steady"
        if median_is_precise(samples, max_cv):
            return "precise"
        return "cap" if past(cap) else None

    while True:
        block = run_block(fn, calls_per_block, setup)
        samples.extend(block)
        block_medians.append(statistics.median(block))
        timed_s += sum(block) / 1e3 * (calls_per_block if setup is None else 1)
        stop = stop_reason(timed_s, block_medians, samples)
        code = consensus.decide(0 if stop is None else 1 + STOPS.index(stop))
        if code:
            stop = STOPS[code - 1]
            break
    end = time.perf_counter()
    method = ("cuda-events" if on_cuda else "perf_counter") + ("-blocked" if setup is None else "-per-call")
    return TimingResult(samples, calls_per_block, block_medians, method, warmup_calls,
                        calls_per_block if setup is None else 1, warmup_s=wall_start - t0,
                        timing_s=end - wall_start, stop=stop)


def cuda_block_mean(fn, n: int, setup) -> list[float]:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        fn()
    end.record()
    end.synchronize()
    return [start.elapsed_time(end) / n]


def cuda_block_per_call(fn, n: int, setup) -> list[float]:
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for i in range(n):
        setup()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def cpu_block_mean(fn, n: int, setup) -> list[float]:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return [(time.perf_counter() - t0) * 1e3 / n]


def cpu_block_per_call(fn, n: int, setup) -> list[float]:
    out = []
    for _ in range(n):
        setup()
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


class L2Flusher:
    """Evicts the GPU's L2 cache between calls by writing a buffer larger than it (as do_bench does), and
    staggers the calls across launch phases.

    - One buffer per device per process (`shared(device)`): a freshly allocated buffer between two runs
      moves µs kernels between two states about 0.6 µs apart (H100).
    - Launch phase: the time between the CUDA events around a µs call depends, by 0.5-1 µs, on where the
      call falls in the stream's sequence of kernel launches (modulo a small power of two, 2 or 4 on the
      machines measured), while the kernel's own duration does not. Before every other flush one more
      one-element kernel is launched, so two consecutive calls launch an odd number of kernels whatever the
      timed call launches: the timed call visits every phase equally often and every run samples the same
      mixture. `stagger=False` gives the plain flush (do_bench's).

    The measurements behind both are in benchmarks/diagnostics/ (diag_timing.py, diag_launch_phase.py)
    and benchmarks/results/ARCHIVE.md."""

    _per_device: dict = {}

    def __init__(self, device: torch.device, stagger: bool = True):
        l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 50 * 2**20
        self.buffer = torch.empty(max(2 * l2, 256 * 2**20) // 4, dtype=torch.int32, device=device)
        self.spacer = torch.empty(1, dtype=torch.int32, device=device)
        self.stagger = stagger
        self.calls = 0

    @classmethod
    def shared(cls, device: torch.device) -> "L2Flusher":
        key = (device.type, device.index if device.index is not None else torch.cuda.current_device())
        if key not in cls._per_device:
            cls._per_device[key] = cls(device)
        return cls._per_device[key]

    def __call__(self) -> None:
        if self.stagger and self.calls % 2:
            self.spacer.zero_()
        self.buffer.zero_()
        self.calls += 1

    def zero_(self) -> None:
        """The same, under the name do_bench calls on its cache buffer (to time do_bench with this flush)."""
        self()
