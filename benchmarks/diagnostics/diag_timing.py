#!/usr/bin/env python3
"""Why do µs-scale and host-bound timings flip between runs? Measurements on one GPU.

bench_timing.py (2026-11-23) found the 1024³ matmul at 9.3 or 10.0 µs and the 4M add at 13.9 or 14.6 µs
from one run to the next, and ViT-B/16 at batch 1 (eager, host-bound) varying by 18-32% between runs in
every timer. This script looks at the raw samples instead of their medians:

  (1) the resolution of CUDA event timestamps: elapsed times of event pairs with nothing, or one tiny
      kernel, between them; the distinct values show the tick;
  (2) per-call samples of the add and the matmul with the L2 flushed before each call (effprof --cold,
      do_bench's method): their distinct values and how the median and the mean of each run move;
  (3) the host: ViT-B/16 batch 1 eager, 0.25 s windows over ~24 s alternating 2 s pinned to one CPU
      and 2 s free, each with the CPU time stolen by the hypervisor, the thread's involuntary context
      switches and a pure-Python canary loop, with the CPU facts (cores, affinity, load) beside them
      (the second session's run alternated the garbage collector instead: no effect);
  (4) clocks: 4 s of cold per-call samples of the 1024³ matmul and the 4M add, cut into 100 ms windows
      of GPU time, each beside the SM clock NVML reported in it, once with do_bench's 256 MiB L2 flush
      and once with a flush of twice the L2 size;
  (5) placement: ten cold runs each of the 1024³ matmul and the 4M add, each run after a spacer tensor of
      a random size has been allocated (and kept), with the address of the call's output beside the
      run's median: does the run-to-run flip follow where the caching allocator put the output?
  (6) toggle: eight consecutive 1000-call cold runs of each workload per arm, one arm per suspect of
      what flips the state between runs: fresh CUDA events per run (the baseline), one pool of events
      reused by every run, a 256 MiB tensor allocated and freed between runs (do_bench's cache buffer),
      50 ms of idle GPU between runs, no flush at all (warm), and the kernel's own duration from
      the profiler (CUPTI) instead of events (what the state is: diag_launch_phase.py);
  (7) host_runs: eager ViT-B/16 batch 1 timed as effprof does, five 1 s runs and five 5 s runs, each
      after a pure-Python canary of the host's speed.

    python benchmarks/diag_timing.py [--only events,micro,host,clock,placement,toggle,host_runs]   # on the GPU; JSON to $OUT/diag_timing.json
"""
from __future__ import annotations

import collections
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from benchmarks.common import host_canary_ms, run_sections  # noqa: E402
from effprof.measure.timing import L2Flusher, _cuda_block_per_call  # noqa: E402


def histogram(values_ms: list[float], digits: int = 3) -> list[tuple[float, int]]:
    """(value in µs rounded to `digits`, count), most common first."""
    return collections.Counter(round(v * 1e3, digits) for v in values_ms).most_common(12)


def event_resolution() -> dict:
    out = {}
    tiny = torch.zeros(1, device="cuda")
    for label, body in (("empty", lambda: None), ("one tiny kernel", lambda: tiny.add_(1))):
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(4000)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(4000)]
        torch.cuda.synchronize()
        for s, e in zip(starts, ends):
            s.record()
            body()
            e.record()
        torch.cuda.synchronize()
        values = [s.elapsed_time(e) for s, e in zip(starts, ends)]
        distinct = sorted({round(v * 1e3, 4) for v in values})
        steps = [b - a for a, b in zip(distinct, distinct[1:])]
        out[label] = {"distinct_us": distinct[:20], "smallest_step_us": min(steps) if steps else None,
                      "histogram_us": histogram(values)}
        print(label, out[label], flush=True)
    return out


def cold_samples(fn, flush, calls: int) -> list[float]:
    """Per-call ms with `flush()` before each call: effprof's own cold-mode block."""
    return _cuda_block_per_call(fn, calls, flush)


def micro_workloads(rounds: int = 6) -> dict:
    import triton.testing

    flush = L2Flusher(torch.device("cuda"), stagger=False)
    a4, b4 = (torch.randn(4 * 2**20, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    m1, m2 = (torch.randn(1024, 1024, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    out = {}
    for name, fn in (("add_4M", lambda: a4 + b4), ("matmul_1024", lambda: m1 @ m2)):
        for _ in range(50):
            fn()
        rows = []
        for r in range(rounds):
            samples = cold_samples(fn, flush, 2000)
            row = {"round": r, "median_us": 1e3 * statistics.median(samples), "mean_us": 1e3 * statistics.fmean(samples),
                   "trimmed_mean_us": 1e3 * statistics.fmean(sorted(samples)[len(samples) // 10: -len(samples) // 10]),
                   "histogram_us": histogram(samples, 2),
                   "do_bench_median_us": 1e3 * triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median"),
                   "do_bench_mean_us": 1e3 * triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="mean"),
                   "output_ptr_mod_2MiB": fn().data_ptr() % 2**21}
            rows.append(row)
            print(name, row, flush=True)
        out[name] = rows
    return out


def host_facts() -> dict:
    facts = {"os_cpu_count": os.cpu_count(), "affinity": sorted(os.sched_getaffinity(0)),
             "loadavg": os.getloadavg(), "torch_threads": torch.get_num_threads()}
    try:
        mhz = [float(line.split(":")[1]) for line in open("/proc/cpuinfo") if line.startswith("cpu MHz")]
        facts["cpu_mhz_min_median_max"] = (min(mhz), statistics.median(mhz), max(mhz))
        facts["cpu_model"] = next(line.split(":")[1].strip() for line in open("/proc/cpuinfo")
                                  if line.startswith("model name"))
    except (OSError, StopIteration, ValueError):
        pass
    return facts


def cpu_times() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs from /proc/stat: steal is time the hypervisor ran someone else."""
    fields = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    return fields[7] if len(fields) > 7 else 0, sum(fields[:8])


def host_series(seconds: float = 24.0, window_s: float = 0.25) -> dict:
    """ViT-B/16 batch 1 eager in 0.25 s windows, alternating 2 s pinned to one CPU and 2 s free to move,
    with, per window, the share of CPU time stolen by the hypervisor, the thread's involuntary context
    switches, and a fixed pure-Python loop timed as a canary of the host's speed."""
    import resource

    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=224, patch_size=16, attn_implementation="sdpa")
    model = CLIPVisionModel(cfg).to("cuda", torch.bfloat16).eval()
    x = torch.randn(1, 3, 224, 224, device="cuda", dtype=torch.bfloat16)
    windows = []
    facts_before = host_facts()
    all_cpus = os.sched_getaffinity(0)
    one_cpu = {sorted(all_cpus)[len(all_cpus) // 2]}

    with torch.inference_mode():
        for _ in range(20):
            model(pixel_values=x)
        torch.cuda.synchronize()
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            pinned = int((time.perf_counter() - start) / 2.0) % 2 == 0  # 2 s pinned, 2 s free
            os.sched_setaffinity(0, one_cpu if pinned else all_cpus)
            canary = host_canary_ms(loops=1)
            steal0, total0 = cpu_times()
            switches0 = resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw
            begin_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            calls, t0 = 0, time.perf_counter()
            begin_event.record()
            while time.perf_counter() - t0 < window_s:
                model(pixel_values=x)
                calls += 1
            end_event.record()
            end_event.synchronize()
            steal1, total1 = cpu_times()
            windows.append({"t_s": round(t0 - start, 3), "pinned": pinned, "calls": calls,
                            "ms_per_call": begin_event.elapsed_time(end_event) / calls, "canary_ms": canary,
                            "steal_pct": 100 * (steal1 - steal0) / max(1, total1 - total0),
                            "involuntary_switches": resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw - switches0})
        os.sched_setaffinity(0, all_cpus)
    per_call = [w["ms_per_call"] for w in windows]
    summary = {"pinned_median_ms": statistics.median(w["ms_per_call"] for w in windows if w["pinned"]),
               "free_median_ms": statistics.median(w["ms_per_call"] for w in windows if not w["pinned"]),
               "min_ms": min(per_call), "max_ms": max(per_call), "cv": statistics.stdev(per_call) / statistics.fmean(per_call),
               "correlation_canary_latency": statistics.correlation([w["canary_ms"] for w in windows], per_call),
               "max_steal_pct": max(w["steal_pct"] for w in windows)}
    print("host series", summary, flush=True)
    print(" ".join(f"{w['ms_per_call']:.2f}{'p' if w['pinned'] else ''}/{w['canary_ms']:.2f}/{w['steal_pct']:.0f}%"
                   f"/{w['involuntary_switches']}" for w in windows), flush=True)
    return {"facts_before": facts_before, "facts_after": host_facts(), "summary": summary, "windows": windows}


def clock_windows(seconds: float = 4.0, window_s: float = 0.1) -> dict:
    from effprof.measure.nvml import NvmlSampler

    device = torch.device("cuda")
    l2 = torch.cuda.get_device_properties(device).L2_cache_size
    a4, b4 = (torch.randn(4 * 2**20, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    m1, m2 = (torch.randn(1024, 1024, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    out = {}
    for flush_bytes in (256 * 2**20, 2 * l2):
        flush_buffer = torch.empty(flush_bytes // 4, dtype=torch.int32, device=device)
        for name, fn in (("matmul_1024", lambda: m1 @ m2), ("add_4M", lambda: a4 + b4)):
            calls = 1000
            origin = torch.cuda.Event(enable_timing=True)
            samples, starts_ms = [], []
            with NvmlSampler(device, interval_s=0.005) as sampler:
                torch.cuda.synchronize()
                origin.record()
                origin.synchronize()
                t0 = time.perf_counter()  # GPU time 0 ~ host time t0 (the queue was empty)
                while time.perf_counter() - t0 < seconds:
                    starts = [torch.cuda.Event(enable_timing=True) for _ in range(calls)]
                    ends = [torch.cuda.Event(enable_timing=True) for _ in range(calls)]
                    for i in range(calls):
                        flush_buffer.zero_()
                        starts[i].record()
                        fn()
                        ends[i].record()
                    torch.cuda.synchronize()
                    samples += [s.elapsed_time(e) for s, e in zip(starts, ends)]
                    starts_ms += [origin.elapsed_time(s) for s in starts]
            clocks = [(smp["t"] - t0, smp.get("sm_mhz")) for smp in sampler.samples if smp.get("sm_mhz")]
            windows = []
            for w in range(int(max(starts_ms) / 1e3 / window_s)):
                lo, hi = w * window_s, (w + 1) * window_s
                in_w = [v for v, st in zip(samples, starts_ms) if lo <= st / 1e3 < hi]
                mhz = [c for t, c in clocks if lo <= t < hi]
                if in_w and mhz:
                    windows.append({"t_s": lo, "median_us": 1e3 * statistics.median(in_w),
                                    "sm_mhz": statistics.fmean(mhz), "calls": len(in_w)})
            xs = [w["sm_mhz"] for w in windows]
            ys = [w["median_us"] for w in windows]
            corr = statistics.correlation(xs, ys) if len(windows) > 2 and len(set(xs)) > 1 else None
            key = f"{name} flush {flush_bytes // 2**20} MiB"
            out[key] = {"windows": windows, "correlation_clock_time": corr,
                        "median_us": 1e3 * statistics.median(samples), "mean_us": 1e3 * statistics.fmean(samples),
                        "clock_levels_mhz": collections.Counter(round(x) for x in xs).most_common(6)}
            print(key, {k: v for k, v in out[key].items() if k != "windows"}, flush=True)
            print("   ", " ".join(f"{w['median_us']:.2f}@{w['sm_mhz']:.0f}" for w in windows), flush=True)
        del flush_buffer
    return out


def placement(runs: int = 10) -> dict:
    import random

    rng = random.Random(0)
    flush = L2Flusher(torch.device("cuda"), stagger=False)
    a4, b4 = (torch.randn(4 * 2**20, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    m1, m2 = (torch.randn(1024, 1024, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    out = {}
    for name, fn in (("matmul_1024", lambda: m1 @ m2), ("add_4M", lambda: a4 + b4)):
        rows, spacers = [], []
        for _ in range(runs):
            spacers.append(torch.empty(rng.randrange(1, 64) * 2**20, dtype=torch.uint8, device="cuda"))
            for _ in range(20):
                fn()
            samples = cold_samples(fn, flush, 1500)
            ptr = fn().data_ptr()
            rows.append({"median_us": 1e3 * statistics.median(samples), "output_ptr_mib": ptr / 2**20,
                         "spacer_mib": spacers[-1].numel() / 2**20})
        out[name] = rows
        print(name, " ".join(f"{r['median_us']:.2f}@{r['output_ptr_mib']:.0f}" for r in rows), flush=True)
        del spacers
    return out


def toggle(runs: int = 8, calls: int = 1000) -> dict:
    from torch.profiler import ProfilerActivity, profile

    flush = L2Flusher(torch.device("cuda"), stagger=False)
    a4, b4 = (torch.randn(4 * 2**20, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    m1, m2 = (torch.randn(1024, 1024, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    pool = ([torch.cuda.Event(enable_timing=True) for _ in range(calls)],
            [torch.cuda.Event(enable_timing=True) for _ in range(calls)])

    def pooled(fn):
        starts, ends = pool
        for i in range(calls):
            flush()
            starts[i].record()
            fn()
            ends[i].record()
        torch.cuda.synchronize()
        return [s.elapsed_time(e) for s, e in zip(starts, ends)]

    def kernel_us(fn):  # mean device time per call of the workload's kernels (CUPTI), flush excluded
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(200):
                flush()
                fn()
            torch.cuda.synchronize()
        events = [e for e in prof.key_averages() if e.device_type.name == "CUDA" and "zero" not in e.key.lower()
                  and "fill" not in e.key.lower()]
        return sum(e.self_device_time_total for e in events) / 200

    def median_us(samples_ms):
        return 1e3 * statistics.median(samples_ms)

    def after_fresh_buffer(fn):  # what do_bench does on every call: a new 256 MiB buffer, written once
        torch.empty(64 * 2**20, dtype=torch.int32, device="cuda").zero_()
        return median_us(cold_samples(fn, flush, calls))

    def after_idle(fn):
        torch.cuda.synchronize()
        time.sleep(0.05)
        return median_us(cold_samples(fn, flush, calls))

    arms = {
        "fresh_events": lambda fn: median_us(cold_samples(fn, flush, calls)),
        "pooled_events": lambda fn: median_us(pooled(fn)),
        "alloc_256MiB_between": after_fresh_buffer,
        "idle_50ms_between": after_idle,
        "warm_no_flush": lambda fn: median_us(_cuda_block_per_call(fn, calls, lambda: None)),
        "cupti_kernel": kernel_us,
    }
    out = {}
    for name, fn in (("matmul_1024", lambda: m1 @ m2), ("add_4M", lambda: a4 + b4)):
        for _ in range(50):
            fn()
        for arm, run in arms.items():
            values = [run(fn) for _ in range(runs)]
            out[f"{name}/{arm}"] = values
            print(f"{name:12s} {arm:22s}", " ".join(f"{v:.2f}" for v in values), flush=True)
    return out


def host_runs(runs: int = 5) -> dict:
    """Eager ViT-B/16 batch 1 (host-bound) timed the way effprof times it, five runs of 1 s and five of
    5 s of timed work, each after a pure-Python canary of the host's speed: does a longer run average
    the host's slow spells out, and do the runs follow the canary?"""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from effprof.measure.timing import time_callable

    cfg = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=224, patch_size=16, attn_implementation="sdpa")
    model = CLIPVisionModel(cfg).to("cuda", torch.bfloat16).eval()
    x = torch.randn(1, 3, 224, 224, device="cuda", dtype=torch.bfloat16)
    out = {}
    with torch.inference_mode():
        for min_time_s in (1.0, 5.0):
            rows = []
            for _ in range(runs):
                canary = host_canary_ms()
                timing = time_callable(lambda: model(pixel_values=x), torch.device("cuda"), warmup_s=0.1,
                                       min_time_s=min_time_s)
                rows.append({"median_ms": timing.median_ms, "block_cv": timing.block_cv, "canary_ms": canary})
            medians = [r["median_ms"] for r in rows]
            out[f"min_time_{min_time_s:g}s"] = {"runs": rows, "cv": statistics.stdev(medians) / statistics.fmean(medians)}
            print(f"vit_b16_b1 eager, {min_time_s:g} s runs:", " ".join(f"{r['median_ms']:.3f}" for r in rows),
                  f"CV {100 * out[f'min_time_{min_time_s:g}s']['cv']:.1f}%; canary ms",
                  " ".join(f"{r['canary_ms']:.2f}" for r in rows), flush=True)
    return out


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="events,micro,host,clock", help="comma-separated sections to run")
    args = parser.parse_args()
    sections = {"events": ("event_resolution", event_resolution), "micro": ("micro", micro_workloads),
                "host": ("host", host_series), "clock": ("clock", clock_windows), "placement": ("placement", placement),
                "toggle": ("toggle", toggle), "host_runs": ("host_runs", host_runs)}
    return run_sections("diag_timing", sections, args.only)

if __name__ == "__main__":
    sys.exit(main())
