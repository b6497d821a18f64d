#!/usr/bin/env python3
"""Where Cobra-3B's first token spends its time beyond the scan (issue 26): the vision towers, x_proj, the
cache writes of the LM prefill.

Sections (CUDA, bf16, batch 1, random weights, CUDA-graph replay through `do_bench_cudagraph`, median ms):

  towers:  DINOv2-L/14-reg4 alone, SigLIP so400m alone, both one after the other (`CobraModel.vision`), and
           both on two streams joined before the concat; the top kernels of the sequential pair (profiler).
  xproj:   x_proj's GEMM at Cobra's shape (793 x 5120 -> 192): F.linear against split-K variants.
  small:   the causal conv's block shape, and dt_proj as cuBLAS runs it against a one-pass Triton GEMM.
  lm:      the LM prefill on 793 embeddings with and without a cache to fill (what the state writes cost),
           and its kernel count.

    python benchmarks/diagnostics/diag_cobra_ttft.py [--only towers,xproj,small,lm]   # on the GPU; JSON to $OUT
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from triton.testing import do_bench_cudagraph  # noqa: E402

OUT = Path(os.environ.get("OUT", "/tmp")) / "diag_cobra_ttft.json"
RESULT: dict = {"started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def save():
    """The JSON so far (atomically), and a line per save on stdout: a run cut at a time limit leaves both."""
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps(RESULT, indent=1, default=str))
    os.replace(tmp, OUT)
    print(f"{time.strftime('%H:%M:%S')} saved: {', '.join(k for k in RESULT if k != 'started_utc')}", flush=True)


def bench(fn) -> float:
    fn()
    torch.cuda.synchronize()
    return do_bench_cudagraph(fn, rep=200, return_mode="median")


def top_kernels(fn, n=25) -> list:
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    rows = sorted(prof.key_averages(), key=lambda e: -e.device_time_total)
    total = sum(e.device_time_total for e in rows)
    out = [{"kernel": e.key[:110], "calls": e.count, "ms": e.device_time_total / 1e3} for e in rows[:n]]
    return [{"total_ms": total / 1e3, "kernels": sum(e.count for e in rows)}] + out


def model():
    from effprof.models.cobra import PRESETS, build_cobra
    return build_cobra(PRESETS["cobra-3b"], "fused-gelu-mlp", "triton", "triton", "triton", torch.device("cuda"),
                       torch.bfloat16)


def towers(m):
    px = torch.randn(1, 3, 384, 384, device="cuda", dtype=torch.bfloat16)
    side = torch.cuda.Stream()

    def dino():
        return m.dino(px, output_hidden_states=True).hidden_states[-2][:, m.prefix_tokens:]

    def siglip():
        return m.siglip(px, output_hidden_states=True).hidden_states[-2]

    def two_streams():
        main = torch.cuda.current_stream()
        side.wait_stream(main)
        with torch.cuda.stream(side):
            s = siglip()
        d = dino()
        main.wait_stream(side)
        return torch.cat([d, s], dim=-1)

    with torch.no_grad():
        ref = m.vision(px)
        got = two_streams()
        torch.cuda.synchronize()
        RESULT["towers"] = {"max_abs_diff_two_streams": float((ref.float() - got.float()).abs().max()),
                            "dino_ms": bench(dino), "siglip_ms": bench(siglip),
                            "sequential_ms": bench(lambda: m.vision(px)), "two_streams_ms": bench(two_streams)}
        save()
        RESULT["towers"]["kernels_sequential"] = top_kernels(lambda: m.vision(px))
    save()


def xproj():
    import triton
    import triton.language as tl

    @triton.jit
    def partial_kernel(a_ptr, w_ptr, p_ptr, M, N, K, KS, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        pm, pn, ps = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        rm = pm * BM + tl.arange(0, BM)
        rn = pn * BN + tl.arange(0, BN)
        rk = tl.arange(0, BK)
        acc = tl.zeros([BM, BN], dtype=tl.float32)
        for k0 in range(ps * KS, (ps + 1) * KS, BK):
            a = tl.load(a_ptr + rm[:, None] * K + (k0 + rk)[None, :], mask=rm[:, None] < M, other=0.0)
            w = tl.load(w_ptr + rn[None, :] * K + (k0 + rk)[:, None], mask=rn[None, :] < N, other=0.0)
            acc = tl.dot(a, w, acc)
        tl.store(p_ptr + (ps * M + rm[:, None]) * N + rn[None, :], acc, mask=(rm[:, None] < M) & (rn[None, :] < N))

    M, K, N = 793, 5120, 192
    a = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) / K**0.5
    ref = a.float() @ w.float().t()
    rows = {"linear_ms": bench(lambda: F.linear(a, w)),
            "linear_rel_err": float((F.linear(a, w).float() - ref).norm() / ref.norm())}
    for S, BM, BN, BK, warps, stages in [(8, 64, 64, 64, 4, 3), (8, 64, 64, 128, 4, 3), (10, 64, 64, 64, 4, 3),
                                         (4, 64, 64, 64, 4, 3), (16, 64, 64, 64, 4, 2), (8, 128, 64, 64, 4, 3),
                                         (5, 64, 64, 128, 4, 4), (8, 32, 64, 64, 2, 3)]:
        if K % (S * BK):
            continue
        part = torch.empty(S, M, N, device="cuda", dtype=torch.float32)
        grid = (triton.cdiv(M, BM), triton.cdiv(N, BN), S)

        def run(part=part, grid=grid, S=S, BM=BM, BN=BN, BK=BK, warps=warps, stages=stages):
            partial_kernel[grid](a, w, part, M, N, K, K // S, BM=BM, BN=BN, BK=BK, num_warps=warps, num_stages=stages)
            return part

        got = run().sum(0)
        key = f"S{S}_BM{BM}_BN{BN}_BK{BK}_w{warps}_s{stages}"
        rows[key] = {"partials_ms": bench(run), "partials_plus_sum_ms": bench(lambda run=run: run().sum(0)),
                     "rel_err": float((got - ref).norm() / ref.norm())}
    RESULT["xproj"] = rows
    save()


def small_ops():
    """The conv's block shape at Cobra's (1, 5120, 793) channel-last input, and dt_proj (793 x 160 -> 5120) as
    cuBLAS runs it against a one-pass Triton GEMM (K = 160 fits one tile)."""
    import triton
    import triton.language as tl

    from effprof.ops.causal_conv1d_triton import causal_conv1d_triton
    L, d = 793, 5120
    xz = torch.randn(1, L, 2 * d, device="cuda", dtype=torch.bfloat16)
    x = xz.transpose(1, 2)[:, :d]
    w, b = torch.randn(d, 4, device="cuda", dtype=torch.bfloat16), torch.randn(d, device="cuda", dtype=torch.bfloat16)
    ref = causal_conv1d_triton(x, w, b, True)
    rows = {"conv_default_ms": bench(lambda: causal_conv1d_triton(x, w, b, True))}
    for bc, bt in [(128, 32), (256, 16), (64, 64), (256, 32), (128, 64), (512, 8), (32, 128)]:
        got = causal_conv1d_triton(x, w, b, True, block_c=bc, block_t=bt)
        rows[f"conv_c{bc}_t{bt}_ms"] = (bench(lambda bc=bc, bt=bt: causal_conv1d_triton(x, w, b, True, block_c=bc,
                                                                                         block_t=bt)),
                                        bool(torch.equal(got, ref)))

    @triton.jit
    def gemm_kernel(a_ptr, w_ptr, c_ptr, M, N, K: tl.constexpr, sa, BM: tl.constexpr, BN: tl.constexpr,
                    BK: tl.constexpr):
        pm, pn = tl.program_id(0), tl.program_id(1)
        rm = pm * BM + tl.arange(0, BM)
        rn = pn * BN + tl.arange(0, BN)
        rk = tl.arange(0, BK)
        a = tl.load(a_ptr + rm[:, None] * sa + rk[None, :], mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
        wt = tl.load(w_ptr + rn[None, :] * K + rk[:, None], mask=(rn[None, :] < N) & (rk[:, None] < K), other=0.0)
        acc = tl.dot(a, wt)
        tl.store(c_ptr + rm[:, None] * N + rn[None, :], acc.to(tl.bfloat16), mask=(rm[:, None] < M) & (rn[None, :] < N))

    x_dbl = torch.randn(L, 192, device="cuda", dtype=torch.bfloat16)
    dt = x_dbl[:, :160]
    wdt = torch.randn(d, 160, device="cuda", dtype=torch.bfloat16) / 160**0.5
    rows["dt_proj_linear_ms"] = bench(lambda: F.linear(dt, wdt))
    refd = F.linear(dt, wdt).float()
    out = torch.empty(L, d, device="cuda", dtype=torch.bfloat16)
    for BM, BN, warps in [(64, 128, 4), (128, 128, 8), (64, 256, 8), (128, 64, 4), (32, 128, 4)]:
        grid = (triton.cdiv(L, BM), triton.cdiv(d, BN))

        def run(grid=grid, BM=BM, BN=BN, warps=warps):
            gemm_kernel[grid](dt, wdt, out, L, d, 160, dt.stride(0), BM=BM, BN=BN, BK=256, num_warps=warps)
            return out
        err = float((run().float() - refd).norm() / refd.norm())
        rows[f"dt_proj_triton_{BM}x{BN}_w{warps}"] = (bench(run), err)
    RESULT["small_ops"] = rows
    save()


def lm(m):
    L = 793
    emb = torch.randn(1, L, 2560, device="cuda", dtype=torch.bfloat16)
    cache = m.lm.allocate_cache(1)
    with torch.no_grad():
        rows = {"backbone_no_cache_ms": bench(lambda: m.lm.backbone(emb)),
                "backbone_cache_ms": bench(lambda: m.lm.backbone(emb, cache)),
                "lm_head_last_ms": bench(lambda: m.lm.lm_head(emb[:, -1:]))}
        rows["kernels_no_cache"] = top_kernels(lambda: m.lm.backbone(emb), 12)
        rows["kernels_cache"] = top_kernels(lambda: m.lm.backbone(emb, cache), 12)
    RESULT["lm"] = rows
    save()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--only", default="towers,xproj,small,lm")
    only = p.parse_args().only.split(",")
    props = torch.cuda.get_device_properties(0)
    RESULT["device"] = {"name": props.name, "sms": props.multi_processor_count, "torch": torch.__version__}
    if "xproj" in only:
        xproj()
    if "small" in only:
        small_ops()
    if "towers" in only or "lm" in only:
        m = model()
        if "towers" in only:
            towers(m)
        if "lm" in only:
            lm(m)
    print(json.dumps(RESULT, indent=1, default=str))


if __name__ == "__main__":
    main()
