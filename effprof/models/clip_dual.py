"""The CLIP dual encoder as effprof builds it (component `clip-dual`): published configs, the call as one
module, CLIP's contrastive loss, and what trains under each `--adapt` choice.

ViT-B/16: vision 768 wide × 12 layers, text 512 × 12, joint 512 (149,620,737 parameters); ViT-L/14: vision
1024 × 24, text 768 × 12, joint 768 (427,616,513), as released by OpenAI (Radford et al. 2021).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from effprof.modules import lora as L


@dataclass(frozen=True)
class ClipTextPreset:
    width: int
    layers: int
    heads: int
    projection_dim: int


TEXT_PRESETS = {"vit-b-16": ClipTextPreset(512, 12, 8, 512), "vit-l-14": ClipTextPreset(768, 12, 12, 768)}
VOCAB, CONTEXT = 49408, 77
LORA_TARGETS = {"projections": ("visual_projection", "text_projection"), "qv": ("q_proj", "v_proj"),
                "projections+qv": ("visual_projection", "text_projection", "q_proj", "v_proj")}


def clip_config(preset: str, img_size: int, layers: int | None):
    """transformers' CLIPConfig of a preset; `layers` replaces both towers' depth when given."""
    from transformers import CLIPConfig

    from effprof.models.clip import PRESETS as VISION_PRESETS, vision_config

    text = TEXT_PRESETS[preset]
    v = vision_config(VISION_PRESETS[preset], img_size).to_dict()
    if layers is not None:
        v["num_hidden_layers"] = layers
    t = dict(vocab_size=VOCAB, hidden_size=text.width, intermediate_size=4 * text.width,
             num_hidden_layers=layers or text.layers, num_attention_heads=text.heads, max_position_embeddings=CONTEXT,
             hidden_act="quick_gelu", layer_norm_eps=1e-5)
    return CLIPConfig(text_config=t, vision_config=v, projection_dim=text.projection_dim,
                      attn_implementation="sdpa")


class DualEncoder(nn.Module):
    """CLIPModel's call as one module: (pixel_values, input_ids) -> logits_per_image (images × captions)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, pixel_values=pixel_values).logits_per_image


def contrastive_loss(logits_per_image: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE loss: mean of the image->text and text->image cross-entropies, in fp32."""
    logits = logits_per_image.float()
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def adapt_model(model: nn.Module, adapt: str, rank: int, alpha: float, targets: str, backend: str) -> dict:
    """Mark what trains (and inject adapters for `lora`); returns record facts."""
    if adapt == "full":
        model.requires_grad_(True)
        return {"adapt": "full"}
    if adapt == "projections":
        model.requires_grad_(False)
        for name in LORA_TARGETS["projections"]:
            getattr(model, name).requires_grad_(True)
        return {"adapt": "projections"}
    if backend == "auto":
        backend = "peft" if L.peft_available() else "builtin"
    apply = L.apply_lora_peft if backend == "peft" else L.apply_lora
    names = apply(model, LORA_TARGETS[targets], rank, alpha)
    return {"adapt": "lora", "lora_backend": backend, "lora_layers": len(names)}
