"""A CLIP vision tower with visual token pruning between its embeddings and its encoder (`clip-vtp`)."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from effprof.modules.token_pruning import NormTopKPruner


def vision_trunk(model: nn.Module) -> nn.Module:
    """The object holding embeddings / pre_layrnorm / encoder / post_layernorm.

    transformers 5.x puts them on `CLIPVisionModel` itself; older versions on `model.vision_model`."""
    return getattr(model, "vision_model", model)


class PrunedCLIPVision(nn.Module):
    """A CLIP vision tower that prunes patch tokens between its embedding layer and its encoder.

    `forward(pixel_values)` is exactly `CLIPVisionModel.forward` with `pruner` inserted after the
    embeddings: embeddings -> pruner -> pre_layrnorm -> encoder -> post_layernorm of the class token. It
    reuses the tower's own submodules (no attention is reimplemented) and returns the pooled output,
    shape (batch, hidden). `unpruned(pixel_values)` is the same tower without pruning.
    """

    def __init__(self, tower: nn.Module, pruner: NormTopKPruner, interpolate_positions: bool = False):
        super().__init__()
        self.tower = tower
        self.pruner = pruner
        self.interpolate_positions = interpolate_positions

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        trunk = vision_trunk(self.tower)
        hidden = trunk.embeddings(pixel_values, interpolate_pos_encoding=self.interpolate_positions)
        hidden = trunk.pre_layrnorm(self.pruner(hidden))
        encoded = trunk.encoder(inputs_embeds=hidden)
        last = encoded.last_hidden_state if hasattr(encoded, "last_hidden_state") else encoded[0]
        return trunk.post_layernorm(last[:, 0, :])

    def unpruned(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.tower(pixel_values=pixel_values, interpolate_pos_encoding=self.interpolate_positions).pooler_output


FIDELITY_CHUNK = 64  # images per fp32 forward when computing fidelity (bounds its memory)


def pooled_fidelity(module: PrunedCLIPVision, pixel_values: torch.Tensor) -> torch.Tensor:
    """Per-image cosine similarity between pruned and unpruned pooled outputs, in float32 math.

    A module held in bf16/fp16 is copied to float32 for this (the measured module is left untouched);
    the bf16 weights convert exactly, so the figure isolates the effect of pruning from rounding."""
    reference = module if next(module.parameters()).dtype == torch.float32 else copy.deepcopy(module).float()
    sims = []
    for chunk in pixel_values.split(FIDELITY_CHUNK):
        x = chunk.float()
        sims.append(F.cosine_similarity(reference(x).float(), reference.unpruned(x).float(), dim=-1))
    del reference
    return torch.cat(sims)


