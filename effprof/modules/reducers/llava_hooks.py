"""Reducers in the LLaVA pipeline (`effprof.models.llava.LlavaPipeline`), and their fidelity there.

- vision-output reducers sit in the pipeline's `reduce` stage. The pipeline's VisionOutput carries every
  layer's hidden state and the tower; `VisionOutputReducer` turns it into the reducers' view
  (`effprof.modules.reducers.vision.VisionOutput`): the feature layer's output with its class token, the
  tower's next layer (PruMerge) and, for VisionZip, the q/k of the feature layer, recomputed from that
  layer's input (the class row of q, all keys; 2·T·C² + 2·C² FLOPs, inside the reduce stage).
- vision-inner reducers (ToMe, VTP) replace the `vision` stage: the tower runs to the feature layer
  through the reducer, and the patch tokens go on.
- LM reducers (FastV, SparseVLM, PyramidDrop) run the `prefill` stage through `prefill_with_drops`.

`llava_fidelity` runs the same inputs with and without the reducer: cosine similarity of the final
hidden state of the prompt's last token and agreement of the greedy next token.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from effprof.modules.reducers.lm_prefill import PrefillResult, lm_fidelity, prefill_with_drops
from effprof.modules.reducers.vision import VisionOutput, feature_layer_count, trunk_of


class VisionOutputReducer(nn.Module):
    """A vision-output reducer on the LLaVA pipeline's VisionOutput (feature layer `feature_layer`)."""

    def __init__(self, reducer: nn.Module, feature_layer: int = -2):
        super().__init__()
        self.reducer, self.feature_layer = reducer, feature_layer

    def view(self, vision) -> VisionOutput:
        tower = vision.tower
        layers = trunk_of(tower).encoder.layers
        count = feature_layer_count(tower, self.feature_layer)
        hidden = vision.hidden_states[count]
        qk = None
        if getattr(self.reducer, "needs_qk", False):
            layer = layers[count - 1]
            x = layer.layer_norm1(vision.hidden_states[count - 1])
            keys = layer.self_attn.k_proj(x)
            q = torch.zeros_like(keys)
            q[:, :1] = layer.self_attn.q_proj(x[:, :1])   # only the class row is read
            qk = (q, keys)
        next_layer = layers[count] if count < len(layers) else None
        return VisionOutput(hidden, layers[0].self_attn.num_heads, qk, next_layer)

    def forward(self, vision) -> torch.Tensor:
        return self.reducer(self.view(vision))


def inner_vision(pipe: nn.Module, reducer: Any, feature_layer: int = -2):
    """A `vision` stage for a vision-inner reducer: the tower to the feature layer through it, patch tokens."""
    tower = pipe.tower
    count = feature_layer_count(tower, feature_layer)

    def vision(pixel_values: torch.Tensor) -> torch.Tensor:
        return reducer.encode(trunk_of(tower), pixel_values, False, count).hidden[:, 1:]

    return vision


class LMReducerAdapter:
    """The pipeline's `lm_reducer`: prefill through the reducer, return the last token's final hidden (B, 1, D)."""

    def __init__(self, reducer: Any):
        self.reducer = reducer
        self.last: PrefillResult | None = None

    def prefill(self, lm, embeds, image_mask, position_ids):
        self.last = self.reducer.prefill(lm, embeds, image_mask, position_ids)
        return self.last.hidden.unsqueeze(1)


def attach(pipe: nn.Module, reducer: Any, image_tokens: int | None = None) -> dict[str, Any]:
    """Put `reducer` in its slot of `pipe` (an LM reducer's schedule is checked against the LM's depth and
    `image_tokens` first: a ParamError names what does not fit); returns record facts."""
    where = reducer.where
    if where == "lm" and image_tokens is not None:
        from effprof.core.errors import ParamError

        try:
            reducer.stages(image_tokens, len(pipe.lm.layers))
        except ValueError as exc:
            raise ParamError(f"--reducer {getattr(reducer, 'reducer_name', where)}: {exc}") from None
    if where == "vision-output":
        pipe.vision_reducer = VisionOutputReducer(reducer)
    elif where == "vision-inner":
        pipe.vision = inner_vision(pipe, reducer)
    else:
        pipe.lm_reducer = LMReducerAdapter(reducer)
    return {"reducer_site": where}


def compress_counts(counts: list[int]) -> str:
    """[576, 576, 288, 288, 288] -> '576x2>288x3' (tokens entering each layer)."""
    runs: list[list[int]] = []
    for n in counts:
        if runs and runs[-1][0] == n:
            runs[-1][1] += 1
        else:
            runs.append([n, 1])
    return ">".join(f"{n}x{k}" for n, k in runs)


def _lm_pass(pipe, embeds: torch.Tensor, image_tokens: int, stages_from=None) -> PrefillResult:
    mask = torch.zeros(embeds.shape[1], dtype=torch.bool, device=embeds.device)
    mask[:image_tokens] = True
    if stages_from is not None:
        result = stages_from.prefill(pipe.lm, embeds, mask, None)
    else:
        result = prefill_with_drops(pipe.lm, embeds, mask)
    result.logits = pipe.lm_head(result.hidden)
    return result


def llava_fidelity(pipe, inputs: tuple, reducer: Any, weights: str, images_dir: str | None,
                   full_vision) -> dict[str, Any]:
    """Fidelity and token facts of the reduced pipeline against the unreduced one on the same inputs;
    `full_vision(pipe, pixel_values)` is the pipeline's unreduced vision stage (`LlavaPipeline.vision`)."""
    pixel_values, prompt_ids = inputs[0], inputs[1]
    batch = prompt_ids.shape[0]
    text = pipe.lm.get_input_embeddings()(prompt_ids)

    def lm_input(features):
        embeds = pipe.project(features).reshape(batch, -1, text.shape[-1])
        return torch.cat([embeds.to(text.dtype), text], dim=1), embeds.shape[1]

    full = full_vision(pipe, pixel_values)
    reference = _lm_pass(pipe, *lm_input(full.features))
    where = reducer.where
    if where == "vision-output":
        features = pipe.vision_reducer(full)
    elif where == "vision-inner":
        features = pipe.vision(pixel_values)
    else:
        features = full.features
    embeds, image_tokens = lm_input(features)
    reduced = _lm_pass(pipe, embeds, image_tokens, reducer if where == "lm" else None)
    facts = lm_fidelity(reduced, reference)
    inputs_kind = "random pixels and random prompt tokens" if images_dir is None else f"images from {images_dir}"
    facts.update(fidelity_note=f"{weights} weights, {inputs_kind}", fidelity_dtype=str(embeds.dtype).replace("torch.", ""),
                 image_tokens_in=full.features.shape[1] * pixel_values.shape[0] // batch,
                 image_tokens_out=image_tokens,
                 lm_tokens_per_layer=compress_counts(reduced.tokens_per_layer),
                 lm_image_tokens_per_layer=compress_counts(reduced.image_tokens_per_layer))
    if getattr(reducer, "last_kept", None) is not None:
        facts["reducer_kept"] = reducer.last_kept
    return facts
