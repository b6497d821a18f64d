"""L2 prefetches for kernels that stream weights (Triton, CUDA only; off under the interpreter, which has no
inline PTX): ask L2 for bytes a later load or a later kernel reads, so that the DRAM streams them while this
kernel waits or computes. They change no value.

- `prefetch_l2` / `prefetch_l2_share`: one `prefetch.global.L2` per 128-byte line (a program's range, or its
  share of a range split over the grid).
- `bulk_prefetch_rows_l2`: one `cp.async.bulk.prefetch.L2` (sm_90+) per row of a row-major matrix, a byte range
  of each row, handed to the copy engine: a few instructions per program for megabytes.
Host side: `l2_prefetch_ok` (compiled kernels only), `elements_per_line`, `bulk_rows_geometry` (the rows, offsets
and sizes of a bulk prefetch, in 16-byte units, or off).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def prefetch_l2(ptr, start, count, EPL: tl.constexpr, LINES: tl.constexpr, ENABLE: tl.constexpr):
    """Ask the L2 cache for elements [start, start + count) of `ptr` (one `prefetch.global.L2` per 128-byte
    line of EPL elements), without waiting for them: weights a later load or a later kernel reads stream in
    from DRAM while this program waits on the previous kernel. Changes no value. Off (ENABLE false) under the
    interpreter, which has no inline PTX."""
    if ENABLE:
        n_lines = tl.cdiv(count, EPL) + 1  # +1: a start inside a line touches one more line at the end
        for l0 in range(0, n_lines, LINES):
            line = l0 + tl.arange(0, LINES)
            off = start + tl.minimum(line.to(tl.int64) * EPL, count - 1)
            tl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptr + off],
                                      dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def prefetch_l2_share(ptr, count, EPL: tl.constexpr, LINES: tl.constexpr, ENABLE: tl.constexpr):
    """`prefetch_l2` of this program's share of elements [0, count) of `ptr`, split in whole lines over the grid."""
    if ENABLE:
        n_programs = tl.num_programs(0) * tl.num_programs(1)
        pid = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
        share = tl.cdiv(tl.cdiv(count, n_programs), EPL) * EPL
        start = pid.to(tl.int64) * share
        if start < count:
            prefetch_l2(ptr, start, tl.minimum(share, count - start), EPL, LINES, ENABLE)


@triton.jit
def bulk_prefetch_rows_l2(ptr, n_rows, row_bytes, first_byte, n_bytes, ENABLE: tl.constexpr):
    """Ask L2 for bytes [first_byte, first_byte + n_bytes) of each row of a row-major matrix at `ptr` (rows
    `row_bytes` apart), this program's share of the n_rows rows: one `cp.async.bulk.prefetch.L2` (sm_90+) per
    row, issued to the copy engine without waiting, so that a handful of instructions keep the DRAM streaming a
    later kernel's weight while this kernel computes. Changes no value. Addresses and sizes must be 16-byte
    multiples (the launch checks). Off (ENABLE false) under the interpreter, which has no inline PTX."""
    if ENABLE:
        n_programs = tl.num_programs(0) * tl.num_programs(1)
        pid = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
        per = tl.cdiv(n_rows, n_programs)
        end = tl.minimum(pid * per + per, n_rows)
        base = ptr.to(tl.pointer_type(tl.int8))
        for r0 in range(pid * per, end, 128):
            r = r0 + tl.arange(0, 128)
            size = tl.where(r < end, n_bytes, 0)
            tl.inline_asm_elementwise(
                "{\n\t.reg .pred p;\n\tsetp.ne.u32 p, $2, 0;\n\t"
                "@p cp.async.bulk.prefetch.L2.global [$1], $2;\n\tmov.u32 $0, 0;\n\t}",
                "=r,l,r", [base + r.to(tl.int64) * row_bytes + first_byte, size], dtype=tl.int32, is_pure=False,
                pack=1)


def l2_prefetch_ok() -> bool:
    """L2 prefetches need compiled kernels (inline PTX): not under the interpreter."""
    from effprof.ops.selective_scan import triton_interpret_mode

    return not triton_interpret_mode() and torch.cuda.is_available()


def bulk_rows_geometry(w: torch.Tensor, nbytes: int, first_col: int) -> tuple[int, int, int, int]:
    """(rows, row bytes, first byte, bytes per row) of `bulk_prefetch_rows_l2` over the row-major weight w: about
    nbytes in all, from column first_col of every row, in 16-byte units; bytes per row 0 (off) where nbytes is 0,
    nothing is left after first_col, the GPU is older than sm_90 or w's rows or base are not 16-byte aligned."""
    rows, cols = w.shape
    row_bytes, esize = w.stride(0) * w.element_size(), w.element_size()
    first = first_col * esize
    per_row = min(nbytes // max(rows, 1), (cols - first_col) * esize) // 16 * 16
    if (per_row <= 0 or w.stride(1) != 1 or row_bytes % 16 or first % 16 or w.data_ptr() % 16
            or (w.is_cuda and torch.cuda.get_device_capability(w.device) < (9, 0))):
        return rows, row_bytes, first, 0
    return rows, row_bytes, first, per_row


def elements_per_line(t: torch.Tensor) -> int:
    """Elements of `t` per 128-byte cache line."""
    return max(1, 128 // t.element_size())
