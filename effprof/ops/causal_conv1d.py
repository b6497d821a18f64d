"""Causal depthwise conv1d (Mamba's short conv): reference, backends, custom ops with a FLOP formula.

Semantics are those of the `causal-conv1d` package (`causal_conv1d_fn` / `causal_conv1d_update`, used by
mamba-ssm's Mamba block):

    y[b, c, t] = act(bias[c] + sum_k weight[c, k] · x[b, c, t - (width - 1) + k])     (x = 0 before t = 0)

with act = SiLU or none. The decode step keeps the last `width` inputs per channel in a conv state
(batch, channels, width), shifts it left by one in place, writes the new input last and returns the
dot product of the state with the weight.

Backends (`CONV_BACKENDS`), chosen explicitly and reported, never substituted silently:
- "ref": `causal_conv1d_ref` / `causal_conv1d_update_ref` (F.conv1d on the left-padded input: the definition);
- "triton": `causal_conv1d_triton.py` (fp32 accumulation, SiLU fused, any strides; runs on CPU tensors under
  TRITON_INTERPRET=1, which the tests use);
- "causal-conv1d": that package's CUDA kernels, imported lazily.

The triton and causal-conv1d paths go through torch custom ops (`effprof::causal_conv1d`,
`effprof::causal_conv1d_to_state` (triton: also leaves the conv state a prefill hands to decoding),
`effprof::causal_conv1d_update`) whose FLOP formulas count 2·batch·channels·width per output step, what
FlopCounterMode counts for the reference's F.conv1d, so FLOP columns do not depend on the backend.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from effprof.core.errors import BackendUnavailable, UsageError
from effprof.core.op_bytes import declare_write_only
from effprof.ops.layout import empty_in_layout, in_layout_of

CONV_BACKENDS = ("ref", "triton", "causal-conv1d")


def causal_conv1d_flops(batch: int, channels: int, width: int, L: int) -> int:
    """FLOPs (2 x MAC) of the causal depthwise conv over L steps; bias and activation not counted (as
    FlopCounterMode counts F.conv1d)."""
    return 2 * batch * channels * width * L


# ---------------------------------------------------------------------------------------------------
# Reference (the definition)
# ---------------------------------------------------------------------------------------------------
def causal_conv1d_ref(x, weight, bias=None, activation=None):
    """Causal depthwise conv: y[b, c, t] = act(bias[c] + sum_k weight[c, k] · x[b, c, t - (width-1) + k]).

    x (batch, channels, L), weight (channels, width), bias (channels,) -> y (batch, channels, L).
    The input is padded with width-1 zeros on the left only, so the output has exactly L steps (and
    FlopCounterMode counts 2·batch·channels·width·L, no wasted padded outputs).
    """
    width = weight.shape[-1]
    y = F.conv1d(F.pad(x, (width - 1, 0)), weight.unsqueeze(1), bias, groups=x.shape[1])
    return F.silu(y) if activation == "silu" else y


def causal_conv1d_update_ref(x, conv_state, weight, bias=None, activation=None):
    """One decoding step of the causal conv. x (batch, channels); conv_state (batch, channels, width) holds
    the last `width` inputs and is shifted in place. Returns (batch, channels) in conv_state's dtype."""
    conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
    conv_state[:, :, -1] = x
    y = F.conv1d(conv_state, weight.unsqueeze(1), bias, groups=x.shape[1]).squeeze(-1)  # counted like the scan
    return F.silu(y) if activation == "silu" else y


# ---------------------------------------------------------------------------------------------------
# Backend resolution
# ---------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _causal_conv1d_import_error() -> Optional[str]:
    try:
        import causal_conv1d  # noqa: F401
    except Exception as exc:  # ImportError, or an extension built against another torch
        return f"{type(exc).__name__}: {exc}"
    return None


def _unavailable_reason(name: str, device: torch.device) -> Optional[str]:
    """None if conv backend `name` can run on `device`, else one line saying why not."""
    device = torch.device(device)
    if name == "ref":
        return None
    if name == "triton":
        from effprof.ops.selective_scan import _unavailable_reason as triton_reason

        reason = triton_reason("triton", device)
        return None if reason is None else reason.replace("the triton scan", "the triton conv")
    if name == "causal-conv1d":
        if device.type != "cuda":
            return "the causal-conv1d kernels need a CUDA device"
        error = _causal_conv1d_import_error()
        if error is not None:
            return f"causal-conv1d does not import ({error}); pip install 'effprof[mamba]'"
        return None
    raise UsageError(f"unknown conv backend {name!r}; choose from auto, {', '.join(CONV_BACKENDS)}")


def resolve_conv_backend(name: str, device: torch.device) -> str:
    """auto|ref|triton|causal-conv1d -> the path that will run. auto = causal-conv1d when it imports on CUDA,
    else triton on CUDA, else ref; an explicit backend that cannot run raises BackendUnavailable saying why
    (never replaced by another)."""
    if name == "auto":
        if torch.device(device).type != "cuda":
            return "ref"
        for candidate in ("causal-conv1d", "triton"):
            if _unavailable_reason(candidate, device) is None:
                return candidate
        return "ref"
    if name not in CONV_BACKENDS:
        raise UsageError(f"unknown conv backend {name!r}; choose from auto, {', '.join(CONV_BACKENDS)}")
    reason = _unavailable_reason(name, device)
    if reason is not None:
        raise BackendUnavailable(f"conv backend {name!r} is unavailable: {reason}")
    return name


# ---------------------------------------------------------------------------------------------------
# Custom ops (what FlopCounterMode and FakeTensor see)
# ---------------------------------------------------------------------------------------------------
@torch.library.custom_op("effprof::causal_conv1d", mutates_args=())
def _causal_conv1d_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], silu: bool, backend: str) -> Tensor:
    if backend == "triton":
        from effprof.ops.causal_conv1d_triton import causal_conv1d_triton

        return causal_conv1d_triton(x, weight, bias, silu)
    if backend == "causal-conv1d":
        from causal_conv1d import causal_conv1d_fn

        return in_layout_of(causal_conv1d_fn(x, weight, bias, activation="silu" if silu else None), x)
    return in_layout_of(causal_conv1d_ref(x, weight, bias, "silu" if silu else None), x)


@_causal_conv1d_op.register_fake
def _(x, weight, bias, silu, backend):
    return empty_in_layout(x)


@torch.library.custom_op("effprof::causal_conv1d_to_state", mutates_args=("state_out",))
def _causal_conv1d_to_state_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], silu: bool,
                               state_out: Tensor) -> Tensor:
    """The triton `effprof::causal_conv1d` that also leaves the conv state (the last `width` inputs, zeros
    before the first) in `state_out`, written by the kernel itself: the copy kernels of a prefill's state, gone.
    (The other backends copy it: `causal_conv1d`.)"""
    from effprof.ops.causal_conv1d_triton import causal_conv1d_triton

    return causal_conv1d_triton(x, weight, bias, silu, state_out=state_out)


@_causal_conv1d_to_state_op.register_fake
def _(x, weight, bias, silu, state_out):
    return empty_in_layout(x)


def last_inputs(x: Tensor, width: int) -> Tensor:
    """x's last `width` steps (batch, channels, width), zero-padded on the left when L < width: the conv
    state after a prefill of x."""
    return x[..., -width:] if x.shape[-1] >= width else F.pad(x, (width - x.shape[-1], 0))


def _causal_conv1d_flop(x_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    batch, channels, L = x_shape
    return causal_conv1d_flops(batch, channels, weight_shape[-1], L)


for _op in (torch.ops.effprof.causal_conv1d, torch.ops.effprof.causal_conv1d_to_state):
    register_flop_formula(_op)(_causal_conv1d_flop)


# the kernel writes the state without reading it (effprof.measure.bytes)
declare_write_only("effprof::causal_conv1d_to_state", "state_out")


@torch.library.custom_op("effprof::causal_conv1d_update", mutates_args=("conv_state",))
def _causal_conv1d_update_op(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Optional[Tensor], silu: bool,
                             backend: str) -> Tensor:
    if backend == "triton":
        from effprof.ops.causal_conv1d_triton import causal_conv1d_update_triton

        return causal_conv1d_update_triton(x, conv_state, weight, bias, silu)
    if backend == "causal-conv1d":
        from causal_conv1d import causal_conv1d_update as fast_update

        return fast_update(x, conv_state, weight, bias, "silu" if silu else None)
    return causal_conv1d_update_ref(x, conv_state, weight, bias, "silu" if silu else None).contiguous()


@_causal_conv1d_update_op.register_fake
def _(x, conv_state, weight, bias, silu, backend):
    return x.new_empty(x.shape, dtype=conv_state.dtype)


@register_flop_formula(torch.ops.effprof.causal_conv1d_update)
def _causal_conv1d_update_flop(x_shape, state_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    batch, channels = x_shape
    return causal_conv1d_flops(batch, channels, weight_shape[-1], 1)


# ---------------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------------
def _check(weight: Tensor, channels: int, bias: Optional[Tensor], activation: Optional[str]) -> None:
    if weight.dim() != 2 or weight.shape[0] != channels:
        raise ValueError(f"causal_conv1d: weight must be (channels={channels}, width), got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (channels,):
        raise ValueError(f"causal_conv1d: bias must be ({channels},), got {tuple(bias.shape)}")
    if activation not in (None, "silu"):
        raise ValueError(f"causal_conv1d: activation must be None or 'silu', got {activation!r}")


def causal_conv1d(x, weight, bias=None, activation=None, backend="ref", state_out=None):
    """Causal depthwise conv of x (batch, channels, L) through `backend` (a resolved name: ref|triton|
    causal-conv1d); returns (batch, channels, L) in x's dtype. The ref path calls the definition directly
    (FlopCounterMode then sees its aten conv) and returns a contiguous tensor; the others run as the
    `effprof::causal_conv1d` op and return x's layout (channel-last when x is, `is_channel_last`).
    `state_out` (batch, channels, width): also receives the conv state after x (its last `width` inputs,
    zeros before the first), what a prefill leaves for decoding."""
    _check(weight, x.shape[1], bias, activation)
    if state_out is not None:
        if tuple(state_out.shape) != (x.shape[0], x.shape[1], weight.shape[-1]):
            raise ValueError(f"causal_conv1d: state_out must be {(x.shape[0], x.shape[1], weight.shape[-1])}, "
                             f"got {tuple(state_out.shape)}")
        if backend == "triton":
            return torch.ops.effprof.causal_conv1d_to_state(x, weight, bias, activation == "silu", state_out)
        state_out.copy_(last_inputs(x, weight.shape[-1]))
    if backend == "ref":
        return causal_conv1d_ref(x, weight, bias, activation)
    return torch.ops.effprof.causal_conv1d(x, weight, bias, activation == "silu", backend)


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, backend="ref"):
    """One decoding step: x (batch, channels), conv_state (batch, channels, width) shifted IN PLACE;
    returns (batch, channels) in conv_state's dtype."""
    _check(weight, x.shape[1], bias, activation)
    if tuple(conv_state.shape) != (x.shape[0], x.shape[1], weight.shape[-1]):
        raise ValueError(f"causal_conv1d_update: conv_state must be {(x.shape[0], x.shape[1], weight.shape[-1])}, "
                         f"got {tuple(conv_state.shape)}")
    if backend == "ref":
        return causal_conv1d_update_ref(x, conv_state, weight, bias, activation)
    return torch.ops.effprof.causal_conv1d_update(x, conv_state, weight, bias, activation == "silu", backend)
