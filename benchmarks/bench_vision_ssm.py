#!/usr/bin/env python3
"""Vision SSM benchmark: the scan at VMamba-T's shapes against the bandwidth floor, then both profiles.

Section "scan" (one CUDA device, bf16): the K selective scans of one SS2D at VMamba-T's stage-1 shapes
(batch 128, 224 px: d_inner 96, L = 56² = 3136, d_state 1) and stage-3 shapes (d_inner 384, L = 14²),
for K = 4 (VMamba's cross scan), K = 2 (a true two-direction scan) and K = 1, through effprof's scan op
(`selective_scan_directions`, backend auto: triton on a GPU without mamba-ssm); the cross-scan and
cross-merge tensor ops alone; and the whole SS2D block for 4, 2, 2 as VMamba's v052d, and 1 directions.
Each scan time is set against the bandwidth floor: the fewest bytes the K scans must move (u, delta, B, C
read once, y written once, A, D, delta bias, the float32 last state) over the device-to-device copy
bandwidth measured by effprof's calibration (`effprof.measure.calibrate.measure_copy_bandwidth`).

Section "profiles": `vmamba-directions` and `vision-ssm` through effprof's runner (min_time 0.3 s per
row); rows not started when `--budget-s` has passed are listed as skipped, so the script ends in time.

    python3 benchmarks/bench_vision_ssm.py --out DIR          # GPU: about 2 minutes on an H200
    bash benchmarks/run_gpu.sh vision_ssm                      # the same through the batch runner ($OUT)
    python3 benchmarks/bench_vision_ssm.py --out DIR --smoke  # CPU, tiny shapes (what the tests run)

Writes DIR/bench_vision_ssm.json (records, device, versions, date, command) and DIR/bench_vision_ssm.md,
and prints the markdown tables last.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

START = time.perf_counter()  # the time budget counts the imports too

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from benchmarks.common import run_meta  # noqa: E402
from effprof.measure.timing import time_callable  # noqa: E402

# (name, batch, d_inner, side, d_state): VMamba-T at 224 px, batch 128
SCAN_SHAPES = [("VMamba-T stage 1", 128, 96, 56, 1), ("VMamba-T stage 3", 128, 384, 14, 1)]
SMOKE_SCAN_SHAPES = [("tiny", 2, 8, 6, 1)]
PROFILES = ("vmamba-directions", "vision-ssm")
SMOKE_ROWS = [  # the profiles' components on tiny shapes
    ("vmamba", {"preset": "t", "img_size": 32, "dim": 16, "depths": "1,1,1,1", "directions": 4}, "4 dirs"),
    ("vmamba", {"preset": "t", "img_size": 32, "dim": 16, "depths": "1,1,1,1", "directions": 2}, "2 dirs (true)"),
    ("vmamba", {"preset": "t", "img_size": 32, "dim": 16, "depths": "1,1,1,1", "directions": 2,
                "vmamba_v052d": "true"}, "2 dirs (v052d)"),
    ("mambavision", {"preset": "t", "img_size": 32, "dim": 16, "depths": "1,1,2,1"}, "MambaVision tiny"),
]


def scan_bytes(k: int, batch: int, d_inner: int, length: int, d_state: int, elem: int) -> int:
    """Fewest bytes K scans move: u, delta and y (elem bytes each), B and C per sequence, A (float32),
    D and the delta bias (elem bytes), and the float32 last state."""
    per = batch * d_inner * length * elem * 3 + batch * d_state * length * elem * 2
    per += d_inner * d_state * 4 + 2 * d_inner * elem + batch * d_inner * d_state * 4
    return k * per


def scan_section(device, dtype, shapes, min_time_s) -> list[dict]:
    from effprof.measure.calibrate import measure_copy_bandwidth
    from effprof.modules.ss2d import SS2D
    from effprof.ops.cross_scan import cross_merge, cross_scan
    from effprof.ops.grouped_scan import selective_scan_directions
    from effprof.ops.selective_scan import resolve_backend

    backend = resolve_backend("auto", device)
    bandwidth = measure_copy_bandwidth(device)
    elem = torch.empty((), dtype=dtype).element_size()
    rows = []
    with torch.inference_mode():
        for name, batch, d_inner, side, d_state in shapes:
            length = side * side
            g = torch.Generator(device=device).manual_seed(0)
            for k in (4, 2, 1):
                u = torch.randn(k, batch, d_inner, length, device=device, dtype=dtype, generator=g)
                delta = torch.randn(k, batch, d_inner, length, device=device, dtype=dtype, generator=g) * 0.1
                A = -torch.rand(k, d_inner, d_state, device=device) - 0.5
                B = torch.randn(k, batch, d_state, length, device=device, dtype=dtype, generator=g)
                C = torch.randn(k, batch, d_state, length, device=device, dtype=dtype, generator=g)
                D = torch.ones(k, d_inner, device=device, dtype=dtype)
                bias = torch.zeros(k, d_inner, device=device, dtype=dtype)

                def run(u=u, delta=delta, A=A, B=B, C=C, D=D, bias=bias):
                    return selective_scan_directions(u, delta, A, B, C, D, None, bias, True, backend, stack=False)

                ms = time_callable(run, device, warmup_s=0.1, min_time_s=min_time_s).median_ms
                nbytes = scan_bytes(k, batch, d_inner, length, d_state, elem)
                floor_ms = nbytes / (bandwidth * 1e9) * 1e3
                rows.append({"case": f"{name}: {k} scans", "backend": backend, "ms": ms, "floor_ms": floor_ms,
                             "x_floor": ms / floor_ms, "gb_per_s": nbytes / ms / 1e6})
                del u, delta, B, C
            x = torch.randn(batch, d_inner, side, side, device=device, dtype=dtype)
            for mode in ("cross4", "bi2"):
                xs = cross_scan(x, mode, direction_first=True)
                scan_ms = time_callable(lambda: cross_scan(x, mode, direction_first=True), device,
                                        warmup_s=0.05, min_time_s=min_time_s / 2).median_ms
                seqs = list(xs.unbind(0))
                merge_ms = time_callable(lambda: cross_merge(seqs, mode, side, side), device, warmup_s=0.05,
                                         min_time_s=min_time_s / 2).median_ms
                rows.append({"case": f"{name}: cross_scan + cross_merge {mode}", "backend": "torch ops",
                             "ms": scan_ms + merge_ms, "scan_ms": scan_ms, "merge_ms": merge_ms})
            d_model = d_inner  # VMamba-T: ssm_ratio 1
            h = torch.randn(batch, side, side, d_model, device=device, dtype=dtype)
            for mode in ("cross4", "bi2", "v052d", "uni1"):
                block = SS2D(d_model, d_state, 1.0, scan_mode=mode, scan_backend=backend, device=device,
                             dtype=dtype).eval()
                ms = time_callable(lambda: block(h), device, warmup_s=0.1, min_time_s=min_time_s).median_ms
                rows.append({"case": f"{name}: SS2D block {mode} (K={block.k_group})", "backend": backend, "ms": ms})
    for row in rows:
        row["copy_bandwidth_gb_per_s"] = bandwidth
    return rows


def profile_section(device_name: str, smoke: bool, min_time_s: float, deadline: float) -> tuple[list, list]:
    from effprof.core.options import RunOptions
    from effprof.core.profiles import load_profile
    from effprof.runner import Config, measure_many

    if smoke:
        opts = RunOptions(device="cpu", dtype="fp32", batch=2, min_time=0.01, warmup=0.0)
        groups = [("smoke", [Config(c, p, opts, label) for c, p, label in SMOKE_ROWS])]
    else:
        overrides = {"device": device_name, "min_time": min_time_s, "warmup": 0.1}
        groups = [(name, load_profile(name, RunOptions(), overrides).configs) for name in PROFILES]
    records, skipped = [], []
    for name, configs in groups:
        for config in configs:
            if time.perf_counter() > deadline:
                skipped.append(f"{name}: {config.label}")
                continue
            record = measure_many([config])[0]
            record["profile"] = name
            records.append(record)
            print(f"  {name}: {config.label}: {record.get('status')} "
                  f"{record.get('throughput_per_s') or 0:.1f} img/s", flush=True)
    return records, skipped


def fmt(value, digits=4):
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def markdown(result: dict) -> str:
    lines = [f"# bench_vision_ssm: {result['meta']['device']}, {result['meta']['date_utc']}", ""]
    if result.get("scan"):
        lines += ["## The scan at VMamba-T's shapes (bf16 on CUDA)", "",
                  "| case | backend | ms | floor ms | × floor | GB/s |", "| --- | --- | --- | --- | --- | --- |"]
        for r in result["scan"]:
            lines.append(f"| {r['case']} | {r['backend']} | {fmt(r['ms'])} | {fmt(r.get('floor_ms'))} | "
                         f"{fmt(r.get('x_floor'), 3)} | {fmt(r.get('gb_per_s'))} |")
        lines.append("")
    lines += ["## Profiles (effprof runner)", "",
              "| profile | row | status | scan | K | img/s | latency ms | GFLOP/call (2×MAC) | paper G/img (MAC) "
              "| peak MiB | params M |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["records"]:
        lines.append(f"| {r.get('profile')} | {r.get('label')} | {r.get('status')} | {r.get('scan_backend') or '-'} | "
                     f"{r.get('scan_sequences') or '-'} | {fmt(r.get('throughput_per_s'))} | "
                     f"{fmt(r.get('latency_ms_median'))} | {fmt(r.get('gflops'))} | "
                     f"{fmt(r.get('paper_gmacs_per_img'))} | {fmt(r.get('peak_mem_mib'))} | "
                     f"{fmt((r.get('params_total') or 0) / 1e6)} |")
    lines += directions_note(result["records"])
    if result.get("skipped"):
        lines += ["", f"Skipped (time budget): {', '.join(result['skipped'])}"]
    return "\n".join(lines) + "\n"


def directions_note(records: list[dict]) -> list[str]:
    """What 2 (true), 2 (v052d) and 1 directions cost against 4, per resolution, from the measured rows."""
    by_size: dict = {}
    for r in records:
        if r.get("component") == "vmamba" and r.get("status") == "ok" and r.get("profile") != "vision-ssm":
            key = "v052d" if r.get("scan_mode") == "v052d" else str(r.get("scan_sequences"))
            by_size.setdefault(r.get("image_size"), {})[key] = r
    lines = []
    for size, rows in sorted(by_size.items(), key=lambda kv: -(kv[0] or 0)):
        base = rows.get("4")
        if base is None:
            continue
        parts = []
        for key, name in (("2", "2 directions (true, K=2)"), ("v052d", "VMamba's v052d (K=4)"), ("1", "1 direction")):
            if key in rows:
                parts.append(f"{name} {rows[key]['throughput_per_s'] / base['throughput_per_s']:.2f}× the img/s, "
                             f"{rows[key]['gflops'] / base['gflops']:.3f}× the FLOPs")
        lines.append(f"- {size} px, against 4 directions ({base['throughput_per_s']:.0f} img/s): " + "; ".join(parts))
    return (["", "## 4 vs 2 directions, measured", ""] + lines) if lines else []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp"),
                        help="folder for bench_vision_ssm.json / .md (default: $OUT, else /tmp)")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes")
    parser.add_argument("--budget-s", type=float, default=125.0,
                        help="start no profile row after this many seconds from the start (the last row ends by ~150 s)")
    parser.add_argument("--sections", default="scan,profiles", help="comma-separated: scan, profiles")
    args = parser.parse_args()
    start = START
    if not args.smoke and not torch.cuda.is_available():
        print("bench_vision_ssm.py needs a CUDA device (or --smoke for a CPU run on tiny shapes)", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.smoke else "cuda")
    dtype = torch.float32 if args.smoke else torch.bfloat16
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sections = set(args.sections.split(","))
    result = {"meta": run_meta(command=" ".join(sys.argv), smoke=args.smoke), "scan": [], "records": [],
              "skipped": []}
    if "scan" in sections:
        result["scan"] = scan_section(device, dtype, SMOKE_SCAN_SHAPES if args.smoke else SCAN_SHAPES,
                                      0.01 if args.smoke else 0.3)
    if "profiles" in sections:
        result["records"], result["skipped"] = profile_section(device.type, args.smoke, 0.3,
                                                               start + args.budget_s)
    result["meta"]["wall_s"] = time.perf_counter() - start
    (out / "bench_vision_ssm.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    text = markdown(result)
    (out / "bench_vision_ssm.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
