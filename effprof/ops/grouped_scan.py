"""Grouped selective scan: K scan directions at once (VMamba's SS2D layout), on effprof's selective scan op.

VMamba batches its K directions as K·d_inner channels, with B and C per direction (its
`selective_scan_fn` with B, C of shape (batch, K, N, L)):

    u, delta, z: (batch, K·d_inner, L)   A: (K·d_inner, N)   B, C: (batch, K, N, L)   D, delta_bias: (K·d_inner,)

Channel block k (channels k·d_inner ... (k+1)·d_inner - 1) is scanned with B[:, k] and C[:, k]; the
math per channel is exactly `selective_scan_ref`'s. `selective_scan_grouped_ref` is that definition,
written directly (B and C broadcast to their channel block, one time step at a time).

The fast path runs effprof's ungrouped op (`effprof.ops.selective_scan.selective_scan`, any backend,
with its FLOP formula), whose B and C are shared by every channel of a sequence:

- parameters shared by the K directions (A (d_inner, N), D and delta_bias (d_inner,)): the grouped
  layout is exactly an ungrouped scan of batch·K sequences (u viewed as (batch·K, d_inner, L), B and C
  as (batch·K, N, L)): one call, no copy.
- parameters per direction (VMamba's case: A (K·d_inner, N)): one call per direction on (batch, d_inner,
  L), because one call of the ungrouped op takes one A for all its sequences.
  `selective_scan_directions` takes the direction-major layout (K, batch, d_inner, L), in which every
  direction's operands are contiguous views (SS2D builds its tensors that way); `selective_scan_grouped`
  accepts VMamba's layout and copies u and delta into direction-major order first.

Either way the FLOPs counted are the op's formula per call, so K directions count K × one direction's
scan: a two-direction SS2D counts half the scan FLOPs of a four-direction one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from effprof.ops.selective_scan import selective_scan


def selective_scan_grouped_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Definition of the grouped scan in plain PyTorch, float32 math; shapes as in the module docstring.

    A may also be (d_inner, N) (and D, delta_bias (d_inner,)): then every direction uses the same ones.
    Returns y (batch, K·d_inner, L) in u's dtype.
    """
    batch, channels, length = u.shape
    groups = B.shape[1]
    d_inner = channels // groups
    if channels != groups * d_inner or (B.dim() != 4 or (B.shape[0], B.shape[3]) != (batch, length)) or C.shape != B.shape:
        raise ValueError(f"selective_scan_grouped: u {tuple(u.shape)} and B/C {tuple(B.shape)} do not match "
                         "(batch, K·d_inner, L) and (batch, K, N, L)")
    A32 = _per_channel(A, groups, d_inner).float()
    u32, delta32 = u.float(), delta.float()
    if delta_bias is not None:
        delta32 = delta32 + _per_channel(delta_bias, groups, d_inner).float()[:, None]
    if delta_softplus:
        delta32 = F.softplus(delta32)
    B32 = B.float().repeat_interleave(d_inner, dim=1)                  # (batch, K·d_inner, N, L)
    C32 = C.float().repeat_interleave(d_inner, dim=1)
    h = u32.new_zeros(batch, channels, A32.shape[1])
    ys = []
    for t in range(length):
        delta_t = delta32[:, :, t, None]
        h = torch.exp(delta_t * A32) * h + delta_t * B32[..., t] * u32[:, :, t, None]
        ys.append((h * C32[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1) if length else u32.new_zeros(batch, channels, 0)
    if D is not None:
        y = y + _per_channel(D, groups, d_inner).float()[:, None] * u32
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(u.dtype)


def _per_channel(param: Tensor, groups: int, d_inner: int) -> Tensor:
    """A parameter given per direction (K·d_inner, ...) as is; one shared by all directions repeated K times."""
    if param is None or param.shape[0] == groups * d_inner:
        return param
    return param.repeat(groups, *([1] * (param.dim() - 1)))


def selective_scan_grouped(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           backend="ref"):
    """Grouped scan in VMamba's layout through effprof's selective scan op (see the module docstring).

    Returns y (batch, K·d_inner, L) in u's dtype. `backend`: auto|ref|triton|mamba-ssm.
    """
    batch, channels, length = u.shape
    groups, d_state = B.shape[1], B.shape[2]
    d_inner = channels // groups
    if channels != groups * d_inner or (B.dim() != 4 or (B.shape[0], B.shape[3]) != (batch, length)) or C.shape != B.shape:
        raise ValueError(f"selective_scan_grouped: u {tuple(u.shape)} and B/C {tuple(B.shape)} do not match "
                         "(batch, K·d_inner, L) and (batch, K, N, L)")
    if A.shape[0] == d_inner:
        # Shared parameters: the grouped layout IS an ungrouped scan of batch·K sequences.
        y = selective_scan(u.reshape(batch * groups, d_inner, length),
                           delta.reshape(batch * groups, d_inner, length), A,
                           B.reshape(batch * groups, d_state, length), C.reshape(batch * groups, d_state, length),
                           D, None if z is None else z.reshape(batch * groups, d_inner, length), delta_bias,
                           delta_softplus, backend=backend)
        return y.reshape(batch, channels, length)

    def direction_major(t):
        return None if t is None else t.reshape(batch, groups, -1, length).transpose(0, 1).contiguous()

    y = selective_scan_directions(direction_major(u), direction_major(delta), A.reshape(groups, d_inner, d_state),
                                  B.transpose(0, 1), C.transpose(0, 1),
                                  None if D is None else D.reshape(groups, d_inner), direction_major(z),
                                  None if delta_bias is None else delta_bias.reshape(groups, d_inner),
                                  delta_softplus, backend)
    return y.transpose(0, 1).reshape(batch, channels, length)


def selective_scan_directions(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                              backend="ref", stack=True):
    """K directions in direction-major layout, one call of the selective scan op per direction.

    u, delta, z: (K, batch, d_inner, L); A: (K, d_inner, N); B, C: (K, batch, N, L); D, delta_bias:
    (K, d_inner). Returns y (K, batch, d_inner, L) in u's dtype, or with `stack=False` the list of the
    K outputs (batch, d_inner, L) (no copy into one tensor: `cross_merge` takes the list).
    """
    ys = [selective_scan(u[k], delta[k], A[k], B[k], C[k], None if D is None else D[k],
                         None if z is None else z[k], None if delta_bias is None else delta_bias[k],
                         delta_softplus, backend=backend)
          for k in range(u.shape[0])]
    return torch.stack(ys) if stack else ys
