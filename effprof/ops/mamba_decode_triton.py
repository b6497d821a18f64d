"""Triton kernels of one fused Mamba decoding step (after in_proj, before out_proj) and of the residual
add + RMSNorm between blocks.

Imported lazily by `effprof.ops.mamba_decode` (this module imports triton). The math is the step-by-step
reference beside it (`mamba_decode_step_ref`: conv-state update + SiLU, x_proj, dt_proj, softplus, state
update, D skip, SiLU(z) gate), with the reference's roundings to the model dtype kept (the conv output, x_proj's
output and dt_proj's output are rounded where the reference's bf16 matmuls round them), so the two agree to
float32 rounding in float32 and to the last bf16 ulp in bf16. Two kernels per step instead of ~15:

1. `_xproj_partial_kernel`, grid (K splits, batch): each program takes K_PER channels, computes their conv
   output from the conv state (read only) and the new input, and its partial x_proj product for all
   dt_rank + 2·d_state outputs, written to a (K splits, batch, O) float32 buffer (a split-K GEMV: no
   atomics, so the result does not depend on the order programs run in).
2. `_ssm_step_kernel`, grid (batch, channel blocks): sums the partials (dt_low, B, C), recomputes its
   channels' conv output while shifting their conv state, dt = dt_proj · dt_low + bias, softplus, the
   state update h = exp(dt A) h + dt B x, y = <C, h> + D x, y · silu(z).

`_add_rms_norm_kernel` (one program per row): residual' = hidden + residual (float32), out =
rms_norm(bf16(residual')) · weight, as mamba-ssm's Block does with residual_in_fp32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from effprof.ops.causal_conv1d_triton import _silu_f32, conv_state_step

LOG2E_C: tl.constexpr = tl.constexpr(1.4426950408889634)


@triton.jit
def _round(x, DTYPE_PTR):
    """x rounded to the element type of DTYPE_PTR (a pointer) and back to float32."""
    return x.to(DTYPE_PTR.dtype.element_ty).to(tl.float32)


@triton.jit
def _softplus_exact(x):
    # log1p(e^x) with Goldberg's correction (log(u) · e / (u - 1), u = 1 + e): exact to float32 rounding
    # where dt is small (Mamba's dt bias sits near softplus^-1(1e-3)); identity above 20 as torch's softplus
    e = tl.exp(x)
    u = 1.0 + e
    lp = tl.where(u == 1.0, e, tl.log(u) * (e / (u - 1.0)))
    return tl.where(x <= 20.0, lp, x)


@triton.jit
def _xproj_partial_kernel(x_ptr, conv_state_ptr, conv_w_ptr, conv_b_ptr, wx_ptr, part_ptr, out_acc_ptr,
                          d_inner, O, batch, d_model,
                          stride_xb, stride_xc, stride_sb, stride_sc, stride_st, stride_cwc, stride_cwk,
                          stride_wo, stride_wc,
                          K_PER: tl.constexpr, BLOCK_K: tl.constexpr, O_PAD: tl.constexpr, WIDTH: tl.constexpr,
                          HAS_CONV_BIAS: tl.constexpr, ZERO_OUT: tl.constexpr):
    ks = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    if ZERO_OUT:  # the out_proj accumulator that kernel 2 adds into (it runs after this whole grid)
        if ks == 0:
            for m0 in range(0, d_model, 1024):
                m = m0 + tl.arange(0, 1024)
                tl.store(out_acc_ptr + b * d_model + m, tl.zeros([1024], dtype=tl.float32), mask=m < d_model)
    o = tl.arange(0, O_PAD)
    mask_o = o < O
    acc = tl.zeros([O_PAD, BLOCK_K], dtype=tl.float32)
    for k0 in tl.static_range(0, K_PER, BLOCK_K):
        c = ks * K_PER + k0 + tl.arange(0, BLOCK_K)
        mask_c = c < d_inner
        x_new = tl.load(x_ptr + b * stride_xb + c * stride_xc, mask=mask_c, other=0.0).to(tl.float32)
        state_rows = conv_state_ptr + b * stride_sb + c.to(tl.int64) * stride_sc
        xc = conv_state_step(x_new, state_rows, conv_w_ptr, conv_b_ptr, c, mask_c, stride_st, stride_cwc, stride_cwk,
                             WIDTH, HAS_CONV_BIAS, True, False)
        xc = _round(xc, x_ptr)
        w = tl.load(wx_ptr + o[:, None] * stride_wo + c[None, :] * stride_wc, mask=mask_o[:, None] & mask_c[None, :],
                    other=0.0).to(tl.float32)
        acc += w * xc[None, :]
    tl.store(part_ptr + (ks * batch + b) * O + o, tl.sum(acc, axis=1), mask=mask_o)


@triton.jit
def _ssm_step_kernel(x_ptr, z_ptr, conv_state_ptr, conv_w_ptr, conv_b_ptr, part_ptr, wdt_ptr, dt_bias_ptr, A_log_ptr,
                     D_ptr, ssm_ptr, y_ptr, wout_ptr, out_acc_ptr,
                     d_inner, R, N, O, KS, batch, d_model,
                     stride_xb, stride_xc, stride_zb, stride_zc, stride_sb, stride_sc, stride_st, stride_cwc,
                     stride_cwk, stride_wdt_d, stride_wdt_r, stride_yb,
                     BLOCK_D: tl.constexpr, R_PAD: tl.constexpr, N_PAD: tl.constexpr, KS_PAD: tl.constexpr,
                     WIDTH: tl.constexpr, HAS_CONV_BIAS: tl.constexpr, HAS_D: tl.constexpr,
                     FUSE_OUT: tl.constexpr, BLOCK_M: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = d < d_inner
    # x_proj's output for this row: sum of the K-split partials, rounded as the reference's matmul output
    ks = tl.arange(0, KS_PAD)
    part_rows = part_ptr + (ks[:, None] * batch + b) * O
    r = tl.arange(0, R_PAD)
    n = tl.arange(0, N_PAD)
    mask_ks = (ks < KS)[:, None]
    dt_low = _round(tl.sum(tl.load(part_rows + r[None, :], mask=mask_ks & (r < R)[None, :], other=0.0), axis=0), x_ptr)
    mask_n = n < N
    Bv = _round(tl.sum(tl.load(part_rows + R + n[None, :], mask=mask_ks & mask_n[None, :], other=0.0), axis=0), x_ptr)
    Cv = _round(tl.sum(tl.load(part_rows + R + N + n[None, :], mask=mask_ks & mask_n[None, :], other=0.0), axis=0),
                x_ptr)
    # this block's conv output, shifting its conv state
    x_new = tl.load(x_ptr + b * stride_xb + d * stride_xc, mask=mask_d, other=0.0).to(tl.float32)
    state_rows = conv_state_ptr + b * stride_sb + d.to(tl.int64) * stride_sc
    xc = _round(conv_state_step(x_new, state_rows, conv_w_ptr, conv_b_ptr, d, mask_d, stride_st, stride_cwc,
                                stride_cwk, WIDTH, HAS_CONV_BIAS, True, True), x_ptr)
    # dt = softplus(dt_proj · dt_low (rounded) + bias)
    wdt = tl.load(wdt_ptr + d[:, None] * stride_wdt_d + r[None, :] * stride_wdt_r,
                  mask=mask_d[:, None] & (r < R)[None, :], other=0.0).to(tl.float32)
    dt = _round(tl.sum(wdt * dt_low[None, :], axis=1), x_ptr)
    dt = _softplus_exact(dt + tl.load(dt_bias_ptr + d, mask=mask_d, other=0.0).to(tl.float32))
    # the state update, y and the gate
    mask_dn = mask_d[:, None] & mask_n[None, :]
    A2 = -tl.exp(tl.load(A_log_ptr + d[:, None] * N + n[None, :], mask=mask_dn, other=0.0).to(tl.float32)) * LOG2E_C
    ssm_offs = (b * d_inner + d[:, None]) * N + n[None, :]
    h = tl.load(ssm_ptr + ssm_offs, mask=mask_dn, other=0.0)
    h = tl.exp2(dt[:, None] * A2) * h + (dt * xc)[:, None] * Bv[None, :]
    tl.store(ssm_ptr + ssm_offs, h, mask=mask_dn)
    y = tl.sum(h * Cv[None, :], axis=1)
    if HAS_D:
        y += tl.load(D_ptr + d, mask=mask_d, other=0.0).to(tl.float32) * xc
    z = tl.load(z_ptr + b * stride_zb + d * stride_zc, mask=mask_d, other=0.0).to(tl.float32)
    y = y * _silu_f32(z)
    if FUSE_OUT:  # out[b, m] += sum_d W_out[m, d] · y[d] over this block's channels (split-K, float32 atomics)
        y_r = _round(y, x_ptr)  # the reference's out_proj reads y in the model dtype
        for m0 in range(0, d_model, BLOCK_M):
            m = m0 + tl.arange(0, BLOCK_M)
            mask_m = m < d_model
            w = tl.load(wout_ptr + m[:, None] * d_inner + d[None, :], mask=mask_m[:, None] & mask_d[None, :],
                        other=0.0).to(tl.float32)
            tl.atomic_add(out_acc_ptr + b * d_model + m, tl.sum(w * y_r[None, :], axis=1), mask=mask_m, sem="relaxed")
    else:
        tl.store(y_ptr + b * stride_yb + d, y.to(y_ptr.dtype.element_ty), mask=mask_d)


def split_k(d_inner: int, O: int) -> tuple[int, int, int]:
    """(K_PER channels per program of kernel 1, BLOCK_K, number of K splits) for d_inner channels and O
    x_proj outputs: tiles of ~8K float32 per program; at most 32 splits (kernel 2 sums them in one tile)."""
    o_pad = triton.next_power_of_2(O)
    block_k = max(16, min(128, 8192 // o_pad))
    k_per = triton.cdiv(triton.cdiv(d_inner, 32), block_k) * block_k
    return k_per, block_k, triton.cdiv(d_inner, k_per)


# When the fused step also does out_proj (split-K over its channel blocks, float32 atomics into a zeroed
# (batch, d_model) accumulator) and when the block's first kernel is the norm + in_proj GEMV instead of the
# add + norm kernel and cuBLAS: by batch and by weight size (the GEMV and the fused out_proj re-read their
# weight tile per batch row). Chosen from the measurements in benchmarks/results/h200-2026-11-30-kernels/;
# overridable for measurement (bench_mamba_decode.py).
# step_block_d: channels per program of the step kernel and of the per-layer state-update kernel without out_proj
# (None = 4096 / max(d_state, dt_rank) padded, capped at 128: 64 at 130m (24 programs), 16 at 2.8b).
# The per-layer kernels of mamba_decode_layer_triton.py (a whole LM step, 2-3 kernels per layer), chosen from
# the H200 runs in benchmarks/results/h200-2026-12-01-decode/ (call 3; each preset's default is a measured row):
# layer_max_batch / layer_max_d_model: up to which batch and width a step runs them (130m at batch 2: 0.384 ms
# against 0.529 with the two-kernel step); layer_fuse_out_max_batch / _bytes: out_proj inside the state-update
# kernel (float32 atomics, layer_fused_block_d channels per program) up to that batch and weight size, else its
# own GEMV kernel (130m batch 1: 0.217 ms fused with 16 channels per program, 0.254 separate; 2.8b's 26 MB
# out_proj stays separate); layer_block_n / layer_block_m: rows per program of the in_proj / out_proj GEMVs;
# layer_block_k: columns per step of their loops (None: 256 up to d_model 1024, else 512: 2.8b 2.05 ms against
# 2.18 with 256); where a whole row block fits in one tile and layer_prefetch, it is loaded in one go at the
# kernel's start; layer_num_warps, layer_num_stages: warps per GEMV program, stages of its loop's loads;
# layer_out_split_k: out_proj's GEMV split over that many channel ranges (float32 atomics; 2.8b 2.07 ms at 4);
# layer_norm_in: each layer's first kernel adds the residual and normalises itself (no last-program step; 2.8b
# 2.24 against 2.02 ms on an H200, off); pdl: launch the kernels with programmatic dependent launch (Hopper+; each
# loads its weights, then waits for the previous kernel: 130m 0.326 -> 0.254 ms).
# Measured on an H100 on 2026-12-07 (benchmarks/results/h100-2026-12-07-s9-decode/, call 3 unless said; batch 1,
# graphs, ms per token against the defaults before, same call): layer_pre_tiles, a GEMV loop's first tiles loaded
# before the PDL wait (in_proj at 130m and 2.8b, out_proj at 2.8b, where the rows' weight is not one tile): 1 tile
# 130m 0.2487 -> 0.2244, 2.8b 2.4715 -> 2.4289, Cobra-3B 2.486 -> 2.424; 2 tiles 0.2263 / 2.4757 (more registers,
# fewer resident programs). layer_l2_self / _ahead / _ahead_in, L2 prefetches of a GEMV's own rows or of a later
# kernel's weight (call 2): 2.8b 2.491 -> 2.70-3.31 ms, 130m 0.2478 -> 0.2463: off. persistent_*: all the layers of
# a batch-1 step in one kernel with grid barriers (mamba_decode_persistent_triton.py) up to d_model
# persistent_max_d_model: 130m 0.308-0.392 ms against 0.2487 (0.3208 with L2 prefetch and 24 MB of the LM head,
# 0.3078 without, 66 programs 0.3922, 32 channels per unit 0.3286): off (0). persistent_programs: G (None: one per
# SM); persistent_block_n / _block_d: in_proj rows / state channels per unit; persistent_head_bytes: how much of
# the LM head's weight the last layer prefetches.
DECODE_CONFIG = {"gemv_max_batch": 1, "gemv_max_weight_bytes": 16 << 20,
                 "out_fuse_max_batch": 2, "out_fuse_max_weight_bytes": 16 << 20, "step_block_d": None,
                 "layer_max_batch": 2, "layer_max_d_model": 8192, "layer_fuse_out_max_batch": 1,
                 "layer_fuse_out_max_bytes": 16 << 20, "layer_fused_block_d": 16,
                 "layer_block_n": 16, "layer_block_m": 8, "layer_block_k": None, "layer_out_split_k": 1,
                 "layer_num_warps": 4, "layer_num_stages": 3, "layer_prefetch": True, "layer_norm_in": False,
                 "layer_l2_self": False, "layer_l2_ahead": False, "layer_l2_ahead_in": False,
                 "layer_l2_ahead_bytes": 16 << 20, "layer_pre_tiles": 1, "layer_l2_bulk_out": 0,
                 "layer_l2_bulk_early": False, "layer_l2_bulk_in": 0, "persistent_max_d_model": 0,
                 "persistent_programs": None, "persistent_block_n": 16, "persistent_block_d": 16,
                 "persistent_num_warps": 8, "persistent_l2": True, "persistent_head_bytes": 24 << 20, "pdl": True}


def use_gemv(batch: int, weight: torch.Tensor) -> bool:
    return (batch <= DECODE_CONFIG["gemv_max_batch"]
            and weight.numel() * weight.element_size() <= DECODE_CONFIG["gemv_max_weight_bytes"])


def use_fused_out(batch: int, weight: torch.Tensor) -> bool:
    return (batch <= DECODE_CONFIG["out_fuse_max_batch"]
            and weight.numel() * weight.element_size() <= DECODE_CONFIG["out_fuse_max_weight_bytes"])


def mamba_decode_step_triton(x, z, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                             dt_proj_bias, A_log, D, out_proj_weight=None):
    """Shapes as `mamba_decode_step_ref`; conv_state and ssm_state (contiguous float32) updated in place;
    returns y (batch, d_inner) in x's dtype, or with `out_proj_weight` (d_model, d_inner) out_proj(y) as
    a float32 (batch, d_model) sum (not rounded to the model dtype: the next kernel rounds it)."""
    if not ssm_state.is_contiguous() or ssm_state.dtype != torch.float32:
        raise ValueError("mamba_decode_step (triton): ssm_state must be contiguous float32")
    batch, d_inner = x.shape
    width = conv_weight.shape[-1]
    R = dt_proj_weight.shape[1]
    N = A_log.shape[1]
    O = x_proj_weight.shape[0]
    A_log = A_log.contiguous()
    fuse_out = out_proj_weight is not None
    d_model = out_proj_weight.shape[0] if fuse_out else 1
    y = torch.empty(batch, d_inner, device=x.device, dtype=x.dtype)
    out_acc = torch.empty(batch, d_model, device=x.device, dtype=torch.float32) if fuse_out else y
    if batch == 0:
        return out_acc.zero_() if fuse_out else y
    k_per, block_k, ks = split_k(d_inner, O)
    partials = torch.empty(ks, batch, O, device=x.device, dtype=torch.float32)
    conv_b = conv_bias if conv_bias is not None else conv_weight
    _xproj_partial_kernel[(ks, batch)](
        x, conv_state, conv_weight, conv_b, x_proj_weight, partials, out_acc, d_inner, O, batch, d_model,
        x.stride(0), x.stride(1), conv_state.stride(0), conv_state.stride(1), conv_state.stride(2),
        conv_weight.stride(0), conv_weight.stride(1), x_proj_weight.stride(0), x_proj_weight.stride(1),
        K_PER=k_per, BLOCK_K=block_k, O_PAD=triton.next_power_of_2(O), WIDTH=width,
        HAS_CONV_BIAS=conv_bias is not None, ZERO_OUT=fuse_out, num_warps=4)
    n_pad, r_pad = triton.next_power_of_2(N), triton.next_power_of_2(R)
    block_d = DECODE_CONFIG.get("step_block_d") or max(16, min(128, 4096 // max(n_pad, r_pad)))
    _ssm_step_kernel[(batch, triton.cdiv(d_inner, block_d))](
        x, z, conv_state, conv_weight, conv_b, partials, dt_proj_weight, dt_proj_bias, A_log,
        D if D is not None else A_log, ssm_state, y, out_proj_weight if fuse_out else y, out_acc,
        d_inner, R, N, O, ks, batch, d_model,
        x.stride(0), x.stride(1), z.stride(0), z.stride(1), conv_state.stride(0), conv_state.stride(1),
        conv_state.stride(2), conv_weight.stride(0), conv_weight.stride(1), dt_proj_weight.stride(0),
        dt_proj_weight.stride(1), y.stride(0),
        BLOCK_D=block_d, R_PAD=r_pad, N_PAD=n_pad, KS_PAD=triton.next_power_of_2(ks), WIDTH=width,
        HAS_CONV_BIAS=conv_bias is not None, HAS_D=D is not None, FUSE_OUT=fuse_out,
        BLOCK_M=max(16, 8192 // block_d), num_warps=4)
    return out_acc if fuse_out else y


@triton.jit
def _add_rms_norm_kernel(h_ptr, res_ptr, w_ptr, res_out_ptr, out_ptr, d_model, eps,
                         stride_hb, stride_rb, HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, BLOCK)
    mask = i < d_model
    r = _round(tl.load(h_ptr + row * stride_hb + i, mask=mask, other=0.0).to(tl.float32), out_ptr)
    if HAS_RESIDUAL:
        r += tl.load(res_ptr + row * stride_rb + i, mask=mask, other=0.0).to(tl.float32)
    tl.store(res_out_ptr + row * d_model + i, r, mask=mask)
    xn = _round(r, out_ptr)  # the reference normalises the residual rounded to the model dtype
    inv = 1.0 / tl.sqrt(tl.sum(xn * xn, axis=0) / d_model + eps)
    out = xn * inv * tl.load(w_ptr + i, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * d_model + i, out.to(out_ptr.dtype.element_ty), mask=mask)


def add_rms_norm_triton(hidden, residual, weight, eps):
    """hidden (rows, d_model) model dtype, residual (rows, d_model) float32 or None -> (normed in weight's
    dtype, residual' float32), both contiguous."""
    rows, d_model = hidden.shape
    res_out = torch.empty(rows, d_model, device=hidden.device, dtype=torch.float32)
    out = torch.empty(rows, d_model, device=hidden.device, dtype=weight.dtype)
    if rows == 0:
        return out, res_out
    block = triton.next_power_of_2(d_model)
    _add_rms_norm_kernel[(rows,)](
        hidden, residual if residual is not None else hidden, weight, res_out, out, d_model, eps,
        hidden.stride(0), residual.stride(0) if residual is not None else 0,
        HAS_RESIDUAL=residual is not None, BLOCK=block, num_warps=max(1, min(8, block // 256)))
    return out, res_out


@triton.jit
def _norm_in_proj_kernel(h_ptr, res_ptr, nw_ptr, w_ptr, res_out_ptr, xz_ptr, batch, d_model, n_out, eps,
                         stride_hb, stride_rb, stride_wn, stride_xzb,
                         HAS_RESIDUAL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         NUM_STAGES: tl.constexpr):
    """xz[b, n] = in_proj_w[n] · rms_norm(bf16(hidden[b] + residual[b])) · norm_w, for this program's BLOCK_N
    rows n and every batch row b (a GEMV with the residual add and RMSNorm as its prologue: each program
    recomputes the norm of the d_model-vector, program 0 writes residual')."""
    pid = tl.program_id(0)
    n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = n < n_out
    for b in range(batch):
        h_row = h_ptr + b * stride_hb
        r_row = res_ptr + b * stride_rb
        ss = tl.zeros([BLOCK_K], dtype=tl.float32)
        for k0 in range(0, d_model, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            mask_k = k < d_model
            r = _round(tl.load(h_row + k, mask=mask_k, other=0.0).to(tl.float32), xz_ptr)
            if HAS_RESIDUAL:
                r += tl.load(r_row + k, mask=mask_k, other=0.0).to(tl.float32)
            tl.store(res_out_ptr + b * d_model + k, r, mask=mask_k & (pid == 0))
            xn = _round(r, xz_ptr)
            ss += xn * xn
        inv = 1.0 / tl.sqrt(tl.sum(ss, axis=0) / d_model + eps)
        acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        for k0 in tl.range(0, d_model, BLOCK_K, num_stages=NUM_STAGES):
            k = k0 + tl.arange(0, BLOCK_K)
            mask_k = k < d_model
            r = _round(tl.load(h_row + k, mask=mask_k, other=0.0).to(tl.float32), xz_ptr)
            if HAS_RESIDUAL:
                r += tl.load(r_row + k, mask=mask_k, other=0.0).to(tl.float32)
            xn = _round(_round(r, xz_ptr) * inv * tl.load(nw_ptr + k, mask=mask_k, other=0.0).to(tl.float32), xz_ptr)
            w = tl.load(w_ptr + n[:, None] * stride_wn + k[None, :], mask=mask_n[:, None] & mask_k[None, :],
                        other=0.0).to(tl.float32)
            acc += w * xn[None, :]
        tl.store(xz_ptr + b * stride_xzb + n, tl.sum(acc, axis=1).to(xz_ptr.dtype.element_ty), mask=mask_n)


def norm_in_proj_triton(hidden, residual, norm_weight, eps, in_proj_weight, block_n=16, block_k=256, num_stages=3):
    """hidden (batch, d_model) model dtype or float32 (rounded to the model dtype first), residual (batch,
    d_model) float32 or None -> (xz (batch, 2·d_inner) in norm_weight's dtype, residual' float32):
    in_proj(rms_norm(hidden + residual)) in one kernel where `use_gemv`, else add + norm and cuBLAS."""
    batch, d_model = hidden.shape
    if not use_gemv(batch, in_proj_weight):
        normed, res_out = add_rms_norm_triton(hidden, residual, norm_weight, eps)
        return torch.nn.functional.linear(normed, in_proj_weight), res_out
    n_out = in_proj_weight.shape[0]
    res_out = torch.empty(batch, d_model, device=hidden.device, dtype=torch.float32)
    xz = torch.empty(batch, n_out, device=hidden.device, dtype=norm_weight.dtype)
    block_k = min(block_k, triton.next_power_of_2(d_model))
    _norm_in_proj_kernel[(triton.cdiv(n_out, block_n),)](
        hidden, residual if residual is not None else hidden, norm_weight, in_proj_weight, res_out, xz,
        batch, d_model, n_out, eps, hidden.stride(0), residual.stride(0) if residual is not None else 0,
        in_proj_weight.stride(0), xz.stride(0),
        HAS_RESIDUAL=residual is not None, BLOCK_N=block_n, BLOCK_K=block_k, NUM_STAGES=num_stages, num_warps=4)
    return xz, res_out
