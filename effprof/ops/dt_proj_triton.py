"""Triton kernel of `effprof.ops.dt_proj`: Mamba's dt projection and the scan's B/C layout in one pass.

Imported lazily (this module imports triton). One program per (block of BLOCK_M rows, block of BLOCK_D output
channels): it loads its rows' dt_low in BLOCK_K-wide slices (dt_rank is a multiple of 16 for every released
Mamba size, 48-160: one to ten slices, no K split) with the matching slices of W_dt, accumulates in float32
on the tensor cores, and stores delta rounded to x_dbl's dtype, as cuBLAS's bf16 GEMM does (one rounding of
a float32 sum; the order of the sum may differ). The programs of column block 0 also copy their rows' last 2N
columns of x_dbl into bc (batch, 2N, L), time-contiguous. Rows are batch·L: row m is (m // L, m % L).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

CONFIG = (64, 128, 32, 4)  # BLOCK_M, BLOCK_D, BLOCK_K, num_warps


@triton.jit
def _dt_proj_bc_kernel(x_ptr, w_ptr, delta_ptr, bc_ptr, M, L, D, stride_xm,
                       R: tl.constexpr, N2: tl.constexpr, N2_PAD: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_m, mask_d = rows < M, cols < D
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_xm
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for k0 in tl.static_range(0, R, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(x_rows + k[None, :], mask=mask_m[:, None] & (k < R)[None, :], other=0.0)
        w = tl.load(w_ptr + cols[None, :] * R + k[:, None], mask=mask_d[None, :] & (k < R)[:, None], other=0.0)
        acc = tl.dot(a, w, acc)
    tl.store(delta_ptr + rows.to(tl.int64)[:, None] * D + cols[None, :], acc.to(delta_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_d[None, :])
    if tl.program_id(1) == 0:
        j = tl.arange(0, N2_PAD)
        mask = mask_m[:, None] & (j < N2)[None, :]
        v = tl.load(x_rows + R + j[None, :], mask=mask, other=0.0)
        b, t = rows // L, rows % L
        tl.store(bc_ptr + (b.to(tl.int64) * N2 * L + t)[:, None] + j[None, :] * L, v, mask=mask)


def dt_proj_bc_triton(x_dbl: torch.Tensor, weight: torch.Tensor, dt_rank: int,
                      config: tuple[int, int, int, int] = CONFIG) -> tuple[torch.Tensor, torch.Tensor]:
    """x_dbl (batch, L, dt_rank + 2N) with contiguous rows, weight (d_inner, dt_rank) contiguous, both bf16 or
    fp16 -> delta (batch, L, d_inner) contiguous in x_dbl's dtype, bc (batch, 2N, L) contiguous. `config`:
    (BLOCK_M, BLOCK_D, BLOCK_K, num_warps)."""
    block_m, block_d, block_k, num_warps = config
    batch, L, width = x_dbl.shape
    d_inner = weight.shape[0]
    n2 = width - dt_rank
    delta = torch.empty(batch, L, d_inner, device=x_dbl.device, dtype=x_dbl.dtype)
    bc = torch.empty(batch, n2, L, device=x_dbl.device, dtype=x_dbl.dtype)
    rows = batch * L
    if rows == 0:
        return delta, bc
    grid = (triton.cdiv(rows, block_m), triton.cdiv(d_inner, block_d))
    _dt_proj_bc_kernel[grid](x_dbl, weight, delta, bc, rows, L, d_inner, x_dbl.stride(1),
                             R=dt_rank, N2=n2, N2_PAD=triton.next_power_of_2(n2),
                             BLOCK_M=block_m, BLOCK_D=block_d, BLOCK_K=block_k, num_warps=num_warps)
    return delta, bc
