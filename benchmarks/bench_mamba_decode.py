#!/usr/bin/env python3
"""Mamba's decode and conv paths on one CUDA device: the fused Triton decode step against the step-by-step
reference, and the Triton causal conv against PyTorch's.

Sections (all in one process, about 70 s on an H200; the timing sections run first, so that a time limit cuts
the checks at the end):
  calibrate  effprof's measured bf16 matmul and copy ceilings (the denominators of the shares below);
  greedy     Mamba-130m (random weights, batch 1): 64 greedy tokens after a 16-token prompt with
             `--decode-backend ref` (conv and scan ref: the definition, op by op) and `triton` (fused, with
             the GREEDY_VARIANTS configs): how many tokens agree, and the logits' relative error, in float32
             and in bf16; Mamba-2.8b in bf16, 16 tokens;
  kernels    the kernels of one eager decode step, by the profiler: count and summed device time;
  decode     ms per generated token (LM head included, context 1,024, CUDA graphs): Mamba-130m at batch 1,
             8, 64 and Mamba-2.8b at batch 1, 8, with the ref decode step (conv ref, state update triton: the path
             before the fused step) and the triton one; tokens/s =
             batch / latency; the bytes of weights read once per step over the copy bandwidth (the floor);
  layers     the per-layer kernels' variants only (DECODE_CONFIG knobs, `LAYER_ROWS`, or --rows; about 3 s a
             row), each row with the host calls of the persistent step and of the per-layer kernels (which path
             its graph replays);
  cobra      Cobra-3B decode (context 1,024, graphs) with COBRA_VARIANTS (the defaults and those before);
  conv       the causal conv alone at Mamba-130m's 16k prefill (1 × 1536 × 16384 bf16, the block's strided
             view), ref vs triton, and Mamba-130m prefill at 16k (graphs) with each: the conv's share;
  prefill    Mamba-2.8b prefill at 2k tokens (batch 1, bf16, graphs) with the ref and triton convs: share
             of the measured bf16 ceiling.

    python3 benchmarks/bench_mamba_decode.py --out DIR      # JSON + markdown table under DIR
    python3 benchmarks/bench_mamba_decode.py --smoke --out DIR   # CPU, tiny shapes (TRITON_INTERPRET=1)
    python3 benchmarks/bench_mamba_decode.py --only calibrate,layers,cobra,greedy,kernels \
        --rows "130m:triton,triton-old,persistent;2.8b:triton,triton-old" --cobra-variants triton,triton-old \
        --greedy-variants triton,persistent --kernel-variants triton,triton-old   # one GPU call's comparison
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import run_meta  # noqa: E402

from effprof.models.generation import greedy_mamba  # noqa: E402
from effprof.runner import Config, RunOptions, free_memory, measure  # noqa: E402

KEEP = ("label", "param_preset", "batch", "param_seq_len", "param_mode", "decode_backend", "conv_backend",
        "scan_backend", "exec_mode", "latency_ms_median", "latency_ms_p10", "latency_ms_p90", "throughput_per_s",
        "gflops", "tflops_per_s", "pct_of_compute_ceiling", "params_total", "status", "error")


def rel_err(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


# DECODE_CONFIG overrides checked against the reference
GREEDY_VARIANTS = ("triton", "triton-nopdl-noprefetch", "triton-unfused", "triton-split4", "triton-normin",
                   "triton-normin-split4")


def section_greedy(device, smoke) -> list[dict]:
    from effprof.modules.mamba import MAMBA_PRESETS, MambaLM
    from effprof.ops import mamba_decode_triton as kernels

    default = dict(kernels.DECODE_CONFIG)
    rows = []
    cases = [("130m", torch.float32, 64), ("130m", torch.bfloat16, 64), ("2.8b", torch.bfloat16, 16)]
    for preset, dtype, n in cases[:2] if smoke else cases:
        config = replace(MAMBA_PRESETS[preset], d_model=32, n_layer=2) if smoke else MAMBA_PRESETS[preset]
        n = 8 if smoke else n
        torch.manual_seed(0)
        model = MambaLM(config, "ref", "ref", device=device, dtype=dtype).eval()
        prompt = torch.randint(0, config.vocab_size, (1, 16), device=device, generator=None)
        ref_tokens, ref_logits = greedy_mamba(model, prompt, n, "ref")
        for variant in GREEDY_VARIANTS:
            kernels.DECODE_CONFIG.update(VARIANTS[variant])
            try:
                tokens, logits = greedy_mamba(model, prompt, n, "triton")
            finally:
                kernels.DECODE_CONFIG.clear()
                kernels.DECODE_CONFIG.update(default)
            same = (tokens == ref_tokens)[0]
            first_diff = int((~same).nonzero()[0]) if not same.all() else None
            # logits compared over the steps before the first divergence (after it the inputs differ)
            upto = first_diff if first_diff is not None else n
            rows.append({"preset": preset, "variant": variant, "dtype": str(dtype).removeprefix("torch."),
                         "tokens": n, "same_tokens": int(same.sum()), "first_divergence": first_diff,
                         "distinct_tokens": len(set(ref_tokens[0].tolist())),
                         "rel_err_logits": rel_err(logits[:, :upto], ref_logits[:, :upto]) if upto else None})
            print("greedy", json.dumps(rows[-1]), flush=True)
        del model
        free_memory()
    return rows


KERNEL_VARIANTS = ("triton",)


def section_kernels(device) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    from effprof.modules.mamba import MAMBA_PRESETS, MambaLM

    from effprof.ops import mamba_decode_triton as config

    rows = []
    default = dict(config.DECODE_CONFIG)
    for preset in ("130m", "2.8b"):
        model = MambaLM(MAMBA_PRESETS[preset], "triton", "triton", device=device, dtype=torch.bfloat16).eval()
        for backend, variant in [("ref", "ref")] + [("triton", v) for v in KERNEL_VARIANTS]:
            model.set_backends(decode_backend=backend)
            cache = model.allocate_cache(1)
            ids = torch.randint(0, 50000, (1, 1), device=device)
            config.DECODE_CONFIG.update(VARIANTS[variant] or {})
            try:
                for _ in range(3):
                    model.step(ids, cache)
                torch.cuda.synchronize()
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    model.step(ids, cache)
                    torch.cuda.synchronize()
            finally:
                config.DECODE_CONFIG.clear()
                config.DECODE_CONFIG.update(default)
            kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
            by_name: dict = {}
            for e in kernels:
                entry = by_name.setdefault(e.name[:80], [0, 0.0])
                entry[0] += 1
                entry[1] += e.device_time
            top = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:10]
            rows.append({"preset": preset, "decode_backend": backend, "variant": variant,
                         "kernels_per_token": len(kernels),
                         "kernel_time_ms": sum(e.device_time for e in kernels) / 1e3,
                         "top_kernels_us": [(name, count, round(us, 1)) for name, (count, us) in top]})
            print("kernels", json.dumps(rows[-1]), flush=True)
        del model, cache
        free_memory()
    return rows


# Decode variants: DECODE_CONFIG overrides of the defaults (mamba_decode_triton.DECODE_CONFIG; the call-3 rows
# of benchmarks/results/h200-2026-12-01-decode/ were overrides of the defaults then, listed there). At batch 1-2
# the per-layer kernels run (mamba_decode_layer_triton.py); `triton-2kernel` is the path before them (the
# two-kernel step between GEMV / cuBLAS projections, as at batch > 2). unfused = out_proj as its own GEMV kernel
# (at 130m; 2.8b's is already), bn / bm = rows per program of the in_proj / out_proj GEMV, bk = columns per loop
# step, splitK = out_proj's GEMV over K channel ranges (atomics), nopdl / noprefetch = without programmatic
# dependent launch / one-tile weight loads, normin = the residual add + norm done by each layer's first kernel
# (no last-program step; not yet measured on a GPU), w8 = 8 warps per GEMV program.
BIG = 1 << 40
VARIANTS = {"ref": None, "triton": {}, "triton-2kernel": {"layer_max_batch": 0},
            "triton-nopdl": {"pdl": False}, "triton-noprefetch": {"layer_prefetch": False},
            "triton-nopdl-noprefetch": {"pdl": False, "layer_prefetch": False},
            "triton-unfused": {"layer_fuse_out_max_bytes": 0},
            "triton-unfused-bn8-bm4": {"layer_fuse_out_max_bytes": 0, "layer_block_n": 8, "layer_block_m": 4},
            "triton-bn8": {"layer_block_n": 8}, "triton-bk256": {"layer_block_k": 256},
            "triton-split4": {"layer_out_split_k": 4},
            "triton-bk512-split4": {"layer_block_k": 512, "layer_out_split_k": 4},
            "triton-w8": {"layer_num_warps": 8}, "triton-normin": {"layer_norm_in": True},
            "triton-normin-split4": {"layer_norm_in": True, "layer_out_split_k": 4},
            # L2 prefetches (mamba_decode_layer_triton.prefetch_l2): l2self = a GEMV program's own rows before its
            # wait; l2ahead = the state-update kernel prefetches out_proj's weight (or, fused, the next in_proj),
            # the out_proj kernel the first layer_l2_ahead_bytes of the next in_proj; l2all = both + in_proj's
            # kernel prefetching out_proj
            "triton-l2self": {"layer_l2_self": True}, "triton-l2ahead": {"layer_l2_ahead": True},
            "triton-l2self-ahead": {"layer_l2_self": True, "layer_l2_ahead": True},
            "triton-l2self-ahead8m": {"layer_l2_self": True, "layer_l2_ahead": True, "layer_l2_ahead_bytes": 8 << 20},
            "triton-l2self-ahead32m": {"layer_l2_self": True, "layer_l2_ahead": True,
                                       "layer_l2_ahead_bytes": 32 << 20},
            "triton-l2all": {"layer_l2_self": True, "layer_l2_ahead": True, "layer_l2_ahead_in": True},
            "triton-bm4": {"layer_block_m": 4},
            "triton-bm4-l2": {"layer_block_m": 4, "layer_l2_self": True, "layer_l2_ahead": True},
            "triton-bm16-l2": {"layer_block_m": 16, "layer_l2_self": True, "layer_l2_ahead": True},
            "triton-fused": {"layer_fuse_out_max_bytes": BIG},
            # pre = a GEMV loop's first 1 or 2 tiles loaded before the wait on the previous kernel (the default
            # is 1 since 2026-12-07; "triton-old" = the defaults before, no tile before the wait)
            "triton-old": {"layer_pre_tiles": 0},
            "triton-pre1": {"layer_pre_tiles": 1}, "triton-pre2": {"layer_pre_tiles": 2},
            "triton-pre2-bm4": {"layer_pre_tiles": 2, "layer_block_m": 4},
            "triton-pre1-bn8": {"layer_pre_tiles": 1, "layer_block_n": 8},
            # bulk L2 prefetch (`cp.async.bulk.prefetch.L2`, a few instructions per program): the state-update kernel
            # asks for about N MB of out_proj's weight (the columns after its pre-loaded tile) after its wait on
            # in_proj, or before it (early); 2.8b only (130m fuses out_proj into the state update)
            "triton-bulk4m": {"layer_l2_bulk_out": 4 << 20}, "triton-bulk8m": {"layer_l2_bulk_out": 8 << 20},
            "triton-bulk12m": {"layer_l2_bulk_out": 12 << 20}, "triton-bulk16m": {"layer_l2_bulk_out": 16 << 20},
            "triton-bulk24m": {"layer_l2_bulk_out": 24 << 20},
            "triton-bulk8m-early": {"layer_l2_bulk_out": 8 << 20, "layer_l2_bulk_early": True},
            # ... and the out_proj kernel, after its wait, asks for N MB of the next layer's in_proj (the columns
            # after its pre-loaded tile), while out_proj streams below the copy rate
            "triton-bulkin8m": {"layer_l2_bulk_in": 8 << 20}, "triton-bulkin16m": {"layer_l2_bulk_in": 16 << 20},
            "triton-bulk8m-in8m": {"layer_l2_bulk_out": 8 << 20, "layer_l2_bulk_in": 8 << 20},
            # the persistent whole-step kernel (mamba_decode_persistent_triton.py), batch 1 up to d_model 1024
            "persistent": {"persistent_max_d_model": 1024},
            "persistent-nol2": {"persistent_max_d_model": 1024, "persistent_l2": False},
            "persistent-head0": {"persistent_max_d_model": 1024, "persistent_head_bytes": 0},
            "persistent-head40m": {"persistent_max_d_model": 1024, "persistent_head_bytes": 40 << 20},
            "persistent-p66": {"persistent_max_d_model": 1024, "persistent_programs": 66},
            "persistent-bd32": {"persistent_max_d_model": 1024, "persistent_block_d": 32},
            "persistent-w4": {"persistent_max_d_model": 1024, "persistent_num_warps": 4}}
DECODE_ROWS = [("130m", 1, ("ref", "triton", "triton-2kernel")), ("130m", 2, ("triton", "triton-2kernel")),
               ("130m", 8, ("ref", "triton")), ("130m", 64, ("ref", "triton")),
               ("2.8b", 1, ("ref", "triton", "triton-2kernel")), ("2.8b", 8, ("ref", "triton"))]
# section `layers`: the per-layer kernels' variants (about 1 minute on an H200)
LAYER_ROWS = [("130m", 1, ("triton", "triton-old", "triton-pre2", "triton-l2all", "persistent", "persistent-nol2",
                           "persistent-p66", "persistent-bd32")),
              ("2.8b", 1, ("triton", "triton-old", "triton-pre2", "triton-pre2-bm4", "triton-pre1-bn8", "triton-l2self",
                           "triton-l2ahead", "triton-l2self-ahead", "triton-l2all", "triton-fused"))]


def parse_rows(text: str) -> list:
    """`130m:a,b;2.8b:c` -> [("130m", 1, ("a", "b")), ("2.8b", 1, ("c",))] (batch 1)."""
    rows = []
    for part in filter(None, text.split(";")):
        preset, names = part.split(":")
        unknown = [n for n in names.split(",") if n not in VARIANTS]
        if unknown:
            raise SystemExit(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
        rows.append((preset, 1, tuple(names.split(","))))
    return rows


def run(component, params, opts, label) -> dict:
    record = measure(Config(component, params, opts, label))
    free_memory()
    row = {k: record.get(k) for k in KEEP}
    print(f"{label:<44} {row['latency_ms_median'] or float('nan'):9.4f} ms  {row.get('status')} "
          f"{(row.get('error') or '')[:120]}", flush=True)
    return row


@contextlib.contextmanager
def count_paths():
    """Counts of host calls of the persistent step and of the per-layer kernels while a row is built, warmed
    up and captured (which path its graph replays)."""
    counts = {"persistent": 0, "per_layer": 0}
    try:
        from effprof.ops import mamba_decode_layer_triton as layer, mamba_decode_persistent_triton as persistent
    except ImportError:  # no triton: neither path runs
        yield counts
        return
    real_p, real_l = persistent.step_persistent_triton, layer.layer_decode_triton

    def p(*a, **k):
        counts["persistent"] += 1
        return real_p(*a, **k)

    def l(*a, **k):
        counts["per_layer"] += 1
        return real_l(*a, **k)

    persistent.step_persistent_triton, layer.layer_decode_triton = p, l
    try:
        yield counts
    finally:
        persistent.step_persistent_triton, layer.layer_decode_triton = real_p, real_l


def section_decode(opts, smoke, bandwidth, row_groups=None) -> list[dict]:
    from effprof.modules.mamba import MAMBA_PRESETS, MambaLM
    from effprof.ops import mamba_decode_triton as kernels

    default = dict(kernels.DECODE_CONFIG)
    tiny = {"d_model": 32, "n_layer": 2} if smoke else {}
    rows = []
    weights = {}
    for preset in ("130m", "2.8b"):
        with torch.device("meta"):
            weights[preset] = sum(p.numel() * 2 for p in MambaLM(MAMBA_PRESETS[preset]).parameters())  # bf16, tied
    row_groups = row_groups or DECODE_ROWS
    for preset, batch, variants in row_groups[:1] if smoke else row_groups:
        for variant in variants:
            # --smoke: the runner refuses to time interpreted triton kernels, so rows run the ref path there
            # (the greedy section runs the triton one under the interpreter)
            backend = "ref" if variant == "ref" or smoke else "triton"
            params = {"preset": preset, "seq_len": 16 if smoke else 1024, "mode": "decode", "head": True,
                      "decode_backend": backend, "conv_backend": "ref" if backend == "ref" else "triton",
                      "scan_backend": "ref" if smoke else "triton", **tiny}
            kernels.DECODE_CONFIG.update(VARIANTS[variant] or {})
            try:
                with count_paths() as paths:
                    row = run("mamba-lm", params, replace(opts, batch=batch), f"decode {preset} b{batch} {variant}")
            finally:
                kernels.DECODE_CONFIG.clear()
                kernels.DECODE_CONFIG.update(default)
            row.update(variant=variant, config=VARIANTS[variant], weights_bytes=weights[preset], paths=paths)
            if bandwidth and row.get("latency_ms_median"):
                row["weights_floor_ms"] = weights[preset] / bandwidth / 1e6
                row["x_floor"] = row["latency_ms_median"] / row["weights_floor_ms"]
            rows.append(row)
    return rows


COBRA_VARIANTS = ("triton", "triton-old")


def section_cobra(opts, smoke) -> list[dict]:
    """Cobra-3B decode (context 1,024, graphs) with COBRA_VARIANTS (the defaults and those before)."""
    from effprof.ops import mamba_decode_triton as kernels

    rows = []
    default = dict(kernels.DECODE_CONFIG)
    for variant in COBRA_VARIANTS:
        kernels.DECODE_CONFIG.update(VARIANTS[variant])
        backend = "ref" if smoke else "triton"  # as in section_decode
        params = {"preset": "tiny" if smoke else "cobra-3b", "mode": "decode", "decode_backend": backend,
                  "conv_backend": backend, "scan_backend": backend}
        if smoke:
            params["context"] = 8
        try:
            row = run("cobra", params, opts, f"cobra decode b1 {variant}")
        finally:
            kernels.DECODE_CONFIG.clear()
            kernels.DECODE_CONFIG.update(default)
        rows.append({**row, "variant": variant})
    return rows


def section_conv(device, dtype, opts, smoke) -> dict:
    from effprof.measure.timing import time_callable
    from effprof.ops.causal_conv1d import causal_conv1d

    batch, channels, L = (1, 64, 32) if smoke else (1, 1536, 16384)
    xz = torch.randn(2 * channels, batch * L, device=device, dtype=dtype)
    x = xz.view(2 * channels, batch, L).transpose(0, 1)[:, :channels]       # the block's strided view
    weight = torch.randn(channels, 4, device=device, dtype=dtype)
    bias = torch.randn(channels, device=device, dtype=dtype)
    out: dict = {"shape": [batch, channels, L], "bytes_min": 2 * x.numel() * x.element_size()}
    ref = causal_conv1d(x, weight, bias, "silu", "ref")
    for backend in ("ref", "triton"):
        y = causal_conv1d(x, weight, bias, "silu", backend)
        timing = time_callable(lambda b=backend: causal_conv1d(x, weight, bias, "silu", b), device,
                               warmup_s=0.05, min_time_s=0.2)
        out[backend] = {"ms": timing.median_ms, "rel_err_vs_ref": rel_err(y, ref),
                        "gb_per_s": out["bytes_min"] / timing.median_ms / 1e6}
    print("conv", json.dumps(out), flush=True)
    tiny = {"d_model": 32, "n_layer": 2} if smoke else {}
    out["prefill"] = []
    for backend in ("ref", "triton"):
        params = {"preset": "130m", "seq_len": L, "conv_backend": backend, "scan_backend": "ref" if smoke else "triton",
                  **tiny}
        row = run("mamba-lm", params, opts, f"prefill 130m L={L} conv {backend}")
        if row.get("latency_ms_median"):
            row["conv_share"] = 24 * out[backend]["ms"] / row["latency_ms_median"] if not smoke else None
        out["prefill"].append(row)
    return out


def section_prefill_28b(opts, smoke) -> list[dict]:
    tiny = {"d_model": 32, "n_layer": 2} if smoke else {}
    rows = []
    for backend in ("ref", "triton"):
        params = {"preset": "2.8b", "seq_len": 16 if smoke else 2048, "conv_backend": backend,
                  "scan_backend": "ref" if smoke else "triton", **tiny}
        rows.append(run("mamba-lm", params, opts, f"prefill 2.8b L=2048 conv {backend}"))
    return rows


def markdown(doc) -> str:
    lines = [f"# bench_mamba_decode ({doc['meta']['device']}, {doc['meta']['date_utc']})", "",
             f"command: `{doc['meta']['command']}`; torch {doc['meta']['torch']}, triton {doc['meta']['triton']}; "
             f"ceilings: {doc.get('ceilings')}", "",
             "| decode (graphs, head on, context 1,024) | batch | ms/token | tokens/s | weights read once: floor ms "
             "| x floor | host calls (persistent, per-layer) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in (doc.get("decode") or []) + (doc.get("layers") or []):
        ms, tps = r.get("latency_ms_median"), r.get("throughput_per_s")
        lines.append(f"| {r['param_preset']} {r.get('variant')} | {r['batch']} | "
                     f"{'-' if ms is None else f'{ms:.4f}'} | {'-' if tps is None else f'{tps:,.0f}'} | "
                     f"{r.get('weights_floor_ms', float('nan')):.4f} | {r.get('x_floor', float('nan')):.2f} | "
                     f"{r.get('paths')} |")
    for r in doc.get("cobra") or []:
        lines.append(f"| cobra-3b {r['variant']} | 1 | {r.get('latency_ms_median')} | {r.get('throughput_per_s')} "
                     "| | |")
    lines += ["", "| greedy check (random weights, batch 1, eager) | same tokens | first divergence "
              "| rel. err logits |",
              "| --- | --- | --- | --- |"]
    for r in doc.get("greedy") or []:
        lines.append(f"| {r.get('preset', '130m')} {r.get('variant', 'triton')} {r['dtype']} | "
                     f"{r['same_tokens']}/{r['tokens']} | {r['first_divergence']} | {r['rel_err_logits']} |")
    lines += ["", "| kernels of one eager step (b1) | kernels | device ms | top kernels (name, count, µs) |",
              "| --- | --- | --- | --- |"]
    for r in doc.get("kernels") or []:
        lines.append(f"| {r['preset']} {r.get('variant', r['decode_backend'])} | {r['kernels_per_token']} | "
                     f"{r['kernel_time_ms']:.4f} | "
                     f"{'; '.join(f'{n[:40]} ×{c} {us}' for n, c, us in r['top_kernels_us'][:8])} |")
    conv = doc.get("conv")
    if conv:
        lines += ["", f"conv alone {conv['shape']} bf16: ref {conv['ref']['ms']:.4f} ms, triton "
                      f"{conv['triton']['ms']:.4f} ms ({conv['triton']['gb_per_s']:.0f} GB/s, rel. err "
                      f"{conv['triton']['rel_err_vs_ref']:.1e})", "",
                  "| prefill (graphs) | ms | tok/s | conv share | TFLOP/s | % bf16 ceiling |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in conv["prefill"] + doc.get("prefill_2.8b", []):
            lines.append(f"| {r['label']} | {r.get('latency_ms_median')} | {r.get('throughput_per_s')} | "
                         f"{r.get('conv_share')} | {r.get('tflops_per_s')} | {r.get('pct_of_compute_ceiling')} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."),
                        help="directory for bench_mamba_decode.json / .md (default $OUT, else .)")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes (needs TRITON_INTERPRET=1)")
    parser.add_argument("--only", default="calibrate,greedy,kernels,decode,conv,prefill",
                        help="comma-separated sections: calibrate, greedy, kernels, decode, layers (the per-layer "
                             "kernels' variants), cobra (Cobra-3B decode), conv, prefill")
    parser.add_argument("--rows", default=None,
                        help="the layers section's rows instead of LAYER_ROWS, as 130m:VARIANT,...;2.8b:VARIANT,...")
    parser.add_argument("--greedy-variants", default=None, help="comma-separated variants for the greedy section")
    parser.add_argument("--cobra-variants", default=None, help="comma-separated variants for the cobra section")
    parser.add_argument("--decode-rows", default=None, help="the decode section's rows (same form as --rows)")
    parser.add_argument("--kernel-variants", default=None, help="comma-separated variants for the kernels section")
    args = parser.parse_args()
    sections = args.only.split(",")
    global GREEDY_VARIANTS, COBRA_VARIANTS, LAYER_ROWS, DECODE_ROWS, KERNEL_VARIANTS
    if args.kernel_variants:
        KERNEL_VARIANTS = tuple(args.kernel_variants.split(","))
    if args.rows:
        LAYER_ROWS = parse_rows(args.rows)
    if args.decode_rows:
        DECODE_ROWS = parse_rows(args.decode_rows)
    if args.greedy_variants:
        GREEDY_VARIANTS = tuple(args.greedy_variants.split(","))
    if args.cobra_variants:
        COBRA_VARIANTS = tuple(args.cobra_variants.split(","))
    if not args.smoke and not torch.cuda.is_available():
        print("bench_mamba_decode.py needs a CUDA device (or --smoke)", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.smoke else "cuda")
    doc = {"meta": run_meta(command=" ".join(sys.argv), smoke=args.smoke)}
    opts = RunOptions(device=device.type, dtype="fp32" if args.smoke else "bf16", warmup=0 if args.smoke else 0.1,
                      min_time=0.02 if args.smoke else 0.3, graphs=not args.smoke)
    bandwidth = None
    t0 = time.perf_counter()
    if "calibrate" in sections and not args.smoke:
        from effprof.measure.calibrate import calibrate

        ceilings = calibrate(device, force=True, dtypes=("bf16",))
        bandwidth = ceilings.bandwidth_gb_per_s
        doc["ceilings"] = {"bf16_tflops": ceilings.matmul_tflops.get("bf16"), "copy_gb_per_s": bandwidth,
                           "source": ceilings.source}
        print("ceilings", doc["ceilings"], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save():  # after every section: a run cut short by a time limit keeps what it measured
        doc["wall_s"] = time.perf_counter() - t0
        (out / "bench_mamba_decode.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")

    steps = [("decode", lambda: section_decode(opts, args.smoke, bandwidth)),  # timings first (a time limit
             ("layers", lambda: section_decode(opts, args.smoke, bandwidth, LAYER_ROWS)),  # cuts the end)
             ("cobra", lambda: section_cobra(opts, args.smoke)),
             ("greedy", lambda: section_greedy(device, args.smoke)),
             ("kernels", lambda: None if args.smoke else section_kernels(device)),
             ("conv", lambda: section_conv(device, torch.float32 if args.smoke else torch.bfloat16, opts, args.smoke)),
             ("prefill_2.8b", lambda: section_prefill_28b(opts, args.smoke))]
    with torch.inference_mode():
        for key, fn in steps:
            if key.split("_")[0] in sections:
                doc[key] = fn()
                save()
    table = markdown(doc)
    (out / "bench_mamba_decode.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
