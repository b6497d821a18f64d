"""The forward selective scan with time inside a thread and states across lanes (Gluon, CUDA only).

Same math, shapes and outputs as `selective_scan_gluon` (whose helpers it shares). The decomposition
differs: a thread owns S states of one (batch, channel) and walks time sequentially, so that per
(channel, state, step) element the work is FMUL (delta A), MUFU (exp2), FMUL (delta u B), FFMA (the
recurrence) and FFMA (C h), with no running products, no scan across lanes and no fix-up. The
G = N_PAD / S threads of a channel are its "lanes" (in one warp, or with lane_order "warp", the default,
one per warp, so that a warp reads the same B and C row). Per chunk of CHUNK steps:

1. every thread takes CHUNK / G consecutive steps of its channel (G = lanes per channel): loads u,
   delta, z (prefetched one chunk ahead), computes softplus(delta + bias), delta u, D u and silu(z) once
   per (channel, step), and stores delta and delta u (float32) in shared memory; the CTA stages the
   chunk's B and C rows there as float32 (all channels of a CTA share them);
2. barrier; every thread walks the chunk in sub-blocks of SUB steps: a [SUB, S] tile of exp2, products
   and an in-thread sequential scan (the carried state folded into the first step), then the partial
   y of its S states, sum_s C h, into shared memory;
3. barrier; every thread sums the G partials of its CHUNK / G steps, adds D u, gates with silu(z) and
   stores y (16-byte stores when CHUNK / G >= 8).

Any strides for u, delta, z and y (the time stride 1 of contiguous inputs is specialised by the launch, so
the contiguous kernel is the one measured below; channel-last views of a Mamba block are read in place).
Time split (`launch(time_chunks=K)`, for shapes whose batch × channel blocks leave SMs idle): each channel's
sequence is cut into K chunks of whole CHUNKs across programs (grid axis 2), in three launches: MODE 1 walks
chunks 0..K-2 from a zero state and stores each chunk's end state and Σ delta' (float32; no C, no y);
`_carry_kernel` turns those into the state entering each chunk, H_{k+1} = exp(A Σ_k delta') H_k + h_k (the chunk's decay is
exp(A Σ delta') because the per-step decays multiply); MODE 2 walks every chunk from its entering state and
writes y (the last chunk the last state). Chunks other than the last are walked twice.

Time parts (`launch(time_parts=TP)`): phase 2's sub-block of SUB steps is split over TP consecutive lanes of
SUB / TP steps each; `gl.associative_scan` over the time axis then crosses lanes (warp shuffles of (decay,
state) pairs, the block scan of mamba-ssm's kernel inside a warp): TP times the threads per channel, still one
exp2 per element, ~3 more instructions per element. io "channel": phases 1 and 3 with consecutive channels per
thread (`io_geometry`), for channel-last inputs. `selective_scan_triton.occupancy_config` picks these per shape
at batch 1; TP = 1 with io "time" is the kernel as it was (the same SASS).

The CUDA default of `selective_scan_triton` (H200, batch 8 × 1536 × 4096, d_state 16, bf16: 0.357 ms
against the Gluon kernel's 0.408; 7.45 SASS instructions per element against 10.4). Variants, counts and
timings: benchmarks/diagnostics/scan_notes.md (sixth session). d_state is padded to a power of two
(padded states have A = B = C = 0 and stay 0). `plan` returns None for d_state 1 (one lane per channel,
nothing to spread: the Gluon kernel's CHUNK 8 case), and `selective_scan_triton` then runs the Gluon kernel.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from effprof.ops.selective_scan_gluon import _exp2_poly, _silu, _softplus, _to_float32


@gluon.jit
def _combine(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@gluon.jit
def _pick_last(a, b):
    return b


@gluon.jit
def _exp2_ftz(x):
    """ex2.approx.ftz: one MUFU.EX2 (the non-ftz form adds a range check and two multiplies for
    subnormal results; a decay below 2^-126 is 0 for the recurrence)."""
    return gl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=gl.float32, is_pure=True,
                                     pack=1)


@gluon.jit
def _scan_lanes_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, last_ptr,
                       hend_ptr, dsum_ptr, d_inner, L, T, K,
                       su_b, su_d, su_t, sd_b, sd_d, sd_t, sz_b, sz_d, sz_t, sy_b, sy_d, sy_t,
                       MODE: gl.constexpr,
                       N: gl.constexpr, N_PAD: gl.constexpr, S: gl.constexpr, HAS_D: gl.constexpr,
                       HAS_Z: gl.constexpr, HAS_DELTA_BIAS: gl.constexpr, DELTA_SOFTPLUS: gl.constexpr,
                       CHUNK: gl.constexpr, SUB: gl.constexpr, ROWS: gl.constexpr, PAD: gl.constexpr,
                       LANE_ORDER: gl.constexpr, TP: gl.constexpr, IO_VD: gl.constexpr, IO_TD: gl.constexpr,
                       IO_WD: gl.constexpr,
                       EVEN_L: gl.constexpr, EVEN_D: gl.constexpr, FAST_MATH: gl.constexpr, POLY_EVERY: gl.constexpr,
                       num_warps: gl.constexpr):
    """One program: batch pid(0), channels pid(1) * BLOCK_D + [0, BLOCK_D), time chunk pid(2): steps
    [pid(2) T, min(L, (pid(2) + 1) T)). MODE 0: the whole sequence (K = 1), y and the last state. MODE 1
    (time split, first launch): the chunk from a zero state; stores its end state and Σ delta' (hend
    (batch, K, N, d_inner), dsum (batch, K, d_inner), float32). MODE 2 (third launch, after `_carry_kernel`
    turned hend[k] into the state entering chunk k + 1): the chunk from that state, y; the last chunk stores
    the last state."""
    G: gl.constexpr = N_PAD // S              # lanes per channel and time part
    LPC: gl.constexpr = G * TP                # threads per channel (TP time parts of G state groups)
    BLOCK_D: gl.constexpr = ROWS * (32 // LPC) * num_warps
    STEPS: gl.constexpr = CHUNK // LPC        # steps per thread in phases 1 and 3 (time-fast layout)
    SUBT: gl.constexpr = SUB // TP            # steps per thread in a phase-2 sub-block
    # phase 2: [BLOCK_D, G, S, SUB], a thread holds [ROWS, S, SUB] (its channels x states x steps). Shared
    # memory returns one register per lane and cycle, twice that when lanes n and n^1 (or n^2) read the same
    # address: the B and C rows (the same for all channels) are most of phase 2's loads, so LANE_ORDER 1
    # puts a warp's channels on its lowest lane bits, 2 gives each warp one lane group (warp-uniform B, C
    # addresses); 0 has a channel's G lanes consecutive (then its delta loads are the uniform ones).
    # TP > 1 (time parts): a sub-block's SUB steps are split over TP consecutive lanes, SUB / TP steps each,
    # and the recurrence crosses them as an associative scan of (decay, state) pairs over the lanes (warp
    # shuffles): the block-level scan of mamba-ssm's kernel, still one exp2 per element.
    if LANE_ORDER == 2:
        walk: gl.constexpr = gl.BlockedLayout([ROWS, 1, S, SUBT], [32 // TP, 1, 1, TP], [num_warps // G, G, 1, 1],
                                              [3, 2, 1, 0])
    elif LANE_ORDER == 1:
        walk: gl.constexpr = gl.BlockedLayout([ROWS, 1, S, SUBT], [32 // LPC, G, 1, TP], [num_warps, 1, 1, 1],
                                              [3, 2, 0, 1])
    else:
        walk: gl.constexpr = gl.BlockedLayout([ROWS, 1, S, SUBT], [32 // LPC, G, 1, TP], [num_warps, 1, 1, 1],
                                              [3, 2, 1, 0])
    carry_l: gl.constexpr = gl.SliceLayout(3, walk)                    # [BLOCK_D, G, S]
    step_l: gl.constexpr = gl.SliceLayout(1, gl.SliceLayout(2, walk))  # [BLOCK_D, SUB]: per channel and step
    bc_walk_l: gl.constexpr = gl.SliceLayout(0, walk)                  # [G, S, SUB]
    # phases 1 and 3: [BLOCK_D, G, CHUNK] partials with a thread's G partials of its steps in-thread. Time-fast
    # (IO_VD 0): a thread takes STEPS consecutive steps of one channel (16-byte accesses of time-contiguous
    # inputs); channel-fast (IO_VD > 0, for channel-last inputs): IO_VD consecutive channels per thread, IO_TD
    # threads and IO_WD warps along channels, so that a warp's accesses of one step cover whole 32-byte sectors
    if IO_VD > 0:
        IO_ST: gl.constexpr = CHUNK // ((32 // IO_TD) * (num_warps // IO_WD))
        red_l: gl.constexpr = gl.BlockedLayout([IO_VD, G, IO_ST], [IO_TD, 1, 32 // IO_TD],
                                               [IO_WD, 1, num_warps // IO_WD], [0, 2, 1])
    else:
        red_l: gl.constexpr = gl.BlockedLayout([ROWS, G, STEPS], [32 // LPC, 1, LPC], [num_warps, 1, 1], [2, 1, 0])
    io_l: gl.constexpr = gl.SliceLayout(1, red_l)                      # [BLOCK_D, CHUNK]
    # the chunk's B and C rows, [G, S, CHUNK] loaded with 4 steps per thread
    TT: gl.constexpr = CHUNK // 4 if CHUNK <= 128 else 32
    TS: gl.constexpr = S if S < 32 // TT else 32 // TT
    bc_l: gl.constexpr = gl.BlockedLayout([1, 1, 4], [32 // (TT * TS), TS, TT], [num_warps, 1, 1], [2, 1, 0])
    # shared memory (PAD; else plain row-major), rows of CHUNK floats padded by 4: conflict-free 16-byte
    # accesses across the channels of a warp; B and C rows (g, s) padded once more per g, so that the G
    # lanes reading rows g S + s (same s) start on different banks
    if PAD:
        row_sl: gl.constexpr = gl.PaddedSharedLayout.with_identity_for([[CHUNK, 4]], [BLOCK_D, CHUNK], [1, 0])
        # partials: row (d, g) at d P_d + g P_g floats, P_g / 4 = CHUNK / 4 + 8 / G and P_d / 4 odd, so that the
        # 8 threads of a quarter-warp hit 8 different 4-bank groups both when lanes store their rows (phase
        # 2) and when each thread reads its steps of a channel's G rows (phase 3)
        if G >= 8:
            part_sl: gl.constexpr = gl.PaddedSharedLayout.with_identity_for([[CHUNK, 4]], [BLOCK_D, G, CHUNK],
                                                                            [2, 1, 0])
        else:
            part_sl: gl.constexpr = gl.PaddedSharedLayout.with_identity_for([[CHUNK, 32 // G], [G * CHUNK, 4]],
                                                                            [BLOCK_D, G, CHUNK], [2, 1, 0])
        if S > 1:
            bc_sl: gl.constexpr = gl.PaddedSharedLayout.with_identity_for([[CHUNK, 4], [S * CHUNK, 4]],
                                                                          [G, S, CHUNK], [2, 1, 0])
        else:
            bc_sl: gl.constexpr = gl.PaddedSharedLayout.with_identity_for([[CHUNK, 4]], [G, S, CHUNK], [2, 1, 0])
    else:
        row_sl: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
        part_sl: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [2, 1, 0])
        bc_sl: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [2, 1, 0])

    pid_b = gl.program_id(0)
    d0 = gl.program_id(1) * BLOCK_D
    # per-(channel, state) constants and the carried state, [BLOCK_D, G, S]
    d_c = d0 + gl.arange(0, BLOCK_D, layout=gl.SliceLayout(1, gl.SliceLayout(2, carry_l)))
    g_c = gl.arange(0, G, layout=gl.SliceLayout(0, gl.SliceLayout(2, carry_l)))
    s_c = gl.arange(0, S, layout=gl.SliceLayout(0, gl.SliceLayout(1, carry_l)))
    n_c = gl.expand_dims(gl.expand_dims(g_c * S, 0), 2) + gl.expand_dims(gl.expand_dims(s_c, 0), 1)  # [1, G, S]
    dn_mask = gl.expand_dims(gl.expand_dims(d_c < d_inner, 1), 2) & (n_c < N)
    dn_offs = gl.expand_dims(gl.expand_dims(d_c * N, 1), 2) + n_c
    A2 = gl.load(A_ptr + dn_offs, mask=dn_mask, other=0.0).to(gl.float32) * 1.4426950408889634
    A2 = gl.expand_dims(A2, 3)                                          # [BLOCK_D, G, S, 1]
    h = gl.zeros([BLOCK_D, G, S], gl.float32, carry_l)
    k_t = gl.program_id(2)
    t_begin = k_t * T
    t_end = gl.minimum(t_begin + T, L)
    if MODE == 2:  # the state entering chunk k: what `_carry_kernel` left in hend[k - 1] (zero for chunk 0)
        h = gl.load(hend_ptr + ((pid_b.to(gl.int64) * K + k_t - 1) * N + n_c) * d_inner
                    + gl.expand_dims(gl.expand_dims(d_c, 1), 2), mask=dn_mask & (k_t > 0), other=0.0)
    # which registers hold step 0 of a sub-block / a polynomial exp2 (compile-time per register)
    t_w = gl.arange(0, SUB, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, walk))))
    t4 = gl.expand_dims(gl.expand_dims(gl.expand_dims(t_w, 0), 1), 2)                     # [1, 1, 1, SUB]
    s_w = gl.arange(0, S, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(3, walk))))
    s4 = gl.expand_dims(gl.expand_dims(gl.expand_dims(s_w, 0), 1), 3)                     # [1, 1, S, 1]
    first = t4 == 0
    if POLY_EVERY > 0:
        poly = (s4 * SUB + t4) % POLY_EVERY == POLY_EVERY - 1

    # phase 1/3 addresses: [BLOCK_D, CHUNK] tiles of u, delta, z, y
    d_io = d0 + gl.arange(0, BLOCK_D, layout=gl.SliceLayout(1, io_l))
    t_io = gl.expand_dims(gl.arange(0, CHUNK, layout=gl.SliceLayout(0, io_l)), 0)
    mask_d = gl.expand_dims(d_io < d_inner, 1)
    b64 = pid_b.to(gl.int64)
    d64 = gl.expand_dims(d_io.to(gl.int64), 1)
    u_row = b64 * su_b + d64 * su_d           # [BLOCK_D, 1]: (batch, channel) bases; time at stride s*_t
    delta_row = b64 * sd_b + d64 * sd_d
    z_row = b64 * sz_b + d64 * sz_d
    y_row = b64 * sy_b + d64 * sy_d
    dsum_acc = gl.zeros([BLOCK_D], gl.float32, gl.SliceLayout(1, io_l))
    bias = gl.zeros([BLOCK_D, 1], gl.float32, io_l)
    if HAS_DELTA_BIAS:
        bias = gl.expand_dims(gl.load(bias_ptr + d_io, mask=d_io < d_inner, other=0.0).to(gl.float32), 1)
    Dv = gl.zeros([BLOCK_D, 1], gl.float32, io_l)
    if HAS_D:
        Dv = gl.expand_dims(gl.load(D_ptr + d_io, mask=d_io < d_inner, other=0.0).to(gl.float32), 1)
    g_bc = gl.arange(0, G, layout=gl.SliceLayout(1, gl.SliceLayout(2, bc_l)))
    s_bc = gl.arange(0, S, layout=gl.SliceLayout(0, gl.SliceLayout(2, bc_l)))
    n_bc = gl.expand_dims(gl.expand_dims(g_bc * S, 1), 2) + gl.expand_dims(gl.expand_dims(s_bc, 0), 2)  # [G, S, 1]
    t_bc = gl.expand_dims(gl.expand_dims(gl.arange(0, CHUNK, layout=gl.SliceLayout(0, gl.SliceLayout(1, bc_l))), 0), 1)
    bc_offs = pid_b.to(gl.int64) * N * L + n_bc * L + t_bc
    mask_n = n_bc < N

    delta_s = gl.allocate_shared_memory(gl.float32, [BLOCK_D, CHUNK], row_sl)
    du_s = gl.allocate_shared_memory(gl.float32, [BLOCK_D, CHUNK], row_sl)
    B_s = gl.allocate_shared_memory(gl.float32, [G, S, CHUNK], bc_sl)
    C_s = gl.allocate_shared_memory(gl.float32, [G, S, CHUNK], bc_sl)
    part_s = gl.allocate_shared_memory(gl.float32, [BLOCK_D, G, CHUNK], part_sl)

    # chunk 0's inputs; in the loop, chunk k+1's are loaded while chunk k computes
    t0 = t_begin + t_io
    io_mask = mask_d & (t0 < t_end)
    u_next = gl.load(u_ptr + u_row + t0 * su_t, mask=io_mask, other=0.0)
    delta_next = gl.load(delta_ptr + delta_row + t0 * sd_t, mask=io_mask, other=0.0)
    z_next = u_next
    if HAS_Z and MODE != 1:
        z_next = gl.load(z_ptr + z_row + t0 * sz_t, mask=io_mask, other=0.0)
    B_next = gl.load(B_ptr + bc_offs + t_begin, mask=mask_n & (t_begin + t_bc < t_end), other=0.0)
    C_next = B_next  # MODE 1 (chunk end states) reads no C: no y
    if MODE != 1:
        C_next = gl.load(C_ptr + bc_offs + t_begin, mask=mask_n & (t_begin + t_bc < t_end), other=0.0)
    for start in range(t_begin, t_end, CHUNK):
        # phase 1: per (channel, step) work, once per channel
        u = _to_float32(u_next)
        delta = _to_float32(delta_next)
        z_raw = z_next
        B_f = _to_float32(B_next)
        C_f = _to_float32(C_next)
        nxt = start + CHUNK
        t1 = nxt + t_io
        io_mask = mask_d & (t1 < t_end)
        u_next = gl.load(u_ptr + u_row + t1 * su_t, mask=io_mask, other=0.0)
        delta_next = gl.load(delta_ptr + delta_row + t1 * sd_t, mask=io_mask, other=0.0)
        if HAS_Z and MODE != 1:
            z_next = gl.load(z_ptr + z_row + t1 * sz_t, mask=io_mask, other=0.0)
        B_next = gl.load(B_ptr + bc_offs + nxt, mask=mask_n & (nxt + t_bc < t_end), other=0.0)
        if MODE != 1:
            C_next = gl.load(C_ptr + bc_offs + nxt, mask=mask_n & (nxt + t_bc < t_end), other=0.0)
        if HAS_DELTA_BIAS:
            delta = delta + bias
        if DELTA_SOFTPLUS:
            delta = _softplus(delta, FAST_MATH)
        if not EVEN_L:  # padded steps are the recurrence's identity (a = 1, b = 0): the carry stays exact
            delta = gl.where(start + t_io < t_end, delta, 0.0)
        if MODE == 1:
            dsum_acc += gl.sum(delta, axis=1)
        delta_s.store(delta)
        du_s.store(delta * u)
        B_s.store(B_f)
        if MODE != 1:
            C_s.store(C_f)
        skip = Dv * u
        if HAS_Z and MODE != 1:
            gate = _silu(_to_float32(z_raw), FAST_MATH)
        gl.thread_barrier()  # delta, delta u, B, C of this chunk are in shared memory
        # phase 2: sequential in time, S states per thread
        for j in gl.static_range(CHUNK // SUB):
            dl = gl.expand_dims(gl.expand_dims(delta_s.slice(j * SUB, SUB, dim=1).load(step_l), 1), 2)
            dub = gl.expand_dims(gl.expand_dims(du_s.slice(j * SUB, SUB, dim=1).load(step_l), 1), 2)
            Bw = gl.expand_dims(B_s.slice(j * SUB, SUB, dim=2).load(bc_walk_l), 0)     # [1, G, S, SUB]
            if MODE != 1:
                Cw = gl.expand_dims(C_s.slice(j * SUB, SUB, dim=2).load(bc_walk_l), 0)
            x = dl * A2
            if FAST_MATH:
                if POLY_EVERY > 0:  # these registers' exp2 on the FMA pipe (the select folds per register)
                    a = gl.where(poly, _exp2_poly(x), _exp2_ftz(x))
                else:
                    a = _exp2_ftz(x)
            else:
                a = gl.exp2(x)
            b = dub * Bw
            b = gl.where(first, a * gl.expand_dims(h, 3) + b, b)   # the carried state enters at step 0
            _, hs = gl.associative_scan((a, b), 3, _combine)       # in-thread: h_t = a_t h_{t-1} + b_t
            if TP == 1:
                h = gl.reduce(hs, 3, _pick_last)
            else:  # the last step's state, held by the last time part's lane: a sum across the TP lanes
                h = gl.sum(gl.where(t4 == SUB - 1, hs, 0.0), axis=3)
            if MODE != 1:  # the partial y of this thread's states (MODE 1 keeps only the end state)
                part_s.slice(j * SUB, SUB, dim=2).store(gl.sum(hs * Cw, axis=2))
        gl.thread_barrier()  # partial y of every lane is in shared memory
        # phase 3: the G partials of each of this thread's steps, D skip, gate, store
        if MODE != 1:
            y = gl.sum(part_s.load(red_l), axis=1)
            if HAS_D:
                y = y + skip
            if HAS_Z:
                y = y * gate
            y_addr = y_ptr + y_row + (start + t_io) * sy_t
            if EVEN_L and EVEN_D:
                gl.store(y_addr, y.to(y_ptr.dtype.element_ty))
            else:
                gl.store(y_addr, y.to(y_ptr.dtype.element_ty), mask=mask_d & (start + t_io < t_end))
    if MODE == 1:
        sum_at = (pid_b.to(gl.int64) * K + k_t)
        gl.store(dsum_ptr + sum_at * d_inner + d_io, dsum_acc, mask=d_io < d_inner)
        gl.store(hend_ptr + (sum_at * N + n_c) * d_inner + gl.expand_dims(gl.expand_dims(d_c, 1), 2), h, mask=dn_mask)
    else:
        if k_t == K - 1:  # MODE 0: K = 1
            last_offs = gl.expand_dims(gl.expand_dims((pid_b * d_inner + d_c).to(gl.int64) * N, 1), 2) + n_c
            gl.store(last_ptr + last_offs, h, mask=dn_mask)


@triton.jit
def _carry_kernel(hend_ptr, dsum_ptr, A_ptr, d_inner, K, N: tl.constexpr, BLOCK: tl.constexpr):
    """The carry over chunk boundaries, in place: hend[b, k] (chunk k's end state from zero) becomes the state
    entering chunk k + 1, H_{k+1} = exp(A Σ_k delta') H_k + hend[b, k] with H_0 = 0. One program per
    (batch, BLOCK (state, channel) pairs), sequential over the K - 1 chunks; float32 throughout."""
    pid_b = tl.program_id(0).to(tl.int64)
    idx = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)          # n * d_inner + d
    mask = idx < N * d_inner
    n = idx // d_inner
    d = idx % d_inner
    A2 = tl.load(A_ptr + d * N + n, mask=mask, other=0.0).to(tl.float32) * 1.4426950408889634
    h = tl.zeros([BLOCK], dtype=tl.float32)
    for k in range(0, K - 1):
        at = (pid_b * K + k) * (N * d_inner) + idx
        dsum = tl.load(dsum_ptr + (pid_b * K + k) * d_inner + d, mask=mask, other=0.0)
        h = tl.exp2(A2 * dsum) * h + tl.load(hend_ptr + at, mask=mask, other=0.0)
        tl.store(hend_ptr + at, h, mask=mask)


# launch's io "auto" for channel-last inputs: time-fast. Channel-fast loads paid with 16-channel programs (the
# batch-1 config asks for them) but not at the default's 32-channel, 4-warp geometry (H100, 1 × 5120 × 793:
# 0.0709 ms against 0.0671; 168 registers against 128), so they are asked for by config, not by default.
IO_AUTO_CHANNEL_FAST = False


def lanes_geometry(d_state: int, states_per_thread: int, num_warps: int, rows: int = 1,
                   time_parts: int = 1) -> tuple[int, int, int]:
    """(N_PAD, S, BLOCK_D): d_state padded to a power of two; states per thread, at most half of N_PAD
    (two lanes per channel at least) and at least N_PAD / 32 (a channel's lanes within one warp);
    channels per program (rows channels per thread, `time_parts_of` time parts per channel)."""
    n_pad = triton.next_power_of_2(d_state)
    s = max(min(states_per_thread, n_pad // 2), n_pad // 32, 1)
    lanes_per_channel = (n_pad // s) * time_parts_of(n_pad // s, time_parts)
    return n_pad, s, rows * (32 // lanes_per_channel) * num_warps


def time_parts_of(lanes: int, time_parts: int) -> int:
    """The time parts a channel's sub-blocks are split into: a power of two, at most 32 / lanes (a channel's
    lanes stay within one warp)."""
    return max(1, min(triton.next_power_of_2(time_parts), 32 // lanes))


def io_geometry(block_d: int, chunk: int, num_warps: int) -> tuple[int, int, int]:
    """(IO_VD, IO_TD, IO_WD) of the channel-fast phase-1/3 layout: consecutive channels per thread (up to 8,
    16 bytes of bf16), threads and warps along channels; the rest of the warp and of the program along time."""
    per_thread = max(1, block_d * chunk // (32 * num_warps))
    vd = min(8, block_d, per_thread)
    td = min(32, block_d // vd)
    return vd, td, max(1, block_d // (vd * td))


def plan(d_state: int, L: int, config: dict) -> dict | None:
    """The launch parameters for this shape and config, or None where the kernel does not apply:
    d_state 1 (one lane per channel, nothing to spread; the caller falls back to `selective_scan_gluon`).
    CHUNK is at least 4 steps per lane and at most the sequence rounded up to a power of two. Defaults are
    the fastest measured (H200, batch 8 × 1536 × 4096): 4 states per thread, CHUNK 32, sub 16, 4 warps,
    one state group per warp."""
    n_pad, s, _ = lanes_geometry(d_state, config.get("states_per_thread", 4), 1)
    lanes = n_pad // s
    order = {"g": 0, "d": 1, "warp": 2}[config.get("lane_order", "warp")]
    if lanes < 2:
        return None
    if order == 2 and config.get("num_warps", 4) % lanes:  # one lane group per warp needs G | num_warps
        order = 1
    tp = time_parts_of(lanes, config.get("time_parts", 1))
    chunk = max(4 * lanes, lanes * tp, min(config.get("CHUNK", 32), triton.next_power_of_2(L)))
    return dict(chunk=chunk, states_per_thread=s, sub=max(tp, min(config.get("sub", 16), chunk)), time_parts=tp,
                io=config.get("io", "auto"),
                num_warps=config.get("num_warps", 4), poly_every=config.get("poly_every", 0),
                rows=config.get("rows", 1), pad=config.get("pad", True), maxnreg=config.get("maxnreg"),
                lane_order=order, time_chunks=config.get("time_chunks", 1))


def time_split(L: int, chunk: int, time_chunks: int) -> tuple[int, int]:
    """(T, K): K chunks of T steps covering L (T a multiple of chunk, no empty chunk), K <= time_chunks."""
    k = max(1, min(time_chunks, triton.cdiv(L, chunk)))
    T = triton.cdiv(triton.cdiv(L, k), chunk) * chunk
    return T, triton.cdiv(L, T)


def launch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, y, last_state, chunk: int, num_warps: int,
           states_per_thread: int = 4, sub: int = 8, fast_math: bool = True, poly_every: int = 0, rows: int = 1,
           pad: bool = True, maxnreg: int | None = None, lane_order: int = 0, time_chunks: int = 1,
           time_parts: int = 1, io: str = "auto"):
    """Run the kernel into y and last_state (shapes as `selective_scan_ref`; u, delta, z, y any strides,
    B and C contiguous, last_state contiguous) with the parameters of `plan`. chunk: steps per iteration
    (shared-memory staging), sub: steps per in-thread tile, poly_every k > 0: every k-th exponential of a
    thread's tile by `_exp2_poly` (fast math only), rows: channels per thread (they share the B and C rows a
    thread reads), pad: bank-conflict-free padded shared memory (else plain row-major, for comparison),
    maxnreg: the register cap passed to ptxas, lane_order: how phase 2's threads map to lanes (0: a
    channel's lanes consecutive, 1: channels on the lowest lane bits, 2: one state group per warp; see the
    kernel), time_chunks: split each channel's sequence into at most this many chunks of whole CHUNKs
    across programs (three launches: the chunks' end states from zero, the carry over chunk boundaries,
    then y from each chunk's entering state), time_parts: split each sub-block's steps over this many lanes
    (a power of two; the recurrence crosses them as a warp-level associative scan), io: the layout of the
    u/delta/z loads and y stores, "time" (consecutive steps per thread), "channel" (consecutive channels per
    thread: whole 32-byte sectors of channel-last inputs) or "auto" (IO_AUTO_CHANNEL_FAST)."""
    batch, d_inner, L = u.shape
    N = A.shape[1]
    n_pad, s, bd = lanes_geometry(N, states_per_thread, num_warps, rows, time_parts)
    tp = time_parts_of(n_pad // s, time_parts)
    if io == "auto":
        io = "channel" if IO_AUTO_CHANNEL_FAST and u.stride(2) != 1 else "time"
    vd, td, wd = io_geometry(bd, chunk, num_warps) if io == "channel" else (0, 1, 1)
    T, K = time_split(L, chunk, time_chunks)
    dummy = u  # never read: the matching HAS_* flag is off
    zz = z if z is not None else u
    if K > 1:
        hend = torch.empty(batch, K, N, d_inner, device=u.device, dtype=torch.float32)
        dsum = torch.empty(batch, K, d_inner, device=u.device, dtype=torch.float32)
    else:
        hend = dsum = last_state  # never touched in MODE 0
    args = (u, delta, A, B, C, D if D is not None else dummy, zz, delta_bias if delta_bias is not None else dummy,
            y, last_state, hend, dsum, d_inner, L, T, K, *u.stride(), *delta.stride(), *zz.stride(), *y.stride())
    flags = dict(N=N, N_PAD=n_pad, S=s, HAS_D=D is not None, HAS_Z=z is not None,
                 HAS_DELTA_BIAS=delta_bias is not None, DELTA_SOFTPLUS=bool(delta_softplus), CHUNK=chunk,
                 SUB=max(tp, min(sub, chunk)), ROWS=rows, PAD=pad, LANE_ORDER=lane_order, TP=tp, IO_VD=vd, IO_TD=td,
                 IO_WD=wd,
                 EVEN_L=L % chunk == 0, EVEN_D=d_inner % bd == 0, FAST_MATH=fast_math,
                 POLY_EVERY=poly_every if fast_math else 0, num_warps=num_warps,
                 **({"maxnreg": maxnreg} if maxnreg else {}))
    blocks = triton.cdiv(d_inner, bd)
    if K > 1:
        _scan_lanes_kernel[(batch, blocks, K - 1)](*args, MODE=1, **flags)
        _carry_kernel[(batch, triton.cdiv(N * d_inner, 512))](hend, dsum, A, d_inner, K, N=N, BLOCK=512, num_warps=4)
        _scan_lanes_kernel[(batch, blocks, K)](*args, MODE=2, **flags)
    else:
        _scan_lanes_kernel[(batch, blocks, 1)](*args, MODE=0, **flags)


def scan_lanes_model(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, config=None):
    """The kernel's decomposition in plain PyTorch (float32), for CPU tests: states padded to N_PAD and
    split into G lanes of S, time padded to whole chunks (delta = 0 there: a = 1, b = 0), each lane's
    states walked step by step with the carry across chunks, per-lane partials sum_s C h summed over
    the lanes, then D u and the silu(z) gate. With time_parts TP > 1 each sub-block's steps are cut into TP
    parts that each walk from a zero state while keeping their running decay product P_t; a part's state is
    then h_t = P_t h_in + (its own h_t), h_in the state the previous part ends with (what the kernel's
    warp-level associative scan composes). Returns (y float32, last state)."""
    batch, d_inner, L = u.shape
    N = A.shape[1]
    p = plan(N, L, config or {})
    if p is None:
        raise ValueError("the lanes decomposition needs d_state >= 2")
    n_pad, s, _ = lanes_geometry(N, p["states_per_thread"], 1)
    G, chunk, tp = n_pad // s, p["chunk"], p["time_parts"]
    part_len = p["sub"] // tp
    Lp = -(-L // chunk) * chunk
    f = lambda x: torch.nn.functional.pad(x.float(), (0, Lp - L))  # noqa: E731
    u_, dl = f(u), delta.float() + (delta_bias.float()[:, None] if delta_bias is not None else 0.0)
    if delta_softplus:
        dl = torch.nn.functional.softplus(dl)
    dl = f(dl)
    pad_n = lambda x: torch.nn.functional.pad(f(x), (0, 0, 0, n_pad - N)).reshape(batch, G, s, Lp)  # noqa: E731
    B_, C_ = pad_n(B), pad_n(C)
    A2 = torch.nn.functional.pad(A.float(), (0, n_pad - N)).reshape(d_inner, G, s) * 1.4426950408889634
    h_in = u_.new_zeros(batch, d_inner, G, s)                 # the state entering the current part
    part = u_.new_zeros(batch, d_inner, G, Lp)                # each lane's partial y
    for t0 in range(0, Lp, part_len):                          # chunks and sub-blocks only regroup time
        h_own, decay = torch.zeros_like(h_in), torch.ones_like(h_in)
        for t in range(t0, t0 + part_len):
            a = torch.exp2(dl[:, :, t, None, None] * A2)
            h_own = a * h_own + (dl * u_)[:, :, t, None, None] * B_[:, None, :, :, t]
            decay = decay * a
            part[..., t] = (C_[:, None, :, :, t] * (decay * h_in + h_own)).sum(-1)
        h_in = decay * h_in + h_own
    y = part.sum(2)[..., :L]
    if D is not None:
        y = y + D.float()[:, None] * u.float()
    if z is not None:
        y = y * torch.nn.functional.silu(z.float())
    return y, h_in.reshape(batch, d_inner, n_pad)[..., :N]
