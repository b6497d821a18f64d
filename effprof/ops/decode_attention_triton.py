"""Triton kernels of `effprof.ops.decode_attention` (split-KV decode attention; see there)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

NEG = tl.constexpr(-1.0e30)  # a finite "minus infinity": an all-masked chunk keeps finite maxima (no inf - inf)


@triton.jit
def _split_kernel(q_ptr, k_ptr, v_ptr, pos_ptr, m_ptr, l_ptr, acc_ptr, scale, k_sb, k_sh, k_ss, v_sb, v_sh, v_ss,
                  SLOTS: tl.constexpr, HEADS: tl.constexpr, GROUP: tl.constexpr, DIM: tl.constexpr,
                  BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, BLOCK_S: tl.constexpr, SPLITS: tl.constexpr):
    bh = tl.program_id(0)
    split = tl.program_id(1)
    b, h = bh // HEADS, bh % HEADS
    kvh = h // GROUP
    d = tl.arange(0, BLOCK_D)
    d_ok = d < DIM
    q = tl.load(q_ptr + bh * DIM + d, mask=d_ok, other=0.0).to(tl.float32) * scale
    valid = tl.load(pos_ptr) + 1  # slots 0..position
    m = tl.full((), NEG, dtype=tl.float32)
    total = tl.zeros((), dtype=tl.float32)
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for start in range(0, CHUNK, BLOCK_S):
        s = split * CHUNK + start + tl.arange(0, BLOCK_S)
        ok = (s < valid) & (s < SLOTS)
        k = tl.load(k_ptr + b * k_sb + kvh * k_sh + s[:, None] * k_ss + d[None, :], mask=ok[:, None] & d_ok[None, :],
                    other=0.0).to(tl.float32)
        scores = tl.where(ok, tl.sum(k * q[None, :], axis=1), NEG)
        m_new = tl.maximum(m, tl.max(scores, axis=0))
        p = tl.where(ok, tl.exp(scores - m_new), 0.0)
        alpha = tl.exp(m - m_new)
        v = tl.load(v_ptr + b * v_sb + kvh * v_sh + s[:, None] * v_ss + d[None, :], mask=ok[:, None] & d_ok[None, :],
                    other=0.0).to(tl.float32)
        total = total * alpha + tl.sum(p, axis=0)
        acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
        m = m_new
    tl.store(m_ptr + bh * SPLITS + split, m)
    tl.store(l_ptr + bh * SPLITS + split, total)
    tl.store(acc_ptr + (bh * SPLITS + split) * DIM + d, acc, mask=d_ok)


@triton.jit
def _merge_kernel(m_ptr, l_ptr, acc_ptr, out_ptr, DIM: tl.constexpr, BLOCK_D: tl.constexpr, SPLITS: tl.constexpr,
                  BLOCK_SPLITS: tl.constexpr):
    bh = tl.program_id(0)
    i = tl.arange(0, BLOCK_SPLITS)
    i_ok = i < SPLITS
    d = tl.arange(0, BLOCK_D)
    d_ok = d < DIM
    m = tl.load(m_ptr + bh * SPLITS + i, mask=i_ok, other=NEG)
    weight = tl.where(i_ok, tl.exp(m - tl.max(m, axis=0)), 0.0)
    total = tl.sum(weight * tl.load(l_ptr + bh * SPLITS + i, mask=i_ok, other=0.0), axis=0)
    acc = tl.load(acc_ptr + (bh * SPLITS + i[:, None]) * DIM + d[None, :], mask=i_ok[:, None] & d_ok[None, :], other=0.0)
    out = tl.sum(weight[:, None] * acc, axis=0) / total
    tl.store(out_ptr + bh * DIM + d, out.to(out_ptr.dtype.element_ty), mask=d_ok)


def _splits(slots: int, programs: int, device: torch.device, block_s: int) -> tuple[int, int]:
    """(splits, chunk): about four programs per SM (one per head per split), chunks a multiple of block_s."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    splits = max(1, min(triton.cdiv(4 * sms, programs), triton.cdiv(slots, block_s)))
    chunk = triton.cdiv(triton.cdiv(slots, splits), block_s) * block_s
    return triton.cdiv(slots, chunk), chunk


def decode_attention_triton(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, position: torch.Tensor,
                            scale: float) -> torch.Tensor:
    batch, heads, _, dim = q.shape
    kv_heads, slots = keys.shape[1], keys.shape[2]
    q = q.contiguous()
    block_s = 64 if q.device.type == "cuda" else 4
    splits, chunk = _splits(slots, batch * heads, q.device, block_s)
    m = torch.empty((batch * heads, splits), device=q.device, dtype=torch.float32)
    total = torch.empty_like(m)
    acc = torch.empty((batch * heads, splits, dim), device=q.device, dtype=torch.float32)
    out = torch.empty_like(q)
    block_d = triton.next_power_of_2(dim)
    _split_kernel[(batch * heads, splits)](
        q, keys, values, position.reshape(-1), m, total, acc, scale, keys.stride(0), keys.stride(1), keys.stride(2),
        values.stride(0), values.stride(1), values.stride(2), SLOTS=slots, HEADS=heads, GROUP=heads // kv_heads,
        DIM=dim, BLOCK_D=block_d, CHUNK=chunk, BLOCK_S=block_s, SPLITS=splits, num_warps=4)
    _merge_kernel[(batch * heads,)](m, total, acc, out, DIM=dim, BLOCK_D=block_d, SPLITS=splits,
                                    BLOCK_SPLITS=triton.next_power_of_2(splits))
    return out
