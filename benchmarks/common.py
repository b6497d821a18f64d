"""Helpers shared by the GPU benchmark scripts (not part of the effprof package).

Each script does `sys.path.insert(0, repo_root)` first: effprof is not installed on the device machine.
"""
from __future__ import annotations

import datetime
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch


def anchor_time_ms(fn: Callable[[], Any], device: str, warmup: int, iters: int) -> dict:
    """The plain-PyTorch anchor of ../shared/anchors/anchor_gpu.py (`cuda_time`): one pair of CUDA events
    per call with a synchronize after each call; median, p5 and p95 in ms. On CPU, perf_counter."""
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {"ms": times[len(times) // 2], "p5": times[int(len(times) * 0.05)], "p95": times[int(len(times) * 0.95)]}


def host_canary_ms(loops: int = 5) -> float:
    """Median ms of a fixed pure-Python loop: how fast the host runs Python right now. A host-bound
    timing (eager batch 1) that moves between runs while this moves with it is the host, not the timer
    (diag_timing.py, section host: this loop took 0.9 to 5.9 ms on one H100 machine within 24 s)."""
    times = []
    for _ in range(loops):
        t0 = time.perf_counter()
        total = 0
        for i in range(20_000):
            total += i * i
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def run_meta(**extra: Any) -> dict:
    """Device, versions and date for a result file."""
    import transformers

    meta = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        meta["triton"] = None
    meta.update(extra)
    return meta


def write_result(name: str, doc: dict) -> Path:
    """Write `doc` as JSON to $OUT/NAME.json (default /tmp) and say where."""
    path = Path(os.environ.get("OUT", "/tmp")) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(f"wrote {path}")
    return path


def run_sections(script: str, sections: dict[str, tuple[str, Callable[[], Any]]], only: str) -> int:
    """Run the comma-separated `only` sections of a diagnostic script (key -> (result key, function)) on
    the GPU and write their results, with run_meta, to $OUT/SCRIPT_SECTIONS.json. An unknown section or
    no CUDA device: one line on stderr and exit code 2."""
    import sys

    unknown = [key for key in only.split(",") if key not in sections]
    if unknown:
        print(f"{script}.py: unknown section {', '.join(unknown)} (known: {', '.join(sections)})", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print(f"{script}.py needs a CUDA device", file=sys.stderr)
        return 2
    result = {"meta": run_meta(command=" ".join(sys.argv))}
    for key in only.split(","):
        name, fn = sections[key]
        result[name] = fn()
    write_result(f"{script}_" + only.replace(",", "_"), result)
    return 0

