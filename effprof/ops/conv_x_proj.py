"""Mamba's causal conv (+ SiLU) and x_proj as one pass over the conv's output on the GPU.

In a Mamba block's prefill, x_proj multiplies the conv's output by W_x (n_out = dt_rank + 2N rows, 192 for
Mamba-2.8B) right after the conv wrote it: op by op, the conv writes y and x_proj reads it back (8 MB each way at
Cobra's 793 steps and 5120 channels), and cuBLAS runs that thin GEMM as a split-K kernel plus a reduction. On an
H200 the conv took 8.8 µs and x_proj 10.4 µs a layer, against ~4 µs for the bytes of both.
`conv_x_proj_triton` (`effprof.ops.conv_x_proj_triton`) multiplies each conv tile by W_x while it is in
registers (split over channels, partial sums in float32) and sums the splits in a second small kernel.

`conv_x_proj_ref` is the definition (`causal_conv1d` then F.linear, the block's two ops). Backend "triton" runs
the kernels through the custom op `effprof::conv_x_proj`, whose FLOP formula is the sum of what FlopCounterMode
counts for the two ops (the conv's 2·batch·channels·width·L and the GEMM's 2·batch·L·channels·n_out), so FLOP
columns do not depend on the path.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from effprof.ops.causal_conv1d import _check, causal_conv1d, causal_conv1d_flops
from effprof.ops.layout import gemm_rows, is_channel_last
from effprof.ops.selective_scan import triton_interpret_mode

# The kernels take at most this many rows (batch·L): measured against the two ops on an H200 and an H100 (see
# `benchmarks/diagnostics/diag_cobra_ttft.py --only convxproj`); above it the two ops run.
MAX_ROWS = 4096


def conv_x_proj_ref(x: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor], silu: bool, x_proj_weight: Tensor,
                    conv_backend: str = "ref", state_out: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """The definition: y = causal_conv1d(x) as (batch, L, channels) rows (`gemm_rows`), x_dbl = y @ W_xᵀ
    (batch, L, n_out)."""
    y = causal_conv1d(x, conv_weight, conv_bias, "silu" if silu else None, conv_backend, state_out=state_out)
    y_rows = gemm_rows(y.transpose(1, 2))
    return y_rows, F.linear(y_rows, x_proj_weight)


@torch.library.custom_op("effprof::conv_x_proj", mutates_args=())
def _conv_x_proj_op(x: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor], silu: bool,
                    x_proj_weight: Tensor) -> tuple[Tensor, Tensor]:
    from effprof.ops.conv_x_proj_triton import conv_x_proj_triton

    return conv_x_proj_triton(x, conv_weight, conv_bias, silu, x_proj_weight)


@torch.library.custom_op("effprof::conv_x_proj_to_state", mutates_args=("state_out",))
def _conv_x_proj_to_state_op(x: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor], silu: bool,
                             x_proj_weight: Tensor, state_out: Tensor) -> tuple[Tensor, Tensor]:
    """`effprof::conv_x_proj` that also leaves the conv state (the last `width` inputs) in `state_out`."""
    from effprof.ops.conv_x_proj_triton import conv_x_proj_triton

    return conv_x_proj_triton(x, conv_weight, conv_bias, silu, x_proj_weight, state_out=state_out)


def _fake(x, conv_weight, conv_bias, silu, x_proj_weight, state_out=None):
    batch, channels, L = x.shape   # y channel-last, as the kernel makes it
    return x.new_empty((batch, L, channels)).transpose(1, 2), x.new_empty((batch, L, x_proj_weight.shape[0]))


_conv_x_proj_op.register_fake(_fake)
_conv_x_proj_to_state_op.register_fake(_fake)


def _conv_x_proj_flop(x_shape, conv_weight_shape, bias_shape, silu, x_proj_weight_shape, *args, out_shape=None,
                      **kwargs) -> int:
    batch, channels, L = x_shape
    return (causal_conv1d_flops(batch, channels, conv_weight_shape[-1], L)
            + 2 * batch * L * channels * x_proj_weight_shape[0])


for _op in (torch.ops.effprof.conv_x_proj, torch.ops.effprof.conv_x_proj_to_state):
    register_flop_formula(_op)(_conv_x_proj_flop)


def conv_x_proj_fits(x: Tensor, x_proj_weight: Tensor) -> bool:
    """Whether the triton kernels take these operands: CUDA (or the interpreter, in tests), bf16/fp16, x
    channel-last (`is_channel_last`), a contiguous W_x of x's dtype, batch·L ≤ MAX_ROWS; else `conv_x_proj` runs
    the two ops."""
    return ((x.is_cuda or triton_interpret_mode()) and x.dtype in (torch.bfloat16, torch.float16)
            and is_channel_last(x)
            and x_proj_weight.dtype == x.dtype and x_proj_weight.is_contiguous()
            and x.shape[0] * x.shape[2] <= MAX_ROWS)


def conv_x_proj(x: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor], activation: Optional[str],
                x_proj_weight: Tensor, conv_backend: str = "ref", state_out: Optional[Tensor] = None,
                fused: bool = False) -> tuple[Tensor, Tensor]:
    """The conv's output y = causal_conv1d(x, conv_weight, conv_bias, activation) as (batch, L, channels) rows
    (contiguous rows, aligned for a GEMM: `gemm_rows`) and x_dbl = y @ x_proj_weightᵀ (batch, L, n_out).
    fused: the one-pass triton kernels where `conv_x_proj_fits` (else, and by default, the conv through
    `conv_backend` and F.linear). `state_out` (batch, channels, width):
    also receives the conv state after x, as `causal_conv1d`'s."""
    if x_proj_weight.dim() != 2 or x_proj_weight.shape[1] != x.shape[1]:
        raise ValueError(f"conv_x_proj: x_proj_weight must be (n_out, channels={x.shape[1]}), "
                         f"got {tuple(x_proj_weight.shape)}")
    if not (fused and conv_x_proj_fits(x, x_proj_weight)):
        return conv_x_proj_ref(x, conv_weight, conv_bias, activation == "silu", x_proj_weight, conv_backend,
                               state_out)
    _check(conv_weight, x.shape[1], conv_bias, activation)
    if state_out is None:
        y, x_dbl = torch.ops.effprof.conv_x_proj(x, conv_weight, conv_bias, activation == "silu", x_proj_weight)
    elif tuple(state_out.shape) != (x.shape[0], x.shape[1], conv_weight.shape[-1]):
        raise ValueError(f"conv_x_proj: state_out must be {(x.shape[0], x.shape[1], conv_weight.shape[-1])}, "
                         f"got {tuple(state_out.shape)}")
    else:
        y, x_dbl = torch.ops.effprof.conv_x_proj_to_state(x, conv_weight, conv_bias, activation == "silu",
                                                          x_proj_weight, state_out)
    return y.transpose(1, 2), x_dbl                                     # channel-last y: its rows are contiguous
