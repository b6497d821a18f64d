"""Triton kernels of the causal depthwise conv1d (Mamba's short conv): the prefill over a sequence and the
one-step conv-state update of decoding, SiLU fused, float32 accumulation.

Imported lazily by `effprof.ops.causal_conv1d` (this module imports triton). Math and shapes are those of
`causal_conv1d_ref` / `causal_conv1d_update_ref` beside it:
y[b, c, t] = act(bias[c] + sum_k w[c, k] · x[b, c, t - (W - 1) + k]).

Prefill: one program per (batch, block of BLOCK_C channels, block of BLOCK_T steps); the W shifted
[BLOCK_C, BLOCK_T] input tiles overlap, so all but the first come from L1/L2 and the kernel moves x once
and y once (memory-bound: the conv is 2·W FLOPs per 4 bytes in bf16). Any strides: Mamba's x is a view of
in_proj's (2·d_inner, batch·L) output.

Update: one program per (batch, block of channels); the state's W columns are loaded as W separate
[BLOCK_C] vectors (shifted by one on load) and stored back after a CTA barrier.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from effprof.ops import scan_math_triton  # noqa: F401  (applies its interpreter fix for numpy >= 2.4)
from effprof.ops.layout import empty_in_layout, is_channel_last


@triton.jit
def _silu_f32(x):
    return x / (1.0 + tl.exp(-x))


@triton.jit
def _causal_conv1d_fwd_kernel(x_ptr, w_ptr, bias_ptr, y_ptr, state_ptr, C, L,
                              stride_xb, stride_xc, stride_xt, stride_wc, stride_wk, stride_yb, stride_yc, stride_yt,
                              stride_sb, stride_sc, stride_st,
                              WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
                              WRITE_STATE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr):
    """y over one [BLOCK_C, BLOCK_T] tile; with WRITE_STATE the last time block's programs also store the
    conv state a decoding step continues from: the last WIDTH inputs x[t = L - WIDTH .. L - 1], zeros
    before t = 0."""
    pid_b = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    t = tl.program_id(2) * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_c = c < C
    x_rows = x_ptr + pid_b.to(tl.int64) * stride_xb + c[:, None].to(tl.int64) * stride_xc
    if WRITE_STATE:
        if tl.program_id(2) == tl.num_programs(2) - 1:
            state_rows = state_ptr + pid_b.to(tl.int64) * stride_sb + c.to(tl.int64) * stride_sc
            for k in tl.static_range(WIDTH):
                src = L - WIDTH + k
                x_k = tl.load(x_ptr + pid_b.to(tl.int64) * stride_xb + c.to(tl.int64) * stride_xc + src * stride_xt,
                              mask=mask_c & (src >= 0), other=0.0)
                tl.store(state_rows + k * stride_st, x_k.to(state_ptr.dtype.element_ty), mask=mask_c)
    acc = tl.zeros([BLOCK_C, BLOCK_T], dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + c, mask=mask_c, other=0.0).to(tl.float32)[:, None]
    for k in tl.static_range(WIDTH):
        w_k = tl.load(w_ptr + c * stride_wc + k * stride_wk, mask=mask_c, other=0.0).to(tl.float32)
        src = t - (WIDTH - 1) + k
        mask = mask_c[:, None] & ((src >= 0) & (src < L))[None, :]
        x_k = tl.load(x_rows + src[None, :] * stride_xt, mask=mask, other=0.0).to(tl.float32)
        acc += w_k[:, None] * x_k
    if SILU:
        acc = _silu_f32(acc)
    y_offs = pid_b.to(tl.int64) * stride_yb + c[:, None].to(tl.int64) * stride_yc + t[None, :] * stride_yt
    tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=mask_c[:, None] & (t < L)[None, :])


def causal_conv1d_triton(x, weight, bias=None, silu=False, block_c=None, block_t=None, state_out=None):
    """x (batch, channels, L) any strides, weight (channels, width), bias (channels,) or None -> y
    (batch, channels, L) in x's dtype, channel-last when x is (a (batch, L, channels) tensor's memory, as
    the Mamba block passes it), else contiguous. `state_out` (batch, channels, width), any strides: receives
    the last `width` inputs (zeros before the first), the conv state decoding continues from."""
    batch, channels, L = x.shape
    width = weight.shape[-1]
    y = empty_in_layout(x)
    if L == 0 or batch == 0:
        if state_out is not None:
            state_out.zero_()
        return y
    # channel-last: short time blocks and wide channel blocks (a step's channels are the contiguous bytes)
    block_t = block_t or min(32 if is_channel_last(x) else 128, max(16, triton.next_power_of_2(L)))
    block_c = block_c or max(1, min(triton.next_power_of_2(channels), 4096 // block_t))
    grid = (batch, triton.cdiv(channels, block_c), triton.cdiv(L, block_t))
    state = state_out if state_out is not None else y
    _causal_conv1d_fwd_kernel[grid](
        x, weight, bias if bias is not None else weight, y, state, channels, L,
        x.stride(0), x.stride(1), x.stride(2), weight.stride(0), weight.stride(1), y.stride(0), y.stride(1),
        y.stride(2), state.stride(0), state.stride(1), state.stride(2), WIDTH=width, HAS_BIAS=bias is not None,
        SILU=bool(silu), WRITE_STATE=state_out is not None, BLOCK_C=block_c, BLOCK_T=block_t, num_warps=4)
    return y


@triton.jit
def conv_state_step(x_new, state_rows, w_ptr, bias_ptr, c, mask_c, stride_st, stride_wc, stride_wk,
                    WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, WRITE_STATE: tl.constexpr):
    """Shift the conv state of channels `c` (pointers `state_rows`, [BLOCK_C]) left by one, append x_new
    (float32 [BLOCK_C]) and return act(bias + <state, w>) in float32. All columns are read before any is
    written, with a CTA barrier between (a layout may replicate a channel across threads, and a replica
    must not read a column another one already shifted). WRITE_STATE false: the state is only read (for a
    kernel that leaves the shift to a later one). Shared with the fused decode step."""
    acc = tl.zeros_like(x_new)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + c, mask=mask_c, other=0.0).to(tl.float32)
    cols = ()
    for k in tl.static_range(WIDTH):
        if k + 1 < WIDTH:
            s_k = tl.load(state_rows + (k + 1) * stride_st, mask=mask_c, other=0.0)
        else:
            s_k = x_new.to(state_rows.dtype.element_ty)
        cols = cols + (s_k,)
        acc += tl.load(w_ptr + c * stride_wc + k * stride_wk, mask=mask_c, other=0.0).to(tl.float32) * \
            s_k.to(tl.float32)
    if WRITE_STATE:
        tl.debug_barrier()
        for k in tl.static_range(WIDTH):
            tl.store(state_rows + k * stride_st, cols[k], mask=mask_c)
    if SILU:
        acc = _silu_f32(acc)
    return acc


@triton.jit
def conv_state_read(state_rows, w_ptr, bias_ptr, c, mask_c, stride_st, stride_wc, stride_wk, WIDTH: tl.constexpr,
                    HAS_BIAS: tl.constexpr):
    """`conv_state_step` in two halves, for a kernel that reads the state before the new input exists (the
    fused decode step, mamba_decode_layer_triton.py). This half returns what the step needs besides the new
    input: the state's columns 1 .. WIDTH-1 (they shift left), bias + their taps' products (summed in
    `conv_state_step`'s order), the last tap's weight."""
    acc = tl.zeros(c.shape, dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + c, mask=mask_c, other=0.0).to(tl.float32)
    cols = ()
    for k in tl.static_range(WIDTH - 1):
        s_k = tl.load(state_rows + (k + 1) * stride_st, mask=mask_c, other=0.0)
        cols = cols + (s_k,)
        acc += tl.load(w_ptr + c * stride_wc + k * stride_wk, mask=mask_c, other=0.0).to(tl.float32) * \
            s_k.to(tl.float32)
    w_last = tl.load(w_ptr + c * stride_wc + (WIDTH - 1) * stride_wk, mask=mask_c, other=0.0).to(tl.float32)
    return cols, acc, w_last


@triton.jit
def conv_state_finish(x_new, cols, acc, w_last, state_rows, mask_c, stride_st, WIDTH: tl.constexpr):
    """silu(acc + w_last · x_new) with x_new in the state's dtype, and the state shifted (all threads have read
    their columns before any writes: the barrier, as in `conv_state_step`)."""
    x_s = x_new.to(state_rows.dtype.element_ty)
    acc += w_last * x_s.to(tl.float32)
    tl.debug_barrier()
    for k in tl.static_range(WIDTH - 1):
        tl.store(state_rows + k * stride_st, cols[k], mask=mask_c)
    tl.store(state_rows + (WIDTH - 1) * stride_st, x_s, mask=mask_c)
    return _silu_f32(acc)


@triton.jit
def _causal_conv1d_update_kernel(x_ptr, state_ptr, w_ptr, bias_ptr, y_ptr, C,
                                 stride_xb, stride_xc, stride_sb, stride_sc, stride_st, stride_wc, stride_wk,
                                 stride_yb, stride_yc,
                                 WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
                                 BLOCK_C: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = c < C
    x_new = tl.load(x_ptr + pid_b * stride_xb + c * stride_xc, mask=mask_c, other=0.0).to(tl.float32)
    state_rows = state_ptr + pid_b * stride_sb + c.to(tl.int64) * stride_sc
    y = conv_state_step(x_new, state_rows, w_ptr, bias_ptr, c, mask_c, stride_st, stride_wc, stride_wk,
                        WIDTH, HAS_BIAS, SILU, True)
    tl.store(y_ptr + pid_b * stride_yb + c * stride_yc, y.to(y_ptr.dtype.element_ty), mask=mask_c)


def causal_conv1d_update_triton(x, conv_state, weight, bias=None, silu=False):
    """x (batch, channels) any strides; conv_state (batch, channels, width) shifted in place; returns
    (batch, channels) contiguous in conv_state's dtype (as the reference)."""
    batch, channels = x.shape
    width = weight.shape[-1]
    y = torch.empty(batch, channels, device=x.device, dtype=conv_state.dtype)
    if batch == 0:
        return y
    block_c = min(256, triton.next_power_of_2(channels))
    grid = (batch, triton.cdiv(channels, block_c))
    _causal_conv1d_update_kernel[grid](
        x, conv_state, weight, bias if bias is not None else weight, y, channels,
        x.stride(0), x.stride(1), conv_state.stride(0), conv_state.stride(1), conv_state.stride(2),
        weight.stride(0), weight.stride(1), y.stride(0), y.stride(1),
        WIDTH=width, HAS_BIAS=bias is not None, SILU=bool(silu), BLOCK_C=block_c, num_warps=4)
    return y
