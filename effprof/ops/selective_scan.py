"""Selective scan (Mamba's S6 recurrence): reference, backends, custom op with a FLOP formula, decode step.

Semantics and argument layout are those of `mamba_ssm.ops.selective_scan_interface.selective_scan_fn`
(Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", Alg. 2):

    delta' = softplus(delta + delta_bias)          (bias and softplus optional)
    h_t    = exp(delta'_t A) * h_{t-1} + delta'_t B_t u_t      h_0 = 0
    y_t    = <C_t, h_t> + D u_t                    (D optional)
    y      = y * silu(z)                           (z optional)

Shapes (only this layout is supported: real A, "variable" B and C without groups):
    u, delta, z: (batch, d_inner, L)     A: (d_inner, d_state)     B, C: (batch, d_state, L)
    D, delta_bias: (d_inner,)
Output y: (batch, d_inner, L) in u's dtype; optionally the last state h_L: (batch, d_inner, d_state) fp32.
All arithmetic is float32 whatever the input dtype.

Layouts: any strides are accepted. y has u's layout: channel-last (the memory of a (batch, L, d_inner)
tensor, `effprof.ops.layout.is_channel_last`) when u is, else contiguous (batch, d_inner, L). Mamba blocks pass channel-last
views of their projections' outputs, so that every GEMM around the scan reads and writes (batch·L, channels)
row-major operands whose leading dimension is the channel count (16-byte aligned at any L; a leading
dimension of L = 793 sends cuBLAS to its alignment-1 kernels), and take y back the same way.

Backends (`BACKENDS`): "ref" (plain PyTorch, `selective_scan_ref`, the definition), "triton" (fused
forward kernel in `selective_scan_triton.py`) and "mamba-ssm" (the CUDA extension of the `mamba-ssm`
package). `resolve_backend` picks one explicitly; nothing is ever substituted silently.

Every call of `selective_scan` / `selective_state_update` goes through a torch custom op
(`effprof::selective_scan`, `effprof::selective_scan_to_state` (the last state into a given tensor),
`effprof::selective_state_update`) that carries a FLOP formula, so
`torch.utils.flop_counter.FlopCounterMode` counts the scan once (the op boundary hides the inner aten
ops of the reference from the counter) and FakeTensor / meta tracing see the right output shapes.
The ops are forward-only (no autograd formula); call `selective_scan_ref` directly for gradients.
"""
from __future__ import annotations

import functools
import importlib
import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from effprof.core.errors import BackendUnavailable, UsageError
from effprof.core.op_bytes import declare_write_only
from effprof.ops.layout import empty_in_layout, in_layout_of

BACKENDS = ("ref", "triton", "mamba-ssm")
_CHOICES = ("auto",) + BACKENDS


# ---------------------------------------------------------------------------------------------------
# FLOP formulas
# ---------------------------------------------------------------------------------------------------
def selective_scan_flops(batch: int, d_inner: int, L: int, d_state: int, has_D: bool, has_z: bool) -> int:
    """FLOPs of one selective scan: 9·batch·L·d_inner·d_state (+ batch·d_inner·L for D, + the same for z).

    This is the count of VMamba's analyser (`flops_selective_scan_fn` in VMamba's
    classification/models/vmamba.py, the closed form of its loop-level `flops_selective_scan_ref`),
    taken from the Mamba authors' answer in state-spaces/mamba issue #110: per (batch, channel, state,
    step) about 9 operations (delta·A, exp, delta·B·u, the two of the state update, the C·h dot product).
    The D skip adds one multiply-add per output element, the z gate one multiply; softplus, silu and
    dtype casts are not counted, as in VMamba.
    """
    flops = 9 * batch * L * d_inner * d_state
    if has_D:
        flops += batch * d_inner * L
    if has_z:
        flops += batch * d_inner * L
    return flops


def selective_state_update_flops(batch: int, d_inner: int, d_state: int, has_D: bool, has_z: bool) -> int:
    """FLOPs of one decoding step: the scan's count with L = 1, i.e. 9·batch·d_inner·d_state
    (+ batch·d_inner for D, + batch·d_inner for z), so L steps count exactly as one scan of length L."""
    return selective_scan_flops(batch, d_inner, 1, d_state, has_D, has_z)


# ---------------------------------------------------------------------------------------------------
# Reference (the definition)
# ---------------------------------------------------------------------------------------------------
def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """Selective scan in plain PyTorch, one time step at a time, float32 math (see the module docstring).

    Returns y (batch, d_inner, L) in u's dtype, and with `return_last_state` also (y, h_L) with h_L
    (batch, d_inner, d_state) float32. Differentiable; memory O(batch·d_inner·d_state) besides y.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    batch, d_inner, L = u.shape
    d_state = A.shape[1]
    u32, delta32, A32 = u.float(), delta.float(), A.float()
    B32, C32 = B.float(), C.float()
    if delta_bias is not None:
        delta32 = delta32 + delta_bias.float()[:, None]
    if delta_softplus:
        delta32 = F.softplus(delta32)
    h = u32.new_zeros(batch, d_inner, d_state)
    ys = []
    for t in range(L):
        delta_t = delta32[:, :, t, None]                                   # (batch, d_inner, 1)
        decay = torch.exp(delta_t * A32)                                   # (batch, d_inner, d_state)
        drive = delta_t * B32[:, None, :, t] * u32[:, :, t, None]          # (batch, d_inner, d_state)
        h = decay * h + drive
        ys.append((h * C32[:, None, :, t]).sum(-1))                        # (batch, d_inner)
    y = torch.stack(ys, dim=-1) if L else u32.new_zeros(batch, d_inner, 0)
    if D is not None:
        y = y + D.float()[:, None] * u32
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(u.dtype)
    return (y, h) if return_last_state else y


def selective_state_update_ref(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One decoding step of the scan in plain PyTorch: updates `state` (batch, d_inner, d_state) in place
    and returns y (batch, d_inner) in x's dtype. Same math as one step of `selective_scan_ref`."""
    dt32 = dt.float()
    if dt_bias is not None:
        dt32 = dt32 + dt_bias.float()
    if dt_softplus:
        dt32 = F.softplus(dt32)
    x32 = x.float()
    decay = torch.exp(dt32[:, :, None] * A.float())
    drive = dt32[:, :, None] * B.float()[:, None, :] * x32[:, :, None]
    new_state = decay * state.float() + drive
    state.copy_(new_state)
    y = (new_state * C.float()[:, None, :]).sum(-1)
    if D is not None:
        y = y + D.float() * x32
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(x.dtype)


def _check_shapes(u, delta, A, B, C, D, z, delta_bias) -> None:
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, d_inner, L), got shape {tuple(u.shape)}")
    batch, d_inner, L = u.shape
    if A.dim() != 2 or A.shape[0] != d_inner or A.is_complex():
        raise ValueError(f"selective_scan: A must be real (d_inner={d_inner}, d_state), got {tuple(A.shape)}")
    d_state = A.shape[1]
    expect = {"delta": (delta, (batch, d_inner, L)), "B": (B, (batch, d_state, L)),
              "C": (C, (batch, d_state, L)), "D": (D, (d_inner,)), "z": (z, (batch, d_inner, L)),
              "delta_bias": (delta_bias, (d_inner,))}
    for name, (tensor, shape) in expect.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"selective_scan: {name} must have shape {shape} (only variable, ungrouped "
                             f"B/C of shape (batch, d_state, L) are supported), got {tuple(tensor.shape)}")


# ---------------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------------
def triton_interpret_mode() -> bool:
    """True when TRITON_INTERPRET=1: triton then runs kernels on CPU tensors (slowly), used by the tests."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _import_error(module: str) -> Optional[str]:
    """None if `module` imports, else the error text (cached: imports are slow and do not change)."""
    try:
        importlib.import_module(module)
    except Exception as exc:  # ImportError, or an extension built against another torch
        return f"{type(exc).__name__}: {exc}"
    return None


def _triton_was_imported_interpreted() -> bool:
    """True if triton's own jit functions (tl.zeros, ...) were built for the interpreter: triton reads
    TRITON_INTERPRET when it is first imported, so setting it later breaks every kernel."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    return isinstance(tl.zeros, InterpretedFunction)


def _unavailable_reason(backend: str, device: torch.device) -> Optional[str]:
    """None if `backend` can run on `device`, else one line saying why not."""
    device = torch.device(device)
    if backend == "ref":
        return None
    if backend == "triton":
        if device.type != "cuda" and not (device.type == "cpu" and triton_interpret_mode()):
            return "the triton scan needs a CUDA device (or TRITON_INTERPRET=1 with CPU tensors)"
        if _import_error("triton") is not None:
            return "triton is not installed: pip install triton"
        if device.type == "cpu" and not _triton_was_imported_interpreted():
            return ("TRITON_INTERPRET=1 was set after triton was imported (torch.utils.flop_counter imports "
                    "it): set it before starting Python")
        return None
    if backend == "mamba-ssm":
        if device.type != "cuda":
            return "the mamba-ssm scan needs a CUDA device"
        if _import_error("mamba_ssm") is not None:
            return "mamba-ssm is not installed: pip install 'effprof[mamba]'"
        error = _import_error("selective_scan_cuda")
        if error is not None:
            return f"mamba-ssm's CUDA extension selective_scan_cuda does not import ({error})"
        return None
    raise UsageError(f"unknown scan backend {backend!r}; choose from {', '.join(_CHOICES)}")


def available_backends(device: torch.device) -> list[str]:
    """The backends of `BACKENDS` that can run on `device`, in `BACKENDS` order."""
    return [name for name in BACKENDS if _unavailable_reason(name, device) is None]


def resolve_backend(name: str, device: torch.device) -> str:
    """Turn a requested backend (auto|ref|triton|mamba-ssm) into the one that will run on `device`.

    "auto" is the fastest available: on CUDA mamba-ssm if its extension imports, else triton, else ref;
    on CPU ref. An explicit backend that cannot run raises BackendUnavailable saying why; it is never
    replaced by another.
    """
    if name not in _CHOICES:
        raise UsageError(f"unknown scan backend {name!r}; choose from {', '.join(_CHOICES)}")
    device = torch.device(device)
    if name == "auto":
        if device.type != "cuda":
            return "ref"
        for candidate in ("mamba-ssm", "triton"):
            if _unavailable_reason(candidate, device) is None:
                return candidate
        return "ref"
    reason = _unavailable_reason(name, device)
    if reason is not None:
        raise BackendUnavailable(f"scan backend {name!r} is unavailable: {reason}")
    return name


def _run_backend(backend, u, delta, A, B, C, D, z, delta_bias, delta_softplus, state_out=None):
    """Run one backend; always returns (y, last_state). With `state_out` the triton kernels write the last
    state into it (and return it), the other backends return their own."""
    if backend == "ref":
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state=True)
    if backend == "triton":
        from effprof.ops.selective_scan_triton import selective_scan_triton
        return selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus, last_state=state_out)
    if backend == "mamba-ssm":
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        y, last_state = selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                          return_last_state=True)
        return y, last_state.float()
    raise UsageError(f"unknown scan backend {backend!r}")


# ---------------------------------------------------------------------------------------------------
# Custom ops (what FlopCounterMode and FakeTensor see)
# ---------------------------------------------------------------------------------------------------
@torch.library.custom_op("effprof::selective_scan", mutates_args=())
def _selective_scan_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                       z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool,
                       backend: str) -> tuple[Tensor, Tensor]:
    y, last_state = _run_backend(backend, u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return in_layout_of(y, u), last_state.contiguous()


@_selective_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend):
    batch, d_inner, _ = u.shape
    return empty_in_layout(u), u.new_empty((batch, d_inner, A.shape[1]), dtype=torch.float32)


@torch.library.custom_op("effprof::selective_scan_to_state", mutates_args=("state_out",))
def _selective_scan_to_state_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                                z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool,
                                backend: str, state_out: Tensor) -> Tensor:
    """`effprof::selective_scan` that leaves the last state in `state_out` (a decoding cache's SSM state):
    the triton kernels store it there directly, one copy kernel less per layer of a prefill."""
    y, last_state = _run_backend(backend, u, delta, A, B, C, D, z, delta_bias, delta_softplus, state_out)
    if last_state.data_ptr() != state_out.data_ptr():
        state_out.copy_(last_state)
    return in_layout_of(y, u)


@_selective_scan_to_state_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend, state_out):
    return empty_in_layout(u)


def _selective_scan_flop(u_shape, delta_shape, A_shape, B_shape, C_shape, D_shape, z_shape, *args,
                         out_shape=None, **kwargs) -> int:
    batch, d_inner, L = u_shape
    return selective_scan_flops(batch, d_inner, L, A_shape[1], D_shape is not None, z_shape is not None)


for _op in (torch.ops.effprof.selective_scan, torch.ops.effprof.selective_scan_to_state):
    register_flop_formula(_op)(_selective_scan_flop)


# the kernel writes the state without reading it (effprof.measure.bytes)
declare_write_only("effprof::selective_scan_to_state", "state_out")


@torch.library.custom_op("effprof::selective_state_update", mutates_args=("state",))
def _selective_state_update_op(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                               D: Optional[Tensor], z: Optional[Tensor], dt_bias: Optional[Tensor],
                               dt_softplus: bool, backend: str) -> Tensor:
    if backend == "triton":
        from effprof.ops.selective_scan_triton import selective_state_update_triton
        return selective_state_update_triton(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    if backend == "mamba-ssm":
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update as mamba_update
        return mamba_update(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)
    return selective_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


@_selective_state_update_op.register_fake
def _(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, backend):
    return torch.empty_like(x)


@register_flop_formula(torch.ops.effprof.selective_state_update)
def _selective_state_update_flop(state_shape, x_shape, dt_shape, A_shape, B_shape, C_shape, D_shape, z_shape,
                                 *args, out_shape=None, **kwargs) -> int:
    batch, d_inner, d_state = state_shape
    return selective_state_update_flops(batch, d_inner, d_state, D_shape is not None, z_shape is not None)


# ---------------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------------
def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, backend="ref", state_out=None):
    """Selective scan through the chosen backend (see the module docstring for shapes and math).

    `backend` is one of auto|ref|triton|mamba-ssm (resolved with `resolve_backend` on u's device).
    Returns y (batch, d_inner, L) in u's dtype and layout (channel-last when u is, else contiguous), or
    (y, last_state) with last_state (batch, d_inner, d_state) float32 when `return_last_state`. Forward only.
    `state_out`, a contiguous float32 (batch, d_inner, d_state) tensor (a decoding cache's SSM state), receives
    the last state in place instead (`return_last_state` must then be false).
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    backend = resolve_backend(backend, u.device)
    if state_out is not None:
        shape = (u.shape[0], u.shape[1], A.shape[1])
        if return_last_state:
            raise ValueError("selective_scan: pass state_out or return_last_state, not both")
        if tuple(state_out.shape) != shape or state_out.dtype != torch.float32 or not state_out.is_contiguous():
            raise ValueError(f"selective_scan: state_out must be a contiguous float32 tensor of shape {shape}, "
                             f"got {state_out.dtype} {tuple(state_out.shape)}")
        return torch.ops.effprof.selective_scan_to_state(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus),
                                                         backend, state_out)
    y, last_state = torch.ops.effprof.selective_scan(u, delta, A, B, C, D, z, delta_bias,
                                                    bool(delta_softplus), backend)
    return (y, last_state) if return_last_state else y


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                           backend="ref"):
    """One decoding step: `state` (batch, d_inner, d_state) float32 is updated IN PLACE.

    x, dt, z: (batch, d_inner); A: (d_inner, d_state); B, C: (batch, d_state); D, dt_bias: (d_inner,).
    Returns y (batch, d_inner) in x's dtype. `backend`: auto|ref|triton|mamba-ssm, resolved as for
    `selective_scan` ("mamba-ssm" runs that package's `mamba_ssm.ops.triton.selective_state_update`).
    """
    batch, d_inner = x.shape
    d_state = A.shape[1]
    if tuple(state.shape) != (batch, d_inner, d_state) or state.dtype != torch.float32:
        raise ValueError(f"selective_state_update: state must be float32 of shape {(batch, d_inner, d_state)}, "
                         f"got {state.dtype} {tuple(state.shape)}")
    for name, tensor, shape in (("dt", dt, (batch, d_inner)), ("B", B, (batch, d_state)),
                                ("C", C, (batch, d_state)), ("z", z, (batch, d_inner)),
                                ("D", D, (d_inner,)), ("dt_bias", dt_bias, (d_inner,))):
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"selective_state_update: {name} must have shape {shape}, got {tuple(tensor.shape)}")
    backend = resolve_backend(backend, x.device)
    return torch.ops.effprof.selective_state_update(state, x, dt, A, B, C, D, z, dt_bias,
                                                    bool(dt_softplus), backend)
