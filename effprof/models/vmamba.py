"""VMamba image classifiers (Liu et al. 2024, "VMamba: Visual State Space Model"), on effprof's scan.

The published configurations (VMamba's classification/configs/vssm/*.yaml and the `vmamba_*` builders
of classification/models/vmamba.py; read, not copied):

| preset     | dims | depths        | d_state | ssm_ratio | MLP | SS2D    | stem / downsample      | published        |
| vanilla-t  | 96   | [2, 2, 9, 2]  | 16      | 2.0       | -   | v0      | v1 (4×4 conv / merge)  | 23M, 5.6G        |
| t (s1l8)   | 96   | [2, 2, 8, 2]  | 1       | 1.0       | 4   | v05_noz | v2 / v3 (3×3 convs)    | 30M, 4.9G        |
| s (s2l15)  | 96   | [2, 2, 15, 2] | 1       | 2.0       | 4   | v05_noz | v2 / v3                | 50M, 8.7G        |
| b (s2l15)  | 128  | [2, 2, 15, 2] | 1       | 2.0       | 4   | v05_noz | v2 / v3                | 89M, 15.4G       |

(v2 models: d_conv 3 without bias; vanilla: conv bias on. VMamba-T is 30,249,064 parameters with its
1000-class head, the figure VMamba's analyze/tp.py prints.) Widths double per stage.

The network: stem -> 4 stages of VSSBlocks (a downsample between stages) -> LayerNorm -> global average
pool -> Linear head. Tensors are channel-last (batch, H, W, C) between blocks.
- stem v1: Conv 4×4 stride 4 -> LN. Downsample v1 (patch merging): 2×2 neighbours concatenated -> LN(4C) ->
  Linear(4C, 2C, no bias).
- stem v2: Conv 3×3 s2 (C/2) -> LN -> GELU -> Conv 3×3 s2 (C) -> LN. Downsample v3: Conv 3×3 s2 -> LN.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from effprof.modules.ss2d import VSSBlock

PATCH = 4  # the stem reduces by 4: tokens entering stage 1 = (H/4)·(W/4)


@dataclass(frozen=True)
class VMambaConfig:
    dim: int
    depths: tuple[int, ...]
    d_state: int
    ssm_ratio: float
    mlp_ratio: float
    forward_type: str          # "v05_noz" (v2) or "v0" (vanilla)
    version: str               # "v2": stem v2 + downsample v3; "v1": stem v1 + patch merging
    conv_bias: bool
    num_classes: int = 1000


VMAMBA_PRESETS = {
    "vanilla-t": VMambaConfig(96, (2, 2, 9, 2), 16, 2.0, 0.0, "v0", "v1", True),
    "t": VMambaConfig(96, (2, 2, 8, 2), 1, 1.0, 4.0, "v05_noz", "v2", False),
    "s": VMambaConfig(96, (2, 2, 15, 2), 1, 2.0, 4.0, "v05_noz", "v2", False),
    "b": VMambaConfig(128, (2, 2, 15, 2), 1, 2.0, 4.0, "v05_noz", "v2", False),
}
# published parameter counts (millions, rounded as VMamba's tables print them) and GFLOPs (VMamba's
# fvcore MACs with its scan count, 224 px)
VMAMBA_PUBLISHED = {"vanilla-t": (23, 5.6), "t": (30, 4.9), "s": (50, 8.7), "b": (89, 15.4)}


class ChannelLastNorm(nn.LayerNorm):
    """LayerNorm over the channels of a channel-first map (batch, C, H, W) (VMamba's LayerNorm2d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class PatchMerging(nn.Module):
    """Downsample v1: (batch, H, W, C) -> 2×2 neighbours concatenated -> LN(4C) -> Linear(4C, out, no bias)."""

    def __init__(self, dim: int, out_dim: int, device=None, dtype=None):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, device=device, dtype=dtype)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[1:3]
        if height % 2 or width % 2:
            x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class ConvDownsample(nn.Module):
    """Downsample v3: (batch, H, W, C) -> Conv 3×3 stride 2 -> LN -> (batch, H/2, W/2, out)."""

    def __init__(self, dim: int, out_dim: int, device=None, dtype=None):
        super().__init__()
        self.conv = nn.Conv2d(dim, out_dim, 3, stride=2, padding=1, device=device, dtype=dtype)
        self.norm = nn.LayerNorm(out_dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


def make_stem(version: str, dim: int, device=None, dtype=None) -> nn.Module:
    """(batch, 3, H, W) -> (batch, H/4, W/4, dim)."""
    f = {"device": device, "dtype": dtype}
    if version == "v1":
        return nn.Sequential(nn.Conv2d(3, dim, PATCH, stride=PATCH, **f), ChannelLastNorm(dim, **f), _ToChannelLast())
    return nn.Sequential(nn.Conv2d(3, dim // 2, 3, stride=2, padding=1, **f), ChannelLastNorm(dim // 2, **f), nn.GELU(),
                         nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1, **f), ChannelLastNorm(dim, **f),
                         _ToChannelLast())


class _ToChannelLast(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


class VMamba(nn.Module):
    """VMamba classifier: images (batch, 3, H, W) -> logits (batch, num_classes)."""

    def __init__(self, config: VMambaConfig, scan_mode: str = "cross4", scan_backend: str = "ref",
                 device=None, dtype=None):
        super().__init__()
        self.config, self.scan_mode, self.scan_backend = config, scan_mode, scan_backend
        f = {"device": device, "dtype": dtype}
        dims = [config.dim * 2 ** i for i in range(len(config.depths))]
        self.patch_embed = make_stem(config.version, config.dim, **f)
        ss2d = dict(d_state=config.d_state, ssm_ratio=config.ssm_ratio, conv_bias=config.conv_bias,
                    gated=config.forward_type == "v0", scan_mode=scan_mode, scan_backend=scan_backend)
        self.layers = nn.ModuleList()
        for i, (dim, depth) in enumerate(zip(dims, config.depths)):
            blocks = [VSSBlock(dim, config.mlp_ratio, **f, **ss2d) for _ in range(depth)]
            if i < len(dims) - 1:
                down = PatchMerging if config.version == "v1" else ConvDownsample
                blocks.append(down(dim, dims[i + 1], **f))
            self.layers.append(nn.Sequential(*blocks))
        self.num_features = dims[-1]
        self.norm = nn.LayerNorm(dims[-1], **f)
        self.head = nn.Linear(dims[-1], config.num_classes, **f) if config.num_classes else nn.Identity()

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Last stage's normalised map, channel-last (batch, H/32, W/32, C)."""
        x = self.patch_embed(images)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(images).mean(dim=(1, 2)))

    def convert_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A checkpoint of VMamba's own code (classification/models/vmamba.py key names) in this module's
        names; a state dict already in effprof's names is returned as it is.

        VMamba's stems are Sequentials with Identity/Permute slots (v2: conv 0, norm 2, conv 5, norm 7; v1:
        conv 0, norm 2), its stages `layers.i.blocks.j` + `layers.i.downsample` (v3: conv 1, norm 3), its
        head `classifier.norm` / `classifier.head`; Linear2d weights (out, in, 1, 1) become (out, in).
        """
        if "classifier.head.weight" not in state and "classifier.norm.weight" not in state:
            return state
        stem = {"0": "0", "2": "1", "5": "3", "7": "4"}
        own = self.state_dict()
        out = {}
        for key, value in state.items():
            parts = key.split(".")
            if parts[0] == "patch_embed" and parts[1] in stem:
                parts[1] = stem[parts[1]]
            elif parts[0] == "classifier":
                parts = parts[1:]
            elif parts[0] == "layers" and parts[2] == "blocks":
                parts = parts[:2] + parts[3:]
            elif parts[0] == "layers" and parts[2] == "downsample":
                index = str(self.config.depths[int(parts[1])])
                slot = {"1": "conv", "3": "norm"}.get(parts[3], parts[3])  # v3 Sequential; v1 names as is
                parts = parts[:2] + [index, slot] + parts[4:]
            name = ".".join(parts)
            if name in own and value.dim() == 4 and own[name].dim() == 2:
                value = value.flatten(1)
            out[name] = value
        return out


def vmamba_config(preset: str, num_classes: int = 1000, **overrides) -> VMambaConfig:
    """A preset's config; `overrides` (dim, depths, d_state, ...) that are None keep the preset's value."""
    return replace(VMAMBA_PRESETS[preset], num_classes=num_classes,
                   **{k: v for k, v in overrides.items() if v is not None})


def build_vmamba(preset: str, scan_mode: str = "cross4", scan_backend: str = "ref", num_classes: int = 1000,
                 device=None, dtype=None, **overrides) -> VMamba:
    return VMamba(vmamba_config(preset, num_classes, **overrides), scan_mode, scan_backend, device=device,
                  dtype=dtype)


def scan_flops_per_image(config: VMambaConfig, img_size: int, scan_mode: str = "cross4") -> int:
    """effprof's count of the selective scans of one image, in closed form: per block, K sequences of
    L = (stage side)² steps over d_inner channels: K·(9·L·d_inner·N + L·d_inner) (the D skip; no z gate)."""
    from effprof.ops.cross_scan import num_sequences

    k = num_sequences(scan_mode)
    side = img_size // PATCH
    total = 0
    for i, depth in enumerate(config.depths):
        d_inner = int(config.ssm_ratio * config.dim * 2 ** i)
        length = side * side
        total += depth * k * (9 * length * d_inner * config.d_state + length * d_inner)
        side = -(-side // 2)
    return total
