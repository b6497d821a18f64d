"""Timing a call split into stages, on the device timeline, in one run.

Each timed call runs the stages in order and records a timestamp before the first stage and after each
stage: CUDA events on the current stream (no synchronisation between stages, so the device's work is
not interrupted), `time.perf_counter` on CPU. Stage i's sample is the time between stamps i and i+1 of
one call; the whole call's sample is stamps 0 to k. Warm-up and time budget as in
`effprof.measure.timing.time_callable`; every call is a sample (per-call events, as `do_bench` times).

The per-stage stamps cost a little: the split's sum is reported against the latency of the whole call
timed without them (`stages_sum_over_whole`), so a reader sees how close the parts add up to the whole.
All times in ms.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch


@dataclass
class StageTiming:
    names: list[str]
    samples_ms: list[list[float]]   # per stage, one sample per call
    whole_ms: list[float]           # stamps 0..k of each call

    def median_ms(self, i: int) -> float:
        return statistics.median(self.samples_ms[i])

    @property
    def whole_median_ms(self) -> float:
        return statistics.median(self.whole_ms)


def time_stages(names: list[str], fns: list[Callable[[Any], Any]], first: Any, device: torch.device, *,
                warmup_s: float = 0.1, min_time_s: float = 0.5, max_calls: int = 100_000,
                min_calls: int = 5) -> StageTiming:
    """Time `fns[k](...fns[0](first))`, stamping between the functions (see the module docstring)."""
    on_cuda = device.type == "cuda"

    def chain() -> None:
        carry = first
        for fn in fns:
            carry = fn(carry)

    start = time.perf_counter()
    calls = 0
    while calls < 1 or time.perf_counter() - start < warmup_s:
        chain()
        calls += 1
        if on_cuda:
            torch.cuda.synchronize(device)

    per_stage: list[list[float]] = [[] for _ in fns]
    whole: list[float] = []
    timed_s, block = 0.0, 1
    while (timed_s < min_time_s or len(whole) < min_calls) and len(whole) < max_calls:
        stamps_block = [_stamps(fns, first, on_cuda) for _ in range(block)]
        if on_cuda:
            torch.cuda.synchronize(device)
        for stamps in stamps_block:
            t = [_elapsed(stamps[0], s, on_cuda) for s in stamps]
            for i in range(len(fns)):
                per_stage[i].append(t[i + 1] - t[i])
            whole.append(t[-1])
            timed_s += t[-1] / 1e3
        block = min(2 * block, 64)
    return StageTiming(list(names), per_stage, whole)


def _stamps(fns, first, on_cuda: bool) -> list:
    if on_cuda:
        stamps = [torch.cuda.Event(enable_timing=True) for _ in range(len(fns) + 1)]
        stamps[0].record()
        carry = first
        for i, fn in enumerate(fns):
            carry = fn(carry)
            stamps[i + 1].record()
        return stamps
    stamps = [time.perf_counter()]
    carry = first
    for fn in fns:
        carry = fn(carry)
        stamps.append(time.perf_counter())
    return stamps


def _elapsed(start, end, on_cuda: bool) -> float:
    return start.elapsed_time(end) if on_cuda else (end - start) * 1e3
