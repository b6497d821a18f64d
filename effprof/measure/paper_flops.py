"""The "GFLOPs" of vision papers: fvcore-style multiply-accumulates, with VMamba's count of the scan.

Vision SSM papers (VMamba, MambaVision, Vim) print fvcore's `flop_count` total as "FLOPs". That total
is MACs (a matmul of (m, k) by (k, n) is m·n·k), not 2 × MAC as effprof's `gflops`. The convention,
counted here with a FlopCounterMode whose formulas are replaced by fvcore's (fvcore's jit_handles.py):

- convolutions, linears, matmuls, bmm: MACs (bias adds free);
- LayerNorm: 5 per input element with an affine transform (4 without); BatchNorm in eval: 2 per
  element (1 without affine); global average pooling (`mean`): 1 per input element;
- scaled_dot_product_attention: 0 (fvcore does not see inside it); elementwise ops, softmax: 0;
- the selective scan: VMamba's `flops_selective_scan_fn(B, L, D, N, with_D=True, with_Z=False)`
  = 9·B·L·D·N + B·D·L, added to the MAC total as VMamba's `selective_scan_flop_jit` does.

So `paper_gmacs` is comparable with VMamba's "4.9G" for VMamba-T; effprof's `gflops` (2 × MAC, attention
and the scan counted) is the figure to divide by time.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from effprof.measure import flops as _flops  # noqa: F401  (registers the CPU attention formula)
from effprof.ops import selective_scan as _scan  # noqa: F401  (registers effprof::selective_scan)

aten = torch.ops.aten


def _numel(shape) -> int:
    return math.prod(shape) if shape is not None else 0


def _layer_norm(input_shape, normalized_shape, weight_shape=None, *args, out_shape=None, **kwargs) -> int:
    return 2 * _numel(input_shape) * (5 if weight_shape is not None else 4)


def _batch_norm(input_shape, weight_shape=None, *args, out_shape=None, **kwargs) -> int:
    return 2 * _numel(input_shape) * (2 if weight_shape is not None else 1)


def _mean(input_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * _numel(input_shape)


def _zero(*args, **kwargs) -> int:
    return 0


def _vmamba_scan(u_shape, delta_shape, A_shape, *args, out_shape=None, **kwargs) -> int:
    batch, d_inner, length = u_shape
    return 2 * (9 * batch * length * d_inner * A_shape[1] + batch * d_inner * length)


def _mapping() -> dict[Any, Callable[..., int]]:
    # Every formula returns 2 × the fvcore charge, so that the total / 2 is fvcore's number: the matmul
    # and convolution formulas of FlopCounterMode (2 × MAC) are kept as they are.
    mapping: dict[Any, Callable[..., int]] = {aten.native_layer_norm: _layer_norm, aten.mean: _mean,
                                              torch.ops.effprof.selective_scan: _vmamba_scan}
    for name in ("native_batch_norm", "_native_batch_norm_legit_no_training", "cudnn_batch_norm",
                 "miopen_batch_norm"):
        op = getattr(aten, name, None)
        if op is not None:
            mapping[op] = _batch_norm
    for op in list(flop_registry):
        if "scaled_dot_product" in str(op) or "flash_attention" in str(op) or "efficient_attention" in str(op):
            mapping[op] = _zero
    return mapping


def paper_macs(fn: Callable[[], Any]) -> int:
    """fvcore-style MACs of one call of `fn` (see the module docstring); run once under a counter."""
    with FlopCounterMode(display=False, custom_mapping=_mapping()) as counter:
        fn()
    return int(counter.get_total_flops()) // 2


PAPER_CONVENTION = ("fvcore-style MACs per image (conv/linear/matmul MACs, LayerNorm 5/elem, BatchNorm 2/elem, "
                    "pooling 1/elem, attention 0, scan 9·L·D·N + L·D as VMamba counts it): the papers' 'GFLOPs'")
