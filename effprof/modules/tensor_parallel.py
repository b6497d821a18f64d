"""Tensor parallelism for the LLM rows (`--tp N`): how each model is split across the N ranks.

The split is Megatron-LM's (Shoeybi et al. 2019, §3): in each block a *column-parallel* linear (output
features split, no communication) feeds a *row-parallel* one (input features split; its partial outputs
are summed by one all-reduce, the bias added once), so a block costs one all-reduce per row-parallel
linear and nothing else; embeddings, norms and the LM head stay replicated.

- Hugging Face models (`transformer-lm`, the LM of `llava`): the plan is the model's own
  `config.base_model_tp_plan` (transformers' names: `colwise`, `rowwise`), applied here to a model built
  from its config with random weights (transformers applies its plans only while loading a checkpoint).
  The embedding stays replicated (`embedding_rowwise` is skipped): it is a gather, not a matmul.
- Mamba (`mamba-lm`): the inner channels are split (as Mamba-2's TP and Megatron's Mamba layer do):
  in_proj column-parallel (each rank keeps its slice of x and of the gate z), the depthwise conv, dt_proj,
  A and D split per channel, x_proj row-parallel (one all-reduce of the small (dt, B, C) projection)
  and out_proj row-parallel (one all-reduce of the block output): two all-reduces per block.

Every rank builds the whole model from the same seed and keeps its slice, so the slices fit together
exactly; `shard(component, built, rank, world)` is what the runner calls after the factory.
"""
from __future__ import annotations

import fnmatch
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from effprof.core.errors import UsageError

TP_PLANS: dict[str, Callable] = {}


def register_tp_plan(component: str):
    """Declare how `component`'s module is split: `fn(built, rank, world)` modifies `built.module` in place."""
    def decorate(fn):
        TP_PLANS[component] = fn
        return fn
    return decorate


def supports_tp(component: str) -> bool:
    return component in TP_PLANS


def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over the ranks in place (a no-op without a process group)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def _split(tensor: torch.Tensor, dim: int, rank: int, world: int) -> torch.Tensor:
    size = tensor.shape[dim]
    if size % world:
        raise UsageError(f"--tp {world}: a dimension of {size} does not split into {world} equal parts")
    return tensor.detach().narrow(dim, rank * (size // world), size // world).clone()


def colwise(linear: nn.Linear, rank: int, world: int) -> nn.Linear:
    """Keep this rank's block of output features (weight rows and bias)."""
    out = nn.Linear(linear.in_features, linear.out_features // world, bias=linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(_split(linear.weight, 0, rank, world))
        if linear.bias is not None:
            out.bias.copy_(_split(linear.bias, 0, rank, world))
    out.requires_grad_(linear.weight.requires_grad)
    return out


class RowParallelLinear(nn.Module):
    """y = all_reduce(x_local @ W_localᵀ) + b: this rank's block of input features; bias added once."""

    def __init__(self, linear: nn.Linear, rank: int, world: int):
        super().__init__()
        self.in_features, self.out_features = linear.in_features // world, linear.out_features
        self.weight = nn.Parameter(_split(linear.weight, 1, rank, world), requires_grad=linear.weight.requires_grad)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(),
                                                                  requires_grad=linear.bias.requires_grad)

    def forward(self, x):
        y = all_reduce(F.linear(x, self.weight))
        return y if self.bias is None else y + self.bias


def apply_hf_plan(model: nn.Module, plan: dict[str, str], rank: int, world: int) -> int:
    """Replace the linears named by a transformers `base_model_tp_plan`; returns how many were split."""
    styles = {"colwise": colwise, "rowwise": RowParallelLinear}
    split = 0
    for name, module in list(model.named_modules()):
        style = next((s for pattern, s in plan.items() if fnmatch.fnmatchcase(name, pattern)), None)
        if style not in styles or not isinstance(module, nn.Linear):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, styles[style](module, rank, world))
        split += 1
    return split


def _hf_config_check(config, world: int) -> None:
    heads = getattr(config, "num_attention_heads", world)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if heads % world or kv_heads % world:
        raise UsageError(f"--tp {world}: {heads} attention heads ({kv_heads} key/value heads) do not split "
                         f"into {world} ranks")


@register_tp_plan("transformer-lm")
def shard_transformer_lm(built, rank: int, world: int) -> None:
    model = built.module.model  # TransformerLM(GPTNeoXModel)
    _hf_config_check(model.config, world)
    built.info["tp_linears_split"] = apply_hf_plan(model, model.config.base_model_tp_plan, rank, world)


@register_tp_plan("llava")
def shard_llava(built, rank: int, world: int) -> None:
    """The Llama LM of LLaVA by its own plan; the vision tower and projector stay replicated. The text config
    is told the local head counts, so the static KV cache each rank allocates holds its own heads."""
    if built.hooks.get("generation"):
        raise UsageError("--tp: llava's generate mode is not split (its per-token stamps are timed per rank); "
                         "use --mode prefill or decode")
    lm = built.module.lm
    if built.module.decode_impl != "transformers":  # the fused decode step has no all-reduce: transformers' runs
        built.info["decode_impl"] = built.module.use_decode_impl("transformers")
    configs = {id(c): c for c in (lm.config, built.module.config.get_text_config(decoder=True))}.values()
    _hf_config_check(lm.config, world)
    built.info["tp_linears_split"] = apply_hf_plan(lm, lm.config.base_model_tp_plan, rank, world)
    for config in configs:
        config.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        config.num_attention_heads //= world
        config.num_key_value_heads = (config.num_key_value_heads or config.num_attention_heads * world) // world


class TensorParallelMambaBlock(nn.Module):
    """Marker base: see `shard_mamba_block` (the class of a split MambaBlock gains these overrides)."""

    def _ssm_inputs(self, x_dbl):
        return super()._ssm_inputs(all_reduce(x_dbl))  # x_proj is row-parallel: sum the partial (dt, B, C)

    def forward(self, hidden_states, state=None):
        return self._out(super().forward(hidden_states, state))

    def step(self, hidden_states, state):
        return self._out(super().step(hidden_states, state))

    def _out(self, y):  # out_proj is row-parallel: sum the partial outputs (its bias is kept on rank 0 only)
        return all_reduce(y)


def shard_mamba_block(block, rank: int, world: int) -> None:
    """Split one `effprof.modules.mamba.MambaBlock` over its d_inner channels, in place."""
    d_inner = block.d_inner
    if d_inner % world:
        raise UsageError(f"--tp {world}: d_inner {d_inner} does not split into {world} ranks")
    local = d_inner // world
    with torch.no_grad():
        x_w, z_w = block.in_proj.weight.split(d_inner)
        in_proj = nn.Linear(block.d_model, 2 * local, bias=block.in_proj.bias is not None,
                            device=x_w.device, dtype=x_w.dtype)
        in_proj.weight.copy_(torch.cat([_split(x_w, 0, rank, world), _split(z_w, 0, rank, world)]))
        if block.in_proj.bias is not None:
            x_b, z_b = block.in_proj.bias.split(d_inner)
            in_proj.bias.copy_(torch.cat([_split(x_b, 0, rank, world), _split(z_b, 0, rank, world)]))
        block.in_proj = in_proj
        conv = block.conv1d
        block.conv1d = nn.Conv1d(local, local, conv.kernel_size[0], groups=local, padding=conv.padding,
                                 bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)
        block.conv1d.weight.copy_(_split(conv.weight, 0, rank, world))
        if conv.bias is not None:
            block.conv1d.bias.copy_(_split(conv.bias, 0, rank, world))
        block.x_proj = RowParallelLinear(block.x_proj, rank, world)
        block.dt_proj = colwise(block.dt_proj, rank, world)
        block.A_log = nn.Parameter(_split(block.A_log, 0, rank, world))
        block.D = nn.Parameter(_split(block.D, 0, rank, world))
        out = block.out_proj
        block.out_proj = nn.Linear(local, out.out_features, bias=out.bias is not None, device=out.weight.device,
                                   dtype=out.weight.dtype)
        block.out_proj.weight.copy_(_split(out.weight, 1, rank, world))
        if out.bias is not None:
            block.out_proj.bias.copy_(out.bias if rank == 0 else torch.zeros_like(out.bias))
    block.d_inner = local
    block.__class__ = _tp_class(type(block))


_TP_CLASSES: dict[type, type] = {}


def _tp_class(cls: type) -> type:
    """`cls` with TensorParallelMambaBlock's overrides in front (one class per block type)."""
    if cls not in _TP_CLASSES:
        _TP_CLASSES[cls] = type(f"TensorParallel{cls.__name__}", (TensorParallelMambaBlock, cls), {})
    return _TP_CLASSES[cls]


@register_tp_plan("mamba-lm")
def shard_mamba_lm(built, rank: int, world: int) -> None:
    for mixer in built.module.mixers:
        shard_mamba_block(mixer, rank, world)
    built.info["tp_linears_split"] = 4 * len(built.module.mixers)


@register_tp_plan("cobra")
def shard_cobra(built, rank: int, world: int) -> None:
    """Cobra's Mamba LM as `mamba-lm`'s; the two vision towers and the projector stay replicated."""
    if built.hooks.get("generation"):
        raise UsageError("--tp: cobra's generate mode is not split (its per-token stamps are timed per rank); "
                         "use --mode prefill or decode")
    for mixer in built.module.lm.mixers:
        shard_mamba_block(mixer, rank, world)
    built.info["tp_linears_split"] = 4 * len(built.module.lm.mixers)


def shard(component: str, built, rank: int, world: int) -> None:
    """Split `built.module` for rank `rank` of `world` with the component's plan; refuse a component without one."""
    if not supports_tp(component):
        raise UsageError(f"--tp: {component} has no tensor-parallel plan (components with one: "
                         f"{', '.join(sorted(TP_PLANS))})")
    from effprof.measure.memory import count_params

    built.info["params_unsharded"], built.info["params_trainable_unsharded"] = count_params(built.module)
    TP_PLANS[component](built, rank, world)
