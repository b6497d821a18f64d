"""VTP as a vision-inner reducer: `clip-vtp`'s patch-embedding L2-norm top-k plus a mean summary token
(`effprof/modules/token_pruning.py`), applied between the embeddings and the first encoder layer."""
from __future__ import annotations

import torch
from torch import nn

from effprof.modules.reducers.vision import TowerTokens, run_layer
from effprof.modules.token_pruning import NormTopKPruner


class VTP(nn.Module):
    """Keep ⌈keep·N⌉ patch embeddings of largest L2 norm (+ a mean summary token) before the encoder."""

    def __init__(self, keep: float = 0.5, summary_token: bool = True):
        super().__init__()
        self.pruner = NormTopKPruner(keep, summary_token)

    def encode(self, trunk: nn.Module, pixel_values: torch.Tensor, interpolate: bool, num_layers: int) -> TowerTokens:
        hidden = trunk.embeddings(pixel_values, interpolate_pos_encoding=interpolate)
        hidden = trunk.pre_layrnorm(self.pruner(hidden))
        for layer in trunk.encoder.layers[:num_layers]:
            hidden = run_layer(layer, hidden)
        return TowerTokens(hidden)

    def tokens_per_layer(self, tokens: int, num_layers: int) -> list[int]:
        return [tokens] + [self.pruner.output_tokens(tokens - 1)] * num_layers
