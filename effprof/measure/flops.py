"""FLOP counting with `torch.utils.flop_counter.FlopCounterMode`.

Convention: FLOPs = 2 × multiply-accumulates (a matmul of (m, k) by (k, n) is 2·m·n·k), the convention
of FlopCounterMode itself and of the GPU vendors' TFLOP/s figures. FlopCounterMode sees aten ops, so
`scaled_dot_product_attention` is counted (fvcore skips it and reports MACs; thop counts only
nn.Linear/nn.Conv modules: see the README). Ops without a registered formula (elementwise ops,
normalisations, softmax) count zero, as in every analyser of this kind; custom ops such as the selective
scan register their own formula with `torch.utils.flop_counter.register_flop_formula`.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count


def _register_cpu_attention() -> None:
    """Count SDPA on CPU too.

    On CPU, `scaled_dot_product_attention` dispatches to `aten._scaled_dot_product_flash_attention_for_cpu`,
    for which FlopCounterMode has no formula: attention would silently count zero (as fvcore's does on
    every device). Register the same count torch uses for the CUDA kernels: 2·B·H·Tq·Tk·(d_qk + d_v).
    """
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None:
        return
    from torch.utils.flop_counter import flop_registry

    if op in flop_registry or op.default in flop_registry:
        return

    @register_flop_formula(op)
    def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)


_register_cpu_attention()


def count_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """Run `fn()` once under FlopCounterMode; return total FLOPs and FLOPs per module path.

    The per-module dict maps FlopCounterMode's module names ("Global", "Global.encoder", ...) to the
    FLOPs counted inside that module, children included.
    """
    with FlopCounterMode(display=False) as counter:
        fn()
    per_module = {name: int(sum(ops.values())) for name, ops in counter.get_flop_counts().items()}
    return int(counter.get_total_flops()), per_module
