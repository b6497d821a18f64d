"""Triton kernels of a whole Mamba LM decoding step at small batch: two or three kernels per layer.

Imported lazily by `effprof.ops.mamba_decode` (this module imports triton). The math is the step-by-step
reference (`mamba_decode_step_ref` between `add_rms_norm_ref` and in_proj / out_proj), with the reference's
roundings to the model dtype kept (in_proj's output, the conv output, x_proj's, dt_proj's and out_proj's
outputs). A step is:

0. `_prologue_kernel`, grid (batch,): the embedding row, residual = that row (float32), the first layer's
   RMSNorm into `normed`, and zeroes the accumulators below.
Per layer:
1. `_layer_in_kernel`, grid (2·d_inner / BLOCK_N,): in_proj as a GEMV of `normed` (each program BLOCK_N
   rows); programs holding x rows then shift the conv state, apply conv + SiLU, write the conv output and
   atomically add their channels' share of x_proj (dt_low, B, C) into `xacc` (batch, O) float32; programs
   holding z rows write z. x and z go to `xz` (batch, 2·d_inner) in the model dtype.
2. `_layer_ssm_kernel`, grid (batch, d_inner / BLOCK_D): dt = softplus(dt_proj · dt_low + bias), the state
   update, y = <C, h> + D x, y · silu(z); then either out_proj split over its channels with float32 atomics
   into `acc` (batch, d_model) (FUSE_OUT), or y written over x in `xz` for
3. `_layer_out_kernel`, grid (d_model / BLOCK_M,): out_proj as a GEMV of y into `acc`.
The last kernel of a layer ends with `_finish_layer`: the last program to finish (an atomic counter, the
"threadfence reduction" pattern; no program waits on another) adds the layer's output, rounded to the model
dtype, to the residual, writes the next norm's output (the next layer's norm, or norm_f after the last
layer) into `normed`, and zeroes `acc`, `xacc` and the counter for the next layer. Under the interpreter the
programs run one after the other, so the last one is the last in the grid and the same code runs.
Or (`norm_in`) every program of the next layer's first kernel adds the residual and normalises from `acc`
itself, with two buffers of acc, xacc and the residual alternating by layer, each zeroed by a kernel that runs
after its last reader and before its next writer; a last small kernel applies norm_f.

Weights (and this layer's states, which no kernel of the step before wrote) are loaded at a kernel's start,
before the programmatic-dependent-launch wait (PDL, Hopper+) where they fit in one tile, else the loop's first
`pre_tiles` tiles, so that they stream in while the previous kernel finishes; every program waits before
reading what the previous kernel wrote. Optional L2 prefetches (`effprof.ops.l2_prefetch_triton`): per line
(`prefetch_l2`, measured slower on an H100 and off by default), a program's own rows or a later kernel's weight;
bulk (`bulk_prefetch_rows_l2`, a few instructions per program; off until measured), part of out_proj's weight
during the state update, or of the next in_proj's during out_proj.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from effprof.ops.causal_conv1d_triton import _silu_f32, conv_state_finish, conv_state_read, conv_state_step
from effprof.ops.l2_prefetch_triton import (bulk_prefetch_rows_l2, bulk_rows_geometry, elements_per_line,
                                            l2_prefetch_ok, prefetch_l2, prefetch_l2_share)
from effprof.ops.mamba_decode_triton import LOG2E_C, _round, _softplus_exact


@triton.jit
def _wait_previous_kernel(USE_PDL: tl.constexpr):
    """With programmatic dependent launch (PDL, Hopper+): wait until the previous kernel has completed and its
    writes are visible, then let the next kernel launch (its programs wait here in turn). Every program of
    every kernel waits before touching memory, so the kernels stay ordered as without PDL; only the launch
    latency overlaps the previous kernel."""
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def _rms_norm_row(r, w_ptr, out_ptr, i, mask, d_model, eps):
    """out[i] = rms_norm(r rounded to the model dtype) · w, r float32 [BLOCK] (the whole row)."""
    xn = _round(r, out_ptr)
    inv = 1.0 / tl.sqrt(tl.sum(xn * xn, axis=0) / d_model + eps)
    out = xn * inv * tl.load(w_ptr + i, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + i, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _prologue_kernel(ids_ptr, emb_ptr, nw_ptr, normed_ptr, res_ptr, acc_ptr, xacc_ptr, count_ptr,
                     batch, d_model, O, eps, stride_emb, BLOCK_MODEL: tl.constexpr, O_PAD: tl.constexpr,
                     USE_PDL: tl.constexpr):
    _wait_previous_kernel(USE_PDL)
    b = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, BLOCK_MODEL)
    mask = i < d_model
    token = tl.load(ids_ptr + b).to(tl.int64)
    r = tl.load(emb_ptr + token * stride_emb + i, mask=mask, other=0.0).to(tl.float32)
    tl.store(res_ptr + b * d_model + i, r, mask=mask)
    _rms_norm_row(r, nw_ptr, normed_ptr + b * d_model, i, mask, d_model, eps)
    o = tl.arange(0, O_PAD)
    for parity in range(2):  # both buffers of each accumulator (the NORM_IN mode alternates them by layer)
        tl.store(acc_ptr + (parity * batch + b) * d_model + i, tl.zeros([BLOCK_MODEL], dtype=tl.float32), mask=mask)
        tl.store(xacc_ptr + (parity * batch + b) * O + o, tl.zeros([O_PAD], dtype=tl.float32), mask=o < O)
    if b == 0:
        tl.store(count_ptr, 0)


@triton.jit
def _finish_layer(acc_ptr, res_ptr, nw_ptr, normed_ptr, xacc_ptr, count_ptr, n_programs, batch, d_model, O, eps,
                  BLOCK_MODEL: tl.constexpr, O_PAD: tl.constexpr):
    """Every program calls this last; the last to arrive does the residual add and the next norm (module
    docstring). The barrier orders the whole program's writes before its counter increment (acq_rel, one
    thread), as cooperative groups' grid sync does."""
    tl.debug_barrier()
    if tl.atomic_add(count_ptr, 1, sem="acq_rel", scope="gpu") == n_programs - 1:
        i = tl.arange(0, BLOCK_MODEL)
        mask = i < d_model
        o = tl.arange(0, O_PAD)
        for b in range(batch):
            out = tl.load(acc_ptr + b * d_model + i, mask=mask, other=0.0, volatile=True)
            r = _round(out, normed_ptr) + tl.load(res_ptr + b * d_model + i, mask=mask, other=0.0)
            tl.store(res_ptr + b * d_model + i, r, mask=mask)
            _rms_norm_row(r, nw_ptr, normed_ptr + b * d_model, i, mask, d_model, eps)
            tl.store(acc_ptr + b * d_model + i, tl.zeros([BLOCK_MODEL], dtype=tl.float32), mask=mask)
            tl.store(xacc_ptr + b * O + o, tl.zeros([O_PAD], dtype=tl.float32), mask=o < O)
        tl.store(count_ptr, 0)


@triton.jit
def _layer_input(normed_ptr, acc_in_ptr, res_in_ptr, nw_ptr, xz_ptr, b, k, mask_k, d_model, inv, NORM_IN: tl.constexpr):
    """The in_proj input at columns k: rms_norm(bf16(residual')) · w rounded to the model dtype, from the
    previous layer's output and residual (NORM_IN), as the reference's RMSNorm gives it."""
    r = _round(tl.load(acc_in_ptr + b * d_model + k, mask=mask_k, other=0.0), xz_ptr) + \
        tl.load(res_in_ptr + b * d_model + k, mask=mask_k, other=0.0)
    return _round(_round(r, xz_ptr) * inv * tl.load(nw_ptr + k, mask=mask_k, other=0.0).to(tl.float32), xz_ptr)


@triton.jit
def _gemv_input(normed_ptr, acc_in_ptr, res_in_ptr, nw_ptr, xz_ptr, b, k, mask_k, d_model, inv, NORM_IN: tl.constexpr):
    """in_proj's input at columns k: `normed`, or (NORM_IN) `_layer_input` of the previous layer's output."""
    if NORM_IN:
        xn = _layer_input(normed_ptr, acc_in_ptr, res_in_ptr, nw_ptr, xz_ptr, b, k, mask_k, d_model, inv, NORM_IN)
    else:
        xn = tl.load(normed_ptr + b * d_model + k, mask=mask_k, other=0.0).to(tl.float32)
    return xn


@triton.jit
def _layer_in_kernel(normed_ptr, w_ptr, conv_state_ptr, conv_w_ptr, conv_b_ptr, wx_ptr, xz_ptr, xacc_ptr,
                     acc_in_ptr, res_in_ptr, res_out_ptr, nw_ptr, xacc_zero_ptr, pf_ptr, pf_count,
                     batch, d_model, d_inner, O, eps,
                     stride_wn, stride_sb, stride_sc, stride_st, stride_cwc, stride_cwk, stride_wxo, stride_wxc,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, O_PAD: tl.constexpr, WIDTH: tl.constexpr,
                     HAS_CONV_BIAS: tl.constexpr, NUM_STAGES: tl.constexpr, USE_PDL: tl.constexpr,
                     PREFETCH: tl.constexpr, CONV_PREFETCH: tl.constexpr, NORM_IN: tl.constexpr,
                     L2_SELF: tl.constexpr = False, L2_AHEAD: tl.constexpr = False, EPL_W: tl.constexpr = 64,
                     EPL_PF: tl.constexpr = 64, LINES: tl.constexpr = 256, PRE_TILES: tl.constexpr = 0):
    """PRE_TILES (where the rows' weight is a loop, not one tile): the loop's first 1 or 2 tiles are loaded
    before the wait, so that the DRAM streams this layer's weight while the previous kernel ends.
    L2_SELF: the program's in_proj rows are prefetched into L2 before the wait; L2_AHEAD: its share of
    pf_count elements of pf_ptr (a weight a later kernel reads). NORM_IN: the input is the previous layer's
    output (acc_in, float32 sum) and residual (res_in), not
    `normed`: every program adds and normalises them itself (program 0 also writes residual' to res_out and
    zeroes the other x_proj accumulator, xacc_zero, for the next layer)."""
    pid = tl.program_id(0)
    n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = n < 2 * d_inner
    mask_x = n < d_inner
    o = tl.arange(0, O_PAD)
    if PREFETCH:  # one tile holds the rows' whole weight: load it (and x_proj's) before the previous kernel ends
        k_all = tl.arange(0, BLOCK_K)
        mask_k_all = k_all < d_model
        w_all = tl.load(w_ptr + n[:, None] * stride_wn + k_all[None, :], mask=mask_n[:, None] & mask_k_all[None, :],
                        other=0.0)
        wx_pre = tl.load(wx_ptr + o[:, None] * stride_wxo + n[None, :] * stride_wxc,
                         mask=(o < O)[:, None] & mask_x[None, :], other=0.0)
    if CONV_PREFETCH:  # batch 1: the conv state's columns too (no earlier kernel of this step writes them)
        state_rows0 = conv_state_ptr + n.to(tl.int64) * stride_sc
        cols, conv_acc, w_last = conv_state_read(state_rows0, conv_w_ptr, conv_b_ptr, n, mask_x, stride_st,
                                                 stride_cwc, stride_cwk, WIDTH, HAS_CONV_BIAS)
    if not PREFETCH and PRE_TILES >= 1:
        k_pre0 = tl.arange(0, BLOCK_K)
        w_pre0 = tl.load(w_ptr + n[:, None] * stride_wn + k_pre0[None, :],
                         mask=mask_n[:, None] & (k_pre0 < d_model)[None, :], other=0.0)
    if not PREFETCH and PRE_TILES >= 2:
        k_pre1 = BLOCK_K + tl.arange(0, BLOCK_K)
        w_pre1 = tl.load(w_ptr + n[:, None] * stride_wn + k_pre1[None, :],
                         mask=mask_n[:, None] & (k_pre1 < d_model)[None, :], other=0.0)
    row0 = pid * BLOCK_N
    prefetch_l2(w_ptr, row0.to(tl.int64) * stride_wn, tl.minimum(BLOCK_N, 2 * d_inner - row0) * stride_wn, EPL_W,
                LINES, L2_SELF and not PREFETCH)
    prefetch_l2_share(pf_ptr, pf_count, EPL_PF, LINES, L2_AHEAD)
    _wait_previous_kernel(USE_PDL)
    if NORM_IN:
        if pid == 0:
            o0 = tl.arange(0, O_PAD)
            for b in range(batch):
                tl.store(xacc_zero_ptr + b * O + o0, tl.zeros([O_PAD], dtype=tl.float32), mask=o0 < O)
    for b in range(batch):
        inv = 0.0
        if NORM_IN:  # inv = 1 / rms of the residual' rounded to the model dtype (pass 1 over the row)
            ss = tl.zeros([BLOCK_K], dtype=tl.float32)
            for k0 in range(0, d_model, BLOCK_K):
                k = k0 + tl.arange(0, BLOCK_K)
                mask_k = k < d_model
                r = _round(tl.load(acc_in_ptr + b * d_model + k, mask=mask_k, other=0.0), xz_ptr) + \
                    tl.load(res_in_ptr + b * d_model + k, mask=mask_k, other=0.0)
                tl.store(res_out_ptr + b * d_model + k, r, mask=mask_k & (pid == 0))
                xr = _round(r, xz_ptr)
                ss += xr * xr
            inv = 1.0 / tl.sqrt(tl.sum(ss, axis=0) / d_model + eps)
        if PREFETCH:
            if NORM_IN:
                xn = _layer_input(normed_ptr, acc_in_ptr, res_in_ptr, nw_ptr, xz_ptr, b, k_all, mask_k_all, d_model,
                                  inv, NORM_IN)
            else:
                xn = tl.load(normed_ptr + b * d_model + k_all, mask=mask_k_all, other=0.0).to(tl.float32)
            v = tl.sum(w_all.to(tl.float32) * xn[None, :], axis=1)
        else:
            acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
            if PRE_TILES >= 1:  # the tiles loaded before the wait, added in the loop's order
                acc += w_pre0.to(tl.float32) * _gemv_input(normed_ptr, acc_in_ptr, res_in_ptr, nw_ptr, xz_ptr, b,
                                                           k_pre0, k_pre0 < d_model, d_model, inv, NORM_IN)[None, :]
            if PRE_TILES >= 2:
                acc += w_pre1.to(tl.float32) * _gemv_input(normed_ptr, acc_in_ptr, res_in_ptr, nw_ptr, xz_ptr, b,
                                                           k_pre1, k_pre1 < d_model, d_model, inv, NORM_IN)[None, :]
            for k0 in tl.range(PRE_TILES * BLOCK_K, d_model, BLOCK_K, num_stages=NUM_STAGES):
                k = k0 + tl.arange(0, BLOCK_K)
                mask_k = k < d_model
                xn = _gemv_input(normed_ptr, acc_in_ptr, res_in_ptr, nw_ptr, xz_ptr, b, k, mask_k, d_model, inv,
                                 NORM_IN)
                w = tl.load(w_ptr + n[:, None] * stride_wn + k[None, :], mask=mask_n[:, None] & mask_k[None, :],
                            other=0.0).to(tl.float32)
                acc += w * xn[None, :]
            v = tl.sum(acc, axis=1)
        v = _round(v, xz_ptr)  # in_proj's output in the model dtype
        row = xz_ptr + b * 2 * d_inner
        tl.store(row + n, v.to(xz_ptr.dtype.element_ty), mask=mask_n & (n >= d_inner))  # z
        if pid * BLOCK_N < d_inner:  # x rows: conv (shifting the state), then this block's share of x_proj
            if CONV_PREFETCH:
                xc = _round(conv_state_finish(v, cols, conv_acc, w_last, state_rows0, mask_x, stride_st, WIDTH), xz_ptr)
            else:
                state_rows = conv_state_ptr + b * stride_sb + n.to(tl.int64) * stride_sc
                xc = _round(conv_state_step(v, state_rows, conv_w_ptr, conv_b_ptr, n, mask_x, stride_st,
                                            stride_cwc, stride_cwk, WIDTH, HAS_CONV_BIAS, True, True), xz_ptr)
            tl.store(row + n, xc.to(xz_ptr.dtype.element_ty), mask=mask_x)
            # read back through L2 in the layout of the x_proj tile: converting the register layout instead
            # makes the compiler redo the conv in that layout too (255 registers and spills at BLOCK_N 16)
            tl.debug_barrier()
            xc = tl.load(row + n, mask=mask_x, other=0.0, cache_modifier=".cg").to(tl.float32)
            if PREFETCH:
                wx = wx_pre.to(tl.float32)
            else:
                wx = tl.load(wx_ptr + o[:, None] * stride_wxo + n[None, :] * stride_wxc,
                             mask=(o < O)[:, None] & mask_x[None, :], other=0.0).to(tl.float32)
            tl.atomic_add(xacc_ptr + b * O + o, tl.sum(wx * xc[None, :], axis=1), mask=o < O, sem="relaxed")


@triton.jit
def _layer_ssm_kernel(xz_ptr, xacc_ptr, wdt_ptr, dt_bias_ptr, A_log_ptr, D_ptr, ssm_ptr, wout_ptr, acc_ptr,
                      res_ptr, nw_ptr, normed_ptr, count_ptr, acc_zero_ptr, pf_ptr, pf_count,
                      bulk_rows, bulk_row_bytes, bulk_first, bulk_bytes,
                      batch, d_inner, d_model, R, N, O, eps, stride_wdt_d, stride_wdt_r, stride_wo,
                      BLOCK_D: tl.constexpr, R_PAD: tl.constexpr, N_PAD: tl.constexpr, HAS_D: tl.constexpr,
                      FUSE_OUT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_MODEL: tl.constexpr,
                      O_PAD: tl.constexpr, USE_PDL: tl.constexpr, PREFETCH: tl.constexpr, NORM_IN: tl.constexpr,
                      L2_AHEAD: tl.constexpr = False, EPL_PF: tl.constexpr = 64, LINES: tl.constexpr = 256,
                      BULK: tl.constexpr = 0):
    """L2_AHEAD: the program's share of pf_count elements of pf_ptr (out_proj's weight for the out_proj kernel,
    or the next layer's in_proj) is prefetched into L2 before the wait. BULK 1 (after the wait) or 2 (before
    it): bulk L2 prefetches of bytes [bulk_first, bulk_first + bulk_bytes) of each of out_proj's bulk_rows rows
    (`bulk_prefetch_rows_l2`), the part of its weight the out_proj kernel reads after the tiles it loads before
    its own wait, so that the DRAM streams it while this kernel computes."""
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = d < d_inner
    r = tl.arange(0, R_PAD)
    n = tl.arange(0, N_PAD)
    mask_n = n < N
    mask_dn = mask_d[:, None] & mask_n[None, :]
    # weights and this layer's state: nothing the previous kernel (this layer's first) writes
    wdt = tl.load(wdt_ptr + d[:, None] * stride_wdt_d + r[None, :] * stride_wdt_r,
                  mask=mask_d[:, None] & (r < R)[None, :], other=0.0).to(tl.float32)
    dt_bias = tl.load(dt_bias_ptr + d, mask=mask_d, other=0.0).to(tl.float32)
    A2 = -tl.exp(tl.load(A_log_ptr + d[:, None] * N + n[None, :], mask=mask_dn, other=0.0).to(tl.float32)) * LOG2E_C
    ssm_offs = (b * d_inner + d[:, None]) * N + n[None, :]
    h = tl.load(ssm_ptr + ssm_offs, mask=mask_dn, other=0.0)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=mask_d, other=0.0).to(tl.float32)
    m_all = tl.arange(0, BLOCK_MODEL)
    if FUSE_OUT and PREFETCH:  # out_proj's columns for these channels, all rows in one tile
        w_out = tl.load(wout_ptr + m_all[:, None] * stride_wo + d[None, :],
                        mask=(m_all < d_model)[:, None] & mask_d[None, :], other=0.0)
    prefetch_l2_share(pf_ptr, pf_count, EPL_PF, LINES, L2_AHEAD)
    bulk_prefetch_rows_l2(wout_ptr, bulk_rows, bulk_row_bytes, bulk_first, bulk_bytes, BULK == 2)
    _wait_previous_kernel(USE_PDL)
    bulk_prefetch_rows_l2(wout_ptr, bulk_rows, bulk_row_bytes, bulk_first, bulk_bytes, BULK == 1)
    if NORM_IN:  # the accumulator the layer's first kernel read is free: zero it for the layer after next
        if tl.program_id(1) == 0:
            tl.store(acc_zero_ptr + b * d_model + m_all, tl.zeros([BLOCK_MODEL], dtype=tl.float32),
                     mask=m_all < d_model)
    xrow = xacc_ptr + b * O  # x_proj's output, rounded as the reference's matmul output
    dt_low = _round(tl.load(xrow + r, mask=r < R, other=0.0), xz_ptr)
    Bv = _round(tl.load(xrow + R + n, mask=mask_n, other=0.0), xz_ptr)
    Cv = _round(tl.load(xrow + R + N + n, mask=mask_n, other=0.0), xz_ptr)
    row = xz_ptr + b * 2 * d_inner
    xc = tl.load(row + d, mask=mask_d, other=0.0).to(tl.float32)
    z = tl.load(row + d_inner + d, mask=mask_d, other=0.0).to(tl.float32)
    dt = _round(tl.sum(wdt * dt_low[None, :], axis=1), xz_ptr)
    dt = _softplus_exact(dt + dt_bias)
    h = tl.exp2(dt[:, None] * A2) * h + (dt * xc)[:, None] * Bv[None, :]
    tl.store(ssm_ptr + ssm_offs, h, mask=mask_dn)
    y = tl.sum(h * Cv[None, :], axis=1)
    if HAS_D:
        y += Dv * xc
    y = _round(y * _silu_f32(z), xz_ptr)  # out_proj reads y in the model dtype
    if FUSE_OUT:  # acc[b, m] += sum_d W_out[m, d] · y[d] over this block's channels
        if PREFETCH:
            tl.atomic_add(acc_ptr + b * d_model + m_all, tl.sum(w_out.to(tl.float32) * y[None, :], axis=1),
                          mask=m_all < d_model, sem="relaxed")
        else:
            for m0 in range(0, d_model, BLOCK_M):
                m = m0 + tl.arange(0, BLOCK_M)
                mask_m = m < d_model
                w = tl.load(wout_ptr + m[:, None] * stride_wo + d[None, :], mask=mask_m[:, None] & mask_d[None, :],
                            other=0.0).to(tl.float32)
                tl.atomic_add(acc_ptr + b * d_model + m, tl.sum(w * y[None, :], axis=1), mask=mask_m, sem="relaxed")
        if not NORM_IN:
            _finish_layer(acc_ptr, res_ptr, nw_ptr, normed_ptr, xacc_ptr, count_ptr,
                          batch * tl.num_programs(1), batch, d_model, O, eps, BLOCK_MODEL, O_PAD)
    else:
        tl.store(row + d, y.to(xz_ptr.dtype.element_ty), mask=mask_d)


@triton.jit
def _layer_out_kernel(xz_ptr, wout_ptr, acc_ptr, res_ptr, nw_ptr, normed_ptr, xacc_ptr, count_ptr, pf_ptr, pf_count,
                      bulk_ptr, bulk_rows, bulk_row_bytes, bulk_first, bulk_bytes,
                      batch, d_inner, d_model, O, eps, stride_wo, k_per,
                      BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, NUM_STAGES: tl.constexpr,
                      BLOCK_MODEL: tl.constexpr, O_PAD: tl.constexpr, USE_PDL: tl.constexpr,
                      PREFETCH: tl.constexpr, SPLIT_K: tl.constexpr, NORM_IN: tl.constexpr,
                      L2_SELF: tl.constexpr = False, L2_AHEAD: tl.constexpr = False, EPL_W: tl.constexpr = 64,
                      EPL_PF: tl.constexpr = 64, LINES: tl.constexpr = 256, PRE_TILES: tl.constexpr = 0,
                      BULK: tl.constexpr = False):
    """Grid (d_model / BLOCK_M, SPLIT_K): rows m of out_proj over the k_per channels from program_id(1)·k_per;
    with SPLIT_K > 1 the partial sums are added into acc (zeroed by the previous layer's last program).
    L2_SELF (SPLIT_K 1): the program's rows are prefetched into L2 before the wait; L2_AHEAD: its share of
    pf_count elements of pf_ptr (the next layer's in_proj). PRE_TILES: as in `_layer_in_kernel`. BULK: after the
    wait, bulk L2 prefetches of bytes [bulk_first, bulk_first + bulk_bytes) of each of the next layer's in_proj
    bulk_rows rows (the part its kernel reads after its pre-loaded tiles)."""
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = m < d_model
    k_start = tl.program_id(1) * k_per
    k_end = tl.minimum(k_start + k_per, d_inner)
    if PREFETCH:  # the rows' whole weight in one tile, loaded before the previous kernel ends
        k_all = k_start + tl.arange(0, BLOCK_K)
        mask_k_all = k_all < k_end
        w_all = tl.load(wout_ptr + m[:, None] * stride_wo + k_all[None, :],
                        mask=mask_m[:, None] & mask_k_all[None, :], other=0.0)
    if not PREFETCH and PRE_TILES >= 1:
        k_pre0 = k_start + tl.arange(0, BLOCK_K)
        w_pre0 = tl.load(wout_ptr + m[:, None] * stride_wo + k_pre0[None, :],
                         mask=mask_m[:, None] & (k_pre0 < k_end)[None, :], other=0.0)
    if not PREFETCH and PRE_TILES >= 2:
        k_pre1 = k_start + BLOCK_K + tl.arange(0, BLOCK_K)
        w_pre1 = tl.load(wout_ptr + m[:, None] * stride_wo + k_pre1[None, :],
                         mask=mask_m[:, None] & (k_pre1 < k_end)[None, :], other=0.0)
    row0 = tl.program_id(0) * BLOCK_M
    prefetch_l2(wout_ptr, row0.to(tl.int64) * stride_wo, tl.minimum(BLOCK_M, d_model - row0) * stride_wo, EPL_W,
                LINES, L2_SELF and SPLIT_K == 1 and not PREFETCH)
    prefetch_l2_share(pf_ptr, pf_count, EPL_PF, LINES, L2_AHEAD)
    _wait_previous_kernel(USE_PDL)
    bulk_prefetch_rows_l2(bulk_ptr, bulk_rows, bulk_row_bytes, bulk_first, bulk_bytes, BULK)
    for b in range(batch):
        if PREFETCH:
            y = tl.load(xz_ptr + b * 2 * d_inner + k_all, mask=mask_k_all, other=0.0).to(tl.float32)
            out = tl.sum(w_all.to(tl.float32) * y[None, :], axis=1)
        else:
            acc = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)
            if PRE_TILES >= 1:  # the tiles loaded before the wait, added in the loop's order
                acc += w_pre0.to(tl.float32) * tl.load(xz_ptr + b * 2 * d_inner + k_pre0, mask=k_pre0 < k_end,
                                                       other=0.0).to(tl.float32)[None, :]
            if PRE_TILES >= 2:
                acc += w_pre1.to(tl.float32) * tl.load(xz_ptr + b * 2 * d_inner + k_pre1, mask=k_pre1 < k_end,
                                                       other=0.0).to(tl.float32)[None, :]
            for k0 in tl.range(k_start + PRE_TILES * BLOCK_K, k_end, BLOCK_K, num_stages=NUM_STAGES):
                k = k0 + tl.arange(0, BLOCK_K)
                mask_k = k < k_end
                y = tl.load(xz_ptr + b * 2 * d_inner + k, mask=mask_k, other=0.0).to(tl.float32)
                w = tl.load(wout_ptr + m[:, None] * stride_wo + k[None, :],
                            mask=mask_m[:, None] & mask_k[None, :], other=0.0).to(tl.float32)
                acc += w * y[None, :]
            out = tl.sum(acc, axis=1)
        if SPLIT_K == 1:
            tl.store(acc_ptr + b * d_model + m, out, mask=mask_m)
        else:
            tl.atomic_add(acc_ptr + b * d_model + m, out, mask=mask_m, sem="relaxed")
    if not NORM_IN:
        _finish_layer(acc_ptr, res_ptr, nw_ptr, normed_ptr, xacc_ptr, count_ptr, tl.num_programs(0) * SPLIT_K, batch,
                      d_model, O, eps, BLOCK_MODEL, O_PAD)


@triton.jit
def _final_norm_kernel(acc_ptr, res_ptr, nw_ptr, normed_ptr, d_model, eps, BLOCK_MODEL: tl.constexpr,
                       USE_PDL: tl.constexpr):
    """normed = norm_f(bf16(last output) + residual), grid (batch,) (NORM_IN mode's end of the step)."""
    _wait_previous_kernel(USE_PDL)
    b = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, BLOCK_MODEL)
    mask = i < d_model
    r = _round(tl.load(acc_ptr + b * d_model + i, mask=mask, other=0.0), normed_ptr) + \
        tl.load(res_ptr + b * d_model + i, mask=mask, other=0.0)
    _rms_norm_row(r, nw_ptr, normed_ptr + b * d_model, i, mask, d_model, eps)


PREFETCH_MAX_ELEMENTS = 8192  # weight elements per program (64 bf16 registers per thread at 4 warps) held in one tile


class DecodeWork:
    """The buffers one decoding step shares across its layers: normed (batch, d_model) model dtype, residual
    (2, batch, d_model) float32, xz (batch, 2·d_inner) model dtype, acc (2, batch, d_model) and xacc (2, batch,
    O) float32, the counter (int32). Two buffers of residual, acc and xacc: the NORM_IN mode alternates them
    by layer parity; the other mode uses the first. The prologue kernel fills or zeroes all of them."""

    def __init__(self, batch, d_model, d_inner, O, device, dtype):
        f32 = torch.float32
        self.batch, self.d_model, self.d_inner, self.O = batch, d_model, d_inner, O
        self.normed = torch.empty(batch, d_model, device=device, dtype=dtype)
        self.residual = torch.empty(2, batch, d_model, device=device, dtype=f32)
        self.xz = torch.empty(batch, 2 * d_inner, device=device, dtype=dtype)
        self.acc = torch.empty(2, batch, d_model, device=device, dtype=f32)
        self.xacc = torch.empty(2, batch, O, device=device, dtype=f32)
        self.count = torch.empty(1, device=device, dtype=torch.int32)

    @classmethod
    def of(cls, normed, residual, xz, acc, xacc, count) -> "DecodeWork":
        work = cls.__new__(cls)
        work.batch, work.d_model = normed.shape
        work.d_inner, work.O = xz.shape[1] // 2, xacc.shape[-1]
        work.normed, work.residual, work.xz, work.acc, work.xacc, work.count = normed, residual, xz, acc, xacc, count
        return work


def _pdl(pdl: bool) -> dict:
    """Launch options (and the kernels' USE_PDL) for programmatic dependent launch; off under the interpreter."""
    from effprof.ops.selective_scan import triton_interpret_mode

    on = bool(pdl) and not triton_interpret_mode() and torch.cuda.get_device_capability() >= (9, 0)
    return {"USE_PDL": on, "launch_pdl": True} if on else {"USE_PDL": False}


def decode_prologue_triton(ids, embedding_weight, norm_weight, eps, work: DecodeWork, pdl=False):
    """ids (batch,) int -> work.residual = embedding rows (float32), work.normed = their RMSNorm."""
    _prologue_kernel[(work.batch,)](
        ids, embedding_weight, norm_weight, work.normed, work.residual, work.acc, work.xacc, work.count,
        work.batch, work.d_model, work.O, eps, embedding_weight.stride(0),
        BLOCK_MODEL=triton.next_power_of_2(work.d_model), O_PAD=triton.next_power_of_2(work.O), num_warps=4,
        **_pdl(pdl))


def layer_decode_triton(work: DecodeWork, conv_state, ssm_state, in_proj_weight, conv_weight, conv_bias,
                        x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, out_proj_weight, next_norm_weight,
                        eps, fuse_out: bool, block_n=16, block_d=None, block_m=16, block_k=256, num_stages=3,
                        pdl=False, prefetch_weights=True, split_k=1, loop_tile=4096, num_warps=4, norm_in=False,
                        norm_weight=None, parity=0, last=False, l2_self=False, l2_ahead=False, l2_ahead_in=False,
                        next_in_proj_weight=None, l2_ahead_bytes=1 << 62, pre_tiles=0, l2_bulk_out=0,
                        l2_bulk_early=False, l2_bulk_in=0):
    """One layer (module docstring), updating both states in place. Default: reads work.normed, leaves
    work.residual[0] and work.normed (the next norm's output) for the next layer. norm_in: reads the previous
    output work.acc[parity] and work.residual[parity], applies `norm_weight` itself, leaves the output in
    work.acc[1 - parity] and the residual in work.residual[1 - parity]; with `last`, then writes
    norm_f(`next_norm_weight`) of them to work.normed.

    L2 prefetches (`prefetch_l2`, no value changes; off under the interpreter), each issued before a kernel's
    wait on the previous one: l2_self, a GEMV program's own weight rows (where they are not one register tile);
    l2_ahead, the weight of the kernel after next: the state-update kernel prefetches out_proj's weight (or,
    with out_proj fused, `next_in_proj_weight`), the out_proj kernel the first `l2_ahead_bytes` of
    `next_in_proj_weight`; l2_ahead_in, the in_proj kernel prefetches this layer's out_proj weight.
    pre_tiles (0-2): a GEMV whose rows' weight is a loop loads its first tiles before that wait.
    l2_bulk_out (bytes, 0 off; out_proj as its own kernel, sm_90+): the state-update kernel asks L2 for about
    that many bytes of out_proj's weight with bulk prefetches (`bulk_prefetch_rows_l2`: the columns each
    out_proj row reads right after its pre-loaded tiles), after its wait on in_proj (before it with
    l2_bulk_early), so that the DRAM streams out_proj's weight during the state update. l2_bulk_in (bytes, 0
    off; out_proj as its own kernel, `next_in_proj_weight` given): the out_proj kernel, after its wait, asks L2
    for about that many bytes of the next layer's in_proj weight (the columns after its pre-loaded tiles)."""
    if not ssm_state.is_contiguous() or ssm_state.dtype != torch.float32:
        raise ValueError("mamba layer decode (triton): ssm_state must be contiguous float32")
    batch, d_model, d_inner, O = work.batch, work.d_model, work.d_inner, work.O
    R, N = dt_proj_weight.shape[1], A_log.shape[1]
    A_log = A_log.contiguous()
    o_pad, block_model = triton.next_power_of_2(O), triton.next_power_of_2(d_model)
    conv_b = conv_bias if conv_bias is not None else conv_weight
    pdl_options = _pdl(pdl)
    # a kernel whose weight fits in one tile per program loads it at its start (PREFETCH): with PDL, before
    # waiting for the previous kernel, so that the weight streams in while that one finishes
    prefetch = prefetch_weights
    tile_max = PREFETCH_MAX_ELEMENTS * num_warps // 4
    one_tile_in = prefetch and block_n * triton.next_power_of_2(d_model) <= tile_max
    # a loop's tile keeps >= loop_tile weight elements per step whatever the rows per program
    block_k_in = triton.next_power_of_2(d_model) if one_tile_in else \
        min(max(block_k, loop_tile * num_warps // 4 // block_n), triton.next_power_of_2(d_model))
    p, q = (parity % 2, 1 - parity % 2) if norm_in else (0, 0)
    l2 = l2_prefetch_ok()
    nxt = next_in_proj_weight if (l2 and l2_ahead and next_in_proj_weight is not None) else None
    nxt_count = 0 if nxt is None else min(nxt.numel(), l2_ahead_bytes // nxt.element_size())
    out_count = out_proj_weight.numel() if (l2 and l2_ahead and not fuse_out) else 0
    l2_in = dict(L2_SELF=l2 and l2_self, L2_AHEAD=l2 and l2_ahead_in, EPL_W=elements_per_line(in_proj_weight),
                 EPL_PF=elements_per_line(out_proj_weight))
    ssm_pf = (out_proj_weight, out_count) if out_count else (nxt if nxt is not None else out_proj_weight, nxt_count)
    acc_out = work.acc[q] if norm_in else work.acc[0]
    _layer_in_kernel[(triton.cdiv(2 * d_inner, block_n),)](
        work.normed, in_proj_weight, conv_state, conv_weight, conv_b, x_proj_weight, work.xz, work.xacc[p],
        work.acc[p], work.residual[p], work.residual[q], norm_weight if norm_in else next_norm_weight, work.xacc[q],
        out_proj_weight, out_proj_weight.numel() if l2_in["L2_AHEAD"] else 0, batch, d_model, d_inner, O, eps,
        in_proj_weight.stride(0), conv_state.stride(0), conv_state.stride(1),
        conv_state.stride(2), conv_weight.stride(0), conv_weight.stride(1), x_proj_weight.stride(0),
        x_proj_weight.stride(1),
        BLOCK_N=block_n, BLOCK_K=block_k_in, O_PAD=o_pad,
        WIDTH=conv_weight.shape[-1], HAS_CONV_BIAS=conv_bias is not None, NUM_STAGES=num_stages, num_warps=num_warps,
        PREFETCH=prefetch and block_k_in >= d_model, CONV_PREFETCH=prefetch and batch == 1, NORM_IN=norm_in,
        **l2_in, PRE_TILES=pre_tiles, **pdl_options)
    # out_proj's GEMV geometry (its kernel below; the bulk prefetches target its loop's tiles); fused into the
    # state update, out_proj has no loop of its own
    one_tile_out, block_k_out = True, 0
    if not fuse_out:
        split_k = max(1, min(split_k, d_inner // 16))
        k_per = triton.cdiv(d_inner, split_k)
        one_tile_out = prefetch and block_m * triton.next_power_of_2(k_per) <= tile_max
        block_k_out = triton.next_power_of_2(k_per) if one_tile_out else \
            min(max(block_k, loop_tile * num_warps // 4 // block_m), triton.next_power_of_2(k_per))
        if not one_tile_out:
            k_per = triton.cdiv(k_per, block_k_out) * block_k_out  # whole loop steps per split
            split_k = triton.cdiv(d_inner, k_per)
    bulk_out = l2 and not one_tile_out and split_k == 1
    bulk = bulk_rows_geometry(out_proj_weight, l2_bulk_out if bulk_out else 0, pre_tiles * block_k_out)
    n_pad, r_pad = triton.next_power_of_2(N), triton.next_power_of_2(R)
    block_d = block_d or max(16, min(128, 4096 // max(n_pad, r_pad)))
    _layer_ssm_kernel[(batch, triton.cdiv(d_inner, block_d))](
        work.xz, work.xacc[p], dt_proj_weight, dt_proj_bias, A_log, D if D is not None else A_log, ssm_state,
        out_proj_weight, acc_out, work.residual[0], next_norm_weight, work.normed, work.count, work.acc[p], *ssm_pf,
        *bulk, batch, d_inner, d_model, R, N, O, eps, dt_proj_weight.stride(0), dt_proj_weight.stride(1),
        out_proj_weight.stride(0),
        BLOCK_D=block_d, R_PAD=r_pad, N_PAD=n_pad, HAS_D=D is not None, FUSE_OUT=fuse_out,
        BLOCK_M=max(16, 8192 // block_d), BLOCK_MODEL=block_model, O_PAD=o_pad, num_warps=4,
        PREFETCH=prefetch and block_model * block_d <= 2 * PREFETCH_MAX_ELEMENTS, NORM_IN=norm_in,
        L2_AHEAD=ssm_pf[1] > 0, EPL_PF=elements_per_line(ssm_pf[0]),
        BULK=(2 if l2_bulk_early else 1) if bulk[3] else 0, **pdl_options)
    if not fuse_out:
        bulk_in = bulk_rows_geometry(
            next_in_proj_weight if next_in_proj_weight is not None else out_proj_weight,
            l2_bulk_in if l2 and next_in_proj_weight is not None and not one_tile_in else 0, pre_tiles * block_k_in)
        _layer_out_kernel[(triton.cdiv(d_model, block_m), split_k)](
            work.xz, out_proj_weight, acc_out, work.residual[0], next_norm_weight, work.normed, work.xacc[0],
            work.count, nxt if nxt is not None else out_proj_weight, nxt_count,
            next_in_proj_weight if bulk_in[3] else out_proj_weight, *bulk_in,
            batch, d_inner, d_model, O, eps, out_proj_weight.stride(0), k_per,
            BLOCK_M=block_m, BLOCK_K=block_k_out, NUM_STAGES=num_stages,
            BLOCK_MODEL=block_model, O_PAD=o_pad, num_warps=num_warps, PREFETCH=one_tile_out, SPLIT_K=split_k,
            NORM_IN=norm_in, L2_SELF=l2 and l2_self, L2_AHEAD=nxt_count > 0,
            EPL_W=elements_per_line(out_proj_weight),
            EPL_PF=elements_per_line(nxt if nxt is not None else out_proj_weight), PRE_TILES=pre_tiles,
            BULK=bulk_in[3] > 0, **pdl_options)
    if norm_in and last:
        _final_norm_kernel[(batch,)](acc_out, work.residual[q], next_norm_weight, work.normed, d_model, eps,
                                     BLOCK_MODEL=block_model, num_warps=4, **pdl_options)
