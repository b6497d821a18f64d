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

from effprof.core.errors import ParamError
from effprof.core.limits import MAX_IMAGE_SIDE, MAX_LAYERS, MAX_LORA_ALPHA, MAX_WIDTH
from effprof.core.params import Param
from effprof.core.registry import BuildContext, Built, register_component

PRESET_NAMES = ("vit-b-16", "vit-l-14")
TARGET_NAMES = ("projections", "qv", "projections+qv")
CONTEXT = 77


@register_component("clip-dual", unit="img", family="vision", params=[
    Param("preset", str, "vit-b-16", "Published OpenAI CLIP architecture (both towers).", choices=PRESET_NAMES),
    Param("img_size", int, None, "Image side in pixels (none = the preset's 224).", low=1, high=MAX_IMAGE_SIDE,
          optional=True),
    Param("seq_len", int, CONTEXT, "Caption length in tokens (CLIP's context is 77).", low=1, high=CONTEXT),
    Param("layers", int, None, "Layers per tower instead of the preset's (none = published depth).", low=1,
          high=MAX_LAYERS, optional=True),
    Param("adapt", str, "full", "What trains: full | projections (the two) | lora (adapters only).",
          choices=("full", "projections", "lora")),
    Param("rank", int, 8, "LoRA rank r (with --adapt lora).", low=1, high=MAX_WIDTH),
    Param("alpha", float, 16.0, "LoRA scale numerator: adapters are scaled by alpha / rank.", low=0, low_open=True,
          high=MAX_LORA_ALPHA),
    Param("lora_targets", str, "projections", "Layers that get adapters: projections | qv (attention q/v, both "
          "towers) | projections+qv.", choices=TARGET_NAMES),
    Param("lora_backend", str, "auto", "auto (peft when installed) | peft | builtin (effprof.modules.lora).",
          choices=("auto", "peft", "builtin")),
    Param("merged", bool, False, "Fold the LoRA adapters into the weights (inference rows)."),
])
def clip_dual(ctx: BuildContext, preset, img_size, seq_len, layers, adapt, rank, alpha, lora_targets,
              lora_backend, merged) -> Built:
    """CLIP dual encoder (HF CLIPModel): images + captions -> similarity; contrastive loss; LoRA."""
    import torch
    from transformers import CLIPModel

    from effprof.components.clip import PRESETS as VISION_PRESETS, _check_multiple
    from effprof.modules import lora as L
    from effprof.models.clip_dual import VOCAB, DualEncoder, adapt_model, clip_config, contrastive_loss

    patch = VISION_PRESETS[preset].patch_size
    size = VISION_PRESETS[preset].image_size if img_size is None else img_size
    _check_multiple(size, patch, preset)
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

    info.update(architecture=preset, image_size=size, caption_tokens=seq_len, patches=(size // patch) ** 2)
    return Built(module, make_inputs, "img", info=info, loss=lambda output, inputs: contrastive_loss(output))
