"""A CLIP vision tower with a token reducer, in two stages: `vision` (the tower up to its feature layer,
with a vision-inner reducer inside it) and `reduce` (a vision-output reducer on the feature layer's tokens).

Output: with `feature_layer` None, the pooled class token after every layer (`CLIPVisionModel`'s
`pooler_output`; ToMe's and VTP's classifier setting); with a feature layer (-2 = LLaVA-1.5's), the tokens a
VLM's projector would receive: the patch tokens of that layer (class token dropped, as LLaVA's `patch`
select; VisionZip keeps it among its dominant tokens, as its reference does), reduced.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from effprof.modules.reducers.vision import (TowerTokens, VisionOutput, feature_layer_count, plain_tokens, trunk_of,
                                             vision_output)


class ReducedCLIP(nn.Module):
    """`forward(pixel_values)` = reduce(vision(pixel_values)); `reference(pixel_values)` = the same path
    without any reducer (for fidelity)."""

    def __init__(self, tower: nn.Module, reducer: Any, feature_layer: int | None, interpolate: bool = False):
        super().__init__()
        self.tower, self.reducer, self.interpolate = tower, reducer, interpolate
        self.where = getattr(reducer, "where", None)
        self.feature_layer = feature_layer
        total = len(trunk_of(tower).encoder.layers)
        self.num_layers = total if feature_layer is None else feature_layer_count(tower, feature_layer)
        if self.where == "vision-output" and feature_layer is None:
            raise ValueError("a vision-output reducer needs a feature layer")

    def vision(self, pixel_values: torch.Tensor) -> TowerTokens | VisionOutput:
        if self.where == "vision-output":
            return vision_output(self.tower, pixel_values, self.interpolate, self.num_layers,
                                 capture_qk=getattr(self.reducer, "needs_qk", False))
        trunk = trunk_of(self.tower)
        if self.where == "vision-inner":
            return self.reducer.encode(trunk, pixel_values, self.interpolate, self.num_layers)
        return plain_tokens(trunk, pixel_values, self.interpolate, self.num_layers)

    def reduce(self, carry: TowerTokens | VisionOutput) -> torch.Tensor:
        if self.where == "vision-output":
            return self.reducer(carry)
        if self.feature_layer is None:
            return trunk_of(self.tower).post_layernorm(carry.hidden[:, 0])
        return carry.hidden[:, 1:]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.reduce(self.vision(pixel_values))

    def reference(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = plain_tokens(trunk_of(self.tower), pixel_values, self.interpolate, self.num_layers).hidden
        if self.feature_layer is None:
            return trunk_of(self.tower).post_layernorm(hidden[:, 0])
        return hidden[:, 1:]


def token_facts(module: ReducedCLIP, pixel_values: torch.Tensor) -> dict[str, Any]:
    """Tokens leaving the reducer on one real call (PruMerge's count is adaptive),
    and the tokens after every block where a vision-inner reducer changes them (ToMe)."""
    carry = module.vision(pixel_values)
    out = module.reduce(carry)
    facts: dict[str, Any] = {}
    per_layer = getattr(carry, "tokens_per_layer", None)
    if per_layer:
        facts["tokens_per_layer"] = ">".join(str(n) for n in per_layer)
    facts["tokens_out"] = int(out.shape[1]) if out.dim() == 3 else int(carry.hidden.shape[1])
    return facts


def fidelity(module: ReducedCLIP, pixel_values: torch.Tensor, chunk: int = 16) -> dict[str, Any]:
    """Cosine similarity, float32 math, of the reduced output against the unreduced one on the same pixels:
    of the pooled vectors (no feature layer) or of the mean output token (with one). Per-image mean and min."""
    reference = module if next(module.parameters()).dtype == torch.float32 else copy.deepcopy(module).float()
    sims = []
    for part in pixel_values.split(chunk):
        x = part.float()
        out, ref = reference(x).float(), reference.reference(x).float()
        if out.dim() == 3:
            out, ref = out.mean(dim=1), ref.mean(dim=1)
        sims.append(F.cosine_similarity(out, ref, dim=-1))
    sims = torch.cat(sims)
    what = "pooled output" if module.feature_layer is None else "mean output token"
    return {"fidelity_cos": float(sims.mean()), "fidelity_cos_min": float(sims.min()), "fidelity_of": what}


def fidelity_note(pretrained: str | None, images_dir: str | None) -> str:
    weights = "random weights" if pretrained is None else "pretrained weights"
    inputs = "random pixels" if images_dir is None else f"real images from {images_dir}"
    meaning = ("how much the reducer perturbs this network, not accuracy" if pretrained is None or images_dir is None
               else "the reducer's effect on the real model's output")
    return f"{weights}, {inputs}: {meaning}"


def reduced_clip_built(ctx, tower, reducer, feature_layer: int | None, pretrained: str | None, make_inputs,
                       info: dict[str, Any], images_dir: str | None = None):
    """The `Built` of clip-vision with a reducer (or a feature layer): stages vision -> reduce, token facts
    and fidelity in the record."""
    from effprof.core.errors import ParamError
    from effprof.core.registry import Built

    where = getattr(reducer, "where", None)
    if where == "vision-output" and feature_layer is None:
        feature_layer = -2
    try:
        module = ReducedCLIP(tower.model, reducer, feature_layer, tower.interpolate_positions).eval()
    except ValueError as exc:
        raise ParamError(f"--feature-layer: {exc}") from None
    note = fidelity_note(pretrained, images_dir)

    def extras(module, inputs):
        facts = token_facts(module, inputs[0])
        facts.update(fidelity(module, inputs[0]), fidelity_dtype="fp32", fidelity_note=note)
        if getattr(module.reducer, "last_kept", None) is not None:
            facts["reducer_kept"] = module.reducer.last_kept
        return facts

    output = "pooled class token" if feature_layer is None else f"patch tokens of layer {feature_layer}"
    info = {**info, "tokens_in": 1 + tower.num_patches, "reducer_site": where or "-", "output": output,
            "layers_run": module.num_layers}
    if reducer is not None:
        info["reducer_impl"] = repr(reducer).replace("\n", " ")[:160]
    stages = _stages(module)
    return Built(module, make_inputs, "img", info=info, extras=extras, **({"stages": stages} if stages else {}))


def _stages(module: ReducedCLIP):
    """[vision, reduce] as runner stages where the runner has them (effprof.core.registry.Stage)."""
    try:
        from effprof.core.registry import Stage
    except ImportError:
        return None
    # the first stage receives the inputs tuple; `module` stays the owner of the reducer's (usually no) weights
    return [Stage("vision", lambda inputs: module.vision(inputs[0]), module.tower),
            Stage("reduce", module.reduce, module.reducer if isinstance(module.reducer, nn.Module) else None,
                  host_sync=getattr(module.reducer, "host_sync", False))]
