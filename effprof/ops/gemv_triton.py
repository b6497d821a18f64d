"""Triton kernel of `effprof.ops.gemv` (see there for the arithmetic it reproduces and its reference).

One program computes BLOCK_N outputs of every row (rows = the decode batch, at most MAX_ROWS): it streams
its BLOCK_N weight rows once in BLOCK_K chunks, multiplying each chunk with all rows of x, so each weight
byte is read once whatever the batch. With NORM the program first reduces the sum of squares of its x rows
(x is a few KiB; every program re-reads it from L2) and normalises each chunk as it loads it; with SILU_MUL
the weight is [gate; up] (2F rows) and the program accumulates rows n and F + n together and writes
silu(gate) * up; with residual, residual + y. Rounding to the output dtype happens where the reference's
separate ops round (after the matrix product, after the norm, after silu), so bf16 results agree with the
reference to about one bf16 rounding.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


# K is a constexpr: the interpreter (numpy 2.4) cannot loop to a runtime bound, and on the GPU the few widths
# of a model (4096, 11008) each get their own compiled kernel anyway (the autotuner keys on K)
@triton.jit
def _gemv_kernel(x_ptr, w_ptr, b_ptr, res_ptr, nw_ptr, out_ptr, rows, N, K: tl.constexpr, x_stride, res_stride,
                 out_stride, eps, ROWS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, NORM: tl.constexpr,
                 SILU_MUL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    dtype = out_ptr.dtype.element_ty
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    r = tl.arange(0, ROWS)
    n_ok, r_ok = n < N, r < rows
    if NORM:
        squares = tl.zeros((ROWS,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            xv = tl.load(x_ptr + r[:, None] * x_stride + k[None, :], mask=r_ok[:, None] & (k < K)[None, :],
                         other=0.0).to(tl.float32)
            squares += tl.sum(xv * xv, axis=1)
        rstd = 1.0 / tl.sqrt(squares / K + eps)
    acc = tl.zeros((ROWS, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((ROWS, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        xv = tl.load(x_ptr + r[:, None] * x_stride + k[None, :], mask=r_ok[:, None] & k_ok[None, :], other=0.0)
        xv = xv.to(tl.float32)
        if NORM:  # LlamaRMSNorm: normalise in fp32, round, scale by the weight, round
            nw = tl.load(nw_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
            xv = (xv * rstd[:, None]).to(dtype).to(tl.float32)
            xv = (xv * nw[None, :]).to(dtype).to(tl.float32)
        w = tl.load(w_ptr + n[:, None] * K + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        acc += tl.sum(xv[:, None, :] * w.to(tl.float32)[None, :, :], axis=2)
        if SILU_MUL:
            w_up = tl.load(w_ptr + (n + N)[:, None] * K + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
            acc_up += tl.sum(xv[:, None, :] * w_up.to(tl.float32)[None, :, :], axis=2)
    if HAS_BIAS:
        acc += tl.load(b_ptr + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        if SILU_MUL:
            acc_up += tl.load(b_ptr + N + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    y = acc.to(dtype).to(tl.float32)
    if SILU_MUL:
        y = (y / (1.0 + tl.exp(-y))).to(dtype).to(tl.float32)
        y = (y * acc_up.to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
    if HAS_RES:
        y += tl.load(res_ptr + r[:, None] * res_stride + n[None, :], mask=r_ok[:, None] & n_ok[None, :],
                     other=0.0).to(tl.float32)
    tl.store(out_ptr + r[:, None] * out_stride + n[None, :], y.to(dtype), mask=r_ok[:, None] & n_ok[None, :])


# Configurations tried per (N, K, rows, flags) on the GPU, the first time a shape runs (outside any CUDA graph
# capture: the runner warms a step up before capturing it); small tiles keep several programs per SM in flight.
_CONFIGS = [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
            for bn, bk, w, s in [(8, 512, 4, 3), (16, 512, 4, 3), (16, 256, 4, 4), (32, 256, 4, 3), (8, 1024, 4, 2),
                                 (4, 1024, 4, 3)]]
_gemv_tuned = triton.autotune(_CONFIGS, key=["N", "K", "ROWS", "NORM", "SILU_MUL", "HAS_RES"])(_gemv_kernel)


def gemv_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None,
                norm_weight: torch.Tensor | None, eps: float, silu_mul: bool) -> torch.Tensor:
    """x (rows, K) with rows <= effprof.ops.gemv.MAX_ROWS, weight (N, K) contiguous (N = 2F with silu_mul); out (rows, N or F)."""
    rows, K = x.shape
    n_out = weight.shape[0] // 2 if silu_mul else weight.shape[0]
    out = torch.empty((rows, n_out), device=x.device, dtype=x.dtype)
    x = x if x.stride(-1) == 1 else x.contiguous()
    residual = None if residual is None else (residual if residual.stride(-1) == 1 else residual.contiguous())
    args = (x, weight, bias if bias is not None else x, residual if residual is not None else x,
            norm_weight if norm_weight is not None else x, out, rows, n_out, K, x.stride(0),
            residual.stride(0) if residual is not None else 0, out.stride(0), eps)
    flags = dict(ROWS=max(1, triton.next_power_of_2(rows)), HAS_BIAS=bias is not None, HAS_RES=residual is not None,
                 NORM=norm_weight is not None, SILU_MUL=silu_mul)
    if x.device.type == "cuda":
        _gemv_tuned[lambda meta: (triton.cdiv(n_out, meta["BLOCK_N"]),)](*args, **flags)
    else:  # the interpreter (TRITON_INTERPRET=1, tests): one small fixed tiling, odd sizes exercise the masks
        _gemv_kernel[(triton.cdiv(n_out, 16),)](*args, **flags, BLOCK_N=16, BLOCK_K=32)
    return out
