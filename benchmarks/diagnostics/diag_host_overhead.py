#!/usr/bin/env python3
"""Where an eager call's host time goes: a component built as `effprof run` builds it, called eagerly on the GPU,
timed per call with a synchronize (wall), then under cProfile (the Python functions with the most own time and
the most cumulative time). For a row `effprof` marks overhead-bound (e.g. `mamba-lm --preset 130m` eager: ~30 ms
at every length on an H100 machine, 2026-12-07), this says which host work sets the time.

    python benchmarks/diagnostics/diag_host_overhead.py [COMPONENT] [KEY=VALUE ...]
    (default: mamba-lm preset=130m seq_len=1024)
"""
from __future__ import annotations

import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from effprof.core.errors import EffprofError  # noqa: E402
from effprof.core.options import RunOptions  # noqa: E402
from effprof.runner import Config, build  # noqa: E402


def main(argv: list[str]) -> None:
    component = argv[0] if argv else "mamba-lm"
    pairs = [a.split("=", 1) for a in argv[1:]] or [["preset", "130m"], ["seq_len", "1024"]]
    if any(len(p) != 2 for p in pairs) or not torch.cuda.is_available():
        sys.exit("diag_host_overhead.py: usage [COMPONENT] [KEY=VALUE ...], on a CUDA device")
    params = {k: int(v) if v.isdigit() else v for k, v in pairs}
    try:
        built, _, _ = build(Config(component, params, RunOptions(device="cuda", dtype="bf16")))
    except EffprofError as exc:  # an unknown component or parameter: one line, as effprof's own CLI says it
        sys.exit(f"diag_host_overhead.py: {exc}")
    inputs = built.make_inputs(1)
    with torch.no_grad():
        for _ in range(3):
            built.call(inputs)
        torch.cuda.synchronize()
        for label, sync in (("host only (no synchronize)", False), ("with synchronize", True)):
            start = time.perf_counter()
            for _ in range(20):
                built.call(inputs)
                if sync:
                    torch.cuda.synchronize()
            torch.cuda.synchronize()
            print(f"{component} {params}: {label}: {(time.perf_counter() - start) / 20 * 1e3:.2f} ms per call")
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(10):
            built.call(inputs)
        torch.cuda.synchronize()
        profiler.disable()
    for key in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(key).print_stats(25)
        print(f"--- 10 calls, by {key}\n" + "\n".join(out.getvalue().splitlines()[4:]))


if __name__ == "__main__":
    main(sys.argv[1:])
