"""The forward selective scan with each channel's time split across programs: for batch 1 (and any shape
whose batch × d_inner rows leave SMs idle), any strides (channel-last Mamba activations included).

Same math, shapes and outputs as `selective_scan_ref` (Gu & Dao 2023, Alg. 2). The lanes kernel of
`selective_scan_lanes` walks each channel's whole sequence inside one program, so its parallelism is
batch × d_inner / 32 programs: 160 for Mamba-2.8B at batch 1 (d_inner 5120), 48 for Mamba-130m, on 132
SMs. Here the sequence of every channel block is cut into K time chunks of T steps (K chosen so that the
batch × channel blocks × K programs fill the GPU), in two launches:

1. `_split_scan_kernel` in STATES mode, one program per (batch, channel block, chunk k < K - 1): the
   recurrence over chunk k from a zero state; stores the chunk's end state h_k (float32, (batch, K, N, D))
   and the sum of its steps Σ_t delta'_t ((batch, K, D)): the chunk's decay is exp(A Σ delta'), since
   exp(delta'_t A) multiplies along the chunk.
2. the same kernel in OUTPUT mode, one program per (batch, channel block, chunk k): the state entering
   chunk k, H_k = exp(A Σ_{k-1}) H_{k-1} + h_{k-1} with H_0 = 0 (the carry over chunk boundaries, folded
   into this launch: k ≤ K steps of N [BLOCK_D] vectors per program), then the chunk's recurrence from H_k,
   y_t = <C_t, h_t> + D u_t, gated by silu(z_t); the last chunk also stores the last state.

The recurrence inside a chunk is the `tl` chunked kernel's (`selective_scan_triton._scan_chunked_kernel`):
[BLOCK_D, CHUNK] tiles, one associative scan over time per state (Blelloch 1990), the carried state folded
into the first element. Chunks other than the last are walked twice (once per launch): 2 − 1/K times
the exponentials of a single pass, the price of K times the parallelism. mamba-ssm's CUDA kernel instead
keeps one thread block per channel and splits time across the block's threads (a block-wide scan of the
(decay, state) pairs): one pass, but only batch × d_inner blocks; this split is the decomposition of
chunked state-space scans (as in Mamba-2's SSD "state passing", Dao & Gu 2024, §7), applied to Mamba-1.

Inputs are read through their strides (u, delta, z, y: any (batch, channel, time) strides, e.g. the
channel-last views of a Mamba block; B and C are made time-contiguous first, a copy of 2·N·L values).

Status: correct (tests/test_selective_scan_split.py, CPU interpreter and CUDA) but slow on a GPU: on an H100,
1 × 5120 × 793 × 16 bf16 channel-last took 0.81 ms against the lanes kernel's 0.19 ms (benchmarks/results/
h100-2026-12-07-kernels/scan.log): a `tl` associative scan along time on tiles whose fast axis is the channel
crosses warps. CUDA shapes therefore run the same decomposition inside the lanes kernel
(`selective_scan_lanes.launch(time_chunks=...)`, chosen by `selective_scan_triton.lanes_time_chunks`); this
kernel is selectable as config {"kernel": "split"} and is the time split the CPU interpreter tests run.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from effprof.ops.scan_math_triton import _scan_combine, _silu, _softplus

DEFAULT_SPLIT_CONFIG = {"BLOCK_D": 32, "CHUNK": 32, "num_warps": 4, "programs_per_sm": 4, "max_chunks": 64}


@triton.jit
def _split_scan_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, last_ptr,
                       hend_ptr, dsum_ptr, d_inner, L, T, K,
                       su_b, su_d, su_t, sd_b, sd_d, sd_t, sz_b, sz_d, sz_t, sy_b, sy_d, sy_t,
                       N: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr,
                       DELTA_SOFTPLUS: tl.constexpr, OUTPUT: tl.constexpr, BLOCK_D: tl.constexpr,
                       CHUNK: tl.constexpr, FAST_MATH: tl.constexpr):
    """Program (batch pid(0), channels pid(1)·BLOCK_D + [0, BLOCK_D), time chunk pid(2) of T steps).
    OUTPUT false: store the chunk's end state from zero and its Σ delta'. OUTPUT true: carry the previous
    chunks' summaries in, walk the chunk, store y (and the last state from the last chunk)."""
    pid_b = tl.program_id(0)
    d_offs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    k = tl.program_id(2)
    mask_d = d_offs < d_inner
    b64 = pid_b.to(tl.int64)
    d64 = d_offs.to(tl.int64)
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_DELTA_BIAS:
        bias = tl.load(bias_ptr + d_offs, mask=mask_d, other=0.0).to(tl.float32)
    A2 = ()  # A · log2(e): exp(delta A) = exp2(delta A2)
    h = ()
    for n in tl.static_range(N):
        A2 = A2 + (tl.load(A_ptr + d_offs * N + n, mask=mask_d, other=0.0).to(tl.float32) * 1.4426950408889634,)
        h = h + (tl.zeros([BLOCK_D], dtype=tl.float32),)
    # summaries: (batch, K, N, d_inner) end states and (batch, K, d_inner) sums of delta'
    summary_row = (b64 * K) * d_inner
    if OUTPUT:  # the carry: H_k from the summaries of chunks 0 .. k-1
        for j in range(0, k):
            dsum = tl.load(dsum_ptr + summary_row + j * d_inner + d64, mask=mask_d, other=0.0)
            h_in = ()
            for n in tl.static_range(N):
                hend = tl.load(hend_ptr + (summary_row + j * d_inner) * N + n * d_inner + d64, mask=mask_d,
                               other=0.0)
                h_in = h_in + (tl.exp2(dsum * A2[n]) * h[n] + hend,)
            h = h_in
    start = k * T
    end = tl.minimum(start + T, L)
    t_local = tl.arange(0, CHUNK)
    is_first = (t_local == 0)[None, :]
    is_last = (t_local == CHUNK - 1)[None, :]
    u_rows = u_ptr + b64 * su_b + d64[:, None] * su_d
    delta_rows = delta_ptr + b64 * sd_b + d64[:, None] * sd_d
    dsum_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    if OUTPUT:
        Dv = tl.zeros([BLOCK_D], dtype=tl.float32)
        if HAS_D:
            Dv = tl.load(D_ptr + d_offs, mask=mask_d, other=0.0).to(tl.float32)
        z_rows = z_ptr + b64 * sz_b + d64[:, None] * sz_d
        y_rows = y_ptr + b64 * sy_b + d64[:, None] * sy_d
    bc_rows = b64 * N * L
    for s in range(start, end, CHUNK):
        t = s + t_local
        in_t = t < end
        mask = mask_d[:, None] & in_t[None, :]
        t64 = t.to(tl.int64)[None, :]
        u = tl.load(u_rows + t64 * su_t, mask=mask, other=0.0).to(tl.float32)
        delta = tl.load(delta_rows + t64 * sd_t, mask=mask, other=0.0).to(tl.float32)
        if HAS_DELTA_BIAS:
            delta = delta + bias[:, None]
        if DELTA_SOFTPLUS:
            delta = _softplus(delta, FAST_MATH)
        delta = tl.where(in_t[None, :], delta, 0.0)  # steps past the chunk: a = 1, b = 0 (the identity)
        du = delta * u
        if OUTPUT:
            y = tl.zeros([BLOCK_D, CHUNK], dtype=tl.float32)
        else:
            dsum_acc += tl.sum(delta, axis=1)
        h_next = ()
        for n in tl.static_range(N):
            Bn = tl.load(B_ptr + bc_rows + n * L + t, mask=in_t, other=0.0).to(tl.float32)
            a = tl.exp2(delta * A2[n][:, None])
            b = du * Bn[None, :]
            b = tl.where(is_first, a * h[n][:, None] + b, b)
            _, hs = tl.associative_scan((a, b), axis=1, combine_fn=_scan_combine)
            if OUTPUT:
                Cn = tl.load(C_ptr + bc_rows + n * L + t, mask=in_t, other=0.0).to(tl.float32)
                y += hs * Cn[None, :]
            h_next = h_next + (tl.max(tl.where(is_last, hs, float("-inf")), axis=1),)
        h = h_next
        if OUTPUT:
            if HAS_D:
                y = y + Dv[:, None] * u
            if HAS_Z:
                z = tl.load(z_rows + t64 * sz_t, mask=mask, other=0.0).to(tl.float32)
                y = y * _silu(z, FAST_MATH)
            tl.store(y_rows + t64 * sy_t, y.to(y_ptr.dtype.element_ty), mask=mask)
    if OUTPUT:
        if k == K - 1:
            for n in tl.static_range(N):
                tl.store(last_ptr + (b64 * d_inner + d64) * N + n, h[n], mask=mask_d)
    else:
        tl.store(dsum_ptr + summary_row + k * d_inner + d64, dsum_acc, mask=mask_d)
        for n in tl.static_range(N):
            tl.store(hend_ptr + (summary_row + k * d_inner) * N + n * d_inner + d64, h[n], mask=mask_d)


def split_plan(batch: int, d_inner: int, L: int, sms: int, config: dict | None = None) -> dict:
    """BLOCK_D, CHUNK, num_warps and the time split (T steps per chunk, K chunks) for this shape: K is the
    smallest number of chunks that gives `programs_per_sm` programs per SM (at most `max_chunks`, and
    chunks of at least CHUNK steps); T is a multiple of CHUNK."""
    cfg = {**DEFAULT_SPLIT_CONFIG, **(config or {})}
    block_d = min(cfg["BLOCK_D"], max(2, triton.next_power_of_2(d_inner)))
    chunk = min(cfg["CHUNK"], max(8, triton.next_power_of_2(L)))
    rows = batch * triton.cdiv(d_inner, block_d)
    want = cfg.get("chunks") or triton.cdiv(cfg["programs_per_sm"] * sms, rows)
    k = max(1, min(want, cfg["max_chunks"], triton.cdiv(L, chunk)))
    T = triton.cdiv(triton.cdiv(L, k), chunk) * chunk
    return dict(BLOCK_D=block_d, CHUNK=chunk, num_warps=cfg["num_warps"], T=T, K=triton.cdiv(L, T))


def selective_scan_split(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, y=None,
                         config=None, fast_math=None):
    """Forward scan with time split across programs. Shapes as `selective_scan_ref`; u, delta, z any
    strides; writes y (default: a new tensor in u's layout, `effprof.ops.layout.empty_in_layout`) and
    returns (y, last state float32 (batch, d_inner, N)). `config` overrides `DEFAULT_SPLIT_CONFIG`
    (BLOCK_D, CHUNK, num_warps, programs_per_sm, max_chunks, or `chunks` to force K)."""
    import os

    from effprof.ops.layout import empty_in_layout

    batch, d_inner, L = u.shape
    N = A.shape[1]
    if fast_math is None:
        fast_math = os.environ.get("TRITON_INTERPRET", "0") != "1"
    y = empty_in_layout(u) if y is None else y
    last_state = torch.zeros(batch, d_inner, N, device=u.device, dtype=torch.float32)
    if L == 0 or batch == 0:
        return y, last_state
    sms = torch.cuda.get_device_properties(u.device).multi_processor_count if u.is_cuda else 4
    p = split_plan(batch, d_inner, L, sms, config)
    A = A.contiguous()
    B, C = B.contiguous(), C.contiguous()          # time-contiguous rows of N values (small)
    K = p["K"]
    hend = torch.empty(batch, K, N, d_inner, device=u.device, dtype=torch.float32)
    dsum = torch.empty(batch, K, d_inner, device=u.device, dtype=torch.float32)
    dummy = u  # never read: the matching HAS_* flag is off
    zz = z if z is not None else u
    args = (u, delta, A, B, C, D if D is not None else dummy, zz, delta_bias if delta_bias is not None else dummy,
            y, last_state, hend, dsum, d_inner, L, p["T"], K,
            u.stride(0), u.stride(1), u.stride(2), delta.stride(0), delta.stride(1), delta.stride(2),
            zz.stride(0), zz.stride(1), zz.stride(2), y.stride(0), y.stride(1), y.stride(2))
    flags = dict(N=N, HAS_D=D is not None, HAS_Z=z is not None, HAS_DELTA_BIAS=delta_bias is not None,
                 DELTA_SOFTPLUS=bool(delta_softplus), BLOCK_D=p["BLOCK_D"], CHUNK=p["CHUNK"], FAST_MATH=fast_math,
                 num_warps=p["num_warps"])
    blocks = triton.cdiv(d_inner, p["BLOCK_D"])
    if K > 1:
        _split_scan_kernel[(batch, blocks, K - 1)](*args, OUTPUT=False, **flags)
    _split_scan_kernel[(batch, blocks, K)](*args, OUTPUT=True, **flags)
    return y, last_state
