"""Can a reviewer trust effprof's numbers? Timing, ceilings, roofline, energy and execution modes on the GPU.

In one process, on one GPU:
  (1) ceilings: `effprof.measure.calibrate.calibrate(force=True)` (bf16/fp16/tf32/fp32 8192³ matmul,
      1 GiB copy) beside the datasheet peaks;
  (2) six workloads from ~10 µs to ~30 ms (elementwise add of 4M bf16, bf16 matmuls 1024² and 8192²,
      the `linear` projector 16×576×1024→4096, HF CLIPVisionModel ViT-B/16 SDPA bf16 at batch 1 and 256),
      and ViT-B/16 batch 1 replayed from a CUDA graph: five interleaved rounds of one effprof cold run
      (`time_callable`, L2 flushed before each call) and one `triton.testing.do_bench(return_mode=
      "median")` run flushing with the same L2Flusher (one buffer; launch phases staggered) with the
      same time budget, the SM clock NVML saw during each and a pure-Python canary of the host's speed
      before each, the CV of effprof's five medians (target ≤ 2%), the ratio of the medians of five
      (target within 3%); then one warm effprof run beside torch.utils.benchmark's blocked_autorange;
      bytes, FLOPs and the roofline verdict of each;
  (3) the foundation check: 4096² bf16 matmul, `linear` and `mlp` projectors, effprof vs do_bench (≤ 5%);
  (4) ViT-B/16 batch 256: % of the measured bf16 matmul ceiling, and NVML clocks, power, energy per image;
  (5) CUDA graphs and torch.compile for the projectors and ViT-B/16 at batch 1: eager, graph replay,
      compiled (and its compile seconds), compiled + graph;
  (6) the per-module breakdown of ViT-B/16 batch 1 on the device timeline (profiler-device).

JSON to $OUT/bench_timing.json (OUT defaults to the current folder); a compact table is printed last.

    python benchmarks/bench_timing.py            # on the GPU machine, about 3-4 minutes
    python benchmarks/bench_timing.py --smoke    # tiny sizes on the CPU: checks that the script runs
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import host_canary_ms  # noqa: E402
from effprof.measure.breakdown import breakdown  # noqa: E402
from effprof.measure.bytes import count_flops_and_bytes  # noqa: E402
from effprof.measure.calibrate import calibrate, datasheet_ceilings  # noqa: E402
from effprof.measure.env import environment  # noqa: E402
from effprof.measure.modes import compiled_module, graphed_callable  # noqa: E402
from effprof.measure.nvml import CallCounter, NvmlSampler  # noqa: E402
from effprof.measure.roofline import roofline_fields  # noqa: E402
from effprof.measure.timing import L2Flusher, time_callable  # noqa: E402
from effprof.core.registry import BuildContext, create  # noqa: E402


def cv(values):
    return statistics.stdev(values) / statistics.fmean(values) if len(values) > 1 else 0.0


class Bench:
    def __init__(self, smoke: bool, min_time: float, repeats: int):
        self.smoke = smoke
        self.device = torch.device("cpu" if smoke else "cuda")
        self.dtype = torch.float32 if smoke else torch.bfloat16
        self.min_time = min_time
        self.repeats = repeats
        self.flush = L2Flusher(self.device) if self.device.type == "cuda" else None
        self.ctx = BuildContext(self.device, self.dtype, 0)

    # -- timers ------------------------------------------------------------------------------------
    def effprof_timing(self, fn, cold: bool):
        setup = self.flush if cold and self.flush is not None else None
        return time_callable(fn, self.device, warmup_s=0.1, min_time_s=self.min_time, setup=setup)

    def effprof_ms(self, fn, cold: bool) -> float:
        return self.effprof_timing(fn, cold).median_ms

    def do_bench_ms(self, fn, own_buffer: bool = False) -> tuple[float | None, str]:
        """do_bench with the same time budget as one effprof run (median of per-call samples).

        own_buffer: do_bench as shipped allocates its 256 MiB flush buffer on every call (which flips µs
        kernels between two states ~0.6 µs apart for the next run: diag_timing.py, section toggle) and
        flushes with one kernel per call, so that a run keeps whichever launch phase it starts in
        (sections state and spacer). With own_buffer it flushes with the bench's L2Flusher instead: the
        same buffer, allocated once, and the same staggering of launch phases as effprof."""
        if self.device.type != "cuda":
            return None, "triton do_bench needs CUDA"
        import triton.testing
        from triton import runtime

        rep_ms = round(self.min_time * 1e3)
        how = f"do_bench(warmup=25, rep={rep_ms}, return_mode='median')"
        if not own_buffer:
            return triton.testing.do_bench(fn, warmup=25, rep=rep_ms, return_mode="median"), how
        driver = runtime.driver.active
        original = driver.get_empty_cache_for_benchmark
        driver.get_empty_cache_for_benchmark = lambda: self.flush  # do_bench calls its zero_()
        try:
            return (triton.testing.do_bench(fn, warmup=25, rep=rep_ms, return_mode="median"),
                    how + " flushing with effprof's L2Flusher (one buffer, launch phases staggered)")
        finally:
            driver.get_empty_cache_for_benchmark = original

    def torch_benchmark_ms(self, fn) -> float:
        import torch.utils.benchmark as tb

        return tb.Timer("fn()", globals={"fn": fn}).blocked_autorange(min_run_time=self.min_time).median * 1e3

    # -- workloads ---------------------------------------------------------------------------------
    def projector(self, name: str):
        sizes = dict(tokens=16, in_dim=64, out_dim=128) if self.smoke else {}
        built = create(name, self.ctx, **sizes)
        inputs = built.make_inputs(2 if self.smoke else 16)
        forward = built.forward or (lambda module, args: module(*args))
        return built.module, (lambda m: lambda: forward(m, inputs)), f"{name} {tuple(inputs[0].shape)}"

    def vit(self, batch: int, graphs: bool = False):
        from transformers import CLIPVisionConfig, CLIPVisionModel

        size = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                    patch_size=8) if self.smoke else dict(hidden_size=768, intermediate_size=3072,
                                                          num_hidden_layers=12, num_attention_heads=12,
                                                          image_size=224, patch_size=16)
        torch.manual_seed(0)
        model = CLIPVisionModel(CLIPVisionConfig(**size, attn_implementation="sdpa")).to(self.device, self.dtype).eval()
        x = torch.randn(batch, 3, size["image_size"], size["image_size"], device=self.device, dtype=self.dtype)
        shape = f"CLIPVisionModel ViT-B/16 sdpa b{batch}" if not self.smoke else f"tiny CLIP b{batch}"
        if graphs:  # replays of one captured CUDA graph: the host's launch work leaves the timed call
            return model, (lambda m: graphed_callable(lambda: m(pixel_values=x), device=self.device)), shape + " graphs"
        return model, (lambda m: lambda: m(pixel_values=x)), shape

    def matmul(self, n: int):
        a = torch.randn(n, n, device=self.device, dtype=self.dtype)
        b = torch.randn(n, n, device=self.device, dtype=self.dtype)
        return None, (lambda m: lambda: a @ b), f"{n}x{n}x{n}"

    def add(self, numel: int):
        a = torch.randn(numel, device=self.device, dtype=self.dtype)
        b = torch.randn(numel, device=self.device, dtype=self.dtype)
        return None, (lambda m: lambda: a + b), f"{numel} elements"

    def six(self):
        s = self.smoke
        return [("add_4M", lambda: self.add(2**16 if s else 4 * 2**20)),
                ("matmul_1024", lambda: self.matmul(128 if s else 1024)),
                ("matmul_8192", lambda: self.matmul(256 if s else 8192)),
                ("linear_projector", lambda: self.projector("linear")),
                ("vit_b16_b1", lambda: self.vit(1)),
                ("vit_b16_b256", lambda: self.vit(4 if s else 256))] + (
                [] if s else [("vit_b16_b1_graphs", lambda: self.vit(1, graphs=True))])


def section(results: dict, name: str, fn):
    """Run one section; a failure is recorded and the benchmark goes on."""
    start = time.perf_counter()
    try:
        results[name] = fn()
    except Exception as exc:
        traceback.print_exc()
        results[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
    print(f"== {name}: {time.perf_counter() - start:.1f} s", flush=True)


def run(args) -> dict:
    bench = Bench(args.smoke, args.min_time, args.repeats)
    device = bench.device
    results: dict = {"meta": {**environment(device), "command": " ".join(sys.argv),
                              "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                              "min_time_s": args.min_time, "repeats": args.repeats, "smoke": args.smoke}}
    if device.type == "cuda":
        import triton

        results["meta"]["triton_version"] = triton.__version__
    ceilings_holder = {}

    def ceilings_section():
        cache = tempfile.mkdtemp(prefix="effprof-cache-")
        os.environ["EFFPROF_CACHE_DIR"] = cache  # a fresh measurement, not someone's cache
        kw = dict(n=256, copy_bytes=2**22, min_time_s=0.05) if args.smoke else {}
        measured = calibrate(device, force=True, **kw)
        ceilings_holder["c"] = measured
        sheet = datasheet_ceilings(measured.device_name) if device.type == "cuda" else None
        return {"measured": measured.as_dict(), "datasheet": sheet.as_dict() if sheet else None}

    section(results, "ceilings", ceilings_section)
    ceilings = ceilings_holder.get("c")

    def sm_clock(sampler) -> float | None:
        return sampler.fields().get("sm_clock_mhz_median")

    def workloads_section():
        rows = []
        with torch.inference_mode():
            for name, make in bench.six():
                module, make_call, shape = make()
                fn = make_call(module)
                counts = count_flops_and_bytes(fn)
                # interleaved rounds (effprof cold, do_bench flushing with the same one buffer: both
                # flush L2 before every call), so that the device's state (its SM clock moves between
                # boost levels under the power cap) is shared by both timers; the SM clock NVML saw is
                # kept beside every run. Then do_bench as shipped, five times (a fresh flush buffer per
                # call), after the interleaved rounds: its allocations flip the state of the next run.
                cold, dbs, cold_mean, cold_clock, db_clock, canary = [], [], [], [], [], []
                for _ in range(bench.repeats):
                    canary.append(host_canary_ms())
                    with NvmlSampler(device if device.type == "cuda" else 0) as sampler:
                        timing = bench.effprof_timing(fn, cold=True)
                    cold.append(timing.median_ms)
                    cold_mean.append(timing.mean_ms)
                    cold_clock.append(sm_clock(sampler))
                    with NvmlSampler(device if device.type == "cuda" else 0) as sampler:
                        db_one, db_how = bench.do_bench_ms(fn, own_buffer=True)
                    dbs.append(db_one)
                    db_clock.append(sm_clock(sampler))
                stock = [bench.do_bench_ms(fn)[0] for _ in range(bench.repeats)]
                stock_ms = statistics.median(stock) if all(x is not None for x in stock) else None
                warm = bench.effprof_ms(fn, cold=False)
                tub = bench.torch_benchmark_ms(fn)
                db = statistics.median(dbs) if all(x is not None for x in dbs) else None
                row = {"workload": name, "shape": shape, "gflops": counts.flops / 1e9, "bytes": counts.bytes,
                       "effprof_cold_ms": statistics.median(cold), "effprof_cold_runs_ms": cold,
                       "effprof_cold_run_means_ms": cold_mean, "effprof_cold_runs_sm_mhz": cold_clock,
                       "host_canary_ms_before_runs": canary,
                       "cv_of_5_cold_medians": cv(cold), "do_bench_ms": db, "do_bench_runs_ms": dbs,
                       "do_bench_runs_sm_mhz": db_clock, "do_bench_how": db_how,
                       "cv_of_5_do_bench": cv(dbs) if db else None,
                       "ratio_cold_to_do_bench": statistics.median(cold) / db if db else None,
                       "do_bench_stock_ms": stock_ms, "do_bench_stock_runs_ms": stock,
                       "cv_of_5_do_bench_stock": cv(stock) if stock_ms else None,
                       "ratio_cold_to_do_bench_stock": statistics.median(cold) / stock_ms if stock_ms else None,
                       "effprof_warm_ms": warm, "torch_benchmark_warm_ms": tub, "ratio_warm_to_torch_benchmark": warm / tub}
                row.update(roofline_fields(row["gflops"], counts.bytes, row["effprof_cold_ms"], ceilings,
                                           "fp32" if args.smoke else "bf16"))
                rows.append(row)
                print(name, {k: row[k] for k in ("effprof_cold_ms", "do_bench_ms", "ratio_cold_to_do_bench",
                                                 "cv_of_5_cold_medians", "verdict")}, flush=True)
                print("   runs", [round(x, 5) for x in cold], dbs, stock, cold_clock, db_clock,
                      "host canary ms", [round(x, 2) for x in canary], flush=True)
                del module, fn
        return rows

    section(results, "workloads", workloads_section)

    def foundation_section():
        rows = []
        with torch.inference_mode():
            for name, make in (("matmul_4096", lambda: bench.matmul(192 if args.smoke else 4096)),
                               ("linear", lambda: bench.projector("linear")), ("mlp", lambda: bench.projector("mlp"))):
                module, make_call, shape = make()
                fn = make_call(module)
                cold = bench.effprof_ms(fn, cold=True)
                warm = bench.effprof_ms(fn, cold=False)
                db, _ = bench.do_bench_ms(fn)
                rows.append({"workload": name, "shape": shape, "effprof_cold_ms": cold, "effprof_warm_ms": warm,
                             "do_bench_ms": db, "ratio_cold_to_do_bench": cold / db if db else None,
                             "within_5pct": abs(cold / db - 1) <= 0.05 if db else None})
        return rows

    section(results, "foundation_check", foundation_section)

    def vit256_section():
        model, make_call, _ = bench.vit(4 if args.smoke else 256)
        fn = make_call(model)
        with torch.inference_mode():
            counts = count_flops_and_bytes(fn)
            counted = CallCounter(fn)
            with NvmlSampler(device if device.type == "cuda" else 0) as sampler:
                timing = time_callable(counted, device, warmup_s=0.2, min_time_s=max(1.0, bench.min_time))
        tflops = counts.flops / 1e9 / timing.median_ms
        peak = (ceilings.compute_tflops("fp32" if args.smoke else "bf16") if ceilings else None)
        batch = 4 if args.smoke else 256
        return {"median_ms": timing.median_ms, "img_per_s": batch / timing.median_ms * 1e3,
                "gflop_per_img": counts.flops / 1e9 / batch, "tflops_per_s": tflops, "measured_bf16_ceiling": peak,
                "pct_of_measured_ceiling": 100 * tflops / peak if peak else None,
                "nvml": sampler.fields(counted.calls * batch)}

    section(results, "vit_b16_b256", vit256_section)

    def modes_section():
        rows = []
        for name, make in (("linear", lambda: bench.projector("linear")), ("mlp", lambda: bench.projector("mlp")),
                           ("vit_b16_b1", lambda: bench.vit(1))):
            module, make_call, shape = make()
            fn = make_call(module)
            row = {"workload": name, "shape": shape}
            with torch.inference_mode():
                row["eager_ms"] = bench.effprof_ms(fn, cold=False)
                try:
                    row["graph_ms"] = bench.effprof_ms(graphed_callable(fn, device=device), cold=False)
                except Exception as exc:
                    row["graph_error"] = str(exc)
                try:
                    compiled, row["compile_s"] = compiled_module(
                        module, lambda m: make_call(m)(), device, **({"backend": "eager"} if args.smoke else {}))
                    call = make_call(compiled)
                    row["compiled_ms"] = bench.effprof_ms(call, cold=False)
                    try:
                        row["compiled_graph_ms"] = bench.effprof_ms(graphed_callable(call, device=device), cold=False)
                    except Exception as exc:
                        row["compiled_graph_error"] = str(exc)
                except Exception as exc:
                    row["compile_error"] = str(exc)
            rows.append(row)
            print(row, flush=True)
        return rows

    section(results, "modes", modes_section)

    def breakdown_section():
        model, make_call, _ = bench.vit(1)
        fn = make_call(model)
        with torch.inference_mode():
            nodes = breakdown(model, fn, device, depth=2, repeats=5)
            latency = bench.effprof_ms(fn, cold=False)
        return {"latency_ms": latency, "nodes": nodes,
                "all_additive": all(n["additivity_ok"] for n in nodes)}

    section(results, "breakdown_vit_b16_b1", breakdown_section)
    return results


def table(results: dict) -> str:
    lines = []
    c = results.get("ceilings", {}).get("measured")
    if c:
        tf = ", ".join(f"{k} {v:.4g}" for k, v in c["matmul_tflops"].items() if v)
        lines.append(f"ceilings (measured): {tf} TFLOP/s; copy {c['bandwidth_gb_per_s']:.4g} GB/s")
    lines.append(f"{'workload':18} {'cold ms':>9} {'do_bench':>9} {'cold/db':>7} {'CV5 cold':>8} {'CV5 db':>7} "
                 f"{'db stock':>9} {'cold/st':>7} {'CV5 st':>7} "
                 f"{'warm ms':>9} {'t.u.b':>9} {'SM MHz (runs)':>24} {'canary ms':>10} {'verdict':>8}")
    for r in results.get("workloads", []) if isinstance(results.get("workloads"), list) else []:
        f = lambda v, d=4: "-" if v is None else f"{v:.{d}g}"  # noqa: E731
        clocks = "/".join("-" if c is None else f"{c:.0f}" for c in r.get("effprof_cold_runs_sm_mhz", []))
        canary = r.get("host_canary_ms_before_runs") or [0.0]
        canary_range = f"{min(canary):.2f}-{max(canary):.2f}"
        lines.append(f"{r['workload']:18} {f(r['effprof_cold_ms']):>9} {f(r['do_bench_ms']):>9} "
                     f"{f(r['ratio_cold_to_do_bench'], 3):>7} {100 * r['cv_of_5_cold_medians']:>7.2f}% "
                     f"{100 * (r['cv_of_5_do_bench'] or 0):>6.2f}% {f(r.get('do_bench_stock_ms')):>9} "
                     f"{f(r.get('ratio_cold_to_do_bench_stock'), 3):>7} {100 * (r.get('cv_of_5_do_bench_stock') or 0):>6.2f}% "
                     f"{f(r['effprof_warm_ms']):>9} "
                     f"{f(r['torch_benchmark_warm_ms']):>9} {clocks:>24} {canary_range:>10} {str(r.get('verdict')):>8}")
    for r in results.get("foundation_check", []) if isinstance(results.get("foundation_check"), list) else []:
        ratio = r["ratio_cold_to_do_bench"]
        lines.append(f"5% check {r['workload']:10} effprof cold {r['effprof_cold_ms']:.4g} ms vs do_bench "
                     f"{r['do_bench_ms'] if r['do_bench_ms'] is None else round(r['do_bench_ms'], 4)} ms: "
                     f"{'-' if ratio is None else f'{ratio:.3f}'}")
    v = results.get("vit_b16_b256", {})
    if "median_ms" in v:
        n = v.get("nvml", {})
        lines.append(f"ViT-B/16 b256: {v['median_ms']:.2f} ms, {v['img_per_s']:,.0f} img/s, {v['tflops_per_s']:.3g} "
                     f"TFLOP/s = {v['pct_of_measured_ceiling'] or 0:.1f}% of measured ceiling; "
                     f"energy {n.get('energy_j_per_item')} J/img ({n.get('energy_method')}), "
                     f"SM {n.get('sm_clock_mhz_median')} MHz, throttled {n.get('throttled')} {n.get('throttle_reasons', '')}")
    for r in results.get("modes", []) if isinstance(results.get("modes"), list) else []:
        g = lambda key: "-" if r.get(key) is None else f"{r[key]:.4g}"  # noqa: E731
        lines.append(f"modes {r['workload']:10} eager {g('eager_ms')} ms, graph {g('graph_ms')} ms, compiled "
                     f"{g('compiled_ms')} ms (first call {g('compile_s')} s), compiled+graph {g('compiled_graph_ms')} ms")
    b = results.get("breakdown_vit_b16_b1", {})
    if "nodes" in b and b["nodes"]:
        root = b["nodes"][0]
        lines.append(f"breakdown ViT b1 ({root['method']}): root {root['time_ms']:.3f} ms vs latency "
                     f"{b['latency_ms']:.3f} ms; additive: {b['all_additive']}")
    errors = [f"{k}: {v['error']}" for k, v in results.items() if isinstance(v, dict) and "error" in v]
    return "\n".join(lines + errors)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--min-time", type=float, default=None, help="seconds of timed work per effprof run")
    parser.add_argument("--repeats", type=int, default=5, help="repeated effprof runs per workload")
    args = parser.parse_args(argv)
    if args.min_time is None:
        args.min_time = 0.05 if args.smoke else 1.0
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device: use --smoke on a CPU machine", file=sys.stderr)
        return 2
    if args.smoke:
        torch.set_num_threads(1)  # a small shared CPU: spinning OpenMP threads make the smoke timings erratic
    results = run(args)
    out = Path(os.environ.get("OUT", ".")) / "bench_timing.json"
    out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(f"results: {out}")
    print(table(results))
    return 0 if not any(isinstance(v, dict) and "error" in v for v in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
