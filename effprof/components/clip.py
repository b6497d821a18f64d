"""CLIP vision towers: the plain tower (`clip-vision`) and the tower with visual token pruning (`clip-vtp`).

Both use Hugging Face `transformers.CLIPVisionModel` with SDPA attention. By default the weights are
random, drawn from a `CLIPVisionConfig` that matches the published OpenAI CLIP architectures exactly
(Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", ICML 2021):
quick_gelu MLPs, LayerNorm eps 1e-5, a bias-free patch convolution, a class token, learned positions and
pre/post LayerNorms. Efficiency does not depend on weight values. `--pretrained DIR` loads a real
checkpoint (a `CLIPVisionModel` or a full `CLIPModel` directory, e.g. a local copy of
openai/clip-vit-base-patch16); the architecture then comes from the checkpoint's config and `--preset`
is ignored.

Parameter counts (vision tower without the projection to the joint embedding) equal the released towers:
ViT-B/16 85,799,424; ViT-L/14 303,179,776; ViT-L/14-336 303,507,456 (checked against a closed-form count
in tests/test_clip.py).
"""
from __future__ import annotations

import inspect
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from effprof.core.errors import CheckpointError, ParamError, PretrainedNotFound
from effprof.core.lazy import lazy_attr, lazy_from, lazy_import
from effprof.core.limits import MAX_IMAGE_SIDE, MAX_LAYERS, MAX_WIDTH
from effprof.core.params import Param
from effprof.core.registry import BuildContext, Built, register_component
from effprof.models.clip import PRESETS, ClipVisionPreset, vision_config  # noqa: F401  (re-exported)

# Imported when a factory runs, not when the components are listed (effprof/core/lazy.py).
torch = lazy_import("torch")
PrunedCLIPVision, pooled_fidelity, vision_trunk = lazy_from("effprof.modules.clip_pruned", "PrunedCLIPVision",
                                                            "pooled_fidelity", "vision_trunk")
NormTopKPruner = lazy_attr("effprof.modules.token_pruning", "NormTopKPruner")


TOWER_PARAMS = [
    Param("preset", str, "vit-b-16", "Published OpenAI CLIP vision architecture (ignored with --pretrained).",
          choices=tuple(PRESETS)),
    Param("img_size", int, None, "Input side in pixels, a multiple of the patch size (none = the preset's or "
          "the checkpoint's).", low=1, high=MAX_IMAGE_SIDE, optional=True),
    Param("pretrained", str, None, "Local checkpoint directory (or cached hub id) to load real weights from; "
          "none = random weights.", optional=True),
]


@dataclass
class Tower:
    """A built CLIP vision tower and the facts the record reports about it."""

    model: nn.Module                 # transformers.CLIPVisionModel
    image_size: int                  # input side in pixels
    patch_size: int
    interpolate_positions: bool      # position embeddings resized to image_size on every call (HF bicubic)
    architecture: str                # preset name, or "checkpoint" with its sizes

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def _check_multiple(img_size: int, patch_size: int, where: str) -> None:
    if img_size % patch_size != 0:
        raise ParamError(f"--img-size: {img_size} is not a multiple of the patch size {patch_size} ({where})")


@contextmanager
def _quiet_transformers():
    """Silence transformers' load report and progress bars (unused text weights of a CLIPModel)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def check_clip_config(directory, spec: str) -> None:
    """Refuse a CLIP config.json with wrong types, impossible sizes or heads that do not divide the width
    before transformers reads it (it would fail deep inside with a traceback)."""
    from effprof.core.pretrained import config_value, read_config

    doc = read_config(directory / "config.json", spec)
    vision = doc.get("vision_config", doc)
    where = f"--pretrained {spec}: config.json" + (" vision_config" if vision is not doc else "")
    if not isinstance(vision, dict):
        raise CheckpointError(f"{where} is {type(vision).__name__}, not a mapping")
    sizes = {"hidden_size": MAX_WIDTH, "num_attention_heads": MAX_WIDTH, "num_hidden_layers": MAX_LAYERS,
             "intermediate_size": 4 * MAX_WIDTH, "image_size": MAX_IMAGE_SIDE, "patch_size": MAX_IMAGE_SIDE,
             "num_channels": 64}
    values = {k: config_value(vision, k, int, where, None, 1, high) for k, high in sizes.items()}
    width, heads = values["hidden_size"], values["num_attention_heads"]
    if width is not None and heads is not None and width % heads:
        raise CheckpointError(f"{where}: {heads} attention heads do not divide the width {width}")


def build_tower(ctx: BuildContext, preset: str, img_size: int | None, pretrained: str | None) -> Tower:
    """Random-weight tower from a preset, or a checkpoint's tower; on ctx.device in ctx.dtype, eval mode."""
    from transformers import CLIPVisionModel

    if pretrained is None:
        arch = PRESETS[preset]
        size = arch.image_size if img_size is None else img_size
        _check_multiple(size, arch.patch_size, preset)
        with ctx.device:  # initialise on the target device: ViT-L init on CPU alone takes seconds
            model = CLIPVisionModel(vision_config(arch, size))
        tower = Tower(model, size, arch.patch_size, False, preset)
    else:
        from effprof.core.pretrained import find_checkpoint

        directory = find_checkpoint(pretrained, ("config.json",))
        check_clip_config(directory, pretrained)
        try:
            with _quiet_transformers(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model, loading = CLIPVisionModel.from_pretrained(str(directory), attn_implementation="sdpa",
                                                                 output_loading_info=True)
        except Exception as exc:  # noqa: BLE001 - transformers raises many kinds; each is one line here
            raise PretrainedNotFound(f"--pretrained {pretrained}: not a loadable CLIP vision checkpoint "
                                     f"({str(exc).splitlines()[0][:160]})") from None
        if loading.get("missing_keys"):
            missing = sorted(loading["missing_keys"])
            raise PretrainedNotFound(f"--pretrained {pretrained}: {len(missing)} vision weights missing "
                                     f"(first: {missing[0]})")
        cfg = model.config
        size = cfg.image_size if img_size is None else img_size
        _check_multiple(size, cfg.patch_size, f"checkpoint {directory.name}")
        interpolate = size != cfg.image_size
        if interpolate:
            embed_forward = vision_trunk(model).embeddings.forward
            if "interpolate_pos_encoding" not in inspect.signature(embed_forward).parameters:
                raise ParamError(f"--img-size: {size} differs from the checkpoint's {cfg.image_size} and this "
                                 "transformers version cannot interpolate CLIP position embeddings")
        arch = (f"checkpoint {directory.name} (width {cfg.hidden_size}, {cfg.num_hidden_layers} layers, "
                f"patch {cfg.patch_size}, trained at {cfg.image_size}px)")
        tower = Tower(model, size, cfg.patch_size, interpolate, arch)
    tower.model.to(device=ctx.device, dtype=ctx.dtype).eval()
    return tower


def tower_info(tower: Tower) -> dict[str, Any]:
    return {"architecture": tower.architecture, "image_size": tower.image_size, "patch_size": tower.patch_size,
            "pos_interpolated": tower.interpolate_positions,
            "attention": getattr(tower.model.config, "_attn_implementation", None)}


def pixel_maker(ctx: BuildContext, image_size: int, images_dir: str | None = None):
    """Random pixels, or (with `images_dir`) real images prepared as CLIP's processor does."""
    if images_dir is not None:
        from effprof.modules.reducers.images import image_files, load_images

        image_files(images_dir)  # refuse a bad folder at build time, before any measuring

    def make_inputs(batch: int) -> tuple:
        if images_dir is not None:
            return (load_images(images_dir, image_size, batch).to(device=ctx.device, dtype=ctx.dtype),)
        return (torch.randn(batch, 3, image_size, image_size, device=ctx.device, dtype=ctx.dtype),)

    return make_inputs


FEATURE_LAYER = Param("feature_layer", int, None, "With --reducer: output the patch tokens of this layer (-2 = "
                      "LLaVA-1.5's penultimate layer; default for vision-output reducers) instead of the pooled "
                      "class token after every layer (none).", low=-MAX_LAYERS, high=MAX_LAYERS,
                      optional=True)
IMAGES_DIR = Param("images_dir", str, None, "Folder of jpg/png images used as inputs (resized and normalised as "
                   "CLIP's processor does; cycled to the batch); none = random pixels.", optional=True)


@register_component("clip-vision", unit="img", family="vision", params=[*TOWER_PARAMS, FEATURE_LAYER, IMAGES_DIR],
                    reducers=("vision-output", "vision-inner"))
def clip_vision(ctx: BuildContext, preset: str, img_size: int | None, pretrained: str | None,
                feature_layer: int | None = None, images_dir: str | None = None, reducer=None) -> Built:
    """CLIP vision tower (HF CLIPVisionModel, SDPA), pooled class-token output; --reducer NAME reduces its tokens."""
    tower = build_tower(ctx, preset, img_size, pretrained)
    interpolate = tower.interpolate_positions
    make_inputs = pixel_maker(ctx, tower.image_size, images_dir)
    if reducer is not None or feature_layer is not None:
        from effprof.modules.reducers.clip_reduced import reduced_clip_built

        return reduced_clip_built(ctx, tower, reducer, feature_layer, pretrained, make_inputs, tower_info(tower),
                                  images_dir)

    def forward(module, inputs):
        return module(pixel_values=inputs[0], interpolate_pos_encoding=interpolate).pooler_output

    tokens = 1 + tower.num_patches
    return Built(tower.model, make_inputs, "img", forward=forward,
                 info={**tower_info(tower), "tokens_in": tokens, "tokens_out": tokens})


@register_component("clip-vtp", unit="img", family="vision", params=[
    Param("keep", float, 0.5, "Fraction of patch tokens kept, by L2 norm of the patch embedding "
          "(⌈keep·N⌉ kept).", low=0.0, high=1.0, low_open=True),
    *TOWER_PARAMS,
    Param("summary_token", bool, True, "Add one token = mean of all patch embeddings (also at keep=1.0)."),
])
def clip_vtp(ctx: BuildContext, keep: float, preset: str, img_size: int | None, pretrained: str | None,
             summary_token: bool) -> Built:
    """CLIP vision tower with visual token pruning (patch-embedding L2 norm top-k + mean summary token).

    Tokens entering the encoder: 1 (class) + 1 (summary, unless --summary-token false) + ⌈keep·N⌉ for N
    patches. At keep=1.0 the summary token is still added (1 + 1 + N tokens), matching the anchor in
    ANCHORS.md, so the keep=1.0 row costs slightly more than the plain `clip-vision` tower. The anchor
    rounds keep·N to the nearest integer; effprof rounds up (keep 0.9 of 196 = 177 here, 176 there).

    `fidelity_cos` is the batch mean of the cosine similarity between the pooled output with pruning and
    without it (same weights, same inputs, float32 math). With random weights and random pixels it says
    only how much pruning perturbs this network, not how accuracy changes; load real weights with
    --pretrained for a meaningful figure (the inputs are still random pixels, not images).
    """
    tower = build_tower(ctx, preset, img_size, pretrained)
    pruner = NormTopKPruner(keep, summary_token)
    module = PrunedCLIPVision(tower.model, pruner, tower.interpolate_positions).eval()
    n = tower.num_patches
    note = ("random weights and random pixels: how much pruning perturbs this network, not accuracy"
            if pretrained is None else "pretrained weights on random pixels, not images")

    def extras(module, inputs):
        cos = pooled_fidelity(module, inputs[0])
        return {"fidelity_cos": float(cos.mean()), "fidelity_cos_min": float(cos.min()),
                "fidelity_dtype": "fp32", "fidelity_note": note}

    info = {**tower_info(tower), "tokens_in": 1 + n, "tokens_out": pruner.output_tokens(n),
            "patches_kept": pruner.kept_count(n), "pruning": "norm-topk (torch.topk + gather)"}
    return Built(module, pixel_maker(ctx, tower.image_size), "img", info=info, extras=extras)
