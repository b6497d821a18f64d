"""One persistent Triton kernel for all the layers of a Mamba LM decoding step at batch 1 (small models).

Imported lazily by `effprof.ops.mamba_decode` (this module imports triton). The math is the per-layer kernels'
`norm_in` mode (`mamba_decode_layer_triton.py`: each layer's first phase adds the residual and normalises
itself; out_proj fused into the state update with float32 atomics), which is the step-by-step reference
(`mamba_decode_step_ref` between `add_rms_norm_ref`, in_proj and out_proj) with its roundings to the model
dtype. What changes is where the layers' phases run: instead of two kernels per layer (74 launches for
Mamba-130m, each a launch and a wait on the previous kernel), G programs (G <= the number of SMs, so all are
resident at once) loop over the layers and meet at a grid barrier between phases:

  phase A of layer l (units of BLOCK_N in_proj rows, unit v on program v mod G): residual' = bf16(acc[p]) +
      res[p], its RMSNorm (every program computes it: d_model numbers from L2), in_proj rows; x rows then the
      conv-state step and the unit's share of x_proj into xacc[p] (atomics); program 0 writes res[q] and zeroes
      xacc[q] for the next layer.                                   (p = l mod 2, q = 1 - p)
  barrier
  phase B of layer l (units of BLOCK_D channels): dt_proj, softplus, the state update, y, and the unit's share
      of out_proj into acc[q] (atomics); program 0 zeroes acc[p] for the layer after next.
  barrier
and after the last layer program 0 writes norm_f(bf16(acc) + res) to `normed`. The barrier is the
cooperative-groups grid sync: a CTA barrier, one release atomic increment of a counter that only grows during
the step (the prologue kernel zeroes it), spinning on acquire reads until it reaches (barriers so far) x G,
a CTA barrier. Reads of what other programs wrote in this kernel bypass L1 (`.cg`).

With L2 prefetch on, each program asks L2 for its share of the next layer's weights and states during the
current layer (and for layer 0's before waiting on the prologue), and for the first `head_count` elements of
the LM head (`head_ptr`, the tied embedding) during the last layer: the layers are latency-bound, so the
DRAM is otherwise idle while they run.

The interpreter runs programs one after another, so a spinning barrier would never return: `SYNC=False`
runs phases [ph_begin, ph_end) without barriers and the host launches one grid per phase (a kernel boundary
is a grid barrier), the same code. The tests check that model on CPU; the GPU runs the barrier.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from effprof.ops.causal_conv1d_triton import _silu_f32, conv_state_step
from effprof.ops.l2_prefetch_triton import prefetch_l2_share
from effprof.ops.mamba_decode_layer_triton import _wait_previous_kernel
from effprof.ops.mamba_decode_triton import LOG2E_C, _round, _softplus_exact

# columns of the per-layer table of element offsets (from layer 0's tensor of the same kind)
IN, CONV_W, CONV_B, XPROJ, DT_W, DT_B, A_LOG, D_SKIP, OUT, NORM_W, CONV_S, SSM_S = range(12)
N_COLS = 12


@triton.jit
def _grid_sync(count_ptr, target, SYNC: tl.constexpr):
    """Wait until `target` arrivals have been counted, this program's included (module docstring)."""
    if SYNC:
        tl.debug_barrier()
        tl.atomic_add(count_ptr, 1, sem="release", scope="gpu")
        seen = tl.atomic_add(count_ptr, 0, sem="acquire", scope="gpu")
        while seen < target:
            seen = tl.atomic_add(count_ptr, 0, sem="acquire", scope="gpu")
        tl.debug_barrier()


@triton.jit
def _at(base_ptr, tab_ptr, layer, col, NCOL: tl.constexpr):
    """Layer `layer`'s tensor of kind `col`: layer 0's pointer plus the table's element offset (a multiple
    of 16 elements, checked by the host: keeps 16-byte vector loads)."""
    return base_ptr + tl.multiple_of(tl.load(tab_ptr + layer * NCOL + col), 16)


@triton.jit
def _prefetch_layer(tab_ptr, layer, in_ptr, xproj_ptr, dtw_ptr, alog_ptr, out_ptr, conv_s_ptr, ssm_ptr,
                    n_in, n_xproj, n_dtw, n_alog, n_out, n_conv_s, n_ssm, NCOL: tl.constexpr,
                    EPL2: tl.constexpr, EPL4: tl.constexpr, ENABLE: tl.constexpr):
    """This program's share of layer `layer`'s weights and states, into L2 (EPL2 / EPL4: elements per
    128-byte line of the 2- and 4-byte tensors)."""
    if ENABLE:
        prefetch_l2_share(_at(in_ptr, tab_ptr, layer, 0, NCOL), n_in, EPL2, 256, ENABLE)
        prefetch_l2_share(_at(out_ptr, tab_ptr, layer, 8, NCOL), n_out, EPL2, 256, ENABLE)
        prefetch_l2_share(_at(xproj_ptr, tab_ptr, layer, 3, NCOL), n_xproj, EPL2, 256, ENABLE)
        prefetch_l2_share(_at(dtw_ptr, tab_ptr, layer, 4, NCOL), n_dtw, EPL2, 256, ENABLE)
        prefetch_l2_share(_at(alog_ptr, tab_ptr, layer, 6, NCOL), n_alog, EPL4, 256, ENABLE)
        prefetch_l2_share(_at(conv_s_ptr, tab_ptr, layer, 10, NCOL), n_conv_s, EPL2, 256, ENABLE)
        prefetch_l2_share(_at(ssm_ptr, tab_ptr, layer, 11, NCOL), n_ssm, EPL4, 256, ENABLE)


@triton.jit
def _phase_in(tab_ptr, layer, pid, G, in_ptr, conv_w_ptr, conv_b_ptr, xproj_ptr, nw_ptr, conv_s_ptr,
              xz_ptr, acc_p, res_p, res_q, xacc_p, xacc_q, d_model, d_inner, O, eps,
              stride_wn, stride_st, stride_sc, stride_cwc, stride_cwk, stride_wxo, stride_wxc,
              NCOL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, O_PAD: tl.constexpr,
              WIDTH: tl.constexpr, HAS_CONV_BIAS: tl.constexpr):
    """Phase A of one layer (module docstring) for the units of program `pid`."""
    w_in = _at(in_ptr, tab_ptr, layer, 0, NCOL)
    k = tl.arange(0, BLOCK_K)
    mask_k = k < d_model
    r = _round(tl.load(acc_p + k, mask=mask_k, other=0.0, cache_modifier=".cg"), xz_ptr) + \
        tl.load(res_p + k, mask=mask_k, other=0.0, cache_modifier=".cg")
    xr = _round(r, xz_ptr)
    inv = 1.0 / tl.sqrt(tl.sum(xr * xr, axis=0) / d_model + eps)
    nw = tl.load(_at(nw_ptr, tab_ptr, layer, 9, NCOL) + k, mask=mask_k, other=0.0).to(tl.float32)
    xn = _round(xr * inv * nw, xz_ptr)
    o = tl.arange(0, O_PAD)
    if pid == 0:
        tl.store(res_q + k, r, mask=mask_k)
        tl.store(xacc_q + o, tl.zeros([O_PAD], dtype=tl.float32), mask=o < O)
    conv_w = _at(conv_w_ptr, tab_ptr, layer, 1, NCOL)
    conv_b = _at(conv_b_ptr, tab_ptr, layer, 2, NCOL)
    conv_s = _at(conv_s_ptr, tab_ptr, layer, 10, NCOL)
    w_x = _at(xproj_ptr, tab_ptr, layer, 3, NCOL)
    n_units = tl.cdiv(2 * d_inner, BLOCK_N)
    for v in range(pid, n_units, G):
        n = v * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = n < 2 * d_inner
        mask_x = n < d_inner
        w = tl.load(w_in + n[:, None] * stride_wn + k[None, :], mask=mask_n[:, None] & mask_k[None, :], other=0.0)
        val = _round(tl.sum(w.to(tl.float32) * xn[None, :], axis=1), xz_ptr)  # in_proj's output, model dtype
        tl.store(xz_ptr + n, val.to(xz_ptr.dtype.element_ty), mask=mask_n & (n >= d_inner))  # z
        if v * BLOCK_N < d_inner:  # x rows: the conv step (shifting the state), then x_proj's share
            rows = conv_s + n.to(tl.int64) * stride_sc
            xc = _round(conv_state_step(val, rows, conv_w, conv_b, n, mask_x, stride_st, stride_cwc, stride_cwk,
                                        WIDTH, HAS_CONV_BIAS, True, True), xz_ptr)
            tl.store(xz_ptr + n, xc.to(xz_ptr.dtype.element_ty), mask=mask_x)
            tl.debug_barrier()  # read back in the x_proj tile's layout (as _layer_in_kernel does)
            xc = tl.load(xz_ptr + n, mask=mask_x, other=0.0, cache_modifier=".cg").to(tl.float32)
            wx = tl.load(w_x + o[:, None] * stride_wxo + n[None, :] * stride_wxc,
                         mask=(o < O)[:, None] & mask_x[None, :], other=0.0).to(tl.float32)
            tl.atomic_add(xacc_p + o, tl.sum(wx * xc[None, :], axis=1), mask=o < O, sem="relaxed")


@triton.jit
def _phase_ssm(tab_ptr, layer, pid, G, dtw_ptr, dtb_ptr, alog_ptr, d_ptr, out_ptr, ssm_ptr, xz_ptr, xacc_p,
               acc_q, acc_p, d_inner, d_model, R, N, stride_wdt_d, stride_wdt_r, stride_wo,
               NCOL: tl.constexpr, BLOCK_D: tl.constexpr, R_PAD: tl.constexpr, N_PAD: tl.constexpr,
               BLOCK_MODEL: tl.constexpr, HAS_D: tl.constexpr):
    """Phase B of one layer (module docstring) for the units of program `pid`."""
    m_all = tl.arange(0, BLOCK_MODEL)
    if pid == 0:
        tl.store(acc_p + m_all, tl.zeros([BLOCK_MODEL], dtype=tl.float32), mask=m_all < d_model)
    r = tl.arange(0, R_PAD)
    n = tl.arange(0, N_PAD)
    mask_n = n < N
    dt_low = _round(tl.load(xacc_p + r, mask=r < R, other=0.0, cache_modifier=".cg"), xz_ptr)
    Bv = _round(tl.load(xacc_p + R + n, mask=mask_n, other=0.0, cache_modifier=".cg"), xz_ptr)
    Cv = _round(tl.load(xacc_p + R + N + n, mask=mask_n, other=0.0, cache_modifier=".cg"), xz_ptr)
    wdt_l = _at(dtw_ptr, tab_ptr, layer, 4, NCOL)
    dtb_l = _at(dtb_ptr, tab_ptr, layer, 5, NCOL)
    alog_l = _at(alog_ptr, tab_ptr, layer, 6, NCOL)
    d_l = _at(d_ptr, tab_ptr, layer, 7, NCOL)
    out_l = _at(out_ptr, tab_ptr, layer, 8, NCOL)
    ssm_l = _at(ssm_ptr, tab_ptr, layer, 11, NCOL)
    for u in range(pid, tl.cdiv(d_inner, BLOCK_D), G):
        d = u * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_d = d < d_inner
        mask_dn = mask_d[:, None] & mask_n[None, :]
        wdt = tl.load(wdt_l + d[:, None] * stride_wdt_d + r[None, :] * stride_wdt_r,
                      mask=mask_d[:, None] & (r < R)[None, :], other=0.0).to(tl.float32)
        A2 = -tl.exp(tl.load(alog_l + d[:, None] * N + n[None, :], mask=mask_dn, other=0.0).to(tl.float32)) * LOG2E_C
        ssm_offs = d[:, None] * N + n[None, :]
        h = tl.load(ssm_l + ssm_offs, mask=mask_dn, other=0.0)
        w_out = tl.load(out_l + m_all[:, None] * stride_wo + d[None, :],
                        mask=(m_all < d_model)[:, None] & mask_d[None, :], other=0.0)
        xc = tl.load(xz_ptr + d, mask=mask_d, other=0.0, cache_modifier=".cg").to(tl.float32)
        z = tl.load(xz_ptr + d_inner + d, mask=mask_d, other=0.0, cache_modifier=".cg").to(tl.float32)
        dt = _round(tl.sum(wdt * dt_low[None, :], axis=1), xz_ptr)
        dt = _softplus_exact(dt + tl.load(dtb_l + d, mask=mask_d, other=0.0).to(tl.float32))
        h = tl.exp2(dt[:, None] * A2) * h + (dt * xc)[:, None] * Bv[None, :]
        tl.store(ssm_l + ssm_offs, h, mask=mask_dn)
        y = tl.sum(h * Cv[None, :], axis=1)
        if HAS_D:
            y += tl.load(d_l + d, mask=mask_d, other=0.0).to(tl.float32) * xc
        y = _round(y * _silu_f32(z), xz_ptr)  # out_proj reads y in the model dtype
        tl.atomic_add(acc_q + m_all, tl.sum(w_out.to(tl.float32) * y[None, :], axis=1), mask=m_all < d_model,
                      sem="relaxed")


@triton.jit
def _step_persistent_kernel(tab_ptr, in_ptr, conv_w_ptr, conv_b_ptr, xproj_ptr, dtw_ptr, dtb_ptr, alog_ptr, d_ptr,
                            out_ptr, nw_ptr, conv_s_ptr, ssm_ptr, nf_ptr, head_ptr, head_count,
                            xz_ptr, acc_ptr, res_ptr, xacc_ptr, normed_ptr, count_ptr,
                            n_layer, ph_begin, ph_end, d_model, d_inner, O, R, N, eps,
                            stride_wn, stride_st, stride_sc, stride_cwc, stride_cwk, stride_wxo, stride_wxc,
                            stride_wdt_d, stride_wdt_r, stride_wo,
                            n_in, n_xproj, n_dtw, n_alog, n_out, n_conv_s, n_ssm,
                            NCOL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, O_PAD: tl.constexpr,
                            WIDTH: tl.constexpr, HAS_CONV_BIAS: tl.constexpr, BLOCK_D: tl.constexpr,
                            R_PAD: tl.constexpr, N_PAD: tl.constexpr, HAS_D: tl.constexpr, SYNC: tl.constexpr,
                            FINAL: tl.constexpr, L2: tl.constexpr, EPL2: tl.constexpr, EPL4: tl.constexpr,
                            USE_PDL: tl.constexpr):
    """Phases [ph_begin, ph_end) (phase 2l: layer l's A, 2l + 1: its B), with a grid barrier after each when
    SYNC; then (FINAL) norm_f by program 0. acc, res, xacc: (2, d_model) / (2, d_model) / (2, O) float32."""
    pid = tl.program_id(0)
    G = tl.num_programs(0)
    if ph_begin == 0:
        _prefetch_layer(tab_ptr, 0, in_ptr, xproj_ptr, dtw_ptr, alog_ptr, out_ptr, conv_s_ptr, ssm_ptr, n_in,
                        n_xproj, n_dtw, n_alog, n_out, n_conv_s, n_ssm, NCOL, EPL2, EPL4, L2)
    _wait_previous_kernel(USE_PDL)
    for ph in range(ph_begin, ph_end):
        layer = ph // 2
        p = layer % 2
        q = 1 - p
        if ph % 2 == 0:
            if layer + 1 < n_layer:
                _prefetch_layer(tab_ptr, layer + 1, in_ptr, xproj_ptr, dtw_ptr, alog_ptr, out_ptr, conv_s_ptr,
                                ssm_ptr, n_in, n_xproj, n_dtw, n_alog, n_out, n_conv_s, n_ssm, NCOL, EPL2, EPL4, L2)
            else:
                prefetch_l2_share(head_ptr, head_count, EPL2, 256, L2)
            _phase_in(tab_ptr, layer, pid, G, in_ptr, conv_w_ptr, conv_b_ptr, xproj_ptr, nw_ptr, conv_s_ptr,
                      xz_ptr, acc_ptr + p * d_model, res_ptr + p * d_model, res_ptr + q * d_model, xacc_ptr + p * O,
                      xacc_ptr + q * O, d_model, d_inner, O, eps, stride_wn, stride_st, stride_sc, stride_cwc,
                      stride_cwk, stride_wxo, stride_wxc, NCOL, BLOCK_N, BLOCK_K, O_PAD, WIDTH, HAS_CONV_BIAS)
        else:
            _phase_ssm(tab_ptr, layer, pid, G, dtw_ptr, dtb_ptr, alog_ptr, d_ptr, out_ptr, ssm_ptr, xz_ptr,
                       xacc_ptr + p * O, acc_ptr + q * d_model, acc_ptr + p * d_model, d_inner, d_model, R, N,
                       stride_wdt_d, stride_wdt_r, stride_wo, NCOL, BLOCK_D, R_PAD, N_PAD, BLOCK_K, HAS_D)
        _grid_sync(count_ptr, (ph - ph_begin + 1) * G, SYNC)
    if FINAL:
        if pid == 0:  # norm_f of the last layer's output and residual' (buffers 1 - (n_layer - 1) mod 2)
            q = 1 - (n_layer - 1) % 2
            i = tl.arange(0, BLOCK_K)
            mask = i < d_model
            r = _round(tl.load(acc_ptr + q * d_model + i, mask=mask, other=0.0, cache_modifier=".cg"), normed_ptr) \
                + tl.load(res_ptr + q * d_model + i, mask=mask, other=0.0, cache_modifier=".cg")
            xn = _round(r, normed_ptr)
            inv = 1.0 / tl.sqrt(tl.sum(xn * xn, axis=0) / d_model + eps)
            out = xn * inv * tl.load(nf_ptr + i, mask=mask, other=0.0).to(tl.float32)
            tl.store(normed_ptr + i, out.to(normed_ptr.dtype.element_ty), mask=mask)


KINDS = ("in_proj_weight", "conv_weight", "conv_bias", "x_proj_weight", "dt_proj_weight", "dt_proj_bias", "A_log",
         "D", "out_proj_weight", "norm_weight", "conv_state", "ssm_state")  # the table's columns, in order
_TABLES: dict = {}  # (data pointers, device) -> the device table; built outside CUDA graph capture, then reused


def layer_table(tensors: dict) -> tuple | None:
    """tensors[kind] = the n_layer tensors of that kind (KINDS) -> (layer-0 tensors, the (n_layer, 12) int64
    table of element offsets from them, on their device), or None where the layers cannot share one kernel:
    shapes, strides or dtypes differ between layers, or an offset is not a multiple of 16 elements. The
    table is cached by the tensors' addresses; None too during CUDA graph capture before it is cached
    (a host-to-device copy cannot be captured)."""
    firsts = {kind: tensors[kind][0] for kind in KINDS}
    key = tuple(t.data_ptr() for kind in KINDS for t in tensors[kind]) + tuple(str(firsts[kind].dtype) for kind in
                                                                               KINDS) + (str(firsts[KINDS[0]].device),)
    if key in _TABLES:
        return firsts, _TABLES[key]
    device = firsts["in_proj_weight"].device
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return None
    rows = []
    for layer in range(len(tensors["in_proj_weight"])):
        row = []
        for kind in KINDS:
            t, t0 = tensors[kind][layer], firsts[kind]
            if t.shape != t0.shape or t.stride() != t0.stride() or t.dtype != t0.dtype:
                return None
            delta = t.data_ptr() - t0.data_ptr()
            if delta % (16 * t.element_size()):
                return None
            row.append(delta // t.element_size())
        rows.append(row)
    if len(_TABLES) > 16:
        _TABLES.clear()
    _TABLES[key] = torch.tensor(rows, dtype=torch.int64, device=device)
    return firsts, _TABLES[key]


def step_persistent_triton(firsts: dict, table: torch.Tensor, n_layer: int, norm_f_weight, eps, work,
                           head_weight=None, head_bytes=0, programs=None, block_n=16, block_d=16, num_warps=8,
                           l2=False, pdl=False, sync=None):
    """All layers of one batch-1 step after `decode_prologue_triton` (module docstring): reads work.acc[0] and
    work.residual[0] (the prologue's embedding row), leaves norm_f's output in work.normed. `programs`: G
    (default: the number of SMs; under the interpreter 3, so that units wrap around programs); `sync`: run the
    grid barrier (default on a GPU) or one launch per phase (the interpreter's model of it)."""
    from effprof.ops.l2_prefetch_triton import l2_prefetch_ok
    from effprof.ops.mamba_decode_layer_triton import _pdl
    from effprof.ops.selective_scan import triton_interpret_mode

    interpret = triton_interpret_mode()
    sync = (not interpret) if sync is None else sync
    if sync and interpret:
        raise ValueError("the grid barrier cannot run under the interpreter (programs run one after another)")
    device = firsts["in_proj_weight"].device
    if programs is None:
        programs = 3 if interpret else torch.cuda.get_device_properties(device).multi_processor_count
    d_model, d_inner = work.d_model, work.d_inner
    R, N, O = firsts["dt_proj_weight"].shape[1], firsts["A_log"].shape[1], work.O
    in_w, conv_w, x_w, dt_w = (firsts[k] for k in ("in_proj_weight", "conv_weight", "x_proj_weight",
                                                   "dt_proj_weight"))
    conv_s, ssm_s, out_w = firsts["conv_state"], firsts["ssm_state"], firsts["out_proj_weight"]
    l2 = bool(l2) and l2_prefetch_ok()
    head = head_weight if head_weight is not None else in_w
    head_count = min(head.numel(), head_bytes // head.element_size()) if (l2 and head_weight is not None) else 0
    pdl_options = _pdl(pdl)
    args = (table, in_w, conv_w, firsts["conv_bias"], x_w, dt_w, firsts["dt_proj_bias"], firsts["A_log"],
            firsts["D"], out_w, firsts["norm_weight"], conv_s, ssm_s, norm_f_weight, head, head_count,
            work.xz, work.acc, work.residual, work.xacc, work.normed, work.count, n_layer)
    sizes = (d_model, d_inner, O, R, N, eps, in_w.stride(0), conv_s.stride(2), conv_s.stride(1), conv_w.stride(0),
             conv_w.stride(1), x_w.stride(0), x_w.stride(1), dt_w.stride(0), dt_w.stride(1), out_w.stride(0),
             in_w.numel(), x_w.numel(), dt_w.numel(), firsts["A_log"].numel(), out_w.numel(), conv_s.numel(),
             ssm_s.numel())
    meta = dict(NCOL=N_COLS, BLOCK_N=block_n, BLOCK_K=triton.next_power_of_2(d_model),
                O_PAD=triton.next_power_of_2(O), WIDTH=conv_w.shape[-1], HAS_CONV_BIAS=firsts["has_conv_bias"],
                BLOCK_D=block_d, R_PAD=triton.next_power_of_2(R), N_PAD=triton.next_power_of_2(N),
                HAS_D=firsts["has_D"], L2=l2, EPL2=64, EPL4=32, num_warps=num_warps)
    if sync:
        _step_persistent_kernel[(programs,)](*args, 0, 2 * n_layer, *sizes, SYNC=True, FINAL=True, **meta,
                                             **pdl_options)
        return
    for ph in range(2 * n_layer + 1):  # one grid per phase, then the final norm alone
        final = ph == 2 * n_layer
        _step_persistent_kernel[(programs,)](*args, ph, ph if final else ph + 1, *sizes, SYNC=False, FINAL=final,
                                             **meta, USE_PDL=False)
