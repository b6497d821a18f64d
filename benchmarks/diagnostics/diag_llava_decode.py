#!/usr/bin/env python3
"""Where a LLaVA-1.5-7B decode step's time goes (issue 11's 5 ms target): the kernels of one step at a
context of 4k, eager and compiled, each kernel's count and device time, and the step's device-time sum.

    python3 benchmarks/diagnostics/diag_llava_decode.py --out DIR   # on the GPU; DIR/diag_llava_decode.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from effprof.runner import Config, RunOptions, build  # noqa: E402


def kernel_table(fn, steps: int = 3) -> dict:
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(3):
        fn()
    sync()
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
        sync()
    kind = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    kernels = [e for e in prof.events() if e.device_type == kind and (cuda or e.cpu_parent is None)]
    by_name: dict = {}
    for e in kernels:
        entry = by_name.setdefault(e.name[:100], [0, 0.0])
        entry[0] += 1
        entry[1] += (e.device_time if cuda else e.cpu_time) / steps
    top = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:25]
    return {"kernels_per_step": len(kernels) / steps, "kernel_ms_per_step": sum((e.device_time if cuda else e.cpu_time) for e in kernels) / steps / 1e3,
            "top_us_per_step": [(n, c / steps, round(us, 1)) for n, (c, us) in top]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--preset", default="llava-1.5-7b")
    parser.add_argument("--component", default="llava")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    params = {"mode": "decode", "context": args.context, "preset": args.preset}
    built, _, _ = build(Config(args.component, params, RunOptions(device=args.device, dtype="bf16" if args.device == "cuda" else "fp32"), "decode"))
    inputs = built.make_inputs(1)
    out = {"component": args.component, "preset": args.preset, "context": args.context}
    with torch.no_grad():
        out["eager"] = kernel_table(lambda: built.call(inputs))
        print("eager", json.dumps(out["eager"], indent=1), flush=True)
        compiled = torch.compile(lambda: built.call(inputs))
        out["compile"] = kernel_table(compiled)
        print("compile", json.dumps(out["compile"], indent=1), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, f"diag_{args.component}_decode.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
