"""Triton kernel of `effprof.ops.rotary_cache` (see there for the arithmetic and its reference): one program
per (sequence, head) of the fused qkv row; q heads are rotated into the output, k heads rotated into the
cache slot at the position read from the device, v heads copied into it."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rotary_cache_kernel(qkv_ptr, cos_ptr, sin_ptr, k_ptr, v_ptr, pos_ptr, q_ptr, qkv_stride, k_sb, k_sh, k_ss,
                         v_sb, v_sh, v_ss, HEADS: tl.constexpr, KV_HEADS: tl.constexpr, DIM: tl.constexpr,
                         BLOCK_D: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)
    dtype = q_ptr.dtype.element_ty
    half: tl.constexpr = DIM // 2
    j = tl.arange(0, BLOCK_D)
    ok = j < DIM
    row = qkv_ptr + b * qkv_stride + h * DIM
    x = tl.load(row + j, mask=ok, other=0.0)
    pos = tl.load(pos_ptr)
    if h < HEADS + KV_HEADS:
        xr = tl.load(row + (j + half) % DIM, mask=ok, other=0.0).to(tl.float32)
        c = tl.load(cos_ptr + j, mask=ok, other=0.0).to(tl.float32)
        s = tl.load(sin_ptr + j, mask=ok, other=0.0).to(tl.float32)
        s = tl.where(j < half, -s, s)
        y = ((x.to(tl.float32) * c).to(dtype).to(tl.float32) + (xr * s).to(dtype).to(tl.float32)).to(dtype)
        if h < HEADS:
            tl.store(q_ptr + (b * HEADS + h) * DIM + j, y, mask=ok)
        else:
            tl.store(k_ptr + b * k_sb + (h - HEADS) * k_sh + pos * k_ss + j, y, mask=ok)
    else:
        tl.store(v_ptr + b * v_sb + (h - HEADS - KV_HEADS) * v_sh + pos * v_ss + j, x, mask=ok)


def rotary_cache_triton(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, keys: torch.Tensor,
                        values: torch.Tensor, position: torch.Tensor, heads: int) -> torch.Tensor:
    batch, kv_heads, dim = qkv.shape[0], keys.shape[1], keys.shape[-1]
    qkv = qkv.reshape(batch, -1)
    qkv = qkv if qkv.stride(-1) == 1 else qkv.contiguous()
    q = torch.empty((batch, heads, 1, dim), device=qkv.device, dtype=qkv.dtype)
    _rotary_cache_kernel[(batch, heads + 2 * kv_heads)](
        qkv, cos.reshape(-1).contiguous(), sin.reshape(-1).contiguous(), keys, values, position.reshape(-1), q,
        qkv.stride(0), keys.stride(0), keys.stride(1), keys.stride(2), values.stride(0), values.stride(1),
        values.stride(2), HEADS=heads, KV_HEADS=kv_heads, DIM=dim, BLOCK_D=triton.next_power_of_2(dim))
    return q
