#!/usr/bin/env python3
"""Selective-scan benchmark: reference vs triton (vs mamba-ssm where it imports) on one CUDA device.

Workload (the Mamba block at d_model 768, expand 2): batch 8, d_inner 1536, L 4096, d_state 16, bf16
u/delta/z/B/C, float32 A/D/delta_bias, with D, z and softplus(delta + delta_bias).

Reported per backend: median time from `effprof.measure.timing.time_callable` and from
`triton.testing.do_bench`, achieved GB/s over the fewest bytes the scan must move (u, delta, z, B, C
read once, y written once, plus A, D, bias and the float32 last state), the bandwidth floor (those bytes
over a measured device-to-device copy bandwidth), TFLOP/s of the VMamba count, and the relative error
against the reference. The reference is timed with few calls: it is slow.

    python benchmarks/bench_scan.py            # the comparison above, JSON to $OUT/bench_scan.json
    python benchmarks/bench_scan.py --tune     # also every kernel variant (config) of the triton scan
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from effprof.measure.timing import time_callable  # noqa: E402
from effprof.ops.selective_scan import (available_backends, selective_scan, selective_scan_flops,  # noqa: E402
                                        selective_scan_ref, selective_state_update)

# The lanes kernel (effprof/ops/selective_scan_lanes.py: time inside a thread, states_per_thread states per
# thread, d_state / states_per_thread lanes per channel), sixth session; SASS instructions per (channel,
# state, step) element from benchmarks/diagnostics/sass_scan.py in the comments (the Gluon default: 10.4).
# Call 1 (diagnostics/scan_notes.md): sub 16 0.373 ms best; 8 lanes, 16 lanes, 2 rows, CHUNK 16 and 64,
# unpadded shared memory all slower; poly_every 8/16 no gain. Its conclusion: shared-memory bandwidth (one
# register per lane and cycle) binds, mostly the B and C rows, hence the lane orders below.
TUNE_CONFIGS = [dict(kernel="lanes", **c) for c in [
    dict(sub=16),                              # 7.49, 127 registers; call 1: 0.373 ms
    dict(sub=16, lane_order="d"),              # 7.42: channels on the low lane bits, B/C loads uniform in pairs
    dict(sub=16, lane_order="warp"),           # 7.45: one state group per warp, B/C loads warp-uniform
    dict(lane_order="d"),                      # 7.52 (sub 8)
    dict(sub=32, maxnreg=168, lane_order="d"),  # 7.55, 2 barriers per chunk
    dict(sub=16, num_warps=2, lane_order="d"),  # 7.67
    dict(sub=16, lane_order="d", poly_every=16),
    dict(states_per_thread=2, rows=2, sub=4, lane_order="d"),  # 7.81, 128 registers: B/C loads halved per element
    dict(rows=2, sub=4, num_warps=2, lane_order="d"),          # 7.18, 214 registers
]]
# The Gluon kernel (CUDA default until 2026-12-01, now kernel="chunked"): its channel block follows
# from CHUNK and num_warps (8 steps per thread, CHUNK / 8 threads on time). Its other variants (CHUNK
# 16/64, 2 warps, poly_every, maxnreg) lost (diagnostics/scan_notes.md, third and fifth sessions).
TUNE_CONFIGS += [dict(kernel="chunked", CHUNK=32, num_warps=4)]
# The `tl` kernel (CPU interpreter; triton without Gluon), its best config of the second session.
TUNE_CONFIGS += [dict(kernel="chunked", gluon=False, BLOCK_D=32, CHUNK=32, num_warps=4, num_stages=3, fast_unpack=True)]


TUNE_KEYS = {k for config in TUNE_CONFIGS for k in config}


def scan_inputs(batch, d_inner, L, d_state, dtype, device, seed=0):
    """Random inputs with Mamba's initialisation ranges (Gu & Dao 2023, Sec. 3.6 / mamba_simple.py):
    A = -exp(A_log) with A_log = log(1..d_state), delta_bias = softplus^-1(dt), dt log-uniform in [1e-3, 0.1]."""
    g = torch.Generator(device=device).manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g, device=device)  # noqa: E731
    dt = torch.exp(torch.rand(d_inner, generator=g, device=device) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    return dict(
        u=rnd(batch, d_inner, L).to(dtype),
        delta=(0.5 * rnd(batch, d_inner, L)).to(dtype),
        A=-torch.arange(1, d_state + 1, device=device, dtype=torch.float32).repeat(d_inner, 1)
        * torch.exp(0.1 * rnd(d_inner, d_state)),
        B=rnd(batch, d_state, L).to(dtype),
        C=rnd(batch, d_state, L).to(dtype),
        D=rnd(d_inner),
        z=rnd(batch, d_inner, L).to(dtype),
        delta_bias=dt + torch.log(-torch.expm1(-dt)),
    )


def scan_bytes(inputs) -> int:
    """Fewest bytes a fused scan moves: every input read once, y and the float32 last state written once."""
    total = sum(t.numel() * t.element_size() for t in inputs.values() if t is not None)
    u, A = inputs["u"], inputs["A"]
    total += u.numel() * u.element_size()                       # y
    total += u.shape[0] * u.shape[1] * A.shape[1] * 4           # last state
    return total


def rel_err(out, ref) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def copy_bandwidth_gbs(device) -> tuple[float, str]:
    try:
        from effprof.measure.calibrate import measure_copy_bandwidth
        return measure_copy_bandwidth(device), "effprof.measure.calibrate.measure_copy_bandwidth"
    except ImportError:
        src = torch.ones(2**28, device=device)  # 1 GiB
        dst = torch.empty_like(src)
        timing = time_callable(lambda: dst.copy_(src), device, min_time_s=0.5)
        return 2 * src.numel() * 4 / (timing.median_ms / 1e3) / 1e9, "inline 1 GiB dst.copy_(src)"


def time_both(fn, device, min_time_s=1.0, slow=False) -> dict:
    """Median ms from effprof's timer and from triton's do_bench (None when triton is missing or on CPU)."""
    if slow:  # a few calls only
        timing = time_callable(fn, device, warmup_s=0.0, min_time_s=0.01, min_blocks=3)
        return {"effprof_ms": timing.median_ms, "do_bench_ms": None, "calls": timing.n_calls}
    timing = time_callable(fn, device, warmup_s=0.2, min_time_s=min_time_s)
    result = {"effprof_ms": timing.median_ms, "effprof_cv": timing.cv, "calls": timing.n_calls, "do_bench_ms": None}
    if device.type == "cuda":
        try:
            from triton.testing import do_bench
            result["do_bench_ms"] = do_bench(fn, warmup=100, rep=500, return_mode="median")
        except ImportError:
            pass
    return result


def tune(inputs, ref_y, ref_last, device, nbytes, floor_ms) -> list[dict]:
    from effprof.ops.selective_scan_triton import selective_scan_triton
    if device.type == "cuda":
        from triton.testing import do_bench
    else:  # smoke test of this script on CPU (TRITON_INTERPRET=1)
        do_bench = lambda fn, **_: time_callable(fn, device, warmup_s=0, min_time_s=0.01).median_ms  # noqa: E731
    rows = []
    for config in TUNE_CONFIGS:
        row = dict(config)
        try:
            t0 = time.perf_counter()
            y, last = selective_scan_triton(**inputs, delta_softplus=True, config=config)
            if device.type == "cuda":
                torch.cuda.synchronize()
            row["compile_s"] = time.perf_counter() - t0
            row["rel_err_y"], row["rel_err_last"] = rel_err(y, ref_y), rel_err(last, ref_last)
            ms = do_bench(lambda: selective_scan_triton(**inputs, delta_softplus=True, config=config),
                          warmup=50, rep=300, return_mode="median")
            row.update(ms=ms, gbs=nbytes / ms / 1e6, x_floor=ms / floor_ms)
        except Exception as exc:  # a variant that fails to compile is reported, not fatal
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tune", action="store_true", help="also time every kernel variant in TUNE_CONFIGS")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--d-inner", type=int, default=1536)
    parser.add_argument("--seqlen", type=int, default=4096)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--tag", default="", help="suffix of the JSON file name (bench_scan{TAG}.json)")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="check this script on CPU at a tiny size (run with TRITON_INTERPRET=1)")
    args = parser.parse_args()
    if args.cpu_smoke:
        device = torch.device("cpu")
        args.batch, args.d_inner, args.seqlen, args.d_state = 1, 8, 32, 4
    elif not torch.cuda.is_available():
        print("bench_scan.py needs a CUDA device (or --cpu-smoke)", file=sys.stderr)
        return 2
    else:
        device = torch.device("cuda")
    shape = (args.batch, args.d_inner, args.seqlen, args.d_state)
    inputs = scan_inputs(*shape, torch.bfloat16, device)
    nbytes = scan_bytes(inputs)
    flops = selective_scan_flops(args.batch, args.d_inner, args.seqlen, args.d_state, True, True)
    bandwidth, bandwidth_method = copy_bandwidth_gbs(device)
    floor_ms = nbytes / (bandwidth * 1e9) * 1e3
    backends = available_backends(device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {"device": device_name, "torch": torch.__version__, "shape": dict(
        zip(("batch", "d_inner", "L", "d_state"), shape)), "dtype": "bfloat16", "bytes": nbytes, "flops": flops,
        "copy_bandwidth_gbs": bandwidth, "copy_bandwidth_method": bandwidth_method, "floor_ms": floor_ms,
        "backends": backends, "rows": []}
    try:
        import triton
        result["triton"] = triton.__version__
    except ImportError:
        pass
    print(f"{result['device']}: {nbytes / 1e6:.1f} MB moved at least, copy {bandwidth:.0f} GB/s -> floor "
          f"{floor_ms:.3f} ms; {flops / 1e9:.2f} GFLOP (VMamba count)", flush=True)

    with torch.inference_mode():
        ref_y, ref_last = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
        # float32 check at full length: the kernel's arithmetic, without the bf16 output rounding
        inputs32 = {k: (v.float() if v is not None else None) for k, v in inputs.items()}
        ref32_y = selective_scan_ref(**inputs32, delta_softplus=True)
        for backend in backends:
            call = lambda b=backend: selective_scan(**inputs, delta_softplus=True, return_last_state=True, backend=b)  # noqa: E731
            y, last = call()
            row = {"backend": backend, "rel_err_y": rel_err(y, ref_y), "rel_err_last": rel_err(last, ref_last)}
            if backend != "ref":
                row["rel_err_y_fp32_inputs"] = rel_err(
                    selective_scan(**inputs32, delta_softplus=True, backend=backend), ref32_y)
            row.update(time_both(call, device, slow=backend == "ref"))
            ms = row["do_bench_ms"] or row["effprof_ms"]
            row.update(ms=ms, gbs=nbytes / ms / 1e6, tflops=flops / ms / 1e9, x_floor=ms / floor_ms)
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
        ref_ms = next(r["ms"] for r in result["rows"] if r["backend"] == "ref")
        for row in result["rows"]:
            row["speedup_vs_ref"] = ref_ms / row["ms"]

        # one decoding step at the same width: triton vs ref
        state = torch.zeros(args.batch, args.d_inner, args.d_state, device=device)
        step = {k: inputs[k][..., 0].contiguous() for k in ("u", "delta", "B", "C", "z")}
        for backend in [b for b in ("ref", "triton") if b in backends]:
            timing = time_callable(lambda b=backend: selective_state_update(
                state, step["u"], step["delta"], inputs["A"], step["B"], step["C"], inputs["D"], step["z"],
                inputs["delta_bias"], True, backend=b), device, min_time_s=0.3)
            result.setdefault("state_update_ms", {})[backend] = timing.median_ms
        if args.tune and "triton" in backends:
            result["tune"] = tune(inputs, ref_y, ref_last, device, nbytes, floor_ms)

    out_dir = Path(os.environ.get("OUT", "."))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"bench_scan{args.tag}.json").write_text(json.dumps(result, indent=2))
    if "tune" in result:
        print(f"\n{'config':96}     ms   GB/s  x_floor  rel_err_y")
        for r in sorted(result["tune"], key=lambda r: r.get("ms", float("inf"))):
            head = f"{json.dumps({k: v for k, v in r.items() if k in TUNE_KEYS}):96}"
            if "error" in r:
                print(f"{head} ERROR {r['error'][:60]}")
                continue
            print(f"{head} {r['ms']:6.3f} {r['gbs']:6.0f} {r['x_floor']:8.2f}  {r['rel_err_y']:.1e}")
    print(f"\n{result['device']}, batch {args.batch} d_inner {args.d_inner} L {args.seqlen} d_state {args.d_state} "
          f"bf16; floor {floor_ms:.3f} ms at {bandwidth:.0f} GB/s copy")
    print("backend    effprof_ms  do_bench_ms   GB/s  x_floor  vs_ref  rel_err_y  rel_err_last")
    for r in result["rows"]:
        do_bench_ms = f"{r['do_bench_ms']:.3f}" if r["do_bench_ms"] else "-"
        print(f"{r['backend']:10} {r['effprof_ms']:10.3f} {do_bench_ms:>12} {r['gbs']:6.0f} {r['x_floor']:8.2f} "
              f"{r['speedup_vs_ref']:7.0f}  {r['rel_err_y']:.1e}    {r['rel_err_last']:.1e}")
    if "state_update_ms" in result:
        print("state update (one step) ms: " + ", ".join(f"{k} {v:.4f}" for k, v in result["state_update_ms"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
