"""Triton kernels of the selective scan (forward only) and of its one-step state update.

Imported lazily by `effprof.ops.selective_scan` (this module imports triton at import time, the core
package never does). Math and shapes are those of `selective_scan_ref` (Gu & Dao 2023, Alg. 2):
h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t, y_t = <C_t, h_t> + D u_t, y *= silu(z).

Scan kernel: one program per (batch, block of BLOCK_D channels) walks the sequence in chunks of CHUNK
steps. u, delta, z are loaded as [BLOCK_D, CHUNK] tiles (contiguous along time: 16-byte loads), B_n and
C_n as [CHUNK] rows. Per state n the linear recurrence h_t = a_t h_{t-1} + b_t over the chunk is an
associative scan over time with the combine (a1, b1), (a2, b2) -> (a1 a2, a2 b1 + b2) (Blelloch 1990;
the parallel form Mamba's CUDA kernel uses), with the state carried in folded into the first element.
Triton lays a tile out with 8 consecutive steps per thread, so a chunk of 8 is a sequential recurrence
inside each thread (one FMA per element), and a chunk of 16/32 adds 1/2 levels of warp shuffles.
exp is exp2 with A pre-scaled by log2(e); arithmetic is float32; softplus(delta + bias), the D skip and
the silu(z) gate are fused, and the last state is written (float32). `DEFAULT_CONFIG` holds what was
measured fastest (benchmarks/diagnostics/scan_notes.md): on CUDA the lanes kernel of `selective_scan_lanes`
(H200), for this `tl` kernel the block sizes of an H100.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from effprof.ops.layout import empty_in_layout
from effprof.ops.scan_math_triton import (_scan_combine, _scan_combine_pair, _silu,  # noqa: F401
                                          _softplus, _to_float32)

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453

# On CUDA the lanes kernel (selective_scan_lanes: 4 states per thread, sub-blocks of 16 steps, one state group
# per warp), measured on an H200 at batch 8 × 1536 × 4096, d_state 16: 0.356 ms against the Gluon kernel's
# 0.408 (benchmarks/results/h200-2026-12-01-scan/). BLOCK_D, num_stages, fast_unpack are the `tl` kernel's
# (CPU interpreter), measured on an H100 (scan_notes.md: 3 stages 0.664 -> 0.481 ms, fast_unpack 0.449);
# CHUNK and num_warps both kernels'. Overridable per call for tuning.
DEFAULT_CONFIG = {"BLOCK_D": 32, "CHUNK": 32, "num_warps": 4, "num_stages": 3, "fast_unpack": True,
                  "kernel": "lanes", "sub": 16, "lane_order": "warp"}
# Parallelism is batch × channel blocks (time is walked inside a program), so at batch 1 a block of
# 32 channels leaves most SMs idle (d_inner 1536: 48 programs for 132 SMs). Measured on an H100
# (2026-11-23, benchmarks/results/h100-2026-11-23/), batch 1 × 1536 × 16384, d_state 16:
# DEFAULT_CONFIG 0.80 ms; BLOCK_D 16 / CHUNK 64 / 4 warps 0.433 ms, 0.408 with fast_unpack and two
# states per scan; BLOCK_D 8 with 2 warps 0.667 ms, with 1 warp 5.47 ms. At batch 8 × 1536 × 4096 the
# default (0.449 ms) beats 16/64/4 (0.471 ms). Until 2026-12-07 the shapes whose default blocks could not
# give every SM a program (48 for 132 SMs at batch 1) ran this small-batch config; they now run the lanes
# kernel with its time split (H200, 1 × 1536 × 16384 channel-last: 0.402 ms against this config's 0.902),
# and this config stays selectable for comparison.
SMALL_BATCH_CONFIG = {"BLOCK_D": 16, "CHUNK": 64, "num_warps": 4, "fast_unpack": True, "pair_states": True,
                      "gluon": False, "kernel": "chunked"}
# The `tl` time-split kernel (`selective_scan_split`, kernel "split") measured 4× slower than the lanes kernel at
# Cobra's batch-1 shape on an H100 (1 × 5120 × 793 × 16: 0.81 vs 0.19 ms, benchmarks/results/
# h100-2026-12-07-kernels/): SPLIT_BELOW = 0 keeps every CUDA shape on the lanes kernel, which splits time
# itself where the batch cannot fill the GPU (`lanes_time_chunks`); "split" stays selectable (and is the
# time-split path the CPU interpreter tests run).
SPLIT_CONFIG = {"kernel": "split"}
SPLIT_BELOW = 0


# Where batch × channel blocks of the lanes kernel leave SMs without a program, each channel's sequence is split
# into time chunks across programs (`selective_scan_lanes.launch`, time_chunks): enough for LANES_PROGRAMS_PER_SM
# programs per SM, at least MIN_STEPS_PER_CHUNK steps each. Measured on an H200 (2026-12-07, bf16, channel-last,
# benchmarks/results/h200-2026-12-07-kernels/): 1 × 1536 × 2048 × 16 (48 programs) 0.102 ms unsplit, 0.059 with
# 8 chunks; 1 × 1536 × 16384: 0.951 -> 0.393 ms; but 1 × 5120 × 793 (160 programs for 132 SMs) 0.066 ms unsplit,
# 0.074-0.079 with 2-12 chunks, and 8 × 1536 × 4096 0.364 unsplit, 0.514 with 2: the split's second walk of
# each chunk costs more than the occupancy it buys once every SM has a program.
LANES_PROGRAMS_PER_SM = 3
MIN_STEPS_PER_CHUNK = 128


# Batch-1 prefill (issue 26): where the default lanes blocks (32 channels, 4 warps) give fewer than
# FILL_PROGRAMS_PER_SM programs per SM, the lanes kernel runs with a config of its own: BATCH1_LANES_CONFIG where
# every SM has a program (Mamba-2.8B: 160 blocks for 132 SMs), BATCH1_NARROW_LANES_CONFIG where not (Mamba-130m:
# 48 blocks). Its knobs: smaller programs (num_warps) that spread the channels more evenly over the SMs,
# channel-fast loads of channel-last inputs (io), fewer states per thread, and time parts (a sub-block's steps
# split over lanes and composed by a warp-level associative scan of (decay, state) pairs, as mamba-ssm's block
# scan: more threads per channel, still one exp2 per element, ~3 more instructions per element).
FILL_PROGRAMS_PER_SM = 2
# Chosen by the sweep of `bench_mamba_prefill.py --scan --batch1 best` on an H100 (2026-12-07, channel-last bf16,
# d_state 16; benchmarks/results/h100-2026-12-07-s9-prefill/): the least time over L = 793 and 2,048. At 1 × 5120
# (160 default blocks for 132 SMs): 2 warps per program, 16 channels (320 programs, at most 3 per SM: 48 channels
# on the busiest SM against 64 with 32-channel blocks) and channel-fast loads: 0.0582 / 0.1402 ms against the
# default's 0.0671 / 0.1565; 2 time parts 0.0608 / 0.1393; 1 or 2 states per thread and 4-8 time parts 0.073-0.18.
# At 1 × 1536 (48 blocks) the default with its time split across programs stayed fastest (0.0322 / 0.0583 ms).
BATCH1_LANES_CONFIG: dict = {"kernel": "lanes", "num_warps": 2, "io": "channel"}
BATCH1_NARROW_LANES_CONFIG: dict = {"kernel": "lanes"}


def lanes_time_chunks(batch: int, d_inner: int, L: int, device: torch.device, config: dict) -> int:
    """How many time chunks the lanes kernel splits each sequence into on `device`: enough for
    `programs_per_sm` (default LANES_PROGRAMS_PER_SM) programs per SM, at most L / `min_steps_per_chunk`.
    1 (no split) where batch × channel blocks already fill the GPU, and off CUDA."""
    if device.type != "cuda":
        return 1
    from effprof.ops.selective_scan_lanes import lanes_geometry
    _, _, block_d = lanes_geometry(16, config.get("states_per_thread", 4), config.get("num_warps", 4),
                                   config.get("rows", 1), config.get("time_parts", 1))
    programs = batch * triton.cdiv(d_inner, block_d)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    if programs >= sms:  # every SM has a program: splitting only adds the second walk (measured, see above)
        return 1
    want = triton.cdiv(config.get("programs_per_sm", LANES_PROGRAMS_PER_SM) * sms, programs)
    return max(1, min(want, L // config.get("min_steps_per_chunk", MIN_STEPS_PER_CHUNK)))


def occupancy_config(batch: int, d_inner: int, device: torch.device) -> dict:
    """The config for this shape: DEFAULT_CONFIG's lanes kernel where its channel blocks fill the GPU (at least
    FILL_PROGRAMS_PER_SM programs of 32 channels per SM); else BATCH1_LANES_CONFIG, or BATCH1_NARROW_LANES_CONFIG
    where an SM would have no program; the `tl` time-split kernel below SPLIT_BELOW programs per SM (0: never).
    Empty (= DEFAULT_CONFIG) off CUDA."""
    if device.type != "cuda":
        return {}
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    programs = batch * triton.cdiv(d_inner, DEFAULT_CONFIG["BLOCK_D"])
    if programs < SPLIT_BELOW * sms:
        return dict(SPLIT_CONFIG)
    if programs < sms:
        return dict(BATCH1_NARROW_LANES_CONFIG)
    if programs < FILL_PROGRAMS_PER_SM * sms:
        return dict(BATCH1_LANES_CONFIG)
    return {}




@triton.jit
def _load_bc(B_rows, C_rows, bc_offs, t_offs, L, EVEN_L: tl.constexpr, FAST_UNPACK: tl.constexpr):
    """Row n of this batch's B and C over this chunk (bc_offs = n * L + start), as float32 [CHUNK]."""
    if EVEN_L:
        Bn = tl.load(B_rows + bc_offs)
        Cn = tl.load(C_rows + bc_offs)
    else:
        Bn = tl.load(B_rows + bc_offs, mask=t_offs < L, other=0.0)
        Cn = tl.load(C_rows + bc_offs, mask=t_offs < L, other=0.0)
    return _to_float32(Bn, FAST_UNPACK), _to_float32(Cn, FAST_UNPACK)


@triton.jit
def _scan_chunked_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, last_ptr,
                         d_inner, L,
                         N: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                         HAS_DELTA_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr,
                         BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, EVEN_L: tl.constexpr,
                         EVEN_D: tl.constexpr, FAST_MATH: tl.constexpr, NUM_STAGES: tl.constexpr,
                         FAST_UNPACK: tl.constexpr, PAIR_STATES: tl.constexpr):
    """One program: batch pid(0), channels pid(1)*BLOCK_D + [0, BLOCK_D), the whole sequence.

    Per chunk of CHUNK steps and per state n (unrolled, N is a compile-time constant), the recurrence
    on the [BLOCK_D, CHUNK] tile is an associative scan over time whose first element absorbs the
    state carried in (b_0 += a_0 h), so the scanned b is the state h_t itself. The N carried states are
    a tuple of [BLOCK_D] vectors: no [BLOCK_D, N] tile, no gather of one state's column.
    """
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    d_offs = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = d_offs < d_inner
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_DELTA_BIAS:
        bias = tl.load(bias_ptr + d_offs, mask=mask_d, other=0.0).to(tl.float32)
    Dv = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + d_offs, mask=mask_d, other=0.0).to(tl.float32)
    rows = (pid_b * d_inner + d_offs).to(tl.int64)
    A2 = ()  # A · log2(e), so that exp(delta A) = exp2(delta A2)
    h = ()
    for n in tl.static_range(N):
        A2 = A2 + (tl.load(A_ptr + d_offs * N + n, mask=mask_d, other=0.0).to(tl.float32) * 1.4426950408889634,)
        h = h + (tl.zeros([BLOCK_D], dtype=tl.float32),)
    t_local = tl.arange(0, CHUNK)
    B_rows = B_ptr + pid_b.to(tl.int64) * N * L + t_local  # pointers to B[pid_b, 0, t_local]
    C_rows = C_ptr + pid_b.to(tl.int64) * N * L + t_local
    is_first = (t_local == 0)[None, :]
    is_last = (t_local == CHUNK - 1)[None, :]
    offs = rows[:, None] * L + t_local[None, :]  # this chunk's [BLOCK_D, CHUNK] offsets into u, delta, z, y
    # NUM_STAGES > 1 lets Triton software-pipeline the loads (cp.async into shared memory): more
    # instructions, but B/C and u/delta/z latency off the critical path (not measured yet, see notes)
    for start in tl.range(0, L, CHUNK, num_stages=NUM_STAGES):
        t_offs = start + t_local
        if EVEN_L and EVEN_D:
            mask_dt = None
            u = tl.load(u_ptr + offs).to(tl.float32)
            delta = tl.load(delta_ptr + offs).to(tl.float32)
        else:
            mask_dt = mask_d[:, None] & (t_offs < L)[None, :]
            u = tl.load(u_ptr + offs, mask=mask_dt, other=0.0).to(tl.float32)
            delta = tl.load(delta_ptr + offs, mask=mask_dt, other=0.0).to(tl.float32)
        if HAS_DELTA_BIAS:
            delta = delta + bias[:, None]
        if DELTA_SOFTPLUS:
            delta = _softplus(delta, FAST_MATH)
        if not EVEN_L:
            # padded steps must be the scan's identity (a = 1, b = 0) so the carried state stays exact
            delta = tl.where((t_offs < L)[None, :], delta, 0.0)
        du = delta * u
        y = tl.zeros([BLOCK_D, CHUNK], dtype=tl.float32)
        h_next = ()
        if PAIR_STATES:  # two states per associative_scan: their shuffles and combines interleave
            for m in tl.static_range(N // 2):
                Bn0, Cn0 = _load_bc(B_rows, C_rows, 2 * m * L + start, t_offs, L, EVEN_L, FAST_UNPACK)
                Bn1, Cn1 = _load_bc(B_rows, C_rows, (2 * m + 1) * L + start, t_offs, L, EVEN_L, FAST_UNPACK)
                a0 = tl.exp2(delta * A2[2 * m][:, None])
                a1 = tl.exp2(delta * A2[2 * m + 1][:, None])
                b0 = du * Bn0[None, :]
                b1 = du * Bn1[None, :]
                b0 = tl.where(is_first, a0 * h[2 * m][:, None] + b0, b0)
                b1 = tl.where(is_first, a1 * h[2 * m + 1][:, None] + b1, b1)
                _, hs0, _, hs1 = tl.associative_scan((a0, b0, a1, b1), axis=1, combine_fn=_scan_combine_pair)
                y += hs0 * Cn0[None, :]
                y += hs1 * Cn1[None, :]
                h_next = h_next + (tl.max(tl.where(is_last, hs0, float("-inf")), axis=1),
                                   tl.max(tl.where(is_last, hs1, float("-inf")), axis=1))
        else:
            for n in tl.static_range(N):
                Bn, Cn = _load_bc(B_rows, C_rows, n * L + start, t_offs, L, EVEN_L, FAST_UNPACK)
                a = tl.exp2(delta * A2[n][:, None])                                # [BLOCK_D, CHUNK]
                b = du * Bn[None, :]
                b = tl.where(is_first, a * h[n][:, None] + b, b)                   # the state entering the chunk
                _, hs = tl.associative_scan((a, b), axis=1, combine_fn=_scan_combine)  # hs[:, t] = h_t
                y += hs * Cn[None, :]
                h_next = h_next + (tl.max(tl.where(is_last, hs, float("-inf")), axis=1),)
        h = h_next
        if HAS_D:
            y = y + Dv[:, None] * u
        if HAS_Z:
            if mask_dt is None:
                z = tl.load(z_ptr + offs).to(tl.float32)
            else:
                z = tl.load(z_ptr + offs, mask=mask_dt, other=0.0).to(tl.float32)
            y = y * _silu(z, FAST_MATH)
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask_dt)
        offs += CHUNK
    for n in tl.static_range(N):
        tl.store(last_ptr + rows * N + n, h[n], mask=mask_d)




@functools.cache
def gluon_available() -> bool:
    """Whether this triton has Gluon (3.5+), whose kernel is used on CUDA devices (see
    `selective_scan_gluon`); the `tl` kernel below runs everywhere else (and under TRITON_INTERPRET)."""
    try:
        import triton.experimental.gluon  # noqa: F401
    except ImportError:
        return False
    return True


def _last_state_buffer(given, batch, d_inner, N, device):
    return given if given is not None else torch.empty(batch, d_inner, N, device=device, dtype=torch.float32)


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, config=None,
                          last_state=None):
    """Fused forward scan. Shapes as `selective_scan_ref`; returns (y in u's dtype, last state float32).
    `last_state`: a contiguous float32 (batch, d_inner, d_state) buffer the kernels store the last state into
    (and that is returned), e.g. a decoding cache's; else a new one.

    `config` overrides `DEFAULT_CONFIG` keys for tuning (without BLOCK_D or kernel, `occupancy_config` picks
    the kernel and its config for the shape). kernel: "split" (time split across programs, `selective_scan_split`: what
    `occupancy_config` picks where batch × d_inner leaves SMs idle, e.g. batch-1 prefill; any strides, its
    own keys BLOCK_D, CHUNK, num_warps, programs_per_sm, max_chunks, chunks), "lanes" (the CUDA default: `selective_scan_lanes`, time inside a
    thread and states across lanes; keys states_per_thread, sub, CHUNK, num_warps, rows, pad, lane_order,
    poly_every, maxnreg, time_chunks (split across programs), time_parts (split across lanes), io; d_state 1 falls back to the Gluon kernel) or "chunked" (time split over lanes:
    with gluon on, the default, CUDA tensors run the Gluon kernel of `selective_scan_gluon`, whose channel
    block follows from CHUNK and num_warps, with poly_every k (every k-th state's exp2 as an FMA
    polynomial) and maxnreg (a register cap); else and on CPU the `tl` kernel below, keys BLOCK_D (channels
    per program), CHUNK (time steps per iteration), num_warps, num_stages (software pipelining of the
    chunk loop's loads; 1 = off), fast_unpack (bf16 B/C to float32 by shift and mask, inline PTX: with
    fast_math only), pair_states (two states per associative_scan; N even)). fast_math: lg2.approx in
    softplus and tanh.approx in silu (default on unless interpreting, where inline PTX cannot run).
    """
    import os
    batch, d_inner, L = u.shape
    config = config or {}
    # an explicit kernel or block size is taken as given (DEFAULT_CONFIG + config); else the shape decides
    shape_config = {} if ("BLOCK_D" in config or "kernel" in config) else occupancy_config(batch, d_inner, u.device)
    cfg = {**DEFAULT_CONFIG, **shape_config, **config}
    interpreting = os.environ.get("TRITON_INTERPRET", "0") == "1"
    fast_math = cfg.get("fast_math", not interpreting)
    N = A.shape[1]
    if cfg.get("kernel") == "split":  # reads u, delta, z through their strides: no copies
        from effprof.ops.selective_scan_split import selective_scan_split
        return selective_scan_split(u, delta, A, B, C, D, z, delta_bias, delta_softplus, config=config,
                                    fast_math=fast_math)
    if L > 0 and cfg.get("kernel") == "lanes" and u.is_cuda and gluon_available():
        from effprof.ops import selective_scan_lanes
        chunk = min(cfg["CHUNK"], max(8, triton.next_power_of_2(L)))
        if "time_chunks" not in cfg:
            cfg["time_chunks"] = lanes_time_chunks(batch, d_inner, L, u.device, cfg)
        lanes = selective_scan_lanes.plan(N, L, cfg)
        if lanes is not None:  # else (d_state 1) the Gluon kernel below
            # u, delta, z read and y written through their strides (a Mamba block's channel-last views)
            y = empty_in_layout(u)
            last_state = _last_state_buffer(last_state, batch, d_inner, N, u.device)
            # B and C time-contiguous (a copy of 2·N·L values): strided B/C loads cost the kernel 36 registers
            selective_scan_lanes.launch(u, delta, A.contiguous(), B.contiguous(), C.contiguous(), D, z, delta_bias,
                                        delta_softplus, y, last_state, fast_math=fast_math, **lanes)
            return y, last_state
    u, delta, A, B, C = (t.contiguous() for t in (u, delta, A, B, C))
    z = z.contiguous() if z is not None else None
    y = torch.empty_like(u)
    last_state = _last_state_buffer(last_state, batch, d_inner, N, u.device)
    if L == 0:
        return y, last_state.zero_()
    chunk = min(cfg["CHUNK"], max(8, triton.next_power_of_2(L)))
    if cfg.get("gluon", True) and u.is_cuda and gluon_available() and chunk <= 64:
        from effprof.ops import selective_scan_gluon
        selective_scan_gluon.launch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, y, last_state, chunk,
                                    cfg["num_warps"], fast_math, cfg.get("poly_every", 0), cfg.get("maxnreg"))
        return y, last_state
    block_d = min(cfg["BLOCK_D"], max(1, triton.next_power_of_2(d_inner)))
    dummy = u  # never read: the matching HAS_* flag is off
    grid = (batch, triton.cdiv(d_inner, block_d))
    _scan_chunked_kernel[grid](
        u, delta, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
        delta_bias if delta_bias is not None else dummy, y, last_state, d_inner, L,
        N=N, HAS_D=D is not None, HAS_Z=z is not None, HAS_DELTA_BIAS=delta_bias is not None,
        DELTA_SOFTPLUS=bool(delta_softplus), BLOCK_D=block_d, CHUNK=chunk, EVEN_L=L % chunk == 0,
        EVEN_D=d_inner % block_d == 0, FAST_MATH=fast_math, NUM_STAGES=cfg["num_stages"],
        FAST_UNPACK=fast_math and cfg.get("fast_unpack", False) and B.dtype == C.dtype == torch.bfloat16,
        PAIR_STATES=cfg.get("pair_states", False) and N % 2 == 0, num_warps=cfg["num_warps"])
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
        dt = _softplus(dt, False)
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
        y = y * _silu(z, False)
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
