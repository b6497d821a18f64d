"""Mamba's dt projection and the scan's B/C layout, one kernel on the GPU.

A Mamba block's x_proj gives x_dbl = (dt_low, B, C) per step, (batch, L, R + 2N) row-major. The scan then needs

    delta = dt_low @ W_dtᵀ                    (batch, L, d_inner) rows (dt_proj without its bias: the scan adds it)
    bc    = x_dbl's last 2N columns           (batch, 2N, L), time-contiguous (the scan's B = bc[:, :N], C = bc[:, N:])

which the block computes op by op as one cuBLAS GEMM and one copy (`dt_proj_bc_ref`, the definition). At
batch 1 both are small and memory-bound (Mamba-2.8B at Cobra's 793 steps: 8 MB written by delta, 50 kB of
B/C), and each costs more than its bytes: cuBLAS's GEMM with K = dt_rank = 160 took 7.4 µs on an H200 and the
copy 2.4 µs, against ~2 µs for the bytes. `dt_proj_bc_triton` (`effprof.ops.dt_proj_triton`) does both in one
pass: every program multiplies its rows' dt_low (K fits one tile) by a block of W_dt's rows, and the programs
of the first column block also store their rows' B/C transposed. Backend "triton" runs it through the custom
op `effprof::dt_proj_bc`, whose FLOP formula is what FlopCounterMode counts for the reference's F.linear
(2 × rows × R × d_inner; the copy is 0), so FLOP columns do not depend on the path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from effprof.ops.selective_scan import triton_interpret_mode

# The kernel takes at most this many rows (batch·L): measured against cuBLAS on an H200 and an H100 (see
# `benchmarks/diagnostics/diag_cobra_ttft.py --only dtproj`); above it the reference's GEMM runs.
MAX_ROWS = 4096


def dt_proj_bc_ref(x_dbl: Tensor, weight: Tensor, dt_rank: int) -> tuple[Tensor, Tensor]:
    """The definition. x_dbl (batch, L, dt_rank + 2N), weight (d_inner, dt_rank) -> delta (batch, L, d_inner)
    in x_dbl's dtype, bc (batch, 2N, L) contiguous."""
    delta = F.linear(x_dbl[..., :dt_rank], weight)
    return delta, x_dbl[..., dt_rank:].transpose(1, 2).contiguous()


@torch.library.custom_op("effprof::dt_proj_bc", mutates_args=())
def _dt_proj_bc_op(x_dbl: Tensor, weight: Tensor, dt_rank: int) -> tuple[Tensor, Tensor]:
    from effprof.ops.dt_proj_triton import dt_proj_bc_triton

    return dt_proj_bc_triton(x_dbl, weight, dt_rank)


@_dt_proj_bc_op.register_fake
def _(x_dbl, weight, dt_rank):
    batch, L, width = x_dbl.shape
    return x_dbl.new_empty((batch, L, weight.shape[0])), x_dbl.new_empty((batch, width - dt_rank, L))


@register_flop_formula(torch.ops.effprof.dt_proj_bc)
def _dt_proj_bc_flop(x_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    batch, L, _ = x_shape
    d_inner, dt_rank = weight_shape
    return 2 * batch * L * dt_rank * d_inner  # F.linear's count; the B/C copy is no arithmetic


def dt_proj_fits(x_dbl: Tensor, weight: Tensor) -> bool:
    """Whether the triton kernel takes these operands: a CUDA (or, in tests, interpreted) bf16/fp16 x_dbl with
    contiguous rows (batch·L ≤ MAX_ROWS) and a contiguous weight of the same dtype; else `dt_proj_bc` runs the
    reference."""
    return ((x_dbl.is_cuda or triton_interpret_mode()) and x_dbl.dim() == 3
            and x_dbl.dtype in (torch.bfloat16, torch.float16)
            and weight.dtype == x_dbl.dtype and weight.is_contiguous() and x_dbl.stride(-1) == 1
            and x_dbl.stride(0) == x_dbl.shape[1] * x_dbl.stride(1)
            and x_dbl.shape[0] * x_dbl.shape[1] <= MAX_ROWS)


def dt_proj_bc(x_dbl: Tensor, weight: Tensor, dt_rank: int, backend: str = "ref") -> tuple[Tensor, Tensor, Tensor]:
    """delta (batch, L, d_inner) and the scan's B, C (batch, N, L) (views of one time-contiguous (batch, 2N, L)
    tensor) from x_dbl (batch, L, dt_rank + 2N) and dt_proj's weight (d_inner, dt_rank). backend "triton" runs
    the one-kernel path where `dt_proj_fits`, else the reference."""
    if x_dbl.dim() != 3 or weight.dim() != 2 or weight.shape[1] != dt_rank or x_dbl.shape[-1] <= dt_rank \
            or (x_dbl.shape[-1] - dt_rank) % 2:
        raise ValueError(f"dt_proj_bc: x_dbl must be (batch, L, dt_rank + 2N) and weight (d_inner, dt_rank="
                         f"{dt_rank}); got {tuple(x_dbl.shape)} and {tuple(weight.shape)}")
    if backend == "triton" and dt_proj_fits(x_dbl, weight):
        delta, bc = torch.ops.effprof.dt_proj_bc(x_dbl, weight, dt_rank)
    else:
        delta, bc = dt_proj_bc_ref(x_dbl, weight, dt_rank)
    n = bc.shape[1] // 2
    return delta, bc[:, :n], bc[:, n:]
