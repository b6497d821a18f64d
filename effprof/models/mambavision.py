"""MambaVision image classifiers and vision tower (Hatamizadeh & Kautz, CVPR 2025), on effprof's scan.

Published configurations (NVlabs/MambaVision, mambavision/models/mamba_vision.py; read, not copied):

| preset | dim | in_dim | depths        | heads          | windows        | layer scale | published       |
| t      | 80  | 32     | [1, 3, 8, 4]  | [2, 4, 8, 16]  | [8, 8, 14, 7]  | -           | 31.8M, 4.4G     |
| s      | 96  | 64     | [3, 3, 7, 5]  | [2, 4, 8, 16]  | [8, 8, 14, 7]  | -           | 50.1M, 7.5G     |
| b      | 128 | 64     | [3, 3, 10, 5] | [2, 4, 8, 16]  | [8, 8, 14, 7]  | 1e-5        | 97.7M, 15.0G    |

The network: stem (two 3×3 stride-2 convs with BatchNorm and ReLU, 3 -> in_dim -> dim), stages 1-2 of
ConvBlocks, stages 3-4 of HybridBlocks on windows of window×window tokens (padded to a multiple of the
window), the first half of a stage's blocks with the MambaVision mixer and the second half with
self-attention (odd depth: one more mixer), a 3×3 stride-2 conv (no bias) doubling the width after
stages 1-3, then BatchNorm, global average pooling and a Linear head. Width doubles per stage.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from effprof.modules.mambavision import ConvBlock, HybridBlock

PATCH = 4      # the stem reduces by 4
STRIDE = 32    # the last stage's stride: tokens of the tower = (H/32)·(W/32)


@dataclass(frozen=True)
class MambaVisionConfig:
    dim: int
    in_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...] = (2, 4, 8, 16)
    window_size: tuple[int, ...] = (8, 8, 14, 7)
    mlp_ratio: float = 4.0
    layer_scale: float | None = None
    crop_pct: float = 1.0          # evaluation: resize to size / crop_pct (bicubic), centre crop


MAMBAVISION_PRESETS = {
    "t": MambaVisionConfig(80, 32, (1, 3, 8, 4)),
    "s": MambaVisionConfig(96, 64, (3, 3, 7, 5), crop_pct=0.93),
    "b": MambaVisionConfig(128, 64, (3, 3, 10, 5), layer_scale=1e-5),
}
MAMBAVISION_PUBLISHED = {"t": (31.8, 4.4), "s": (50.1, 7.5), "b": (97.7, 15.0)}  # M params, GFLOPs (MACs)


def attention_blocks(depth: int) -> range:
    """Indices of a hybrid stage's blocks that use self-attention: the second half (odd depth: fewer)."""
    return range(depth // 2 + 1, depth) if depth % 2 else range(depth // 2, depth)


class HybridStage(nn.Module):
    """Window partition -> HybridBlocks -> window reverse, on (batch, C, H, W)."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: int, config: MambaVisionConfig,
                 scan_backend: str, device=None, dtype=None):
        super().__init__()
        self.window = window
        attention = set(attention_blocks(depth))
        self.blocks = nn.Sequential(*[HybridBlock(dim, num_heads, i in attention, config.mlp_ratio,
                                                  config.layer_scale, scan_backend, device=device, dtype=dtype)
                                      for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        w = self.window
        pad_r, pad_b = (w - width % w) % w, (w - height % w) % w
        if pad_r or pad_b:
            x = F.pad(x, (0, pad_r, 0, pad_b))
        hp, wp = height + pad_b, width + pad_r
        windows = x.view(batch, channels, hp // w, w, wp // w, w).permute(0, 2, 4, 3, 5, 1).reshape(-1, w * w, channels)
        windows = self.blocks(windows)
        x = windows.reshape(batch, hp // w, wp // w, w, w, channels).permute(0, 5, 1, 3, 2, 4).reshape(
            batch, channels, hp, wp)
        return x[:, :, :height, :width].contiguous() if (pad_r or pad_b) else x


class MambaVision(nn.Module):
    """MambaVision classifier: images (batch, 3, H, W) -> logits (batch, num_classes)."""

    def __init__(self, config: MambaVisionConfig, num_classes: int = 1000, scan_backend: str = "ref",
                 device=None, dtype=None):
        super().__init__()
        f = {"device": device, "dtype": dtype}
        self.config, self.scan_backend = config, scan_backend
        self.patch_embed = nn.Sequential(
            nn.Conv2d(3, config.in_dim, 3, 2, 1, bias=False, **f), nn.BatchNorm2d(config.in_dim, eps=1e-4, **f),
            nn.ReLU(), nn.Conv2d(config.in_dim, config.dim, 3, 2, 1, bias=False, **f),
            nn.BatchNorm2d(config.dim, eps=1e-4, **f), nn.ReLU())
        self.levels = nn.ModuleList()
        for i, depth in enumerate(config.depths):
            dim = config.dim * 2 ** i
            if i < 2:
                stage = nn.Sequential(*[ConvBlock(dim, **f) for _ in range(depth)])
            else:
                stage = HybridStage(dim, depth, config.num_heads[i], config.window_size[i], config, scan_backend, **f)
            down = nn.Conv2d(dim, 2 * dim, 3, 2, 1, bias=False, **f) if i < len(config.depths) - 1 else nn.Identity()
            self.levels.append(nn.Sequential(stage, down))
        self.num_features = config.dim * 2 ** (len(config.depths) - 1)
        self.norm = nn.BatchNorm2d(self.num_features, **f)
        self.head = nn.Linear(self.num_features, num_classes, **f) if num_classes else nn.Identity()

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The last stage's normalised map (batch, C, H/32, W/32)."""
        x = self.patch_embed(images)
        for level in self.levels:
            x = level(x)
        return self.norm(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(images).mean(dim=(2, 3)))

    def convert_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A checkpoint of NVlabs' code (mamba_vision.py key names) in this module's names; a state dict
        already in effprof's names is returned as it is. NVlabs: `patch_embed.conv_down.k`,
        `levels.i.blocks.j.*`, `levels.i.downsample.reduction.0.weight`; here `patch_embed.k`,
        `levels.i.0.j.*` (conv stages) or `levels.i.0.blocks.j.*` (hybrid), `levels.i.1.weight`."""
        if not any(k.startswith("patch_embed.conv_down.") for k in state):
            return state
        out = {}
        for key, value in state.items():
            parts = key.split(".")
            if parts[:2] == ["patch_embed", "conv_down"]:
                parts = ["patch_embed"] + parts[2:]
            elif parts[0] == "levels" and parts[2] == "blocks":
                hybrid = int(parts[1]) >= 2
                parts = parts[:2] + (["0", "blocks"] if hybrid else ["0"]) + parts[3:]
            elif parts[0] == "levels" and parts[2] == "downsample":
                parts = parts[:2] + ["1"] + parts[-1:]
            out[".".join(parts)] = value
        return out


def build_mambavision(preset: str, num_classes: int = 1000, scan_backend: str = "ref", device=None,
                      dtype=None, **overrides) -> MambaVision:
    """A preset's network; `overrides` (dim, depths, ...) that are None keep the preset's value."""
    config = replace(MAMBAVISION_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    return MambaVision(config, num_classes, scan_backend, device=device, dtype=dtype)


class MambaVisionTower(nn.Module):
    """MambaVision as a vision tower: images (batch, 3, H, W) -> token features (batch, N, C).

    N = (H/32)·(W/32) tokens of the last stage (49 at 224 px), C = 8·dim (640 for MambaVision-T): the
    final BatchNorm'd map, flattened row-major, without pooling or head (what a VLM's projector takes).
    """

    def __init__(self, model: MambaVision):
        super().__init__()
        self.model = model
        self.hidden_size = model.num_features

    @staticmethod
    def num_tokens(img_size: int) -> int:
        side = -(-img_size // STRIDE)
        return side * side

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(images).flatten(2).transpose(1, 2)


def mambavision_tower(preset: str = "t", scan_backend: str = "ref", device=None, dtype=None) -> MambaVisionTower:
    """The tower for a VLM pipeline (e.g. `llava --vision mambavision-t`): random weights, eval mode."""
    return MambaVisionTower(build_mambavision(preset, 0, scan_backend, device, dtype)).eval()
