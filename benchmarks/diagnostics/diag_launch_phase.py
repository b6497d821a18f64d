#!/usr/bin/env python3
"""What flips µs-scale event timings between two states, and does effprof's staggered flush remove it?

diag_timing.py (section toggle) found runs of the 1024³ matmul at 9.3 or 10.0 µs, flipped by work done
between runs. Three sections, each on one GPU, per-call CUDA events around each call after an L2 flush
(effprof's cold block):

  state:   per arm (an action between runs: nothing, zeroing another 256 MiB buffer once or twice, an
           extra flush, 20 or 21 calls without a flush) six cold runs, each timed with events under the
           profiler: does the kernel itself (CUPTI) move with the state, and which actions flip it?
  spacer:  the flush followed by zero, one or two one-element kernels before the timed call, with and
           without a flip between runs (even- and odd-numbered calls kept apart); do_bench with and
           without the spacer;
  stagger: effprof's L2Flusher (a one-element kernel before every other flush) against the plain
           flush, runs with and without a flip between them.

    python benchmarks/diag_launch_phase.py [--only state,spacer,stagger]   # on the GPU; JSON to $OUT
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from benchmarks.common import run_sections  # noqa: E402
from benchmarks.diagnostics.diag_timing import cold_samples  # noqa: E402
from effprof.measure.timing import L2Flusher, _cuda_block_per_call  # noqa: E402


def four_workloads() -> dict:
    """The 1024³ bf16 matmul, the 4M bf16 add, a one-element add (launch and events, next to no memory
    traffic) and a call of two kernels."""
    m1, m2 = (torch.randn(1024, 1024, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    a4, b4 = (torch.randn(4 * 2**20, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    t1, t2 = (torch.randn(1, device="cuda") for _ in range(2))
    return {"matmul_1024": lambda: m1 @ m2, "add_1": lambda: t1 + t2, "add_4M": lambda: a4 + b4,
            "two_kernels": lambda: (t1 + t2).mul_(2)}


def state(runs: int = 6, calls: int = 400) -> dict:
    """Is the 0.6 µs state inside the kernel or outside it, and what sets it?

    Per arm, `runs` consecutive cold runs of `calls` calls, each preceded by the arm's action; every run
    is timed with per-call events (effprof's cold block) under the profiler, so the events' median and
    the kernels' own mean duration (CUPTI) come from the same calls. Workloads: the 1024³ matmul with
    one input pair and rotating through 4 pairs, the 4M add, and a one-element add (launch and events
    only: no memory traffic to speak of)."""
    from torch.profiler import ProfilerActivity, profile

    flush = L2Flusher(torch.device("cuda"), stagger=False)
    other = torch.empty_like(flush.buffer)  # a second 256 MiB buffer, allocated once
    pairs = [tuple(torch.randn(1024, 1024, device="cuda", dtype=torch.bfloat16) for _ in range(2)) for _ in range(4)]
    a4, b4 = (torch.randn(4 * 2**20, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    t1, t2 = (torch.randn(1, device="cuda") for _ in range(2))
    turn = [0]

    def rotating_matmul():
        turn[0] = (turn[0] + 1) % len(pairs)
        a, b = pairs[turn[0]]
        return a @ b

    workloads = {"matmul_1024": lambda: pairs[0][0] @ pairs[0][1], "matmul_1024_rot4": rotating_matmul,
                 "add_4M": lambda: a4 + b4, "add_1": lambda: t1 + t2}
    actions = {"none": lambda fn: None, "zero_other": lambda fn: other.zero_(),
               "zero_other_twice": lambda fn: (other.zero_(), other.zero_()), "extra_flush": lambda fn: flush(),
               "warm_calls_20": lambda fn: [fn() for _ in range(20)],
               "warm_calls_21": lambda fn: [fn() for _ in range(21)]}
    flush_kernels = ("zero", "fill")

    def profiled_run(fn) -> tuple[float, float]:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            samples = cold_samples(fn, flush, calls)
        kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA"
                   and not any(k in e.key.lower() for k in flush_kernels)]
        kernel_us = sum(e.self_device_time_total for e in kernels) / calls
        return 1e3 * statistics.median(samples), kernel_us

    out = {}
    for name, fn in workloads.items():
        for _ in range(50):
            fn()
        for arm, act in actions.items():
            rows = []
            for _ in range(runs):
                act(fn)
                rows.append(profiled_run(fn))
            out[f"{name}/{arm}"] = {"events_median_us": [r[0] for r in rows], "kernel_mean_us": [r[1] for r in rows]}
            print(f"{name:17s} {arm:17s} events", " ".join(f"{r[0]:.2f}" for r in rows), "| kernel",
                  " ".join(f"{r[1]:.2f}" for r in rows), flush=True)
    return out


def spacer(runs: int = 6, calls: int = 400) -> dict:
    """Does a tiny kernel between the L2 flush and the timed call remove the launch-parity state?

    `state` found the ~0.6 µs to be outside the kernel and set by the parity of the number of kernels
    launched since: one extra kernel between runs flips it, two do not. Here each setup (the flush alone,
    the flush and one or two one-element kernels) is timed over `runs` cold runs with another 256 MiB
    buffer zeroed (one kernel: a flip) or nothing between runs; for a call of two kernels the even- and
    odd-numbered calls are kept apart. Then do_bench (flushing with the one buffer, with and without the
    spacer) over runs with the flip between them."""
    import triton.testing
    from triton import runtime

    flush = L2Flusher(torch.device("cuda"), stagger=False)
    other = torch.empty_like(flush.buffer)
    tiny = torch.zeros(1, device="cuda")

    def flush_then(spacers: int):
        def setup():
            flush()
            for _ in range(spacers):
                tiny.zero_()
        return setup

    class SpacedBuffer:  # what do_bench calls `cache`: its zero_() flushes, then launches the spacer
        def __init__(self, spacers: int):
            self.setup = flush_then(spacers)

        def zero_(self):
            self.setup()

    out = {}
    for name, fn in four_workloads().items():
        for _ in range(50):
            fn()
        for spacers in (0, 1, 2):
            setup = flush_then(spacers)
            for arm, act in (("none", lambda: None), ("zero_other", other.zero_)):
                rows = []
                for _ in range(runs):
                    act()
                    samples = _cuda_block_per_call(fn, calls, setup)
                    rows.append((1e3 * statistics.median(samples), 1e3 * statistics.median(samples[0::2]),
                                 1e3 * statistics.median(samples[1::2])))
                out[f"{name}/spacers{spacers}/{arm}"] = rows
                print(f"{name:12s} spacers {spacers} {arm:10s}", " ".join(f"{r[0]:.2f}" for r in rows),
                      "| even/odd calls", " ".join(f"{r[1]:.2f}/{r[2]:.2f}" for r in rows), flush=True)
        driver = runtime.driver.active
        original = driver.get_empty_cache_for_benchmark
        for spacers in (0, 1):
            driver.get_empty_cache_for_benchmark = lambda: SpacedBuffer(spacers)
            try:
                values = []
                for _ in range(runs):
                    other.zero_()
                    values.append(1e3 * triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
            finally:
                driver.get_empty_cache_for_benchmark = original
            out[f"{name}/do_bench_spacers{spacers}"] = values
            print(f"{name:12s} do_bench spacers {spacers}", " ".join(f"{v:.2f}" for v in values), flush=True)
    return out


def stagger(runs: int = 6, calls: int = 400) -> dict:
    """effprof's flush (launch phases staggered) against the plain flush, with a phase flip (one extra
    kernel) or nothing between runs: does every run now read the same?"""
    device = torch.device("cuda")
    plain, staggered = L2Flusher(device, stagger=False), L2Flusher(device)
    staggered.buffer = plain.buffer
    flip = torch.zeros(1, device="cuda")
    out = {}
    for name, fn in four_workloads().items():
        for _ in range(50):
            fn()
        for label, flush in (("plain", plain), ("staggered", staggered)):
            for arm, act in (("none", lambda: None), ("flip", flip.zero_)):
                values = []
                for _ in range(runs):
                    act()
                    values.append(1e3 * statistics.median(cold_samples(fn, flush, calls)))
                out[f"{name}/{label}/{arm}"] = {"median_us": values, "cv": statistics.stdev(values) / statistics.fmean(values)}
                print(f"{name:12s} {label:9s} {arm:5s}", " ".join(f"{v:.2f}" for v in values),
                      f"CV {100 * out[f'{name}/{label}/{arm}']['cv']:.2f}%", flush=True)
    return out


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="state,spacer,stagger", help="comma-separated sections to run")
    args = parser.parse_args()
    sections = {"state": ("state", state), "spacer": ("spacer", spacer), "stagger": ("stagger", stagger)}
    return run_sections("diag_launch_phase", sections, args.only)

if __name__ == "__main__":
    sys.exit(main())
