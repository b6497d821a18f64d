"""What a vision-side reducer sees: a CLIP tower run up to its feature layer, layer by layer.

LLaVA-1.5 feeds its projector the hidden state of the tower's penultimate layer (`mm_vision_select_layer
= -2`) without the class token. `tower_tokens` runs the embeddings, `pre_layrnorm` and the first
`num_layers` encoder layers of a `transformers` CLIP vision tower (so the last layer, whose output LLaVA
never reads, is not run), optionally through a vision-inner reducer (ToMe, VTP), and returns the tokens
with the class token first. `vision_output` adds what vision-output reducers read: the class token, the
patch features, the q/k projections of the feature layer's own self-attention (captured by forward
hooks while the layer runs: no recomputation) and the next layer of the tower (PruMerge computes the
attention of that layer from the features, as the reference's hooks on `layers[23]` see it).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class TowerTokens:
    """Tokens after a tower's layers: `hidden` (B, T, C) with the class token first; `sizes` (B, T, 1) how
    many patches each token stands for (ToMe) or None (every token is one)."""

    hidden: torch.Tensor
    sizes: torch.Tensor | None = None
    tokens_per_layer: list[int] | None = None   # tokens entering each layer where a reducer changed them


@dataclass
class VisionOutput:
    """The feature layer's output and what reducers need from the tower (shapes for batch B, N patches).

    - `hidden` (B, 1 + N, C): the feature layer's output, class token first; `features` = hidden[:, 1:].
    - `qk` (q, k), each (B, 1 + N, heads·d): the q_proj/k_proj outputs of the feature layer's
      self-attention (from its input), or None when no reducer asked for them.
    - `next_layer`: the tower's layer after the feature layer (its q/k read `hidden`), or None.
    """

    hidden: torch.Tensor
    num_heads: int
    qk: tuple[torch.Tensor, torch.Tensor] | None = None
    next_layer: nn.Module | None = None

    @property
    def features(self) -> torch.Tensor:
        return self.hidden[:, 1:]

    @property
    def cls(self) -> torch.Tensor:
        return self.hidden[:, 0]


def trunk_of(model: nn.Module) -> nn.Module:
    """The object holding embeddings / pre_layrnorm / encoder (transformers 5 puts them on the model)."""
    return getattr(model, "vision_model", model)


def run_layer(layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """One CLIP encoder layer without masks; works with the signatures of transformers 4.x and 5.x."""
    if "causal_attention_mask" in inspect.signature(layer.forward).parameters:
        out = layer(hidden, None, None)
    else:
        out = layer(hidden, None)
    return out[0] if isinstance(out, tuple) else out


def feature_layer_count(model: nn.Module, feature_layer: int) -> int:
    """How many encoder layers run to reach hidden_states[feature_layer] (-1 = all, -2 = all but the last)."""
    total = len(trunk_of(model).encoder.layers)
    count = total + 1 + feature_layer if feature_layer < 0 else feature_layer
    if not 1 <= count <= total:
        raise ValueError(f"feature layer {feature_layer} is outside a {total}-layer tower")
    return count


def plain_tokens(trunk: nn.Module, pixel_values: torch.Tensor, interpolate: bool, num_layers: int) -> TowerTokens:
    """Embeddings -> pre_layrnorm -> the first `num_layers` encoder layers (no reduction)."""
    hidden = trunk.pre_layrnorm(trunk.embeddings(pixel_values, interpolate_pos_encoding=interpolate))
    for layer in trunk.encoder.layers[:num_layers]:
        hidden = run_layer(layer, hidden)
    return TowerTokens(hidden)


def tower_tokens(model: nn.Module, pixel_values: torch.Tensor, interpolate: bool, num_layers: int,
                 inner=None) -> TowerTokens:
    """The tower's tokens after `num_layers` layers, through `inner` (a vision-inner reducer) if given."""
    trunk = trunk_of(model)
    if inner is None:
        return plain_tokens(trunk, pixel_values, interpolate, num_layers)
    return inner.encode(trunk, pixel_values, interpolate, num_layers)


def vision_output(model: nn.Module, pixel_values: torch.Tensor, interpolate: bool, num_layers: int,
                  capture_qk: bool = False) -> VisionOutput:
    """Run the tower to its feature layer (`num_layers` layers) and package a VisionOutput."""
    trunk = trunk_of(model)
    layers = trunk.encoder.layers
    captured: dict[str, torch.Tensor] = {}
    handles = []
    if capture_qk:
        attn = layers[num_layers - 1].self_attn
        handles = [attn.q_proj.register_forward_hook(lambda m, i, o: captured.__setitem__("q", o)),
                   attn.k_proj.register_forward_hook(lambda m, i, o: captured.__setitem__("k", o))]
    try:
        hidden = plain_tokens(trunk, pixel_values, interpolate, num_layers).hidden
    finally:
        for handle in handles:
            handle.remove()
    qk = (captured["q"], captured["k"]) if capture_qk else None
    next_layer = layers[num_layers] if num_layers < len(layers) else None
    return VisionOutput(hidden, layers[0].self_attn.num_heads, qk, next_layer)


class Identity(nn.Module):
    """The vision-output reducer that reduces nothing: the N patch features."""

    needs_qk = False

    def forward(self, vision: VisionOutput) -> torch.Tensor:
        return vision.features

    def tokens_out(self, num_patches: int) -> int:
        return num_patches
