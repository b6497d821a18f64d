"""Triton kernels of the selective scan (forward only) and of its one-step state update.

Imported lazily by `effprof.ops.selective_scan` (this module imports triton at import time, the core
package never does). Math and shapes are those of `selective_scan_ref` (Gu & Dao 2023, Alg. 2):
h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t, y_t = <C_t, h_t> + D u_t, y *= silu(z).

Scan kernel: one program per (batch, block of BLOCK_D channels). It walks the sequence in chunks of
CHUNK time steps; u, delta, z are loaded as [BLOCK_D, CHUNK] tiles (contiguous along time, so coalesced)
and B, C as [N, CHUNK] tiles. Within a chunk the linear recurrence h_t = a_t h_{t-1} + b_t is an
associative scan over time with the combine (a1, b1), (a2, b2) -> (a1 a2, a2 b1 + b2) (Blelloch 1990;
the same parallel form as Mamba's CUDA kernel), on [BLOCK_D, N, CHUNK] tiles; the state entering the
chunk is applied afterwards as h_t = A_cum,t h_prev + B_cum,t and the last column is carried to the next
chunk. exp is exp2 with A pre-scaled by log2(e); all arithmetic is float32; softplus(delta + bias), the
D skip and the silu(z) gate are fused, and the last state is written (float32).

Two variants share that plan: "tile3d" scans all states at once on [BLOCK_D, N, CHUNK] tiles;
"perstate" loops over the N states (unrolled) on [BLOCK_D, CHUNK] tiles, the layout of Mamba's CUDA
kernel. `DEFAULT_CONFIG` holds the variant and block sizes measured fastest (benchmarks/scan_notes.md).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453

# Measured on an H100 (benchmarks/scan_notes.md); overridable per call for tuning.
DEFAULT_CONFIG = {"variant": "tile3d", "BLOCK_D": 4, "CHUNK": 64, "num_warps": 4}


@triton.jit
def _scan_combine(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(x):
    # log(1 + e^x) through exp2/log2; identity above 20 (torch's threshold, and Mamba's kernel's)
    return tl.where(x <= 20.0, tl.log2(1.0 + tl.exp2(x * 1.4426950408889634)) * 0.6931471805599453, x)


@triton.jit
def _load_chunk(u_ptr, delta_ptr, bias, row_off, t_offs, mask_dt, HAS_DELTA_BIAS: tl.constexpr,
                DELTA_SOFTPLUS: tl.constexpr):
    """u and processed delta for one [BLOCK_D, CHUNK] tile, float32; masked entries give delta = 0."""
    offs = row_off[:, None] + t_offs[None, :]
    u = tl.load(u_ptr + offs, mask=mask_dt, other=0.0).to(tl.float32)
    delta = tl.load(delta_ptr + offs, mask=mask_dt, other=0.0).to(tl.float32)
    if HAS_DELTA_BIAS:
        delta = delta + bias[:, None]
    if DELTA_SOFTPLUS:
        delta = _softplus(delta)
    # padded steps must be the scan's identity (a = 1, b = 0) so the carried state stays exact
    delta = tl.where(mask_dt, delta, 0.0)
    return u, delta


@triton.jit
def _finish_chunk(y, u, Dv, z_ptr, y_ptr, offs, mask_dt, HAS_D: tl.constexpr, HAS_Z: tl.constexpr):
    if HAS_D:
        y = y + Dv[:, None] * u
    if HAS_Z:
        z = tl.load(z_ptr + offs, mask=mask_dt, other=0.0).to(tl.float32)
        y = y * z / (1.0 + tl.exp2(-z * 1.4426950408889634))
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask_dt)


@triton.jit
def _scan_tile3d_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, last_ptr,
                        d_inner, L, N,
                        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr,
                        DELTA_SOFTPLUS: tl.constexpr, BLOCK_D: tl.constexpr, N_PAD: tl.constexpr,
                        CHUNK: tl.constexpr):
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    d_offs = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    n_offs = tl.arange(0, N_PAD)
    mask_d = d_offs < d_inner
    mask_n = n_offs < N
    mask_dn = mask_d[:, None] & mask_n[None, :]
    # A scaled by log2(e) so that exp(delta A) = exp2(delta A2); padded states get A = 0 (decay 1)
    A2 = tl.load(A_ptr + d_offs[:, None] * N + n_offs[None, :], mask=mask_dn, other=0.0).to(tl.float32) * 1.4426950408889634
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_DELTA_BIAS:
        bias = tl.load(bias_ptr + d_offs, mask=mask_d, other=0.0).to(tl.float32)
    Dv = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + d_offs, mask=mask_d, other=0.0).to(tl.float32)
    row_off = (pid_b * d_inner + d_offs).to(tl.int64) * L
    bc_off = (pid_b * N + n_offs).to(tl.int64) * L
    h = tl.zeros([BLOCK_D, N_PAD], dtype=tl.float32)
    t_local = tl.arange(0, CHUNK)
    is_last = (t_local == CHUNK - 1)[None, None, :]
    for start in range(0, L, CHUNK):
        t_offs = start + t_local
        mask_t = t_offs < L
        mask_dt = mask_d[:, None] & mask_t[None, :]
        u, delta = _load_chunk(u_ptr, delta_ptr, bias, row_off, t_offs, mask_dt, HAS_DELTA_BIAS, DELTA_SOFTPLUS)
        mask_nt = mask_n[:, None] & mask_t[None, :]
        bc_offs = bc_off[:, None] + t_offs[None, :]
        Bt = tl.load(B_ptr + bc_offs, mask=mask_nt, other=0.0).to(tl.float32)
        Ct = tl.load(C_ptr + bc_offs, mask=mask_nt, other=0.0).to(tl.float32)
        a = tl.exp2(delta[:, None, :] * A2[:, :, None])                   # [BLOCK_D, N_PAD, CHUNK]
        b = (delta * u)[:, None, :] * Bt[None, :, :]
        a_cum, b_cum = tl.associative_scan((a, b), axis=2, combine_fn=_scan_combine)
        hs = a_cum * h[:, :, None] + b_cum
        y = tl.sum(hs * Ct[None, :, :], axis=1)                            # [BLOCK_D, CHUNK]
        h = tl.sum(tl.where(is_last, hs, 0.0), axis=2)
        _finish_chunk(y, u, Dv, z_ptr, y_ptr, row_off[:, None] + t_offs[None, :], mask_dt, HAS_D, HAS_Z)
    last_offs = (pid_b * d_inner + d_offs)[:, None].to(tl.int64) * N + n_offs[None, :]
    tl.store(last_ptr + last_offs, h, mask=mask_dn)


@triton.jit
def _scan_perstate_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, last_ptr,
                          d_inner, L, N,
                          HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr,
                          DELTA_SOFTPLUS: tl.constexpr, BLOCK_D: tl.constexpr, N_PAD: tl.constexpr,
                          CHUNK: tl.constexpr):
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    d_offs = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    n_offs = tl.arange(0, N_PAD)
    mask_d = d_offs < d_inner
    mask_dn = mask_d[:, None] & (n_offs < N)[None, :]
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_DELTA_BIAS:
        bias = tl.load(bias_ptr + d_offs, mask=mask_d, other=0.0).to(tl.float32)
    Dv = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + d_offs, mask=mask_d, other=0.0).to(tl.float32)
    row_off = (pid_b * d_inner + d_offs).to(tl.int64) * L
    h = tl.zeros([BLOCK_D, N_PAD], dtype=tl.float32)
    t_local = tl.arange(0, CHUNK)
    is_last = (t_local == CHUNK - 1)[None, :]
    for start in range(0, L, CHUNK):
        t_offs = start + t_local
        mask_t = t_offs < L
        mask_dt = mask_d[:, None] & mask_t[None, :]
        u, delta = _load_chunk(u_ptr, delta_ptr, bias, row_off, t_offs, mask_dt, HAS_DELTA_BIAS, DELTA_SOFTPLUS)
        du = delta * u
        y = tl.zeros([BLOCK_D, CHUNK], dtype=tl.float32)
        h_next = tl.zeros([BLOCK_D, N_PAD], dtype=tl.float32)
        for n in tl.static_range(N_PAD):
            if True:  # padded states (n >= N) load A = B = 0: decay 1, no input, no output
                A2n = tl.load(A_ptr + d_offs * N + n, mask=mask_d & (n < N), other=0.0).to(tl.float32) * 1.4426950408889634
                bc_offs = (pid_b * N + n).to(tl.int64) * L + t_offs
                Bn = tl.load(B_ptr + bc_offs, mask=mask_t & (n < N), other=0.0).to(tl.float32)
                Cn = tl.load(C_ptr + bc_offs, mask=mask_t & (n < N), other=0.0).to(tl.float32)
                a = tl.exp2(delta * A2n[:, None])                           # [BLOCK_D, CHUNK]
                b = du * Bn[None, :]
                a_cum, b_cum = tl.associative_scan((a, b), axis=1, combine_fn=_scan_combine)
                h_n = tl.sum(tl.where(n_offs[None, :] == n, h, 0.0), axis=1)
                hs = a_cum * h_n[:, None] + b_cum
                y += hs * Cn[None, :]
                h_last = tl.sum(tl.where(is_last, hs, 0.0), axis=1)
                h_next = tl.where(n_offs[None, :] == n, h_last[:, None], h_next)
        h = h_next
        _finish_chunk(y, u, Dv, z_ptr, y_ptr, row_off[:, None] + t_offs[None, :], mask_dt, HAS_D, HAS_Z)
    last_offs = (pid_b * d_inner + d_offs)[:, None].to(tl.int64) * N + n_offs[None, :]
    tl.store(last_ptr + last_offs, h, mask=mask_dn)


_KERNELS = {"tile3d": _scan_tile3d_kernel, "perstate": _scan_perstate_kernel}


def _fix_interpreter_scalar_index() -> None:
    """Under TRITON_INTERPRET=1 with numpy >= 2.4, triton <= 3.6's interpreter turns a run-time scalar
    (a 1-element array) into a loop bound with `int(array)`, which numpy 2.4 rejects
    (triton-lang/triton#9171, fixed upstream by #9172). Apply that one-line fix, in interpret mode only."""
    import os
    if os.environ.get("TRITON_INTERPRET", "0") != "1":
        return
    from triton.runtime import interpreter
    original = interpreter._patch_lang_tensor
    if getattr(original, "effprof_fixed", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched.effprof_fixed = True
    interpreter._patch_lang_tensor = patched


_fix_interpreter_scalar_index()


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, config=None):
    """Fused forward scan. Shapes as `selective_scan_ref`; returns (y in u's dtype, last state float32).

    `config` overrides `DEFAULT_CONFIG` keys (variant, BLOCK_D, CHUNK, num_warps, num_stages) for tuning.
    """
    cfg = dict(DEFAULT_CONFIG, **(config or {}))
    batch, d_inner, L = u.shape
    N = A.shape[1]
    u, delta, A, B, C = (t.contiguous() for t in (u, delta, A, B, C))
    z = z.contiguous() if z is not None else None
    y = torch.empty_like(u)
    last_state = torch.empty(batch, d_inner, N, device=u.device, dtype=torch.float32)
    if L == 0:
        return y, last_state.zero_()
    dummy = u  # never read: the matching HAS_* flag is off
    grid = (batch, triton.cdiv(d_inner, cfg["BLOCK_D"]))
    _KERNELS[cfg["variant"]][grid](
        u, delta, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
        delta_bias if delta_bias is not None else dummy, y, last_state, d_inner, L, N,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_DELTA_BIAS=delta_bias is not None,
        DELTA_SOFTPLUS=bool(delta_softplus), BLOCK_D=cfg["BLOCK_D"], N_PAD=triton.next_power_of_2(N),
        CHUNK=min(cfg["CHUNK"], max(16, triton.next_power_of_2(L))), num_warps=cfg["num_warps"],
        **({"num_stages": cfg["num_stages"]} if cfg.get("num_stages") else {}))
    return y, last_state


@triton.jit
def _state_update_kernel(state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr,
                         d_inner, N,
                         HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr,
                         DT_SOFTPLUS: tl.constexpr, BLOCK_D: tl.constexpr, N_PAD: tl.constexpr):
    pid_b = tl.program_id(0)
    d_offs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    n_offs = tl.arange(0, N_PAD)
    mask_d = d_offs < d_inner
    mask_n = n_offs < N
    mask_dn = mask_d[:, None] & mask_n[None, :]
    row = pid_b * d_inner + d_offs
    state_offs = row[:, None].to(tl.int64) * N + n_offs[None, :]
    state = tl.load(state_ptr + state_offs, mask=mask_dn, other=0.0)
    x = tl.load(x_ptr + row, mask=mask_d, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + row, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_DT_BIAS:
        dt = dt + tl.load(bias_ptr + d_offs, mask=mask_d, other=0.0).to(tl.float32)
    if DT_SOFTPLUS:
        dt = _softplus(dt)
    A2 = tl.load(A_ptr + d_offs[:, None] * N + n_offs[None, :], mask=mask_dn, other=0.0).to(tl.float32) * 1.4426950408889634
    Bv = tl.load(B_ptr + pid_b * N + n_offs, mask=mask_n, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + pid_b * N + n_offs, mask=mask_n, other=0.0).to(tl.float32)
    state = tl.exp2(dt[:, None] * A2) * state + (dt * x)[:, None] * Bv[None, :]
    tl.store(state_ptr + state_offs, state, mask=mask_dn)
    y = tl.sum(state * Cv[None, :], axis=1)
    if HAS_D:
        y = y + tl.load(D_ptr + d_offs, mask=mask_d, other=0.0).to(tl.float32) * x
    if HAS_Z:
        z = tl.load(z_ptr + row, mask=mask_d, other=0.0).to(tl.float32)
        y = y * z / (1.0 + tl.exp2(-z * 1.4426950408889634))
    tl.store(y_ptr + row, y.to(y_ptr.dtype.element_ty), mask=mask_d)


def selective_state_update_triton(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One decoding step (shapes as `selective_state_update_ref`); `state` (contiguous fp32) updated in place."""
    if not state.is_contiguous():
        raise ValueError("selective_state_update (triton): state must be contiguous")
    batch, d_inner = x.shape
    N = A.shape[1]
    x, dt, A, B, C = (t.contiguous() for t in (x, dt, A, B, C))
    z = z.contiguous() if z is not None else None
    y = torch.empty_like(x)
    n_pad = triton.next_power_of_2(N)
    block_d = max(1, min(64, 2048 // n_pad))
    dummy = x
    grid = (batch, triton.cdiv(d_inner, block_d))
    _state_update_kernel[grid](
        state, x, dt, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
        dt_bias if dt_bias is not None else dummy, y, d_inner, N,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_DT_BIAS=dt_bias is not None,
        DT_SOFTPLUS=bool(dt_softplus), BLOCK_D=block_d, N_PAD=n_pad, num_warps=4)
    return y
