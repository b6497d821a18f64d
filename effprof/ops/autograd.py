"""Backward passes for effprof's custom ops, through their plain-PyTorch references.

`effprof::selective_scan` and `effprof::causal_conv1d` are custom ops (so FlopCounterMode and FakeTensor
see them) with no autograd formula of their own, so `--train` on a Mamba block could not backpropagate.
`ensure_registered()` gives each one: the forward runs whichever backend was chosen; the backward
recomputes the op's reference (`selective_scan_ref`, `causal_conv1d_ref`, the definitions) under autograd
from the saved inputs and differentiates it. The gradients are therefore exact (those of the definition),
while the backward's time and memory are the reference's (a sequential scan on the device), not those
of a fused backward kernel such as mamba-ssm's: a training row says `backward: reference recompute`.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

BACKWARD_NOTE = "reference recompute (effprof.ops.autograd)"
_done = False


def _backward_through(reference: Callable[..., tuple[Tensor, ...]]):
    def setup_context(ctx, inputs, output):
        ctx.is_tensor = [isinstance(x, Tensor) for x in inputs]
        ctx.others = [None if isinstance(x, Tensor) else x for x in inputs]
        ctx.save_for_backward(*[x for x in inputs if isinstance(x, Tensor)])

    def backward(ctx, *grads):
        saved = iter(ctx.saved_tensors)
        args = []
        for is_tensor, other, need in zip(ctx.is_tensor, ctx.others, ctx.needs_input_grad):
            args.append(next(saved).detach().requires_grad_(bool(need)) if is_tensor else other)
        with torch.enable_grad():
            outputs = reference(*args)
        pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None and o.requires_grad]
        wanted = [a for a, need in zip(args, ctx.needs_input_grad) if isinstance(a, Tensor) and need]
        got = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True)
                   if pairs and wanted else [None] * len(wanted))
        return tuple(next(got) if isinstance(a, Tensor) and need else None
                     for a, need in zip(args, ctx.needs_input_grad))

    return backward, setup_context


def _scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend):
    from effprof.ops.selective_scan import selective_scan_ref

    return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state=True)


def _conv_reference(x, weight, bias, silu, backend):
    from effprof.ops.causal_conv1d import causal_conv1d_ref

    return (causal_conv1d_ref(x, weight, bias, "silu" if silu else None),)


def ensure_registered() -> None:
    """Register the reference backward of each custom op once (an op that already has one is left alone)."""
    global _done
    if _done:
        return
    _done = True
    import effprof.ops.causal_conv1d  # noqa: F401  (defines the ops)
    import effprof.ops.selective_scan  # noqa: F401

    for name, reference in (("effprof::selective_scan", _scan_reference), ("effprof::causal_conv1d", _conv_reference)):
        backward, setup_context = _backward_through(reference)
        try:
            torch.library.register_autograd(name, backward, setup_context=setup_context)
        except RuntimeError:  # registered already (by the op's own module)
            pass
