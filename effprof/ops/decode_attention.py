"""Attention of one new token per sequence over a static KV cache whose valid slots are 0..position
(`position` a (1, 1) long tensor read on the device, so a CUDA graph stays valid as it advances), split
over the cache ("flash-decoding": Dao et al. 2023, the split-KV scheme of FlashAttention's decode path):
each program reduces one chunk of slots of one head to (max, sum, weighted values) with an online softmax,
and a second kernel merges the chunks. Slots past `position` are never read.

`decode_attention_ref` is the definition (SDPA with the mask of the valid slots); backend "triton" runs
decode_attention_triton.py through the custom op `effprof::decode_attention`, whose FLOP formula is what
FlopCounterMode counts for the reference's SDPA over all the cache's slots (4 x B x H x slots x d), so the
FLOP columns do not depend on the path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula


def decode_attention_ref(q: Tensor, keys: Tensor, values: Tensor, position: Tensor, scale: float) -> Tensor:
    """q (B, H, 1, d), keys/values (B, KV, slots, d) with H a multiple of KV -> (B, H, 1, d)."""
    slots = keys.shape[2]
    mask = torch.arange(slots, device=q.device).view(1, 1, 1, -1) <= position.view(1, 1, 1, 1)
    gqa = {"enable_gqa": True} if keys.shape[1] != q.shape[1] else {}
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale, **gqa)


@torch.library.custom_op("effprof::decode_attention", mutates_args=())
def _decode_attention_op(q: Tensor, keys: Tensor, values: Tensor, position: Tensor, scale: float) -> Tensor:
    from effprof.ops.decode_attention_triton import decode_attention_triton

    return decode_attention_triton(q, keys, values, position, scale)


@_decode_attention_op.register_fake
def _(q, keys, values, position, scale):
    return torch.empty_like(q)


@register_flop_formula(torch.ops.effprof.decode_attention)
def _decode_attention_flop(q_shape, keys_shape, *args, out_shape=None, **kwargs) -> int:
    batch, heads, _, dim = q_shape
    return 4 * batch * heads * keys_shape[2] * dim  # q·K and P·V over every slot, as counted for SDPA


def decode_attention(q: Tensor, keys: Tensor, values: Tensor, position: Tensor, scale: float,
                     backend: str = "ref") -> Tensor:
    """`decode_attention_ref`'s result through `backend` (ref | triton)."""
    if backend == "ref":
        return decode_attention_ref(q, keys, values, position, scale)
    return torch.ops.effprof.decode_attention(q, keys, values, position, float(scale))
