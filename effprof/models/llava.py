"""LLaVA-1.5 (Liu et al., "Improved Baselines with Visual Instruction Tuning", CVPR 2024) as `transformers`
builds it (`LlavaForConditionalGeneration`), split into the stages a request goes through.

The model is transformers' own class, so a user's checkpoint in the llava-hf layout loads as they know it
(`--pretrained DIR`, `from_pretrained` from a local directory, never downloaded). `LlavaPipeline` adds no
weights: it calls the model's own submodules one stage at a time:

    vision   pixels -> the CLIP ViT-L/14-336 tower's hidden states; the features are the penultimate
             layer's without the class token (576 tokens), as `vision_feature_layer=-2`,
             `vision_feature_select_strategy="default"` select them (the tower runs all its layers, as
             transformers and the original LLaVA code do)
    reduce   (optional) a token reducer on those features (`vision_reducer`)
    project  the mlp2x_gelu projector (Linear, GELU, Linear) into the LM's width
    prefill  the Llama LM over [image embeddings, prompt embeddings], writing a static KV cache; returns
             the logits of the last position only (all a generator needs)
    decode   one token per sequence against the cache

The sequence is the image's tokens followed by the prompt's (LLaVA-1.5 puts a few system tokens first;
the cost is the same). Positions are 0..L-1; no padding, so no attention mask is materialised.
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from effprof.core.errors import PretrainedNotFound


@dataclass(frozen=True)
class LlavaPreset:
    """One published LLaVA-1.5 architecture: the CLIP tower, and the Vicuna (Llama) LM's sizes."""

    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    vision_mlp: int
    width: int
    layers: int
    heads: int
    ffn: int
    vocab: int      # llava-hf's converted checkpoints: Vicuna's 32000 + <image> + <pad>, padded to 32064


PRESETS = {
    "llava-1.5-7b": LlavaPreset(336, 14, 1024, 24, 16, 4096, 4096, 32, 32, 11008, 32064),
    "llava-1.5-13b": LlavaPreset(336, 14, 1024, 24, 16, 4096, 5120, 40, 40, 13824, 32064),
    # a toy of the same shape for tests and smoke runs: 32 px images of 8 px patches (16 tokens), a 2-layer
    # tower, a 2-layer Llama of width 64 (4 heads); the vocabulary keeps room for the image token
    "tiny": LlavaPreset(32, 8, 32, 2, 2, 64, 64, 2, 4, 128, 32064),
}
IMAGE_TOKEN_ID = 32000


def llava_config(preset: LlavaPreset, max_positions: int = 4096):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(hidden_size=preset.vision_width, intermediate_size=preset.vision_mlp,
                              num_hidden_layers=preset.vision_layers, num_attention_heads=preset.vision_heads,
                              image_size=preset.image_size, patch_size=preset.patch_size, hidden_act="quick_gelu",
                              layer_norm_eps=1e-5, projection_dim=768)
    text = LlamaConfig(hidden_size=preset.width, intermediate_size=preset.ffn, num_hidden_layers=preset.layers,
                       num_attention_heads=preset.heads, num_key_value_heads=preset.heads, vocab_size=preset.vocab,
                       max_position_embeddings=max(4096, max_positions), rms_norm_eps=1e-5,
                       tie_word_embeddings=False, pad_token_id=0)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN_ID,
                         projector_hidden_act="gelu", vision_feature_layer=-2,
                         vision_feature_select_strategy="default",
                         image_seq_length=(preset.image_size // preset.patch_size) ** 2)
    for cfg in (config, config.vision_config, config.text_config):
        cfg._attn_implementation = "sdpa"
    return config


@contextmanager
def default_dtype(dtype: torch.dtype):
    """Create parameters directly in `dtype` (a 7B model built in fp32 first would need twice the memory)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def build_llava(preset: LlavaPreset, device: torch.device, dtype: torch.dtype, max_positions: int = 4096):
    """A random-weight `LlavaForConditionalGeneration` of `preset`, built on `device` in `dtype`, eval mode."""
    from transformers import LlavaForConditionalGeneration

    with torch.device(device), default_dtype(dtype):
        model = LlavaForConditionalGeneration(llava_config(preset, max_positions))
    return model.eval()


def swap_parts(model: nn.Module, tower: nn.Module | None = None, projector: nn.Module | None = None) -> None:
    """Replace the vision tower and/or the projector inside a LlavaForConditionalGeneration, so that its
    parameter count is that of the pipeline that runs (`--vision`, `--projector`)."""
    if tower is not None:
        model.model.vision_tower = tower
    if projector is not None:
        model.model.multi_modal_projector = projector


def load_llava(directory, device: torch.device, dtype: torch.dtype):
    """A checkpoint in the llava-hf layout (config.json + safetensors) from a local directory."""
    from transformers import LlavaForConditionalGeneration

    try:
        model = LlavaForConditionalGeneration.from_pretrained(str(directory), dtype=dtype,
                                                              attn_implementation="sdpa")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PretrainedNotFound(f"--pretrained {directory}: not a loadable LLaVA checkpoint "
                                 f"({(str(exc).splitlines() or [''])[0][:160]})") from None
    return model.to(device).eval()


def cache_keyword(module: nn.Module) -> str:
    """transformers renamed `past_key_values` to `cache` (5.2x); accept both."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


@dataclass
class VisionOutput:
    """What the vision stage hands to a reducer: the selected features and what they came from."""

    features: torch.Tensor            # (B, N, C) the penultimate layer without the class token
    cls: torch.Tensor | None          # (B, C) that layer's class token
    hidden_states: tuple              # every layer's output (embeddings first)
    tower: nn.Module                  # the vision tower (reducers that need q/k of a layer use its modules)


class StaticKV:
    """A transformers `StaticCache` whose per-layer lengths are views of one tensor, so setting the context
    length of every layer is one kernel (`set_length`), eager or inside a CUDA graph."""

    def __init__(self, config, max_len: int, batch: int, device: torch.device, dtype: torch.dtype):
        from transformers import StaticCache

        self.cache = StaticCache(config=config, max_cache_len=max_len)
        self.max_len = max_len
        self.lengths = torch.zeros(len(self.cache.layers), dtype=torch.int64, device=device)
        text = config.get_text_config(decoder=True)
        heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        zeros = torch.zeros(batch, heads, 1, head_dim, device=device, dtype=dtype)
        for i, layer in enumerate(self.cache.layers):
            layer.lazy_initialization(zeros, zeros)  # allocate keys/values now (outside any timed region)
            layer.cumulative_length = self.lengths[i]
            layer.is_initialized = True
        self.keys = [layer.keys for layer in self.cache.layers]      # per layer (B, kv_heads, max_len, head_dim)
        self.values = [layer.values for layer in self.cache.layers]

    def set_length(self, n: int) -> None:
        self.lengths.fill_(n)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.cache.layers for t in (layer.keys, layer.values))

    def bytes_for(self, tokens: int) -> int:
        """Bytes of keys and values that `tokens` positions occupy (the part of the cache a context uses)."""
        return self.nbytes * tokens // self.max_len


def kv_mask(positions: torch.Tensor, cache_len: int) -> torch.Tensor:
    """(1, 1, q, cache_len) boolean mask, True where query position q may attend to cache slot k (k <= q).

    Built on the device from the position tensor, so a decode step captured in a CUDA graph stays correct
    as the graph advances its position (transformers' own mask logic reads the cache length on the host)."""
    slots = torch.arange(cache_len, device=positions.device)
    return (slots.view(1, 1, 1, -1) <= positions.view(1, 1, -1, 1))


class LlavaPipeline(nn.Module):
    """`LlavaForConditionalGeneration`'s submodules called stage by stage (see the module docstring)."""

    def __init__(self, model: nn.Module, vision_reducer: nn.Module | None = None, lm_reducer: Any = None):
        super().__init__()
        self.model = model
        self.vision_reducer = vision_reducer
        self.lm_reducer = lm_reducer
        core = model.model
        self.tower, self.projector, self.lm = core.vision_tower, core.multi_modal_projector, core.language_model
        self.lm_head = model.lm_head
        self.config = model.config
        self._cache_kw = cache_keyword(self.lm)
        self.clip_tower = type(self.tower).__name__ == "CLIPVisionModel"
        self.decode_impl = "transformers"
        self._fused_step = None

    def use_decode_impl(self, impl: str) -> str:
        """Decode with `transformers` (LlamaModel.forward), `fused` (effprof.models.llama_decode: fused
        q/k/v and gate/up projections on the same weights, cuBLAS GEMVs) or `triton` (the same with effprof's
        Triton GEMV kernels, norms and epilogues fused in); returns the one that will run."""
        if impl in ("fused", "triton"):
            from effprof.models.llama_decode import LlamaDecodeStep

            self._fused_step = LlamaDecodeStep(self.lm, self.lm_head, "ref" if impl == "fused" else "triton")
        else:
            self._fused_step = None
        self.decode_impl = impl
        return impl

    # -- stages ---------------------------------------------------------------------------------------
    def vision(self, pixel_values: torch.Tensor) -> VisionOutput:
        if not self.clip_tower:  # another tower (e.g. MambaVision): its token features as they come
            features = self.tower(pixel_values)
            return VisionOutput(features, None, (features,), self.tower)
        out = self.tower(pixel_values, output_hidden_states=True)
        selected = out.hidden_states[self.config.vision_feature_layer]
        if self.config.vision_feature_select_strategy == "default":
            return VisionOutput(selected[:, 1:], selected[:, 0], out.hidden_states, self.tower)
        return VisionOutput(selected, None, out.hidden_states, self.tower)

    def reduce(self, vision: VisionOutput) -> torch.Tensor:
        return vision.features if self.vision_reducer is None else self.vision_reducer(vision)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return self.projector(features)

    def embed(self, image_embeds: torch.Tensor, prompt_ids: torch.Tensor) -> torch.Tensor:
        text = self.lm.get_input_embeddings()(prompt_ids)
        return torch.cat([image_embeds.to(text.dtype), text], dim=1)

    def prefill(self, embeds: torch.Tensor, kv: StaticKV | None, image_tokens: int = 0) -> torch.Tensor:
        """Logits (B, 1, vocab) of the last position; the cache (if any) holds the sequence's keys/values.

        When the cache holds exactly the sequence, transformers' own mask logic applies (SDPA's causal
        kernel); when it is longer (room for new tokens), the causal mask over the cache is given
        explicitly, so that no host synchronisation reads the cache's length."""
        length = embeds.shape[1]
        positions = torch.arange(length, device=embeds.device).unsqueeze(0)
        if kv is not None:
            kv.set_length(0)
        if self.lm_reducer is not None:
            image_mask = torch.zeros(length, dtype=torch.bool, device=embeds.device)
            image_mask[:image_tokens] = True
            hidden = self.lm_reducer.prefill(self.lm, embeds, image_mask, positions)
        else:
            kwargs = {self._cache_kw: kv.cache, "use_cache": True} if kv is not None else {"use_cache": False}
            if kv is not None and kv.max_len != length:
                kwargs["attention_mask"] = kv_mask(positions, kv.max_len)
            hidden = self.lm(inputs_embeds=embeds, position_ids=positions, **kwargs).last_hidden_state
        return self.lm_head(hidden[:, -1:])

    def decode(self, token_ids: torch.Tensor, kv: StaticKV, position: torch.Tensor, full: bool = False) -> torch.Tensor:
        """Logits (B, 1, vocab) of one new token per sequence at `position` (a (1, 1) tensor); appends to `kv`.

        `full`: the cache's last slot is the one this step writes (every slot is valid), so no mask is needed
        and SDPA may take its fastest (flash) kernel; otherwise slots past `position` are masked on the device."""
        mask = None if full else kv_mask(position, kv.max_len)
        if self._fused_step is not None:
            logits = self._fused_step(token_ids, kv.keys, kv.values, position, mask)
            kv.lengths.add_(1)  # as transformers' cache update does, so both paths leave the cache alike
            return logits
        hidden = self.lm(input_ids=token_ids, position_ids=position, use_cache=True,
                         attention_mask=mask, **{self._cache_kw: kv.cache}).last_hidden_state
        return self.lm_head(hidden)

    def new_cache(self, max_len: int, batch: int) -> StaticKV:
        weight = self.lm_head.weight
        return StaticKV(self.config, max_len, batch, weight.device, weight.dtype)
