"""The forward selective scan in Gluon (Triton's explicit-layout dialect), for CUDA GPUs.

Same math and shapes as `selective_scan_triton._scan_chunked_kernel` (one program per batch and block
of channels, the sequence walked in chunks of CHUNK steps, a linear recurrence per state), written with
what Triton's `tl` cannot express (benchmarks/scan_notes.md, third session):
- **B and C go through shared memory once per chunk, as float32.** The chunk's [N, CHUNK] tiles are
  loaded coalesced (four values per thread), converted once and stored; each state then reads its two
  rows with 128-bit shared loads. The `tl` kernel has every thread unpack its own copy of every row
  (all channels of a program use the same B and C).
- **A pinned layout** [BLOCK_D, CHUNK / 8, 8]: 8 consecutive steps in each thread (16-byte bf16
  loads), the CHUNK / 8 lanes of a channel consecutive in a warp, so that the scan across them is a few
  raw shuffles (inline PTX) instead of Triton's generic scan, and the carry needs no reduction.
- **The next chunk is prefetched into registers** (u, delta, z as packed bf16, B and C tiles) while
  the current one computes.

Gluon has no interpreter, so this kernel runs on CUDA devices only: CPU CI runs the `tl` kernel under
TRITON_INTERPRET and compiles this one for sm_90; `test_cuda_kernels_match_reference` checks it on a
GPU. Imported lazily by `selective_scan_triton` when `gluon_available()`.
"""
from __future__ import annotations

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl


@gluon.jit
def _combine(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@gluon.jit
def _to_float32(x):
    """bf16 pairs -> float32 by one shift and one mask each (as the `tl` kernel's fast_unpack)."""
    if x.dtype == gl.bfloat16:
        return gl.inline_asm_elementwise("{ shl.b32 $0, $2, 16; and.b32 $1, $2, 0xffff0000; }", "=r,=r,r", [x],
                                         dtype=gl.float32, is_pure=True, pack=2)
    else:
        return x.to(gl.float32)


# _to_float32, _softplus and _silu are the `tl` kernel's helpers in Gluon's namespace (a Gluon kernel
# calls @gluon.jit functions only): keep the two in step.
@gluon.jit
def _softplus(x, FAST_MATH: gl.constexpr):
    # log(1 + e^x); identity above 20 (torch's threshold and Mamba's kernel's)
    e = 1.0 + gl.exp2(x * 1.4426950408889634)
    if FAST_MATH:  # one MUFU.LG2 instead of libm's polynomial
        lg = gl.inline_asm_elementwise("lg2.approx.f32 $0, $1;", "=r,r", [e], dtype=gl.float32, is_pure=True, pack=1)
    else:
        lg = gl.log2(e)
    return gl.where(x <= 20.0, lg * 0.6931471805599453, x)


@gluon.jit
def _silu(z, FAST_MATH: gl.constexpr):
    if FAST_MATH:  # z sigmoid(z) = z/2 (1 + tanh(z/2)): one MUFU.TANH
        half = 0.5 * z
        t = gl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=r,r", [half], dtype=gl.float32, is_pure=True,
                                      pack=1)
        return half + half * t
    else:
        return gl.fdiv(z, 1.0 + gl.exp2(-z * 1.4426950408889634), ieee_rounding=False)


@gluon.jit
def _exp2_poly(x):
    """2^x for x <= 0 on the FMA pipe instead of the special-function unit (as FlashAttention-4 does for part
    of its exponentials): x = j + f with j = round(x) by the 1.5·2^23 trick, 2^f by a degree-5 polynomial fitted
    on [-1/2, 1/2] (relative error 2.2e-7 in float32, ex2.approx's order), 2^j added to the exponent bits.
    x is clamped at -125 (2^-125 is 0 for a decay)."""
    x = gl.maximum(x, -125.0)
    t = x + 12582912.0
    f = x - (t - 12582912.0)
    p = 0.001326697038607031 * f + 0.00967545974550902
    p = p * f + 0.05550742616003119
    p = p * f + 0.2402212175356187
    p = p * f + 0.6931469491610641
    p = p * f + 1.0000000710296988
    bits = p.to(gl.int32, bitcast=True) + (t.to(gl.int32, bitcast=True) << 23)
    return bits.to(gl.float32, bitcast=True)


@gluon.constexpr_function
def _log2(n):
    return n.bit_length() - 1


@gluon.constexpr_function
def _shfl_up_combine_asm(offset, lanes, op):
    """PTX: take x from `offset` lanes up within segments of `lanes` lanes and, where that lane exists,
    combine it into the output tied to the last input: op "mul" ($0 = $0 * x) or "fma" ($0 = $1 * x + $0)."""
    c = (32 - lanes) << 8
    if op == "mul":
        return (f"{{ .reg .pred p; .reg .b32 t; shfl.sync.up.b32 t|p, $1, {offset}, {c}, -1; "
                f"@p mul.rn.f32 $0, $0, t; }}")
    return (f"{{ .reg .pred p; .reg .b32 t; shfl.sync.up.b32 t|p, $2, {offset}, {c}, -1; "
            f"@p fma.rn.f32 $0, $1, t, $0; }}")


@gluon.constexpr_function
def _shfl_exclusive_asm(lanes):
    """PTX: x from the lane before within the segment; the first lane keeps the tied input ($2)."""
    return (f"{{ .reg .pred p; .reg .b32 t; shfl.sync.up.b32 t|p, $1, 1, {(32 - lanes) << 8}, -1; "
            f"@p mov.b32 $0, t; }}")


@gluon.constexpr_function
def _shfl_last_asm(lanes):
    """PTX: x of the segment's last lane, in every lane of the segment."""
    return f"shfl.sync.idx.b32 $0, $1, {lanes - 1}, {((32 - lanes) << 8) | 0x1f}, -1;"


@gluon.jit
def _pick_last(a, b):
    return b


@gluon.jit
def _lanes_scan(a, b, TIME_LANES: gl.constexpr):
    """Inclusive scan of (a, b) pairs over the TIME_LANES lanes of a channel (one pair per thread, lanes
    consecutive): Kogge-Stone with shuffles, (a_prev, b_prev) then (a, b) -> (a a_prev, a b_prev + b);
    lanes without a predecessor at a distance keep theirs. Only b is returned (a of the last level is
    not needed)."""
    for k in gl.static_range(_log2(TIME_LANES)):
        b = gl.inline_asm_elementwise(_shfl_up_combine_asm(1 << k, TIME_LANES, "fma"), "=r,r,r,0", [a, b, b],
                                      dtype=gl.float32, is_pure=True, pack=1)
        if k + 1 < _log2(TIME_LANES):
            a = gl.inline_asm_elementwise(_shfl_up_combine_asm(1 << k, TIME_LANES, "mul"), "=r,r,0", [a, a],
                                          dtype=gl.float32, is_pure=True, pack=1)
    return b


@gluon.jit
def _scan_gluon_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, last_ptr,
                       d_inner, L,
                       N: gl.constexpr, N_PAD: gl.constexpr, HAS_D: gl.constexpr, HAS_Z: gl.constexpr,
                       HAS_DELTA_BIAS: gl.constexpr, DELTA_SOFTPLUS: gl.constexpr, CHUNK: gl.constexpr,
                       EVEN_L: gl.constexpr, EVEN_D: gl.constexpr, FAST_MATH: gl.constexpr,
                       POLY_EVERY: gl.constexpr, num_warps: gl.constexpr):
    """One program: batch pid(0), channels pid(1) * BLOCK_D + [0, BLOCK_D), the whole sequence.

    Tiles are [BLOCK_D, TIME_LANES, 8]: channel, lane on time, step within the thread (a chunk's step t =
    lane * 8 + step). Per chunk and state: a sequential scan of the thread's 8 steps (running products
    P and states hb from zero), the thread totals scanned across the channel's lanes by shuffles with
    the carried state folded into lane 0, the state entering each lane shuffled from the lane before,
    then h = P * h_in + hb for every step, and the chunk's last state broadcast from the last lane as
    the next chunk's carry. Carries are [BLOCK_D, TIME_LANES] (equal across a channel's lanes).
    """
    TIME_LANES: gl.constexpr = CHUNK // 8
    BLOCK_D: gl.constexpr = (32 // TIME_LANES) * num_warps
    tile: gl.constexpr = gl.BlockedLayout([1, 1, 8], [32 // TIME_LANES, TIME_LANES, 1], [num_warps, 1, 1], [2, 1, 0])
    lanes_l: gl.constexpr = gl.SliceLayout(2, tile)    # [BLOCK_D, TIME_LANES]: one value per thread
    rows_l: gl.constexpr = gl.SliceLayout(1, lanes_l)  # [BLOCK_D]
    bc_l: gl.constexpr = gl.BlockedLayout([1, 1, 4], [32 // (2 * TIME_LANES), TIME_LANES, 2], [num_warps, 1, 1],
                                          [2, 1, 0])
    smem_l: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [2, 1, 0])

    pid_b = gl.program_id(0)
    d_offs = gl.program_id(1) * BLOCK_D + gl.arange(0, BLOCK_D, layout=rows_l)
    mask_d = d_offs < d_inner
    bias = gl.zeros([BLOCK_D], gl.float32, rows_l)
    if HAS_DELTA_BIAS:
        bias = gl.load(bias_ptr + d_offs, mask=mask_d, other=0.0).to(gl.float32)
    Dv = gl.zeros([BLOCK_D], gl.float32, rows_l)
    if HAS_D:
        Dv = gl.load(D_ptr + d_offs, mask=mask_d, other=0.0).to(gl.float32)
    bias = gl.expand_dims(gl.expand_dims(bias, 1), 2)
    Dv = gl.expand_dims(gl.expand_dims(Dv, 1), 2)
    A2 = ()  # A log2(e) as [BLOCK_D, 1]: exp(delta A) = exp2(delta A2)
    h = ()   # carried states, [BLOCK_D, TIME_LANES]
    for n in gl.static_range(N):
        An = gl.load(A_ptr + d_offs * N + n, mask=mask_d, other=0.0).to(gl.float32) * 1.4426950408889634
        A2 = A2 + (gl.expand_dims(An, 1),)
        h = h + (gl.zeros([BLOCK_D, TIME_LANES], gl.float32, lanes_l),)

    lane = gl.arange(0, TIME_LANES, layout=gl.SliceLayout(0, lanes_l))
    step = gl.arange(0, 8, layout=gl.SliceLayout(0, gl.SliceLayout(1, tile)))
    t3 = gl.expand_dims(gl.expand_dims(lane * 8, 0), 2) + gl.expand_dims(gl.expand_dims(step, 0), 1)  # [1, TL, 8]
    first_lane = gl.expand_dims(lane == 0, 0)                                                       # [1, TL]
    rows = (pid_b * d_inner + d_offs).to(gl.int64)
    offs = gl.expand_dims(gl.expand_dims(rows * L, 1), 2) + t3     # [BLOCK_D, TL, 8] into u, delta, z, y
    mask_d3 = gl.expand_dims(gl.expand_dims(mask_d, 1), 2)
    n_bc = gl.arange(0, N_PAD, layout=gl.SliceLayout(1, gl.SliceLayout(2, bc_l)))
    lane_bc = gl.arange(0, TIME_LANES, layout=gl.SliceLayout(0, gl.SliceLayout(2, bc_l)))
    step_bc = gl.arange(0, 8, layout=gl.SliceLayout(0, gl.SliceLayout(1, bc_l)))
    t_bc = gl.expand_dims(gl.expand_dims(lane_bc * 8, 0), 2) + gl.expand_dims(gl.expand_dims(step_bc, 0), 1)
    bc_offs = pid_b.to(gl.int64) * N * L + gl.expand_dims(gl.expand_dims(n_bc * L, 1), 2) + t_bc  # [N_PAD, TL, 8]
    mask_n3 = gl.expand_dims(gl.expand_dims(n_bc < N, 1), 2)

    B_smem = gl.allocate_shared_memory(gl.float32, [2, N_PAD, TIME_LANES, 8], smem_l)
    C_smem = gl.allocate_shared_memory(gl.float32, [2, N_PAD, TIME_LANES, 8], smem_l)

    # chunk 0's inputs; in the loop, chunk k+1's are loaded while chunk k computes
    u_next = gl.load(u_ptr + offs, mask=mask_d3 & (t3 < L), other=0.0)
    delta_next = gl.load(delta_ptr + offs, mask=mask_d3 & (t3 < L), other=0.0)
    z_next = u_next
    if HAS_Z:
        z_next = gl.load(z_ptr + offs, mask=mask_d3 & (t3 < L), other=0.0)
    B_next = gl.load(B_ptr + bc_offs, mask=mask_n3 & (t_bc < L), other=0.0)
    C_next = gl.load(C_ptr + bc_offs, mask=mask_n3 & (t_bc < L), other=0.0)
    buf = 0
    for start in range(0, L, CHUNK):
        u_raw, delta_raw, z_raw = u_next, delta_next, z_next
        B_smem.index(buf).store(_to_float32(B_next))
        C_smem.index(buf).store(_to_float32(C_next))
        nxt = start + CHUNK
        u_next = gl.load(u_ptr + offs + nxt, mask=mask_d3 & (nxt + t3 < L), other=0.0)
        delta_next = gl.load(delta_ptr + offs + nxt, mask=mask_d3 & (nxt + t3 < L), other=0.0)
        if HAS_Z:
            z_next = gl.load(z_ptr + offs + nxt, mask=mask_d3 & (nxt + t3 < L), other=0.0)
        B_next = gl.load(B_ptr + bc_offs + nxt, mask=mask_n3 & (nxt + t_bc < L), other=0.0)
        C_next = gl.load(C_ptr + bc_offs + nxt, mask=mask_n3 & (nxt + t_bc < L), other=0.0)

        u = _to_float32(u_raw)
        delta = _to_float32(delta_raw)
        if HAS_DELTA_BIAS:
            delta = delta + bias
        if DELTA_SOFTPLUS:
            delta = _softplus(delta, FAST_MATH)
        if not EVEN_L:  # padded steps are the scan's identity (a = 1, b = 0): the carried state stays exact
            delta = gl.where(start + t3 < L, delta, 0.0)
        du = delta * u
        y = gl.zeros([BLOCK_D, TIME_LANES, 8], gl.float32, tile)
        gl.thread_barrier()  # this chunk's B and C rows are in shared memory (and last chunk's reads are done)
        B_rows = B_smem.index(buf)
        C_rows = C_smem.index(buf)
        h_next = ()
        for n in gl.static_range(N):
            Bn = B_rows.slice(n, 1).load(tile)   # [1, TL, 8]: each thread's 8 steps, broadcast over channels
            Cn = C_rows.slice(n, 1).load(tile)
            if POLY_EVERY > 0 and n % POLY_EVERY == POLY_EVERY - 1:  # this state's exp on the FMA pipe
                a = _exp2_poly(delta * gl.expand_dims(A2[n], 2))
            else:
                a = gl.exp2(delta * gl.expand_dims(A2[n], 2))
            b = du * Bn
            P, hb = gl.associative_scan((a, b), 2, _combine)         # within the thread, from state 0
            a_tot = gl.reduce(P, 2, _pick_last)                       # [BLOCK_D, TL]: the thread's totals
            b_tot = gl.reduce(hb, 2, _pick_last)
            b_tot = gl.where(first_lane, a_tot * h[n] + b_tot, b_tot)  # the carry enters at lane 0
            h_end = _lanes_scan(a_tot, b_tot, TIME_LANES)              # state at the end of each lane
            if TIME_LANES > 1:
                h_in = gl.inline_asm_elementwise(_shfl_exclusive_asm(TIME_LANES), "=r,r,0", [h_end, h[n]],
                                                 dtype=gl.float32, is_pure=True, pack=1)
                h_next = h_next + (gl.inline_asm_elementwise(_shfl_last_asm(TIME_LANES), "=r,r", [h_end],
                                                             dtype=gl.float32, is_pure=True, pack=1),)
            else:
                h_in = h[n]
                h_next = h_next + (h_end,)
            hs = gl.expand_dims(h_in, 2) * P + hb                     # h_t at every step
            y += hs * Cn
        h = h_next
        if HAS_D:
            y = y + Dv * u
        if HAS_Z:
            y = y * _silu(_to_float32(z_raw), FAST_MATH)
        if EVEN_L and EVEN_D:
            gl.store(y_ptr + offs + start, y.to(y_ptr.dtype.element_ty))
        else:
            gl.store(y_ptr + offs + start, y.to(y_ptr.dtype.element_ty), mask=mask_d3 & (start + t3 < L))
        buf = 1 - buf
    last_offs = gl.expand_dims(rows * N, 1) + gl.expand_dims(lane * 0, 0)
    last_mask = gl.expand_dims(mask_d, 1) & first_lane
    for n in gl.static_range(N):
        gl.store(last_ptr + last_offs + n, h[n], mask=last_mask)


def block_d(chunk: int, num_warps: int) -> int:
    """Channels per program of the pinned layout (8 steps per thread, chunk / 8 lanes on time)."""
    return (32 // (chunk // 8)) * num_warps


def launch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, y, last_state, chunk: int, num_warps: int,
           fast_math: bool = True, poly_every: int = 0, maxnreg: int | None = None):
    """Run the kernel into y and last_state (contiguous tensors, shapes as `selective_scan_ref`).
    poly_every k > 0: every k-th state's exponential by `_exp2_poly` (with fast_math only); maxnreg: the
    register cap passed to ptxas (None = the compiler's choice)."""
    batch, d_inner, L = u.shape
    N = A.shape[1]
    bd = block_d(chunk, num_warps)
    dummy = u  # never read: the matching HAS_* flag is off
    _scan_gluon_kernel[(batch, triton.cdiv(d_inner, bd))](
        u, delta, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
        delta_bias if delta_bias is not None else dummy, y, last_state, d_inner, L,
        N=N, N_PAD=triton.next_power_of_2(N), HAS_D=D is not None, HAS_Z=z is not None,
        HAS_DELTA_BIAS=delta_bias is not None, DELTA_SOFTPLUS=bool(delta_softplus), CHUNK=chunk,
        EVEN_L=L % chunk == 0, EVEN_D=d_inner % bd == 0, FAST_MATH=fast_math,
        POLY_EVERY=poly_every if fast_math else 0, num_warps=num_warps, **({"maxnreg": maxnreg} if maxnreg else {}))
