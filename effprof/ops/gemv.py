"""A decode-time matrix-vector product with what surrounds it in a Llama layer, one kernel on the GPU:

    y = [residual +] epilogue( [RMSNorm](x) @ weight.T [+ bias] ),   epilogue = silu(gate) * up  or  identity

where RMSNorm is LlamaRMSNorm's arithmetic (fp32 statistics, rounded, times `norm_weight`, rounded) and
with `silu_mul` the weight is the [gate; up] concatenation (2F, K) and y has F columns. `gemv_ref` is the
definition (PyTorch ops one by one); backend "triton" runs `effprof.ops.gemv_triton` through the custom op
`effprof::gemv`, whose FLOP formula is what FlopCounterMode counts for the reference (the matrix product,
2 x rows x N x K), so FLOP columns do not depend on the path. At most `MAX_ROWS` rows (the decode batch)
take the kernel; more rows go to the reference (cuBLAS is efficient there).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

MAX_ROWS = 8


def gemv_ref(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, residual: Optional[Tensor] = None,
             norm_weight: Optional[Tensor] = None, eps: float = 1e-6, silu_mul: bool = False) -> Tensor:
    """The definition: x (..., K) -> (..., N) (or (..., N/2) with silu_mul), in x's dtype."""
    if norm_weight is not None:
        x = norm_weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)
    y = F.linear(x, weight, bias)
    if silu_mul:
        gate, up = y.chunk(2, dim=-1)
        y = F.silu(gate) * up
    return y if residual is None else residual + y


@torch.library.custom_op("effprof::gemv", mutates_args=())
def _gemv_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], residual: Optional[Tensor],
             norm_weight: Optional[Tensor], eps: float, silu_mul: bool) -> Tensor:
    from effprof.ops.gemv_triton import gemv_triton

    shape = x.shape
    out = gemv_triton(x.reshape(-1, shape[-1]), weight, bias,
                      None if residual is None else residual.reshape(-1, residual.shape[-1]), norm_weight, eps,
                      silu_mul)
    return out.view(*shape[:-1], out.shape[-1])


@_gemv_op.register_fake
def _(x, weight, bias, residual, norm_weight, eps, silu_mul):
    return x.new_empty((*x.shape[:-1], weight.shape[0] // 2 if silu_mul else weight.shape[0]))


@register_flop_formula(torch.ops.effprof.gemv)
def _gemv_flop(x_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    rows = 1
    for size in x_shape[:-1]:
        rows *= size
    return 2 * rows * weight_shape[0] * weight_shape[1]  # the matrix product, as FlopCounterMode counts F.linear


def gemv(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, residual: Optional[Tensor] = None,
         norm_weight: Optional[Tensor] = None, eps: float = 1e-6, silu_mul: bool = False,
         backend: str = "ref") -> Tensor:
    """`gemv_ref`'s result through `backend` (ref | triton); triton needs a contiguous weight and at most
    MAX_ROWS rows of x, else the reference runs."""
    rows = x.numel() // x.shape[-1]
    if backend == "ref" or rows > MAX_ROWS or not weight.is_contiguous():
        return gemv_ref(x, weight, bias, residual, norm_weight, eps, silu_mul)
    return torch.ops.effprof.gemv(x, weight, bias, residual, norm_weight, float(eps), silu_mul)
