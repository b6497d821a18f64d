"""Cobra (Zhao et al., "Cobra: Extending Mamba to Multi-Modal Large Language Model for Efficient Inference",
2024): a LLaVA-style VLM whose language model is Mamba.

Built from the published configuration (prismatic-vlms' `cobra+3b`): two vision towers at 384 px, DINOv2
ViT-L/14 with 4 registers and SigLIP so400m/14, each giving its penultimate layer's patch features (prefix
tokens dropped: 27×27 = 729 tokens), concatenated channel-wise (1024 + 1152 = 2176); the fused-GELU MLP
projector 2176 -> 8704 -> 2560 -> 2560 (or LDP, MobileVLM's, `--projector ldp`); the Mamba-2.8B LM
(effprof's `MambaLM`, on effprof's scan and conv kernels). The towers are `transformers`' own
`Dinov2WithRegistersModel` and `SiglipVisionModel` (the latter without its attention-pooling head, which
Cobra does not use); they run all their layers (as prismatic's featurizers do) and the features are the
penultimate layer's outputs. One departure in memory layout, not in values: SigLIP's embeddings are made
contiguous once (a forward hook), where transformers' module leaves its 27 layers a transposed residual stream.
Weights are random; `--pretrained` is not supported for Cobra (its
checkpoints are in prismatic's own layout).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from effprof.models.llava import default_dtype
from effprof.modules.mamba import MAMBA_PRESETS, MambaCache, MambaLM, MambaLMConfig


@dataclass(frozen=True)
class CobraPreset:
    image_size: int
    patch_size: int
    dino_width: int
    dino_layers: int
    dino_heads: int
    siglip_width: int
    siglip_layers: int
    siglip_heads: int
    siglip_mlp: int
    lm: MambaLMConfig


PRESETS = {
    "cobra-3b": CobraPreset(384, 14, 1024, 24, 16, 1152, 27, 16, 4304, MAMBA_PRESETS["2.8b"]),
    # a toy of the same shape for tests: 28 px images of 14 px patches (4 tokens), 2-layer towers, a 2-layer LM
    "tiny": CobraPreset(28, 14, 32, 2, 2, 48, 2, 2, 96, MambaLMConfig(64, 2)),
}


TOWER_MODES = ("concurrent", "sequential")


class FusedGeluMLP(nn.Sequential):
    """prismatic's `fused-gelu-mlp` projector: Linear(v, 4v), GELU, Linear(4v, d), GELU, Linear(d, d)."""

    def __init__(self, vision_dim: int, lm_dim: int):
        super().__init__(nn.Linear(vision_dim, 4 * vision_dim), nn.GELU(), nn.Linear(4 * vision_dim, lm_dim),
                         nn.GELU(), nn.Linear(lm_dim, lm_dim))


def _contiguous_output(module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
    return output.contiguous()


class CobraModel(nn.Module):
    """The towers, the projector and the Mamba LM; `effprof.components.vlm` calls them stage by stage.
    `towers`: "concurrent" runs the two towers on two CUDA streams (joined before the concat; at batch 1
    neither tower's GEMMs fill an H100/H200, so the pair takes less than the sum), "sequential" one after
    the other as prismatic's featurizer does. Same features either way; on CPU they always run in turn."""

    def __init__(self, preset: CobraPreset, projector: str, scan_backend: str, conv_backend: str,
                 decode_backend: str = "ref", towers: str = "concurrent"):
        super().__init__()
        if towers not in TOWER_MODES:
            raise ValueError(f"towers must be one of {', '.join(TOWER_MODES)}, got {towers!r}")
        self.towers = towers
        self._side_streams: dict = {}
        self._compiled_towers: tuple | None = None  # `_compiled_towers_on_two_streams`'s, made on first use
        from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel, SiglipVisionConfig, \
            SiglipVisionModel

        dino = Dinov2WithRegistersConfig(hidden_size=preset.dino_width, num_hidden_layers=preset.dino_layers,
                                         num_attention_heads=preset.dino_heads, mlp_ratio=4,
                                         image_size=preset.image_size, patch_size=preset.patch_size,
                                         num_register_tokens=4, layerscale_value=1.0)
        siglip = SiglipVisionConfig(hidden_size=preset.siglip_width, intermediate_size=preset.siglip_mlp,
                                    num_hidden_layers=preset.siglip_layers, num_attention_heads=preset.siglip_heads,
                                    image_size=preset.image_size, patch_size=preset.patch_size,
                                    vision_use_head=False)
        for cfg in (dino, siglip):
            cfg._attn_implementation = "sdpa"
        self.dino = Dinov2WithRegistersModel(dino)
        self.siglip = SiglipVisionModel(siglip)
        # SiglipVisionEmbeddings returns the patch conv's (B, C, H·W) output transposed, a strided view, plus the
        # position embeddings; a sum keeps its first operand's layout, so the residual stream stayed strided through
        # every layer: two non-vectorized residual adds and a copy before each layer norm, per layer (~0.8 ms of
        # kernels on an H200, against 3.6 ms for the tower alone: `diag_cobra_ttft.py` towers). One contiguous copy
        # of the embeddings (729 × 1152) gives the same values in row-major memory for all 27 layers.
        self.siglip_embeddings().register_forward_hook(_contiguous_output)
        vision_dim = preset.dino_width + preset.siglip_width
        lm_dim = preset.lm.d_model
        if projector == "ldp":
            from effprof.modules.projectors import LDPProjector

            self.projector = LDPProjector(vision_dim, lm_dim)
        else:
            self.projector = FusedGeluMLP(vision_dim, lm_dim)
        self.lm = MambaLM(preset.lm, scan_backend, conv_backend, decode_backend=decode_backend)
        self.prefix_tokens = 1 + dino.num_register_tokens  # DINOv2's class token and registers

    def siglip_embeddings(self) -> nn.Module:
        """SigLIP's `SiglipVisionEmbeddings`, found by type (transformers versions nest it differently)."""
        return next(m for m in self.siglip.modules() if type(m).__name__ == "SiglipVisionEmbeddings")

    def vision(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 729, 2176): both towers' penultimate-layer patch features, concatenated channel-wise."""
        if self.towers == "concurrent" and pixel_values.is_cuda:
            if torch.compiler.is_compiling():
                return self._compiled_towers_on_two_streams(pixel_values)
            dino, siglip = self._on_two_streams(pixel_values, self._dino_features, self._siglip_features)
        else:
            dino, siglip = self._dino_features(pixel_values), self._siglip_features(pixel_values)
        return torch.cat([dino, siglip], dim=-1)

    def _on_two_streams(self, pixel_values: torch.Tensor, dino_features, siglip_features):
        """SigLIP on a side stream that starts after everything queued so far (pixel_values included) and that
        the current stream waits for before the concat: a fork and join a CUDA graph captures as is. The side
        stream allocates only SigLIP's own tensors, and everything after the join is ordered after them, so no
        memory is reused early."""
        main = torch.cuda.current_stream(pixel_values.device)
        side = self._side_streams.setdefault(pixel_values.device, torch.cuda.Stream(pixel_values.device))
        side.wait_stream(main)
        with torch.cuda.stream(side):
            siglip = siglip_features(pixel_values)
        dino = dino_features(pixel_values)
        main.wait_stream(side)
        return dino, siglip

    @torch.compiler.disable
    def _compiled_towers_on_two_streams(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`vision` under torch.compile: each tower compiled on its own (`torch.compile` of its features) and run
        on its stream, the fork and join left outside the compiled code (a graph break here), so that a --compile
        row keeps the towers' overlap that the uncompiled rows have instead of tracing them in turn."""
        if self._compiled_towers is None:
            self._compiled_towers = (torch.compile(self._dino_features), torch.compile(self._siglip_features))
        return torch.cat(self._on_two_streams(pixel_values, *self._compiled_towers), dim=-1)

    def _dino_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.dino(pixel_values, output_hidden_states=True).hidden_states[-2][:, self.prefix_tokens:]

    def _siglip_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.siglip(pixel_values, output_hidden_states=True).hidden_states[-2]

    def prefill(self, image_embeds: torch.Tensor, prompt_ids: torch.Tensor, cache: MambaCache) -> torch.Tensor:
        """Logits (B, 1, vocab) of the last position; `cache` holds the conv and SSM states after it."""
        embeds = torch.cat([image_embeds, self.lm.backbone.embedding(prompt_ids)], dim=1)
        return self.lm.lm_head(self.lm.backbone(embeds, cache)[:, -1:])


def build_cobra(preset: CobraPreset, projector: str, scan_backend: str, conv_backend: str, decode_backend: str,
                device: torch.device, dtype: torch.dtype, towers: str = "concurrent") -> CobraModel:
    with torch.device(device), default_dtype(dtype):
        model = CobraModel(preset, projector, scan_backend, conv_backend, decode_backend, towers)
    return model.eval()
