"""Component `clip-dual`: the CLIP dual encoder (transformers' `CLIPModel`), images + captions -> similarity.

Vision and text towers with their projections into the joint space, in the published OpenAI
architectures (Radford et al. 2021): ViT-B/16 (vision 768 wide × 12 layers, text 512 × 12, joint 512;
149,620,737 parameters) and ViT-L/14 (vision 1024 × 24, text 768 × 12, joint 768; 427,616,513), random
weights. One call embeds a batch of images and as many captions of `seq_len` tokens and returns the
(batch × batch) image-text logit matrix; `--train` backpropagates CLIP's symmetric contrastive loss
(cross-entropy over rows and over columns, matching pairs on the diagonal).

`--adapt` chooses what trains (the study's "Extension B": cross-modal low-rank fusion):
- `full`: every parameter;
- `projections`: only `visual_projection` and `text_projection` (the fusion layers);
- `lora`: rank-r adapters (`--rank`, `--alpha`) on the `--lora-targets` layers, everything else frozen:
  `projections` (the two projections), `qv` (every attention's q_proj and v_proj in both towers) or
  `projections+qv`. `--lora-backend peft` injects them with peft, `builtin` with effprof.modules.lora,
  `auto` picks peft when installed. `--merged` folds the adapters into the weights for inference rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from effprof.components.clip import PRESETS as VISION_PRESETS, _check_multiple, vision_config
from effprof.errors import ParamError
from effprof.modules import lora as L
from effprof.params import Param
from effprof.registry import BuildContext, Built, register_component


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
    from transformers import CLIPConfig

    vision = VISION_PRESETS[preset]
    text = TEXT_PRESETS[preset]
    v = vision_config(vision, img_size).to_dict()
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


@register_component("clip-dual", unit="img", family="vision", params=[
    Param("preset", str, "vit-b-16", "Published OpenAI CLIP architecture (both towers).", choices=tuple(TEXT_PRESETS)),
    Param("img_size", int, None, "Image side in pixels (none = the preset's 224).", low=1, optional=True),
    Param("seq_len", int, CONTEXT, "Caption length in tokens (CLIP's context is 77).", low=1, high=CONTEXT),
    Param("layers", int, None, "Layers per tower instead of the preset's (none = published depth).", low=1,
          optional=True),
    Param("adapt", str, "full", "What trains: full | projections (the two) | lora (adapters only).",
          choices=("full", "projections", "lora")),
    Param("rank", int, 8, "LoRA rank r (with --adapt lora).", low=1),
    Param("alpha", float, 16.0, "LoRA scale numerator: adapters are scaled by alpha / rank.", low=0, low_open=True),
    Param("lora_targets", str, "projections", "Layers that get adapters: projections | qv (attention q/v, both "
          "towers) | projections+qv.", choices=tuple(LORA_TARGETS)),
    Param("lora_backend", str, "auto", "auto (peft when installed) | peft | builtin (effprof.modules.lora).",
          choices=("auto", "peft", "builtin")),
    Param("merged", bool, False, "Fold the LoRA adapters into the weights (inference rows)."),
])
def clip_dual(ctx: BuildContext, preset, img_size, seq_len, layers, adapt, rank, alpha, lora_targets,
              lora_backend, merged) -> Built:
    """CLIP dual encoder (HF CLIPModel): images + captions -> similarity; contrastive loss; LoRA."""
    from transformers import CLIPModel

    size = VISION_PRESETS[preset].image_size if img_size is None else img_size
    _check_multiple(size, VISION_PRESETS[preset].patch_size, preset)
    if merged and adapt != "lora":
        raise ParamError("--merged: only adapters can be merged (needs --adapt lora)")
    with ctx.device:
        model = CLIPModel(clip_config(preset, size, layers))
    info = adapt_model(model, adapt, rank, alpha, lora_targets, lora_backend)
    model.to(device=ctx.device, dtype=ctx.dtype)
    if merged:
        L.merge_lora(model)
    info["lora_merged"] = merged if adapt == "lora" else None
    module = DualEncoder(model).eval()

    def make_inputs(batch: int) -> tuple:
        pixels = torch.randn(batch, 3, size, size, device=ctx.device, dtype=ctx.dtype)
        ids = torch.randint(0, VOCAB, (batch, seq_len), device=ctx.device)
        return pixels, ids

    patches = (size // VISION_PRESETS[preset].patch_size) ** 2
    info.update(architecture=preset, image_size=size, caption_tokens=seq_len, tokens_in=1 + patches)
    return Built(module, make_inputs, "img", info=info, loss=lambda output, inputs: contrastive_loss(output))
