"""MRSS and selective kernel distillation on the GPU: the `mrss` and `distill` profiles, measured for real.

In one process, through effprof's public API (`load_profile` + `measure_many` + `add_ratios`):
  (a) profiles/mrss.yaml: the single full-resolution Mamba block ("baseline"), MRSS at r = 1, 2, 4
      (avg pooling, nearest upsampling) and r = 2, 4 with the branches on separate CUDA streams;
      batch 8, T 8192, D 512, bf16. Two more rows decompose the cost: the baseline block alone at
      T/2 and T/4 tokens (what the low branch's Mamba costs), so serial MRSS ≈ baseline(T) + baseline(T/r)
      + resampling and gate, and perfectly overlapped MRSS ≈ max of the two;
  (b) profiles/distill.yaml: an S4D kernel (L 8192, D 512) as an FFT long convolution, full, rank
      1..64 (truncated SVD) and 64 sparse taps; batch 8, bf16 inputs, float32 kernels.
Every row names its scan backend / convolution path. Writes $OUT/bench_mrss.json (OUT defaults to
/tmp) with device, date and versions. About 2-3 minutes of GPU time (triton compiles the scan once).

    python benchmarks/bench_mrss.py            # on the GPU machine
    python benchmarks/bench_mrss.py --smoke    # tiny sizes on the CPU: checks that the script runs
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import run_meta, write_result  # noqa: E402

from effprof.core.profiles import load_profile  # noqa: E402
from effprof.report.table import print_records  # noqa: E402
from effprof.runner import Config, add_ratios, measure_many, RunOptions  # noqa: E402


def _fmt(value, spec: str) -> str:
    """format(value, spec), or a right-aligned "-" of the same width for a missing value."""
    return format(value, spec) if value is not None else "-".rjust(int(spec.split(".")[0]))


def mrss_summary(records: list[dict]) -> None:
    """Cost and fidelity of each MRSS row in one table (latency × baseline is the research's figure)."""
    base = next(r for r in records if r["label"] == "baseline")
    print(f"{'row':<16}{'scan':<8}{'ms':>9}{'x base':>8}{'seq/s':>9}{'peak MiB':>10}{'GFLOP':>9}{'GF x':>7}"
          f"{'fid smooth':>11}{'fid rough':>10}{'lowres sm':>10}{'lowres rg':>10}{'causal':>7}")
    for r in records:
        if r.get("status") != "ok":
            print(f"{r['label']:<16}{r.get('status')}: {r.get('error', '')}")
            continue
        print(f"{r['label']:<16}{r['scan_backend']:<8}{r['latency_ms_median']:9.2f}"
              f"{r['latency_ms_median'] / base['latency_ms_median']:8.2f}{r['throughput_per_s']:9.1f}"
              f"{_fmt(r.get('peak_mem_mib'), '10.0f')}{r['gflops']:9.1f}{r['gflops'] / base['gflops']:7.2f}"
              f"{_fmt(r.get('fidelity_rel_err_smooth'), '11.3f')}{_fmt(r.get('fidelity_rel_err_rough'), '10.3f')}"
              f"{_fmt(r.get('lowres_rel_err_smooth'), '10.3f')}{_fmt(r.get('lowres_rel_err_rough'), '10.3f')}"
              f"{str(r.get('causal')):>7}")


def distill_summary(records: list[dict]) -> None:
    """Storage, cost and error of each distilled kernel against the full one."""
    base = records[0]
    print(f"{'row':<15}{'path':<20}{'params stored':>14}{'x full':>8}{'ms':>9}{'x full':>8}{'GFLOP':>9}"
          f"{'rel err out':>12}{'rel err K':>10}")
    for r in records:
        if r.get("status") != "ok":
            print(f"{r['label']:<15}{r.get('status')}: {r.get('error', '')}")
            continue
        print(f"{r['label']:<15}{r['conv_path']:<20}{r['params_stored']:>14,}"
              f"{r['params_stored'] / base['params_stored']:8.4f}{r['latency_ms_median']:9.3f}"
              f"{r['latency_ms_median'] / base['latency_ms_median']:8.3f}{r['gflops']:9.4g}"
              f"{r['rel_err']:12.4f}{r['rel_err_kernel']:10.4f}")


def run_profile(name: str, opts: RunOptions, params: dict, drop_streams: bool) -> tuple[str, list[dict]]:
    profile = load_profile(name, RunOptions(), {f: getattr(opts, f) for f in
                                                ("batch", "dtype", "device", "warmup", "min_time")})
    configs = [replace(c, params={**c.params, **{k: v for k, v in params.items() if k in c.params}})
               for c in profile.configs]
    if drop_streams:
        configs = [c for c in configs if not c.params.get("streams")]
    records = measure_many(configs, on_record=lambda r: print(f"  done {r['label']} ({r['wall_s']:.1f} s)",
                                                             flush=True))
    add_ratios(records, [c.label for c in configs].index(profile.configs[profile.baseline].label))
    return profile.title, records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (checks the script runs)")
    args = parser.parse_args()
    if args.smoke:
        opts = RunOptions(batch=2, dtype="fp32", device="cpu", warmup=0.0, min_time=0.05)
        seq_len, mrss_params, distill_params = 64, {"d_model": 16, "seq_len": 64}, {"d_model": 64, "length": 128}
    else:
        if not torch.cuda.is_available():
            print("bench_mrss: no CUDA device; use --smoke to check the script on a CPU", file=sys.stderr)
            return 2
        opts = RunOptions(batch=8, dtype="bf16", device="cuda", warmup=0.3, min_time=1.0)
        seq_len, mrss_params, distill_params = 8192, {}, {}
    device = opts.torch_device()
    meta = run_meta()
    print(f"device {meta['device']}; torch {meta['torch']}; triton {meta['triton']}", flush=True)
    started = time.perf_counter()

    mrss_title, mrss_records = run_profile("mrss", opts, mrss_params, drop_streams=device.type != "cuda")
    d_model = mrss_params.get("d_model", 512)
    parts = [Config("mrss", {"variant": "baseline", "d_model": d_model, "seq_len": seq_len // r}, opts,
                    f"block T/{r}") for r in (2, 4)]
    part_records = measure_many(parts)
    add_ratios(mrss_records + part_records, baseline=0)  # the parts' ratios against the T baseline too
    distill_title, distill_records = run_profile("distill", opts, distill_params, drop_streams=False)
    wall = time.perf_counter() - started

    print_records(mrss_records + part_records, title=mrss_title)
    mrss_summary(mrss_records + part_records)
    base_ms = next(r for r in mrss_records if r["label"] == "baseline")["latency_ms_median"]
    for r in (2, 4):
        row = next((x for x in mrss_records if x["label"] == f"r={r}"), None)
        part = next(x for x in part_records if x["label"] == f"block T/{r}")
        if row and row.get("status") == "ok" and part.get("status") == "ok":
            print(f"r={r}: serial floor baseline(T) + block(T/{r}) = {base_ms + part['latency_ms_median']:.2f} ms, "
                  f"overlap floor max = {max(base_ms, part['latency_ms_median']):.2f} ms, "
                  f"measured {row['latency_ms_median']:.2f} ms")
    print_records(distill_records, title=distill_title)
    distill_summary(distill_records)
    print(f"wall time {wall:.1f} s")

    doc = {**meta, "smoke": args.smoke, "batch": opts.batch, "dtype": opts.dtype, "wall_s": wall,
           "research_proxy_ms_t4": {"baseline": 30.5, "r=1": 62.8, "r=2": 51.3, "r=4": 45.7},
           "mrss": mrss_records, "mrss_block_parts": part_records, "distill": distill_records}
    write_result("bench_mrss", doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
