"""Published CLIP vision architectures (Radford et al., ICML 2021) as transformers `CLIPVisionConfig`s."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClipVisionPreset:
    """One published CLIP vision architecture. Sizes in pixels (image, patch) and channels (widths)."""

    image_size: int
    patch_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_size: int


PRESETS = {
    "vit-b-16": ClipVisionPreset(224, 16, 768, 12, 12, 3072),
    "vit-l-14": ClipVisionPreset(224, 14, 1024, 24, 16, 4096),
    "vit-l-14-336": ClipVisionPreset(336, 14, 1024, 24, 16, 4096),
}


def vision_config(preset: ClipVisionPreset, image_size: int):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=preset.hidden_size, intermediate_size=preset.mlp_size,
                            num_hidden_layers=preset.num_layers, num_attention_heads=preset.num_heads,
                            image_size=image_size, patch_size=preset.patch_size, num_channels=3,
                            hidden_act="quick_gelu", layer_norm_eps=1e-5, attn_implementation="sdpa")
