"""Memory layouts of the Mamba blocks' activations, and the GEMM operands cuBLAS runs fast.

cuBLAS picks its tensor-core kernels by the alignment of each operand: a bf16 matrix whose leading
dimension is a multiple of 8 elements and whose data starts on a 16-byte boundary gets 16-byte vector
loads; otherwise it falls back to alignment-1 or -2 kernels (`cutlass_75_tensorop_bf16_s1688gemm_..._align1`
on an H100), several times slower. A Mamba block computed channels-first (mamba-ssm's `W @ xᵀ`) feeds its
projections operands whose leading dimension is batch·L, so any L that is not a multiple of 8 (Cobra's 793
tokens) hits those kernels. effprof's blocks keep their activations channel-last instead: every projection
multiplies (batch·L, channels) row-major operands, and the conv and the scan read and write the
(batch, channels, L) views of those buffers (`is_channel_last`).
"""
from __future__ import annotations

import torch
from torch import Tensor


def is_channel_last(x: Tensor) -> bool:
    """True when a (batch, channels, L) tensor is laid out as (batch, L, channels) row-major (channels
    contiguous; more than one channel and one step): what `.transpose(1, 2)` of a (batch, L, channels)
    tensor, or of a slice of its channels, gives."""
    return x.dim() == 3 and x.shape[1] > 1 and x.shape[2] > 1 and x.stride(1) == 1


def empty_in_layout(like: Tensor, dtype=None) -> Tensor:
    """An empty (batch, channels, L) tensor in `like`'s layout: channel-last if `like` is, else contiguous."""
    batch, channels, length = like.shape
    dtype = dtype or like.dtype
    if is_channel_last(like):
        return torch.empty(batch, length, channels, device=like.device, dtype=dtype).transpose(1, 2)
    return torch.empty(batch, channels, length, device=like.device, dtype=dtype)


def in_layout_of(y: Tensor, like: Tensor) -> Tensor:
    """y (batch, channels, L) in `like`'s layout: y itself when it already is, else a copy."""
    if is_channel_last(like):
        return y if is_channel_last(y) else empty_in_layout(like, y.dtype).copy_(y)
    return y.contiguous()


def gemm_rows(x: Tensor) -> Tensor:
    """x (..., features) as a GEMM operand with aligned rows: x itself when its rows are contiguous, the
    leading dimensions fold into one (so `F.linear` makes no copy of its own), the row stride is a multiple
    of 8 elements and the data 16-byte aligned; else a contiguous copy. Where the width itself is not a
    multiple of 8 (a leading dimension that is the model's own, e.g. MambaVision's dt_rank of 20) a copy
    could not align the rows, so x is kept when only its row stride is off."""
    foldable = all(x.stride(i) == x.stride(i + 1) * x.shape[i + 1] for i in range(x.dim() - 2))
    rows_aligned = x.dim() < 2 or x.stride(-2) % 8 == 0 or x.shape[-1] % 8 != 0
    if x.stride(-1) == 1 and foldable and rows_aligned and x.data_ptr() % 16 == 0:
        return x
    return x.contiguous()


def time_contiguous_pair(B: Tensor, C: Tensor) -> tuple[Tensor, Tensor] | None:
    """B and C (batch, L, N) that are adjacent column blocks of one tensor (C's columns right after B's, same
    strides; x_proj's (dt, B, C) split) as (batch, N, L) time-contiguous tensors made by ONE copy of the pair;
    None where they are not such a pair."""
    adjacent = (B.dim() == 3 and B.shape == C.shape and B.stride() == C.stride() and B.stride(-1) == 1
                and B.dtype == C.dtype and B.untyped_storage().data_ptr() == C.untyped_storage().data_ptr()
                and C.storage_offset() == B.storage_offset() + B.shape[-1])
    if not adjacent:
        return None
    n = B.shape[-1]
    both = B.as_strided((B.shape[0], B.shape[1], 2 * n), B.stride()).transpose(1, 2).contiguous()   # (batch, 2N, L)
    return both[:, :n], both[:, n:]
