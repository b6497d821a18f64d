"""One Mamba decoding step between in_proj and out_proj, and the residual add + RMSNorm between blocks:
the step-by-step reference and a fused Triton path.

The step (Gu & Dao 2023, Alg. 2 with L = 1; mamba-ssm's `Mamba.step`), for x, z (batch, d_inner) the two
halves of in_proj's output:

    x  = silu(conv1d_update(x, conv_state))            conv_state (batch, d_inner, d_conv) shifted in place
    dt, B, C = split(x_proj(x), [dt_rank, d_state, d_state])
    dt = softplus(dt_proj(dt) + dt_bias);  A = -exp(A_log)
    h  = exp(dt A) h + dt B x;  y = <C, h> + D x;  y = y · silu(z)      h = ssm_state (batch, d_inner, d_state) fp32

Backends (`DECODE_BACKENDS`, chosen explicitly and reported): "ref" runs `mamba_decode_step_ref`, the ops one
by one (conv update and state update through their own conv/scan backends); "triton" runs
`mamba_decode_step_triton` (two kernels, see mamba_decode_triton.py; the second can also do out_proj) through
the custom op
`effprof::mamba_decode_step`, whose FLOP formula is the sum of what FlopCounterMode counts for the
reference's ops, so FLOP columns do not depend on the backend. `add_rms_norm` likewise (reference
`add_rms_norm_ref`, op `effprof::add_rms_norm`, no FLOPs counted, as for F.rms_norm).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from effprof.core.errors import BackendUnavailable, UsageError
from effprof.core.op_bytes import declare_not_moved, register_bytes_formula, tensor_bytes
from effprof.ops.causal_conv1d import causal_conv1d_flops, causal_conv1d_update
from effprof.ops.selective_scan import selective_state_update, selective_state_update_flops

DECODE_BACKENDS = ("ref", "triton")


def resolve_decode_backend(name: str, device: torch.device) -> str:
    """auto|ref|triton -> the path that will run: auto = triton on CUDA when triton imports, else ref; an
    explicit triton that cannot run raises BackendUnavailable saying why."""
    from effprof.ops.selective_scan import _unavailable_reason

    if name not in ("auto",) + DECODE_BACKENDS:
        raise UsageError(f"unknown decode backend {name!r}; choose from auto, {', '.join(DECODE_BACKENDS)}")
    device = torch.device(device)
    if name == "auto":
        return "triton" if device.type == "cuda" and _unavailable_reason("triton", device) is None else "ref"
    reason = _unavailable_reason(name, device)
    if reason is not None:
        raise BackendUnavailable(f"decode backend {name!r} is unavailable: "
                                 f"{reason.replace('the triton scan', 'the fused triton decode step')}")
    return name


def mamba_decode_step_flops(batch: int, d_inner: int, d_conv: int, dt_rank: int, d_state: int, has_D: bool) -> int:
    """FLOPs (2 x MAC) of one step: conv 2·B·E·W, x_proj 2·B·E·(R + 2N), dt_proj 2·B·R·E, and the state
    update's 9·B·E·N (+ B·E for D, + B·E for the z gate), as FlopCounterMode counts the reference."""
    return (causal_conv1d_flops(batch, d_inner, d_conv, 1) + 2 * batch * d_inner * (dt_rank + 2 * d_state)
            + 2 * batch * dt_rank * d_inner + selective_state_update_flops(batch, d_inner, d_state, has_D, True))


def mamba_decode_step_ref(x, z, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                          dt_proj_bias, A_log, D, conv_backend="ref", scan_backend="ref", out_proj_weight=None):
    """The step op by op (module docstring). x, z (batch, d_inner) model dtype; conv_weight (d_inner, d_conv);
    x_proj_weight (dt_rank + 2·d_state, d_inner); dt_proj_weight (d_inner, dt_rank); A_log (d_inner,
    d_state) and D (d_inner,) float32. Returns y (batch, d_inner) in x's dtype, or with out_proj_weight
    (d_model, d_inner) out_proj(y) as float32; both states updated in place."""
    dt_rank, d_state = dt_proj_weight.shape[1], A_log.shape[1]
    x = causal_conv1d_update(x, conv_state, conv_weight, conv_bias, "silu", conv_backend).to(z.dtype)
    dt, B, C = torch.split(F.linear(x, x_proj_weight), [dt_rank, d_state, d_state], dim=-1)
    dt = F.linear(dt, dt_proj_weight)
    A = -torch.exp(A_log.float())
    y = selective_state_update(ssm_state, x, dt, A, B, C, None if D is None else D.float(), z=z,
                               dt_bias=dt_proj_bias.float(), dt_softplus=True, backend=scan_backend)
    return y if out_proj_weight is None else F.linear(y, out_proj_weight).float()


@torch.library.custom_op("effprof::mamba_decode_step", mutates_args=("conv_state", "ssm_state"))
def _mamba_decode_step_op(x: Tensor, z: Tensor, conv_state: Tensor, ssm_state: Tensor, conv_weight: Tensor,
                          conv_bias: Optional[Tensor], x_proj_weight: Tensor, dt_proj_weight: Tensor,
                          dt_proj_bias: Tensor, A_log: Tensor, D: Optional[Tensor],
                          out_proj_weight: Optional[Tensor]) -> Tensor:
    from effprof.ops.mamba_decode_triton import mamba_decode_step_triton

    return mamba_decode_step_triton(x, z, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight,
                                    dt_proj_weight, dt_proj_bias, A_log, D, out_proj_weight)


@_mamba_decode_step_op.register_fake
def _(x, z, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D,
      out_proj_weight):
    if out_proj_weight is not None:
        return x.new_empty((x.shape[0], out_proj_weight.shape[0]), dtype=torch.float32)
    return x.new_empty(x.shape)


@register_flop_formula(torch.ops.effprof.mamba_decode_step)
def _mamba_decode_step_flop(x_shape, z_shape, conv_state_shape, ssm_state_shape, conv_weight_shape, conv_bias_shape,
                            x_proj_weight_shape, dt_proj_weight_shape, dt_proj_bias_shape, A_log_shape, D_shape,
                            out_proj_weight_shape, out_shape=None, **kwargs) -> int:
    batch, d_inner = x_shape
    out_proj = 0 if out_proj_weight_shape is None else 2 * batch * d_inner * out_proj_weight_shape[0]
    return out_proj + mamba_decode_step_flops(batch, d_inner, conv_weight_shape[-1], dt_proj_weight_shape[1],
                                              A_log_shape[1], D_shape is not None)


def mamba_decode_step(x, z, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                      dt_proj_bias, A_log, D, backend="ref", conv_backend="ref", scan_backend="ref",
                      out_proj_weight=None):
    """One step through `backend` (a resolved name: ref | triton); shapes as `mamba_decode_step_ref`.
    conv_backend and scan_backend choose the ref path's ops (the triton path fuses its own)."""
    if backend == "ref":
        return mamba_decode_step_ref(x, z, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight,
                                     dt_proj_weight, dt_proj_bias, A_log, D, conv_backend, scan_backend,
                                     out_proj_weight)
    if backend != "triton":
        raise UsageError(f"unknown decode backend {backend!r}; choose from {', '.join(DECODE_BACKENDS)}")
    return torch.ops.effprof.mamba_decode_step(x, z, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight,
                                               dt_proj_weight, dt_proj_bias, A_log, D, out_proj_weight)


def fuse_out_proj(batch: int, out_proj_weight: Tensor) -> bool:
    """Whether the triton step should also do out_proj at this batch and weight size
    (`mamba_decode_triton.DECODE_CONFIG`, measured)."""
    from effprof.ops.mamba_decode_triton import use_fused_out

    return use_fused_out(batch, out_proj_weight)


# ---------------------------------------------------------------------------------------------------
# Residual add + RMSNorm (mamba-ssm's Block with residual_in_fp32)
# ---------------------------------------------------------------------------------------------------
def add_rms_norm_ref(hidden, residual, weight, eps):
    """residual' = hidden (+ residual), float32; normed = rms_norm(residual' in weight's dtype) · weight, in
    weight's dtype (RMSNorm computes in float32). Returns (normed, residual')."""
    residual = hidden if residual is None else hidden + residual
    x = residual.to(weight.dtype).float()
    normed = F.rms_norm(x, (x.shape[-1],), weight.float(), eps).to(weight.dtype)
    return normed, residual.float()


@torch.library.custom_op("effprof::add_rms_norm", mutates_args=())
def _add_rms_norm_op(hidden: Tensor, residual: Optional[Tensor], weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    from effprof.ops.mamba_decode_triton import add_rms_norm_triton

    shape = hidden.shape
    normed, res = add_rms_norm_triton(hidden.reshape(-1, shape[-1]).contiguous(),
                                      None if residual is None else residual.reshape(-1, shape[-1]).contiguous(),
                                      weight, eps)
    return normed.view(shape), res.view(shape)


@_add_rms_norm_op.register_fake
def _(hidden, residual, weight, eps):
    return hidden.new_empty(hidden.shape, dtype=weight.dtype), hidden.new_empty(hidden.shape, dtype=torch.float32)


def add_rms_norm(hidden, residual, weight, eps, backend="ref"):
    """(normed, residual') through `backend` (ref | triton); see `add_rms_norm_ref`."""
    if backend == "ref":
        return add_rms_norm_ref(hidden, residual, weight, eps)
    return torch.ops.effprof.add_rms_norm(hidden, residual, weight, float(eps))


# ---------------------------------------------------------------------------------------------------
# Residual add + RMSNorm + in_proj (the start of a block's decoding step)
# ---------------------------------------------------------------------------------------------------
def norm_in_proj_ref(hidden, residual, norm_weight, eps, in_proj_weight):
    """(in_proj(normed), residual') with (normed, residual') = add_rms_norm_ref(...)."""
    normed, residual = add_rms_norm_ref(hidden, residual, norm_weight, eps)
    return F.linear(normed, in_proj_weight), residual


@torch.library.custom_op("effprof::norm_in_proj", mutates_args=())
def _norm_in_proj_op(hidden: Tensor, residual: Optional[Tensor], norm_weight: Tensor, eps: float,
                     in_proj_weight: Tensor) -> tuple[Tensor, Tensor]:
    from effprof.ops.mamba_decode_triton import norm_in_proj_triton

    shape = hidden.shape
    xz, res = norm_in_proj_triton(hidden.reshape(-1, shape[-1]).contiguous(),
                                  None if residual is None else residual.reshape(-1, shape[-1]).contiguous(),
                                  norm_weight, eps, in_proj_weight)
    return xz.view(*shape[:-1], -1), res.view(shape)


@_norm_in_proj_op.register_fake
def _(hidden, residual, norm_weight, eps, in_proj_weight):
    return (hidden.new_empty((*hidden.shape[:-1], in_proj_weight.shape[0])),
            hidden.new_empty(hidden.shape, dtype=torch.float32))


@register_flop_formula(torch.ops.effprof.norm_in_proj)
def _norm_in_proj_flop(hidden_shape, residual_shape, norm_weight_shape, eps, in_proj_weight_shape, out_shape=None,
                       **kwargs) -> int:
    rows = 1
    for size in hidden_shape[:-1]:
        rows *= size
    return 2 * rows * in_proj_weight_shape[0] * in_proj_weight_shape[1]  # in_proj, as FlopCounterMode counts F.linear


def norm_in_proj(hidden, residual, norm_weight, eps, in_proj_weight, backend="ref"):
    """(xz, residual') through `backend` (ref | triton): the residual add, RMSNorm and in_proj (no bias) of a
    decoding step; the triton path is one GEMV kernel where `mamba_decode_triton.use_gemv` (small batch and
    weight), else the add + norm kernel and cuBLAS. hidden may be float32 (a fused out_proj's sum): it is
    rounded to the model dtype first, as the reference's out_proj output is."""
    if backend == "ref":
        return norm_in_proj_ref(hidden, residual, norm_weight, eps, in_proj_weight)
    return torch.ops.effprof.norm_in_proj(hidden, residual, norm_weight, float(eps), in_proj_weight)


# ---------------------------------------------------------------------------------------------------
# A whole LM step at small batch: a prologue kernel, then two or three kernels per layer
# (mamba_decode_layer_triton.py), or (batch 1, small width, `use_persistent_decode`; off by default: slower on
# an H100) one persistent kernel for all layers (mamba_decode_persistent_triton.py); the reference is the
# block-by-block step above.
# ---------------------------------------------------------------------------------------------------
_WORK = ("normed", "residual", "xz", "acc", "xacc", "count")


@torch.library.custom_op("effprof::mamba_decode_prologue", mutates_args=_WORK)
def _prologue_op(ids: Tensor, embedding_weight: Tensor, norm_weight: Tensor, eps: float, normed: Tensor,
                 residual: Tensor, xz: Tensor, acc: Tensor, xacc: Tensor, count: Tensor) -> None:
    from effprof.ops.mamba_decode_layer_triton import DecodeWork, decode_prologue_triton
    from effprof.ops.mamba_decode_triton import DECODE_CONFIG

    decode_prologue_triton(ids, embedding_weight, norm_weight, eps,
                           DecodeWork.of(normed, residual, xz, acc, xacc, count), DECODE_CONFIG["pdl"])


@register_bytes_formula("effprof::mamba_decode_prologue")
def _prologue_bytes(a, out) -> int:
    """Reads the ids, their embedding rows (not the table it is handed) and the norm weight; writes the step's
    work buffers."""
    table, ids = a["embedding_weight"], a["ids"]
    rows = min(tensor_bytes(table), ids.numel() * table.shape[-1] * table.element_size())
    return tensor_bytes(ids) + rows + tensor_bytes(a["norm_weight"]) + sum(tensor_bytes(a[name]) for name in _WORK)


@torch.library.custom_op("effprof::mamba_layer_decode", mutates_args=_WORK + ("conv_state", "ssm_state"))
def _layer_decode_op(normed: Tensor, residual: Tensor, xz: Tensor, acc: Tensor, xacc: Tensor, count: Tensor,
                     conv_state: Tensor, ssm_state: Tensor, in_proj_weight: Tensor, conv_weight: Tensor,
                     conv_bias: Optional[Tensor], x_proj_weight: Tensor, dt_proj_weight: Tensor, dt_proj_bias: Tensor,
                     A_log: Tensor, D: Optional[Tensor], out_proj_weight: Tensor, norm_weight: Tensor,
                     next_norm_weight: Tensor, eps: float, parity: int, last: bool,
                     next_in_proj_weight: Optional[Tensor] = None) -> None:
    from effprof.ops.mamba_decode_layer_triton import DecodeWork, layer_decode_triton
    from effprof.ops.mamba_decode_triton import DECODE_CONFIG

    batch, d_model = normed.shape
    fuse_out = (batch <= DECODE_CONFIG["layer_fuse_out_max_batch"] and out_proj_weight.numel()
                * out_proj_weight.element_size() <= DECODE_CONFIG["layer_fuse_out_max_bytes"])
    block_k = DECODE_CONFIG["layer_block_k"] or (256 if d_model <= 1024 else 512)
    layer_decode_triton(DecodeWork.of(normed, residual, xz, acc, xacc, count), conv_state, ssm_state,
                        in_proj_weight, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log,
                        D, out_proj_weight, next_norm_weight, eps, fuse_out=fuse_out,
                        block_n=DECODE_CONFIG["layer_block_n"],
                        block_d=DECODE_CONFIG["layer_fused_block_d" if fuse_out else "step_block_d"],
                        block_m=DECODE_CONFIG["layer_block_m"], block_k=block_k,
                        norm_in=DECODE_CONFIG["layer_norm_in"], norm_weight=norm_weight, parity=parity, last=last,
                        pdl=DECODE_CONFIG["pdl"], prefetch_weights=DECODE_CONFIG["layer_prefetch"],
                        split_k=DECODE_CONFIG["layer_out_split_k"], num_warps=DECODE_CONFIG["layer_num_warps"],
                        num_stages=DECODE_CONFIG["layer_num_stages"], l2_self=DECODE_CONFIG["layer_l2_self"],
                        l2_ahead=DECODE_CONFIG["layer_l2_ahead"], l2_ahead_in=DECODE_CONFIG["layer_l2_ahead_in"],
                        next_in_proj_weight=next_in_proj_weight, l2_ahead_bytes=DECODE_CONFIG["layer_l2_ahead_bytes"],
                        pre_tiles=DECODE_CONFIG["layer_pre_tiles"], l2_bulk_out=DECODE_CONFIG["layer_l2_bulk_out"],
                        l2_bulk_early=DECODE_CONFIG["layer_l2_bulk_early"],
                        l2_bulk_in=DECODE_CONFIG["layer_l2_bulk_in"])


# the next layer's in_proj weight is a prefetch hint: it counts where the next layer's op reads it
declare_not_moved("effprof::mamba_layer_decode", "next_in_proj_weight")


@register_flop_formula(torch.ops.effprof.mamba_layer_decode)
def _layer_decode_flop(normed_shape, residual_shape, xz_shape, acc_shape, xacc_shape, count_shape, conv_state_shape,
                       ssm_state_shape, in_proj_weight_shape, conv_weight_shape, conv_bias_shape, x_proj_weight_shape,
                       dt_proj_weight_shape, dt_proj_bias_shape, A_log_shape, D_shape, out_proj_weight_shape,
                       norm_weight_shape, next_norm_weight_shape, eps, parity, last, next_in_proj_weight_shape=None,
                       out_shape=None, **kwargs) -> int:
    batch, d_model = normed_shape
    d_inner = conv_weight_shape[0]
    projections = 2 * batch * d_model * in_proj_weight_shape[0] + 2 * batch * d_inner * d_model
    return projections + mamba_decode_step_flops(batch, d_inner, conv_weight_shape[-1], dt_proj_weight_shape[1],
                                                 A_log_shape[1], D_shape is not None)


def use_layer_decode(batch: int, d_model: int) -> bool:
    """Whether a fused LM step takes the per-layer kernels (`mamba_decode_triton.DECODE_CONFIG`)."""
    from effprof.ops.mamba_decode_triton import DECODE_CONFIG

    return batch <= DECODE_CONFIG["layer_max_batch"] and d_model <= DECODE_CONFIG["layer_max_d_model"]


@torch.library.custom_op("effprof::mamba_lm_decode_persistent", mutates_args=_WORK + ("conv_states", "ssm_states"))
def _persistent_op(normed: Tensor, residual: Tensor, xz: Tensor, acc: Tensor, xacc: Tensor, count: Tensor,
                   conv_states: list[Tensor], ssm_states: list[Tensor], in_proj_weight: list[Tensor],
                   conv_weight: list[Tensor], conv_bias: list[Tensor], x_proj_weight: list[Tensor],
                   dt_proj_weight: list[Tensor], dt_proj_bias: list[Tensor], A_log: list[Tensor], D: list[Tensor],
                   out_proj_weight: list[Tensor], norm_weight: list[Tensor], norm_f_weight: Tensor, eps: float,
                   head_weight: Optional[Tensor] = None) -> None:
    """All layers of a batch-1 step in one persistent kernel (mamba_decode_persistent_triton.py); conv_bias
    and D empty where the model has none."""
    from effprof.ops.mamba_decode_layer_triton import DecodeWork
    from effprof.ops.mamba_decode_persistent_triton import layer_table, step_persistent_triton
    from effprof.ops.mamba_decode_triton import DECODE_CONFIG

    found = layer_table(_persistent_tensors(locals()))
    if found is None:
        raise UsageError("the persistent decode kernel needs layers of one shape whose tensors are 16-element "
                         "aligned (mamba_decode_persistent_triton.layer_table)")
    firsts, table = found
    firsts.update(has_conv_bias=bool(conv_bias), has_D=bool(D))
    step_persistent_triton(firsts, table, len(in_proj_weight), norm_f_weight, eps,
                           DecodeWork.of(normed, residual, xz, acc, xacc, count), head_weight,
                           DECODE_CONFIG["persistent_head_bytes"], DECODE_CONFIG["persistent_programs"],
                           DECODE_CONFIG["persistent_block_n"], DECODE_CONFIG["persistent_block_d"],
                           DECODE_CONFIG["persistent_num_warps"], DECODE_CONFIG["persistent_l2"], DECODE_CONFIG["pdl"])


def _persistent_tensors(args: dict) -> dict:
    """The persistent op's arguments by the table's kinds (absent conv bias and D stand in as the conv weight and
    A_log, never read)."""
    return {"in_proj_weight": args["in_proj_weight"], "conv_weight": args["conv_weight"],
            "conv_bias": args["conv_bias"] or args["conv_weight"], "x_proj_weight": args["x_proj_weight"],
            "dt_proj_weight": args["dt_proj_weight"], "dt_proj_bias": args["dt_proj_bias"], "A_log": args["A_log"],
            "D": args["D"] or args["A_log"], "out_proj_weight": args["out_proj_weight"],
            "norm_weight": args["norm_weight"], "conv_state": args["conv_states"], "ssm_state": args["ssm_states"]}


@register_flop_formula(torch.ops.effprof.mamba_lm_decode_persistent)
def _persistent_flop(normed_shape, residual_shape, xz_shape, acc_shape, xacc_shape, count_shape, conv_states_shape,
                     ssm_states_shape, in_proj_weight_shape, conv_weight_shape, conv_bias_shape, x_proj_weight_shape,
                     dt_proj_weight_shape, dt_proj_bias_shape, A_log_shape, D_shape, *args, out_shape=None,
                     **kwargs) -> int:
    """The per-layer op's count (`_layer_decode_flop`) summed over the layers."""
    batch, d_model = normed_shape
    total = 0
    for i, in_shape in enumerate(in_proj_weight_shape):
        d_inner = conv_weight_shape[i][0]
        total += 2 * batch * d_model * in_shape[0] + 2 * batch * d_inner * d_model + mamba_decode_step_flops(
            batch, d_inner, conv_weight_shape[i][-1], dt_proj_weight_shape[i][1], A_log_shape[i][1], bool(D_shape))
    return total


def use_persistent_decode(batch: int, d_model: int) -> bool:
    """Whether a fused LM step runs all its layers in one persistent kernel (`DECODE_CONFIG`)."""
    from effprof.ops.mamba_decode_triton import DECODE_CONFIG

    return batch == 1 and d_model <= DECODE_CONFIG["persistent_max_d_model"]


def _try_persistent(work, layers, states, norm_weights, norm_f_weight, eps, head_weight) -> bool:
    """Run the persistent kernel where the layers allow it (`layer_table`); False where they do not."""
    from effprof.ops.mamba_decode_persistent_triton import layer_table

    lists = {kind: [w[kind] for w in layers] for kind in ("in_proj_weight", "conv_weight", "x_proj_weight",
                                                           "dt_proj_weight", "dt_proj_bias", "A_log",
                                                           "out_proj_weight")}
    has_bias, has_D = layers[0]["conv_bias"] is not None, layers[0]["D"] is not None
    if any((w["conv_bias"] is not None) != has_bias or (w["D"] is not None) != has_D for w in layers):
        return False
    lists.update(conv_bias=[w["conv_bias"] for w in layers] if has_bias else [],
                 D=[w["D"] for w in layers] if has_D else [], norm_weight=list(norm_weights[:len(layers)]),
                 conv_states=[s[0] for s in states], ssm_states=[s[1] for s in states])
    if layer_table(_persistent_tensors(lists)) is None:
        return False
    torch.ops.effprof.mamba_lm_decode_persistent(*work, lists["conv_states"], lists["ssm_states"],
                                                 lists["in_proj_weight"], lists["conv_weight"], lists["conv_bias"],
                                                 lists["x_proj_weight"], lists["dt_proj_weight"], lists["dt_proj_bias"],
                                                 lists["A_log"], lists["D"], lists["out_proj_weight"],
                                                 lists["norm_weight"], norm_f_weight, float(eps), head_weight)
    return True


def mamba_lm_decode_step_triton(ids, embedding_weight, norm_weights, layers, states, norm_f_weight, eps,
                                head_weight=None):
    """One LM step (embedding through norm_f) with the per-layer kernels: ids (batch,) int; norm_weights[i]
    the RMSNorm weight before layer i; layers[i] a dict of that mixer's weights (in_proj_weight, conv_weight
    (d_inner, d_conv), conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, out_proj_weight);
    states[i] = (conv_state, ssm_state), updated in place. Returns norm_f's output (batch, d_model) in the
    model dtype, as `add_rms_norm_ref(out, residual, norm_f_weight)` of the reference's last layer. At batch 1
    and small width (`use_persistent_decode`) the layers run in one persistent kernel instead; `head_weight`
    (the LM head's weight, optional) is then partly prefetched into L2 during the last layer."""
    first = layers[0]
    batch, d_model = ids.shape[0], embedding_weight.shape[1]
    d_inner, O = first["conv_weight"].shape[0], first["x_proj_weight"].shape[0]
    device, dtype = embedding_weight.device, embedding_weight.dtype
    work = [torch.empty(batch, d_model, device=device, dtype=dtype),
            torch.empty(2, batch, d_model, device=device, dtype=torch.float32),
            torch.empty(batch, 2 * d_inner, device=device, dtype=dtype),
            torch.empty(2, batch, d_model, device=device, dtype=torch.float32),
            torch.empty(2, batch, O, device=device, dtype=torch.float32),
            torch.empty(1, device=device, dtype=torch.int32)]  # mamba_decode_layer_triton.DecodeWork
    torch.ops.effprof.mamba_decode_prologue(ids, embedding_weight, norm_weights[0], float(eps), *work)
    if use_persistent_decode(batch, d_model) and _try_persistent(work, layers, states, norm_weights, norm_f_weight,
                                                                 eps, head_weight):
        return work[0]
    # the next layer's in_proj weight reaches this layer's op only for the L2 prefetches that read it (l2_ahead,
    # l2_bulk_in; the byte count leaves it out: `declare_not_moved`)
    from effprof.ops.mamba_decode_triton import DECODE_CONFIG

    ahead = DECODE_CONFIG["layer_l2_ahead"] or DECODE_CONFIG["layer_l2_bulk_in"] > 0
    for i, (weights, (conv_state, ssm_state)) in enumerate(zip(layers, states)):
        next_norm = norm_weights[i + 1] if i + 1 < len(layers) else norm_f_weight
        torch.ops.effprof.mamba_layer_decode(*work, conv_state, ssm_state, weights["in_proj_weight"],
                                             weights["conv_weight"], weights["conv_bias"], weights["x_proj_weight"],
                                             weights["dt_proj_weight"], weights["dt_proj_bias"], weights["A_log"],
                                             weights["D"], weights["out_proj_weight"], norm_weights[i], next_norm,
                                             float(eps), i % 2, i + 1 == len(layers),
                                             layers[i + 1]["in_proj_weight"] if ahead and i + 1 < len(layers) else None)
    return work[0]
