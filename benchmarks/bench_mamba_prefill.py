"""Batch-1 Mamba prefill on the GPU: the scan kernels at the shapes a prefill runs, the prefill scaling table
(Mamba-130m and Mamba-2.8B, L = 128 ... 16k, CUDA graphs, roofline fraction) and Cobra's first token.

Parts (each optional, in one process; every part writes its rows into one JSON as it finishes):
  --scan      the selective scan alone, bf16, replayed from a CUDA graph (`triton.testing.do_bench_cudagraph`):
              each kernel config on the batch-1 shapes of Mamba-2.8B (d_inner 5120; L = 793 is Cobra's
              729 + 64 tokens) and Mamba-130m (d_inner 1536), with channel-last inputs as the Mamba block
              passes them, checked against `selective_scan_ref` first (relative error, float32 reference);
              and the big-batch shape 8 × 1536 × 4096 × 16 (contiguous) on the default path, which must not
              regress (0.357 ms on an H200 before this change).
  --scaling   `mamba-lm` prefill (backbone, batch 1, bf16, --graphs) through `effprof.runner.measure` at
              each (preset, L); the record's FLOPs (2 × MAC, FlopCounterMode) over its median latency, and that
              rate as a fraction of the bf16 matmul ceiling measured in this process (8192³ `torch.mm`,
              do_bench): the "roofline fraction" of a compute-bound row.
  --cobra     `cobra` and `llava` prefill (TTFT: vision + projector + LM prefill of 729/576 image tokens +
              64 prompt tokens) and `cobra` decode at context 1k, batch 1, bf16, --graphs, min-time 0.5 s.
  --code DIR  import effprof from DIR (e.g. a checkout of the previous commit, for before/after rows).
  --scan-part I/N --scan-check-only: compile and check only the I-th of N slices of the (shape, config) list
              (run N of these side by side first: triton's disk cache then holds every kernel, and the timing
              process compiles nothing).
  --batch1 best|NAME  before --scaling/--cobra, make the lanes config with the least time over L = 793 and
              2,048 (y within bf16 rounding) the dispatcher's batch-1 choice, at d_inner 5120 for
              `BATCH1_LANES_CONFIG` and 1536 for `BATCH1_NARROW_LANES_CONFIG` (or NAME for both);
              --batch1-write also writes them into the source under --code, for the CLI runs that follow.
  The old path: `old-default` (the lanes kernel's DEFAULT_CONFIG, time split where an SM has no block) among
  the scan configs; `--code DIR` with a checkout of the commit before, for whole-model rows.

    python benchmarks/bench_mamba_prefill.py --scan --scaling --cobra --out $OUT/prefill.json
    (benchmarks/results/h100-2026-12-07-s9-prefill/call2.sh: the parallel check slices, the sweep, before/after)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--code", default=str(Path(__file__).resolve().parent.parent))
    p.add_argument("--scan", action="store_true")
    p.add_argument("--scaling", action="store_true")
    p.add_argument("--cobra", action="store_true")
    p.add_argument("--scan-configs", default=None, help="comma-separated SCAN_CONFIGS names (default: all)")
    p.add_argument("--scan-part", default="0/1")
    p.add_argument("--scan-check-only", action="store_true")
    p.add_argument("--batch1", default=None, help="best | a SCAN_CONFIGS name")
    p.add_argument("--batch1-write", action="store_true", help="also write the choice into the source of "
                   "effprof/ops/selective_scan_triton.py under --code (for the CLI runs that follow)")
    p.add_argument("--scan-shapes", default=None, help="batch,d_inner,L,channel_last;... (default SCAN_SHAPES)")
    p.add_argument("--cobra-rows", default="cobra TTFT,llava TTFT,cobra decode 1k")
    p.add_argument("--presets", default="130m,2.8b")
    p.add_argument("--models", default="mamba", help="scaling rows of: mamba, transformer (transformer-lm, the "
                   "Pythia layout of the same size class, parameter-matched depth) or both, comma-separated")
    p.add_argument("--lengths", default="128,256,512,793,1024,2048,4096,8192,16384")
    p.add_argument("--min-time", type=float, default=0.2)
    p.add_argument("--label", default="")
    p.add_argument("--out", default=os.path.join(os.environ.get("OUT", "/tmp"), "bench_mamba_prefill.json"))
    args = p.parse_args()
    unknown = set(args.models.split(",")) - {"mamba", "transformer"}
    if unknown:
        p.error(f"--models: {', '.join(sorted(unknown))} is not one of mamba, transformer")
    return args


ARGS = parse()
sys.path.insert(0, ARGS.code)

import torch  # noqa: E402

RESULT: dict = {"label": ARGS.label, "code": ARGS.code, "argv": sys.argv, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def save():
    tmp = ARGS.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(RESULT, f, indent=1, default=str)
    os.replace(tmp, ARGS.out)


def meta():
    import triton
    props = torch.cuda.get_device_properties(0)
    RESULT["device"] = {"name": props.name, "sms": props.multi_processor_count, "torch": torch.__version__,
                        "triton": triton.__version__, "cuda": torch.version.cuda}


def matmul_ceiling_tflops() -> float:
    """bf16 8192³ torch.mm, triton do_bench (median ms): the compute ceiling the roofline fraction uses."""
    from triton.testing import do_bench
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = do_bench(lambda: torch.mm(a, b), warmup=200, rep=1000, return_mode="median")
    del a, b
    return 2 * 8192**3 / ms / 1e9


def rel_err(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def scan_inputs(batch, d_inner, L, N, channel_last, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    bf = torch.bfloat16
    if channel_last:  # as MambaBlock passes them: views of (batch, L, ·) buffers, z the second half of xz
        u = rnd(batch, L, d_inner).to(bf).transpose(1, 2)
        delta = (0.5 * rnd(batch, L, d_inner)).to(bf).transpose(1, 2)
        z = rnd(batch, L, 2 * d_inner).to(bf).transpose(1, 2)[:, d_inner:]
        x_dbl = rnd(batch, L, 160 + 2 * N).to(bf)
        B, C = x_dbl[..., 160:160 + N].transpose(1, 2), x_dbl[..., 160 + N:].transpose(1, 2)
    else:
        u, delta, z = rnd(batch, d_inner, L).to(bf), (0.5 * rnd(batch, d_inner, L)).to(bf), rnd(batch, d_inner, L).to(bf)
        B, C = rnd(batch, N, L).to(bf), rnd(batch, N, L).to(bf)
    A = -torch.exp(0.5 * rnd(d_inner, N))
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=rnd(d_inner), z=z, delta_bias=0.3 * rnd(d_inner))


LANES = {"kernel": "lanes"}
SCAN_CONFIGS = {
    "default": None,                                          # what selective_scan_triton picks for the shape
    # before this branch: DEFAULT_CONFIG's lanes kernel, time split across programs where an SM has no program
    "old-default": dict(LANES),
    # more threads per channel: s = states per thread (4 lanes of 4 by default), w = warps per program,
    # tp = time parts (a sub-block's steps over lanes, warp-level scan), ioc = channel-fast loads, r = maxnreg,
    # k = time chunks across programs (the old split: chunks walked twice)
    "s2-w2": {**LANES, "states_per_thread": 2, "num_warps": 2, "lane_order": "d"},
    "s2-w4": {**LANES, "states_per_thread": 2, "num_warps": 4, "lane_order": "d"},
    "s2-w8": {**LANES, "states_per_thread": 2, "num_warps": 8},
    "s2-w2-ioc": {**LANES, "states_per_thread": 2, "num_warps": 2, "lane_order": "d", "io": "channel"},
    "s2-w4-ioc": {**LANES, "states_per_thread": 2, "num_warps": 4, "lane_order": "d", "io": "channel"},
    "s1-w2": {**LANES, "states_per_thread": 1, "num_warps": 2, "CHUNK": 64},
    "s1-w4": {**LANES, "states_per_thread": 1, "num_warps": 4, "CHUNK": 64},
    "tp2-w2": {**LANES, "time_parts": 2, "num_warps": 2},
    "tp2-w4": {**LANES, "time_parts": 2, "num_warps": 4},
    "tp2-w4-ioc": {**LANES, "time_parts": 2, "num_warps": 4, "io": "channel"},
    "tp4-w4": {**LANES, "time_parts": 4, "num_warps": 4, "CHUNK": 64, "sub": 32},
    "s2tp2-w4": {**LANES, "states_per_thread": 2, "time_parts": 2, "num_warps": 4, "lane_order": "d"},
    "s2tp4-w4": {**LANES, "states_per_thread": 2, "time_parts": 4, "num_warps": 4, "CHUNK": 64, "sub": 32,
                 "lane_order": "d"},
    "tp8-w4": {**LANES, "time_parts": 8, "num_warps": 4, "CHUNK": 64, "sub": 64},
    "s2-w2-k2": {**LANES, "states_per_thread": 2, "num_warps": 2, "lane_order": "d", "time_chunks": 2},
    "s2tp4-w4-k3": {**LANES, "states_per_thread": 2, "time_parts": 4, "num_warps": 4, "CHUNK": 64, "sub": 32,
                    "lane_order": "d", "time_chunks": 3},
    "s4-ioc": {**LANES, "io": "channel"},                     # DEFAULT_CONFIG with channel-fast loads
    "s4-w2-ioc": {**LANES, "num_warps": 2, "io": "channel"},
    "tp2-w2-ioc": {**LANES, "time_parts": 2, "num_warps": 2, "io": "channel"},
    "s4-w1-ioc": {**LANES, "num_warps": 1, "io": "channel"},
    "tp4-w2-ioc": {**LANES, "time_parts": 4, "num_warps": 2, "CHUNK": 64, "sub": 32, "io": "channel"},
    # the batch-1 default (s4-w2-ioc) with its time split across programs: more warps per SM, the first launch
    # (chunk end states, no C and no y since session 12) walking K - 1 of the K chunks (diagnostics part 5)
    "s4-w2-ioc-k2": {**LANES, "num_warps": 2, "io": "channel", "time_chunks": 2},
    "s4-w2-ioc-k4": {**LANES, "num_warps": 2, "io": "channel", "time_chunks": 4},
    # the batch-1 default with 64- or 16-step chunks: the same ~8.0 SASS instructions per element (sass_scan.py),
    # half / twice the barriers per step, 254 / 160 registers (session 14, not yet timed)
    "s4-w2-ioc-c64": {**LANES, "num_warps": 2, "io": "channel", "CHUNK": 64},
    "s4-w2-ioc-c16": {**LANES, "num_warps": 2, "io": "channel", "CHUNK": 16},
    "lanes-k1": {**LANES, "time_chunks": 1},                  # the lanes kernel without the time split
    "lanes-k8": {**LANES, "time_chunks": 8},
    "tl-small-batch": {"kernel": "chunked", "gluon": False, "BLOCK_D": 16, "CHUNK": 64, "pair_states": True,
                       "fast_unpack": True},                  # the batch-1 choice before 2026-12-07 (d_inner 1536)
    "split-tl": {"kernel": "split"},                          # selective_scan_split (tl): slow on CUDA
}
SCAN_SHAPES = "1,5120,793,1;1,5120,2048,1;1,5120,8192,1;1,1536,793,1;1,1536,2048,1;1,1536,16384,1;8,1536,4096,0"
BIG_BATCH_CONFIGS = ["default", "old-default"]
SKIP_BY_DEFAULT = {"tl-small-batch", "split-tl", "lanes-k8", "lanes-k1"}  # measured before (RESULTS.md): slower


def scan_work() -> list[tuple]:
    """(shape, config names) pairs of this run, in order."""
    shapes = [tuple(int(x) for x in spec.split(",")) for spec in (ARGS.scan_shapes or SCAN_SHAPES).split(";")]
    names = ARGS.scan_configs.split(",") if ARGS.scan_configs else [n for n in SCAN_CONFIGS if n not in SKIP_BY_DEFAULT]
    return [(shape, names if shape[0] == 1 else [n for n in BIG_BATCH_CONFIGS if n in names] or ["default"])
            for shape in shapes]


def part_scan():
    from triton.testing import do_bench_cudagraph

    from effprof.ops.selective_scan import selective_scan_ref
    from effprof.ops.selective_scan_triton import selective_scan_triton
    rows = RESULT.setdefault("scan", [])
    part, parts = (int(x) for x in ARGS.scan_part.split("/"))
    pairs = [(shape, name) for shape, names in scan_work() for name in names]
    mine = set(pairs[part::parts])
    for (batch, d_inner, L, cl), names in scan_work():
        names = [n for n in names if ((batch, d_inner, L, cl), n) in mine]
        if not names:
            continue
        cl = bool(cl)
        inputs = scan_inputs(batch, d_inner, L, 16, cl)
        ref = None
        if batch * d_inner * L <= 5120 * 2048:
            ref = selective_scan_ref(**{k: (v.float() if k in ("u", "delta", "z", "B", "C") else v)
                                        for k, v in inputs.items()}, delta_softplus=True, return_last_state=True)
        for name in names:
            cfg = SCAN_CONFIGS[name]
            fn = lambda: selective_scan_triton(**inputs, delta_softplus=True, config=cfg)  # noqa: E731
            try:
                y, last = fn()
                err = None if ref is None else (rel_err(y, ref[0]), rel_err(last, ref[1]))
                if ARGS.scan_check_only:
                    rows.append({"shape": [batch, d_inner, L, 16], "channel_last": cl, "config": name,
                                 "rel_err_y": None if err is None else err[0],
                                 "rel_err_last": None if err is None else err[1]})
                    print(f"check {batch}x{d_inner}x{L} cl={cl} {name:16s} err={err}", flush=True)
                    continue
                ms = do_bench_cudagraph(fn, rep=100, return_mode="median")
            except Exception as exc:  # a config that does not compile here is a row, not a crash
                rows.append({"shape": [batch, d_inner, L, 16], "channel_last": cl, "config": name, "error": repr(exc)[:300]})
                continue
            # compulsory traffic: u, delta, z read and y written (bf16) + B, C: the memory floor's bytes
            mbytes = (4 * batch * d_inner * L * 2 + 2 * batch * 16 * L * 2) / 1e6
            rows.append({"shape": [batch, d_inner, L, 16], "channel_last": cl, "config": name, "ms": ms,
                         "rel_err_y": None if err is None else err[0], "rel_err_last": None if err is None else err[1],
                         "gb_per_s": mbytes / ms})
            print(f"scan {batch}x{d_inner}x{L} cl={cl} {name:16s} {ms:8.4f} ms err={err}", flush=True)
        save()
        del inputs, ref
        torch.cuda.empty_cache()


def record_row(rec: dict) -> dict:
    keys = ("label", "component", "latency_ms_median", "latency_ms_p10", "latency_ms_p90", "gflops", "tflops_per_s",
            "scan_backend", "conv_backend", "status", "error", "exec_mode", "pct_of_compute_ceiling", "roofline_verdict")
    out = {k: rec.get(k) for k in keys if k in rec}
    out.update({k: v for k, v in rec.items() if k.startswith(("stage_", "param_")) and not isinstance(v, (list, dict))})
    return out


def part_scaling(ceiling):
    from effprof.core.options import RunOptions
    from effprof.runner import Config, free_memory, measure
    rows = RESULT.setdefault("scaling", [])
    opts = RunOptions(batch=1, dtype="bf16", device="cuda", graphs=True, min_time=ARGS.min_time, warmup=0.1)
    components = {"mamba": "mamba-lm", "transformer": "transformer-lm"}
    work = [(components[m], preset, int(L)) for preset in ARGS.presets.split(",") for m in ARGS.models.split(",")
            for L in ARGS.lengths.split(",")]
    for component, preset, L in work:
        t0 = time.time()
        rec = measure(Config(component, {"preset": preset, "seq_len": L, "mode": "prefill"}, opts,
                             f"{component.split('-')[0]}-{preset} L={L}"))
        row = record_row(rec)
        ms, gf = rec.get("latency_ms_median"), rec.get("gflops")
        if ms and gf:
            row["tflops_measured"] = gf / ms
            row["fraction_of_matmul_ceiling"] = gf / ms / ceiling
        row["wall_s"] = time.time() - t0
        rows.append(row)
        print(f"prefill {component} {preset} L={L}: {ms} ms, {row.get('tflops_measured')} TFLOP/s, "
              f"{row.get('fraction_of_matmul_ceiling')} of ceiling ({row['wall_s']:.0f}s)", flush=True)
        save()
        free_memory() if callable(free_memory) else None


def part_cobra():
    from effprof.core.options import RunOptions
    from effprof.runner import Config, free_memory, measure
    rows = RESULT.setdefault("cobra", [])
    opts = RunOptions(batch=1, dtype="bf16", device="cuda", graphs=True, min_time=0.5, warmup=0.1)
    for component, params, label in (("cobra", {"mode": "prefill"}, "cobra TTFT"),
                                     ("cobra", {"mode": "prefill", "towers": "sequential"},
                                      "cobra TTFT sequential towers"),
                                     ("llava", {"mode": "prefill"}, "llava TTFT"),
                                     ("cobra", {"mode": "decode", "context": 1024}, "cobra decode 1k")):
        if label not in ARGS.cobra_rows.split(","):
            continue
        t0 = time.time()
        rec = measure(Config(component, params, opts, label))
        row = record_row(rec)
        row["wall_s"] = time.time() - t0
        rows.append(row)
        print(label, {k: v for k, v in row.items() if k.startswith(("latency", "stage_"))}, flush=True)
        save()
        free_memory()


def install_batch1(choice: str) -> None:
    """Make `choice` the dispatcher's batch-1 configs for the rest of this process: a SCAN_CONFIGS name for
    both, or "best": the lanes config with the least time summed over L = 793 and 2,048 whose y is within
    bf16 rounding of the reference everywhere, at d_inner 5120 for BATCH1_LANES_CONFIG and 1536 for
    BATCH1_NARROW_LANES_CONFIG. With --batch1-write also into the source file (one line each)."""
    import re

    from effprof.ops import selective_scan_triton as kernels

    def best(d_inner):
        total: dict = {}
        for r in RESULT.get("scan", []):
            if r["shape"][:2] != [1, d_inner] or r["shape"][2] not in (793, 2048) or not SCAN_CONFIGS.get(r["config"]):
                continue
            good = (r.get("ms") and r.get("rel_err_y") is not None and r["rel_err_y"] < 1e-2
                    and SCAN_CONFIGS[r["config"]].get("kernel") == "lanes")
            total.setdefault(r["config"], []).append(r["ms"] if good else float("inf"))
        return min((sum(v), k) for k, v in total.items() if len(v) == 2)[1]
    wide, narrow = (best(5120), best(1536)) if choice == "best" else (choice, choice)
    kernels.BATCH1_LANES_CONFIG = dict(SCAN_CONFIGS[wide])
    kernels.BATCH1_NARROW_LANES_CONFIG = dict(SCAN_CONFIGS[narrow])
    RESULT["batch1_config"] = {"wide": wide, "narrow": narrow, "BATCH1_LANES_CONFIG": kernels.BATCH1_LANES_CONFIG,
                               "BATCH1_NARROW_LANES_CONFIG": kernels.BATCH1_NARROW_LANES_CONFIG}
    print("batch-1 scan configs:", wide, narrow, flush=True)
    if ARGS.batch1_write:
        path = Path(ARGS.code) / "effprof" / "ops" / "selective_scan_triton.py"
        text = path.read_text()
        for name, cfg in (("BATCH1_LANES_CONFIG", kernels.BATCH1_LANES_CONFIG),
                          ("BATCH1_NARROW_LANES_CONFIG", kernels.BATCH1_NARROW_LANES_CONFIG)):
            text, n = re.subn(rf"^{name}(: dict)? = .*$", f"{name}: dict = {json.dumps(cfg)}", text, flags=re.M)
            assert n == 1, name
        path.write_text(text)


def main():
    meta()
    save()
    ceiling = None
    if ARGS.scaling:
        ceiling = RESULT["matmul_ceiling_tflops"] = matmul_ceiling_tflops()
        print(f"bf16 matmul ceiling {ceiling:.1f} TFLOP/s", flush=True)
        save()
    if ARGS.scan:
        part_scan()
    if ARGS.batch1:
        install_batch1(ARGS.batch1)
        save()
    if ARGS.cobra:
        part_cobra()
    if ARGS.scaling:
        part_scaling(ceiling)
    RESULT["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    save()


if __name__ == "__main__":
    main()
