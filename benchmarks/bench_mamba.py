"""Mamba-130m on the GPU: effprof's scan backends against transformers' MambaModel, and Mamba against a
Transformer of its size class in prefill and decode.

In one process:
  (a) `mamba-lm` 130m prefill (backbone, batch 1, bf16) at L = 1024 and 4096 with every scan backend that
      runs here (ref, triton, mamba-ssm if it imports), through `effprof.runner.measure`; the ref backend
      (a Python loop over time: seconds per call) is timed with one warm-up and one timed call and never
      above 4k;
  (b) transformers' `MambaModel` (MambaConfig(hidden_size=768, num_hidden_layers=24, state_size=16,
      expand=2, conv_kernel=4, vocab_size=50280), no mamba-ssm kernels) carrying the SAME weights, timed as
      /work/shared/anchors/anchor_gpu.py does (`model(input_ids=ids)` with its defaults, CUDA events
      around each call, 2 warm-ups, 5 timed, median); the relative error of effprof's hidden states against
      it at 1k, and of each scan backend against ref at L = 512;
  (c) the `mamba-scaling` profile (mamba-lm vs transformer-lm prefill, L = 1k ... 16k) with ratios;
  (d) decode: time per generated token (LM head included) and the state kept, at contexts 1k / 4k / 16k,
      for mamba-lm (`state_mib`, constant) and transformer-lm (`kv_cache_mib`, linear in context).

Writes $OUT/bench_mamba.json (OUT defaults to /tmp). About 3 minutes of GPU time, most of it in (b) and
the ref rows of (a); `--skip-hf` / `--skip-ref` leave them out.

    python benchmarks/bench_mamba.py            # on the GPU machine
    python benchmarks/bench_mamba.py --smoke    # tiny sizes on the CPU: checks that the script runs
"""
from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import anchor_time_ms, run_meta, write_result  # noqa: E402

from effprof.measure.timing import time_callable  # noqa: E402
from effprof.ops.selective_scan import available_backends  # noqa: E402
from effprof.core.profiles import load_profile  # noqa: E402
from effprof.core.registry import BuildContext, create  # noqa: E402
from effprof.report.table import print_records  # noqa: E402
from effprof.runner import Config, RunOptions, add_ratios, free_memory, measure, measure_many  # noqa: E402

KEEP = ("label", "component", "param_seq_len", "param_mode", "scan_backend", "conv_backend", "decode_backend",
        "latency_ms_median",
        "latency_ms_p10", "latency_ms_p90", "n_calls", "throughput_per_s", "gflops", "tflops_per_s", "peak_mem_mib",
        "state_mib", "kv_cache_mib", "params_total", "speedup", "status", "error")


def slim(record: dict) -> dict:
    return {k: record.get(k) for k in KEEP if k in record}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm())


def hf_mamba_with_weights(ours, device, dtype):
    """transformers' MambaModel with the backbone weights of our MambaLM, all in `dtype` as the anchor runs it
    (so its A_log and D are rounded to bf16 where ours stay fp32: part of the relative error reported)."""
    from transformers import MambaConfig, MambaModel

    c = ours.config
    config = MambaConfig(hidden_size=c.d_model, num_hidden_layers=c.n_layer, state_size=c.d_state, expand=c.expand,
                         conv_kernel=c.d_conv, vocab_size=c.padded_vocab_size, layer_norm_epsilon=c.norm_eps,
                         residual_in_fp32=True)
    hf = MambaModel(config).to(device, dtype).eval()
    state = {k.removeprefix("backbone.").replace("embedding.", "embeddings."): v
             for k, v in ours.state_dict().items() if k.startswith("backbone.")}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    flags = {k: getattr(config, k, None) for k in ("use_mambapy", "use_associative_scan")}
    return hf, flags


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU")
    parser.add_argument("--skip-hf", action="store_true", help="leave out transformers' MambaModel (b)")
    parser.add_argument("--skip-ref", action="store_true", help="leave out the ref scan rows of (a)")
    parser.add_argument("--hf-iters", type=int, default=5)
    parser.add_argument("--graphs", action="store_true",
                        help="time effprof's rows (not ref, not transformers) as CUDA graph replays: the GPU's "
                             "time without the host's launch overhead, which varies between host machines")
    args = parser.parse_args()
    smoke = args.smoke
    if args.graphs and (smoke or not torch.cuda.is_available()):
        print("bench_mamba.py: --graphs needs a CUDA device (CUDA graphs do not exist on cpu)", file=sys.stderr)
        return 2
    device = "cpu" if smoke else "cuda"
    dtype_name, dtype = ("fp32", torch.float32) if smoke else ("bf16", torch.bfloat16)
    tiny = {"d_model": 32, "n_layer": 2} if smoke else {}
    tiny_tf = {"d_model": 64, "n_layer": 2} if smoke else {}
    scale = 128 if smoke else 1  # smoke: L = 8, 32 ... instead of 1k, 4k ...
    prefill_lengths = [1024 // scale, 4096 // scale]
    contexts = [1024 // scale, 4096 // scale, 16384 // scale]
    fast = RunOptions(batch=1, dtype=dtype_name, device=device, warmup=0.2 if not smoke else 0,
                      min_time=0.5 if not smoke else 0.02)
    slow = replace(fast, warmup=0, min_time=0.01, count_flops=False)
    if args.graphs:
        fast = replace(fast, graphs=True)
    slow_timer = functools.partial(time_callable, min_blocks=1)

    out: dict = run_meta(smoke=smoke, graphs=args.graphs, scan_backends=available_backends(torch.device(device)))
    print("backends:", out["scan_backends"], flush=True)

    # (a) prefill through effprof, every backend
    out["prefill"] = []
    for length in prefill_lengths:
        for backend in out["scan_backends"]:
            if backend == "ref" and (args.skip_ref or length > 4096):
                continue
            params = {"preset": "130m", "seq_len": length, "scan_backend": backend, **tiny}
            config = Config("mamba-lm", params, slow if backend == "ref" else fast, f"mamba-lm {backend} L={length}")
            record = measure(config, slow_timer) if backend == "ref" else measure(config)
            out["prefill"].append(slim(record))
            print(f"prefill {backend:>9} L={length:>6}: {record['latency_ms_median']:9.2f} ms "
                  f"{record['throughput_per_s']:>11,.0f} tok/s", flush=True)
            free_memory()

    # (b) transformers' MambaModel, same weights; fidelity of effprof's paths
    if not args.skip_hf:
        ctx = BuildContext(torch.device(device), dtype)
        ours = create("mamba-lm", ctx, **tiny).module.eval()
        hf, flags = hf_mamba_with_weights(ours, device, dtype)
        out["hf_reference"] = {"config_flags": flags, "timing": "anchor_gpu.py: events per call, 2 warm-ups"}
        fast_backend = [b for b in out["scan_backends"] if b != "ref"][-1:] or ["ref"]
        with torch.inference_mode():
            for length in prefill_lengths:
                ids = torch.randint(0, 50000 if not smoke else 100, (1, length), device=device)
                res = anchor_time_ms(lambda: hf(input_ids=ids), device, 2, args.hf_iters)
                res["tok_s"] = length / res["ms"] * 1e3
                line = f"transformers MambaModel L={length:>6}: {res['ms']:9.2f} ms {res['tok_s']:>11,.0f} tok/s"
                if length == prefill_lengths[0]:  # one extra call of the slow model, at the short length only
                    ours.set_backends(scan_backend=fast_backend[0])
                    key = f"rel_err_effprof_{fast_backend[0]}_vs_hf"
                    res[key] = rel_err(ours.backbone(ids), hf(input_ids=ids).last_hidden_state)
                    line += f" (rel. err of effprof {fast_backend[0]}: {res[key]:.2e})"
                out["hf_reference"][f"L{length}"] = res
                print(line, flush=True)
            ids = torch.randint(0, 100, (1, 512 // scale), device=device)
            ours.set_backends(scan_backend="ref")
            reference = ours.backbone(ids)
            out["fidelity"] = {"L": ids.shape[1]}
            for backend in out["scan_backends"]:
                ours.set_backends(scan_backend=backend)
                out["fidelity"][f"rel_err_{backend}_vs_ref"] = rel_err(ours.backbone(ids), reference)
            print("fidelity:", out["fidelity"], flush=True)
        del ours, hf
        free_memory()

    # (c) the scaling profile
    profile = load_profile("mamba-scaling", RunOptions(), {"device": device, "dtype": dtype_name,
                                                            "warmup": fast.warmup, "min_time": fast.min_time,
                                                            **({"graphs": True} if args.graphs else {})})
    configs = [replace(c, params={**c.params, "seq_len": c.params["seq_len"] // scale,
                                  **(tiny if c.component == "mamba-lm" else tiny_tf)}) for c in profile.configs]
    records = measure_many(configs)
    add_ratios(records, profile.baseline)
    print_records(records, title=profile.title)
    out["scaling"] = [slim(r) for r in records]

    # (d) decode: time per token and state memory against context length
    decode = []
    for length in contexts:
        for component, extra in (("mamba-lm", tiny), ("transformer-lm", tiny_tf)):
            params = {"preset": "130m", "seq_len": length, "mode": "decode", "head": True, **extra}
            decode.append(Config(component, params, fast, f"{component} decode ctx={length}"))
    records = measure_many(decode)
    print_records(records, title="decode: one token with the LM head, batch 1")
    out["decode"] = [slim(r) for r in records]

    print("\nsummary (ms; tok/s)")
    for row in out["prefill"]:
        print(f"  {row['label']:<28} {row['latency_ms_median']:10.2f}  {row['throughput_per_s']:>12,.0f}")
    for key, res in out.get("hf_reference", {}).items():
        if key.startswith("L"):
            print(f"  {'transformers MambaModel ' + key:<28} {res['ms']:10.2f}  {res['tok_s']:>12,.0f}")
    for row in out["decode"]:
        mem = row.get("state_mib") if row.get("state_mib") is not None else row.get("kv_cache_mib")
        print(f"  {row['label']:<34} {row.get('latency_ms_median') or float('nan'):8.3f} ms/token, "
              f"state {mem if mem is not None else float('nan'):9.2f} MiB")
    write_result("bench_mamba_graphs" if args.graphs else "bench_mamba", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
