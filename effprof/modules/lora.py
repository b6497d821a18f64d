"""Low-rank adapters (LoRA, Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") on named
nn.Linear layers, built in, beside the `peft` library's own injection (the reference users already have).

y = W x + b + (α / r) · B (A x), with W, b frozen, A ∈ R^{r×in}, B ∈ R^{out×r} trainable: r·(in + out)
trainable parameters per adapted layer (2·d·r for a d×d layer), biases frozen (peft's `bias="none"`).
Initialisation as peft's default: A Kaiming-uniform (a = √5), B zero, so an adapted model starts equal to
its base. `merge` folds (α/r)·B A into W (the adapters then cost nothing at inference); `unmerge` undoes it.

- `apply_lora(model, targets, rank, alpha)`: the built-in path (`LoRALinear` replaces each target).
- `apply_lora_peft(model, targets, rank, alpha)`: `peft.inject_adapter_in_model` with the same settings.
Both freeze everything but the adapters. `targets` are module-name suffixes as peft reads them
(e.g. "q_proj", "visual_projection").
"""
from __future__ import annotations

import math

import torch
from torch import nn

from effprof.core.errors import MissingExtra, UsageError


class LoRALinear(nn.Module):
    """A frozen nn.Linear (`base_layer`) plus trainable rank-r adapters `lora_A`, `lora_B`."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base_layer = base
        base.requires_grad_(False)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, **factory)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, **factory)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = alpha / rank
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.merged:
            return result
        return result + self.lora_B(self.lora_A(x)) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base_layer.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base_layer.weight -= self.delta_weight()
            self.merged = False


def _matches(name: str, targets: tuple[str, ...]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def target_names(model: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """Names of the nn.Linear modules whose name ends with one of `targets`; refuses a target that matches none."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and _matches(n, targets)]
    for t in targets:
        if not any(_matches(n, (t,)) for n in names):
            raise UsageError(f"--lora-targets: no nn.Linear named {t!r} in {type(model).__name__}")
    return names


def apply_lora(model: nn.Module, targets: tuple[str, ...], rank: int, alpha: float) -> list[str]:
    """Replace each target Linear by a LoRALinear; freeze all else. Returns the adapted module names."""
    names = target_names(model, targets)
    model.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), rank, alpha))
    return names


def peft_available() -> bool:
    try:
        import peft  # noqa: F401
    except ImportError:
        return False
    return True


def apply_lora_peft(model: nn.Module, targets: tuple[str, ...], rank: int, alpha: float) -> list[str]:
    """peft's injection with the built-in path's settings (no dropout, bias none, default init)."""
    if not peft_available():
        raise MissingExtra("--lora-backend peft needs the `peft` package (pip install 'effprof[lora]')")
    from peft import LoraConfig, inject_adapter_in_model

    names = target_names(model, targets)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none", target_modules=list(targets))
    inject_adapter_in_model(config, model)
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)
    return names


def lora_layers(model: nn.Module) -> list[nn.Module]:
    """The adapted layers of either path (LoRALinear or peft's LoraLayer)."""
    found = [m for m in model.modules() if isinstance(m, LoRALinear)]
    if peft_available():
        from peft.tuners.lora import LoraLayer

        found += [m for m in model.modules() if isinstance(m, LoraLayer)]
    return found


def merge_lora(model: nn.Module) -> int:
    """Fold every adapter into its base weight (either path); returns how many layers were merged."""
    layers = lora_layers(model)
    for layer in layers:
        layer.merge()
    return len(layers)


def copy_adapters(source: nn.Module, target: nn.Module) -> None:
    """Copy the built-in adapters' A and B of `source` into peft's adapters of `target` (same names)."""
    weights = {n: p for n, p in source.named_parameters() if "lora_" in n}
    with torch.no_grad():
        for name, param in target.named_parameters():
            if "lora_" in name:
                param.copy_(weights[name.replace(".default", "")])
