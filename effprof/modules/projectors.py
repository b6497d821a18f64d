"""LLaVA-style vision-to-language projectors: (batch, tokens, in_dim) -> (batch, tokens', out_dim).

Layouts follow the released code so that projector checkpoints load directly:
- `linear`: LLaVA-1's single nn.Linear (Liu et al. 2023, "Visual Instruction Tuning").
- `mlp`: LLaVA-1.5's `mlp2x_gelu` = Linear, GELU, Linear (Liu et al. 2023, "Improved Baselines with Visual
  Instruction Tuning"); state-dict keys `0.*` and `2.*` as in `mm_projector.bin`.
- `LowRankProjector`: W ≈ U V with rank r (no bias on the first factor).
- `GatedProjector`: y = σ(W_g x + b_g) ⊙ (W_v x + b_v), sigmoid-gated linear fusion.
- `LoRAProjector`: frozen linear plus trainable rank-r adapters, y = W x + b + (α/r)·B(A x) (Hu et al. 2021).
- `LDPProjector`: MobileVLM's Lightweight Downsample Projector (Chu et al. 2023, "MobileVLM"), as used by
  Cobra: the mlp2x_gelu MLP, then two MobileNetV3 inverted-residual blocks (3×3 depthwise conv, LayerNorm
  over channels, hardswish, squeeze-excite with hardsigmoid, 1×1 projection, LayerNorm), the second with
  stride 2, which turns a 24×24 grid of 576 tokens into 12×12 = 144.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def mlp2x_gelu(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


class LowRankProjector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, rank: int):
        super().__init__()
        self.down = nn.Linear(in_dim, rank, bias=False)
        self.up = nn.Linear(rank, out_dim)

    def forward(self, x):
        return self.up(self.down(x))


class GatedProjector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.value = nn.Linear(in_dim, out_dim)
        self.gate = nn.Linear(in_dim, out_dim)

    def forward(self, x):
        return torch.sigmoid(self.gate(x)) * self.value(x)


class LoRAProjector(nn.Module):
    """A frozen linear projector with trainable low-rank adapters (only `lora_a`/`lora_b` train)."""

    def __init__(self, in_dim: int, out_dim: int, rank: int, alpha: float):
        super().__init__()
        self.base = nn.Linear(in_dim, out_dim)
        self.base.requires_grad_(False)
        self.lora_a = nn.Linear(in_dim, rank, bias=False)
        self.lora_b = nn.Linear(rank, out_dim, bias=False)
        nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5))
        nn.init.normal_(self.lora_b.weight, std=0.02)  # LoRA zero-inits B; random here so the path is exercised
        self.scaling = alpha / rank

    def forward(self, x):
        return self.base(x) + self.scaling * self.lora_b(self.lora_a(x))


class ChannelLayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of an NCHW tensor (MobileVLM's LayerNormAct2d without activation)."""

    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


def make_divisible(value: float, divisor: int = 8) -> int:
    """MobileNet's channel rounding (torchvision `_make_divisible`)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        squeeze = make_divisible(channels // 4, 8)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x):
        scale = F.adaptive_avg_pool2d(x, 1)
        scale = self.fc2(F.relu(self.fc1(scale)))
        return x * F.hardsigmoid(scale)


class InvertedResidual(nn.Module):
    """MobileNetV3 block with expansion 1 (MobileVLM LDP's setting): depthwise 3×3, SE, 1×1 projection."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.depthwise = nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False)
        self.norm1 = ChannelLayerNorm2d(channels)
        self.se = SqueezeExcite(channels)
        self.project = nn.Conv2d(channels, channels, 1, bias=False)
        self.norm2 = ChannelLayerNorm2d(channels)

    def forward(self, x):
        y = F.hardswish(self.norm1(self.depthwise(x)))
        y = self.norm2(self.project(self.se(y)))
        return x + y if self.stride == 1 else y


class LDPProjector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.mlp = mlp2x_gelu(in_dim, out_dim)
        self.blocks = nn.Sequential(InvertedResidual(out_dim, 1), InvertedResidual(out_dim, 2))

    @staticmethod
    def tokens_out(tokens: int) -> int:
        side = math.isqrt(tokens)
        return ((side + 1) // 2) ** 2

    def forward(self, x):
        batch, tokens, _ = x.shape
        side = math.isqrt(tokens)
        x = self.mlp(x).transpose(1, 2).reshape(batch, -1, side, side)
        return self.blocks(x).flatten(2).transpose(1, 2)
