"""Rotary position embedding of a decode step's q and k, and the static KV cache write, one kernel on the GPU.

For qkv (B, 1, (H + 2 KV) d) the output of the fused q/k/v projection, cos and sin (1, 1, d) the rotary
tables at `position` (a (1, 1) long tensor, read on the device so that a CUDA graph stays valid as it
advances), `rotary_cache_ref` returns q (B, H, 1, d) rotated and writes the rotated k and v into slot
`position` of keys / values (B, KV, slots, d), as transformers' `apply_rotary_pos_emb` and
`StaticLayer.update` do: x * cos + rotate_half(x) * sin, rounded after each product and after the sum.
`rotary_cache` runs it through `backend` ("ref" or "triton", the kernel in rotary_cache_triton.py through
the custom op `effprof::rotary_cache`, which FlopCounterMode counts as 0 FLOPs, as it counts the reference's
elementwise ops).
"""
from __future__ import annotations

import torch
from torch import Tensor

from effprof.core.op_bytes import register_bytes_formula, tensor_bytes


def signed_sin(sin: Tensor) -> Tensor:
    """[-sin_1, sin_2] of sin = [sin_1, sin_2] (last dimension): rotate_half(x) * sin == roll(x, d/2) *
    signed_sin(sin), the same products, so the same rounding."""
    half = sin.shape[-1] // 2
    return torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)


def rotary_cache_ref(qkv: Tensor, cos: Tensor, sin: Tensor, keys: Tensor, values: Tensor, position: Tensor,
                     heads: int, sin_signed: Tensor | None = None) -> Tensor:
    """q (B, H, 1, d); keys/values written in place at `position` (see the module docstring). `sin_signed`:
    signed_sin(sin) when the caller has it already (one per step rather than one per layer)."""
    batch, kv_heads, dim = qkv.shape[0], keys.shape[1], keys.shape[-1]
    qkv = qkv.view(batch, heads + 2 * kv_heads, dim).unsqueeze(2)          # (B, H + 2 KV, 1, d)
    qk, v = qkv[:, :heads + kv_heads], qkv[:, heads + kv_heads:]
    sin_signed = signed_sin(sin) if sin_signed is None else sin_signed
    qk = qk * cos.view(1, 1, 1, dim) + qk.roll(dim // 2, dims=-1) * sin_signed.view(1, 1, 1, dim)
    slot = position.view(-1)
    keys.index_copy_(2, slot, qk[:, heads:])
    values.index_copy_(2, slot, v)
    return qk[:, :heads]


@torch.library.custom_op("effprof::rotary_cache", mutates_args=("keys", "values"))
def _rotary_cache_op(qkv: Tensor, cos: Tensor, sin: Tensor, keys: Tensor, values: Tensor, position: Tensor,
                     heads: int) -> Tensor:
    from effprof.ops.rotary_cache_triton import rotary_cache_triton

    return rotary_cache_triton(qkv, cos, sin, keys, values, position, heads)


@_rotary_cache_op.register_fake
def _(qkv, cos, sin, keys, values, position, heads):
    return qkv.new_empty((qkv.shape[0], heads, 1, keys.shape[-1]))


@register_bytes_formula("effprof::rotary_cache")
def _rotary_cache_bytes(a, out) -> int:
    """Reads qkv, the cos and sin rows and the position; writes q and this step's key and value slots, not the
    caches it is handed (`effprof.measure.bytes`)."""
    keys = a["keys"]
    slots = 2 * keys.shape[0] * keys.shape[1] * a["position"].numel() * keys.shape[-1] * keys.element_size()
    return sum(tensor_bytes(a[name]) for name in ("qkv", "cos", "sin", "position")) + tensor_bytes(out) + slots


def rotary_cache(qkv: Tensor, cos: Tensor, sin: Tensor, keys: Tensor, values: Tensor, position: Tensor, heads: int,
                 backend: str = "ref", sin_signed: Tensor | None = None) -> Tensor:
    """`rotary_cache_ref` through `backend` (ref | triton). Under torch.compile the reference runs whatever the
    backend (Inductor fuses its elementwise ops itself, and a cache-mutating custom op could make it copy the
    cache)."""
    if backend == "ref" or torch.compiler.is_compiling():
        return rotary_cache_ref(qkv, cos, sin, keys, values, position, heads, sin_signed)
    return torch.ops.effprof.rotary_cache(qkv, cos, sin, keys, values, position, heads)
