"""Triton kernels of `effprof.ops.conv_x_proj`: Mamba's causal conv (+ SiLU) and x_proj in one pass over x.

Imported lazily (this module imports triton). Channel-last x only ((batch, channels, L) views of a
(batch, L, ·) buffer, what the Mamba block passes): a step's channels are contiguous.

`_conv_x_proj_kernel`: one program per (batch and block of BLOCK_T steps, split s of the channels). It walks
its channels in BLOCK_C-wide chunks: the conv tile y[BLOCK_T, BLOCK_C] (float32, bias, the WIDTH taps,
SiLU), stored rounded to x's dtype, and that rounded tile times the chunk's columns of W_x, accumulated in
float32 on the tensor cores: partials[s, rows, :] = Σ_{c in split s} y[rows, c] W_x[:, c]. The programs of the
last time block also store the conv state (the last WIDTH inputs, zeros before t = 0). Splitting the
channels gives about one program per SM (`channels_per_split`; at Cobra's 793 steps on an H100/H200, 13 time
blocks × 10 splits of 512 channels) and keeps each program's share of W_x small (it is read once per time block,
from L2).

`_x_proj_reduce_kernel`: sums the splits' partials in split order (a fixed order: the result does not depend
on scheduling) and stores x_dbl rounded once to x's dtype, as cuBLAS's split-K GEMM does.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from effprof.ops import scan_math_triton  # noqa: F401  (applies its interpreter fix for numpy >= 2.4)
from effprof.ops.causal_conv1d_triton import _silu_f32

# BLOCK_T, BLOCK_C, num_warps, and the channels per split (a multiple of BLOCK_C; None: `channels_per_split`)
CONFIG = (64, 64, 4, None)


def channels_per_split(channels: int, time_blocks: int, block_c: int, sms: int) -> int:
    """Channels per split such that (time blocks × splits) is about one program per SM: the split count is
    sms / time_blocks rounded (at least 1), its channels rounded up to whole BLOCK_C chunks."""
    splits = max(1, round(sms / time_blocks))
    return triton.cdiv(triton.cdiv(channels, splits), block_c) * block_c


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 132   # the interpreter (tests): an H100's count, so that tiny shapes still split
    return torch.cuda.get_device_properties(device).multi_processor_count


@triton.jit
def _conv_x_proj_kernel(x_ptr, cw_ptr, cb_ptr, xw_ptr, y_ptr, part_ptr, state_ptr, C, L, NT, NOUT,
                        stride_xb, stride_xt, stride_cwc, stride_cwk, stride_yb, stride_yt,
                        stride_sb, stride_sc, stride_st,
                        WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, WRITE_STATE: tl.constexpr,
                        CS, NOUT_PAD: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    b, tb = pid // NT, pid % NT
    split = tl.program_id(1)
    t = tb * BLOCK_T + tl.arange(0, BLOCK_T)
    n = tl.arange(0, NOUT_PAD)
    x_base = x_ptr + b.to(tl.int64) * stride_xb
    acc_x = tl.zeros([BLOCK_T, NOUT_PAD], dtype=tl.float32)
    for c0 in range(0, CS, BLOCK_C):
        c = split * CS + c0 + tl.arange(0, BLOCK_C)
        mask_c = c < C
        acc = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)
        if HAS_BIAS:
            acc += tl.load(cb_ptr + c, mask=mask_c, other=0.0).to(tl.float32)[None, :]
        for k in tl.static_range(WIDTH):
            w_k = tl.load(cw_ptr + c * stride_cwc + k * stride_cwk, mask=mask_c, other=0.0).to(tl.float32)
            src = t - (WIDTH - 1) + k
            x_k = tl.load(x_base + src[:, None] * stride_xt + c[None, :],
                          mask=((src >= 0) & (src < L))[:, None] & mask_c[None, :], other=0.0).to(tl.float32)
            acc += w_k[None, :] * x_k
        if SILU:
            acc = _silu_f32(acc)
        y = acc.to(y_ptr.dtype.element_ty)
        tl.store(y_ptr + b.to(tl.int64) * stride_yb + t[:, None] * stride_yt + c[None, :], y,
                 mask=(t < L)[:, None] & mask_c[None, :])
        w = tl.load(xw_ptr + n[None, :] * C + c[:, None], mask=mask_c[:, None] & (n < NOUT)[None, :], other=0.0)
        acc_x = tl.dot(y, w, acc_x)
        if WRITE_STATE:
            if tb == NT - 1:
                for k in tl.static_range(WIDTH):
                    src = L - WIDTH + k
                    x_k = tl.load(x_base + src * stride_xt + c, mask=mask_c & (src >= 0), other=0.0)
                    tl.store(state_ptr + b.to(tl.int64) * stride_sb + c * stride_sc + k * stride_st,
                             x_k.to(state_ptr.dtype.element_ty), mask=mask_c)
    rows = b.to(tl.int64) * L + t
    M = tl.num_programs(0) // NT * L
    tl.store(part_ptr + (split * M + rows)[:, None] * NOUT + n[None, :], acc_x,
             mask=(t < L)[:, None] & (n < NOUT)[None, :])


@triton.jit
def _x_proj_reduce_kernel(part_ptr, out_ptr, M, NOUT, S: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = i < M * NOUT
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for s in tl.static_range(S):
        acc += tl.load(part_ptr + s * M * NOUT + i, mask=mask, other=0.0)
    tl.store(out_ptr + i, acc.to(out_ptr.dtype.element_ty), mask=mask)


def conv_x_proj_triton(x, conv_weight, conv_bias, silu, x_proj_weight, state_out=None, config=CONFIG):
    """x (batch, channels, L) channel-last, conv_weight (channels, width), conv_bias (channels,) or None,
    x_proj_weight (n_out, channels) contiguous, in x's dtype (bf16/fp16) -> y (batch, channels, L) channel-last
    (the conv's output, SiLU applied with `silu`) and x_dbl (batch, L, n_out) contiguous. `state_out`
    (batch, channels, width): also receives the conv state. `config`: (BLOCK_T, BLOCK_C, num_warps, channels
    per split)."""
    block_t, block_c, num_warps, per_split = config
    batch, channels, L = x.shape
    width, n_out = conv_weight.shape[-1], x_proj_weight.shape[0]
    y = torch.empty(batch, L, channels, device=x.device, dtype=x.dtype).transpose(1, 2)
    x_dbl = torch.empty(batch, L, n_out, device=x.device, dtype=x.dtype)
    if batch * L == 0:
        if state_out is not None:
            state_out.zero_()
        return y, x_dbl.zero_()
    n_t = triton.cdiv(L, block_t)
    if per_split is None:
        per_split = channels_per_split(channels, batch * n_t, block_c, _sm_count(x.device))
    per_split = min(per_split, triton.cdiv(channels, block_c) * block_c)
    splits = triton.cdiv(channels, per_split)
    partials = torch.empty(splits, batch * L, n_out, device=x.device, dtype=torch.float32)
    state = state_out if state_out is not None else y
    _conv_x_proj_kernel[(batch * n_t, splits)](
        x, conv_weight, conv_bias if conv_bias is not None else conv_weight, x_proj_weight, y, partials, state,
        channels, L, n_t, n_out, x.stride(0), x.stride(2), conv_weight.stride(0), conv_weight.stride(1),
        y.stride(0), y.stride(2), state.stride(0), state.stride(1), state.stride(2),
        WIDTH=width, HAS_BIAS=conv_bias is not None, SILU=bool(silu), WRITE_STATE=state_out is not None,
        CS=per_split, NOUT_PAD=max(16, triton.next_power_of_2(n_out)), BLOCK_T=block_t, BLOCK_C=block_c,
        num_warps=num_warps)
    total = batch * L * n_out
    _x_proj_reduce_kernel[(triton.cdiv(total, 1024),)](partials, x_dbl, batch * L, n_out, S=splits, BLOCK=1024,
                                                       num_warps=4)
    return y, x_dbl
