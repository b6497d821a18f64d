"""Vision state-space models (family "vision"): `vmamba`, `ss2d` (one SS2D block) and `mambavision`.

Random weights from the published configurations (effprof/models/vmamba.py, effprof/models/mambavision.py).
Every row names the scan backend that ran (`scan_backend`), how many routes and how many sequences the
2-D scan runs (`scan_directions`, `scan_sequences`: VMamba's own "2-direction" v052d runs 2 routes but
4 sequences), the tokens at the first stage (`tokens_in` = (img/4)², H·W/patch² with patch 4) and at the last
(`tokens_out` = (img/32)²) and the
papers' FLOP convention beside effprof's (`paper_gmacs_per_img`, by the paper_flops tracker: fvcore-style
MACs with VMamba's scan count, the figure VMamba and MambaVision print, next to `published_gmacs` at the
published configuration; effprof's `gflops` is 2 × MAC for the whole batch).

Torch and the models are imported inside the factories, so listing components stays fast.
"""
from __future__ import annotations

from typing import Any

from effprof.core.errors import ParamError
from effprof.modules.preprocess import Preprocess
from effprof.core.limits import MAX_IMAGE_SIDE, MAX_LAYERS, MAX_STATE, MAX_WIDTH
from effprof.core.params import Param
from effprof.core.registry import BuildContext, Built, register_component

SCAN = Param("scan_backend", str, "auto", "Selective-scan path: auto = mamba-ssm if importable on CUDA, else triton "
             "on CUDA, else ref.", choices=("auto", "ref", "triton", "mamba-ssm"))
IMG = Param("img_size", int, 224, "Image side in pixels (a multiple of 32).", low=32, high=MAX_IMAGE_SIDE)
DIRECTIONS = Param("directions", int, 4, "Scan routes of SS2D: 4 = VMamba's cross scan (row, column, both "
                   "reversed); 2 = row-major and its reverse (K = 2 sequences: half the scan work); 1 = one raster "
                   "scan.", choices=(4, 2, 1))
V052D = Param("vmamba_v052d", bool, False, "With --directions 2: VMamba's own 2-direction forward type v052d, which "
              "still scans K = 4 sequences (row-major twice, reversed twice) and keeps 4 parameter sets.")
NUM_CLASSES = Param("num_classes", int, 1000, "Classes of the head (a fresh head when not 1000).", low=1,
                    high=2**20)
DIM = Param("dim", int, None, "Override the preset's stage-1 width (none = the preset's).", low=1, high=MAX_WIDTH,
            optional=True)
DEPTHS = Param("depths", str, None, "Override the preset's blocks per stage, e.g. 1,1,2,1 (none = the preset's).",
               optional=True)
PATCH = 4


def _depths(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        depths = tuple(int(v) for v in text.split(","))
    except ValueError:
        depths = ()
    if len(depths) != 4 or min(depths) < 1:
        raise ParamError(f"--depths: {text!r} is not four positive integers such as 2,2,8,2")
    if sum(depths) > MAX_LAYERS:  # each block is built in Python: 99,999 of them never finish building
        raise ParamError(f"--depths: {text!r} is {sum(depths):,} blocks in all, more than {MAX_LAYERS} (the most "
                         "layers any component takes)")
    return depths


def scan_mode(directions: int, v052d: bool) -> str:
    """The effprof.ops.cross_scan mode of a --directions / --vmamba-v052d pair."""
    if v052d and directions != 2:
        raise ParamError("--vmamba-v052d is VMamba's 2-direction forward type: use it with --directions 2")
    return "v052d" if v052d else {4: "cross4", 2: "bi2", 1: "uni1"}[directions]


def _check_size(img_size: int) -> None:
    if img_size % 32:
        raise ParamError(f"--img-size: {img_size} is not a multiple of 32 (the networks downsample by 32)")


def _images(ctx: BuildContext, img_size: int):
    import torch

    def make_inputs(batch: int) -> tuple:
        return (torch.randn(batch, 3, img_size, img_size, device=ctx.device, dtype=ctx.dtype),)

    return make_inputs


def _published(figures: tuple[float, float] | None) -> dict[str, Any]:
    """The paper's own parameter count (M) and GFLOPs (its MAC convention) for the row, when comparable."""
    return {} if figures is None else {"published_params_m": figures[0], "published_gmacs": figures[1]}


def _scan_info(mode: str, backend: str) -> dict[str, Any]:
    from effprof.ops.cross_scan import distinct_directions, num_sequences

    info = {"scan_backend": backend, "scan_mode": mode, "scan_directions": distinct_directions(mode),
            "scan_sequences": num_sequences(mode)}
    if mode == "v052d":
        info["scan_note"] = "VMamba v052d: 2 routes but K=4 sequences, the scan cost of 4 directions"
    return info


@register_component("vmamba", unit="img", family="vision", params=[
    Param("preset", str, "t", "VMamba size: vanilla-t (v0), t (s1l8), s (s2l15), b (s2l15), VMamba's published "
          "configs.", choices=("vanilla-t", "t", "s", "b")),
    IMG, DIRECTIONS, V052D, SCAN, NUM_CLASSES, DIM, DEPTHS,
])
def vmamba(ctx: BuildContext, preset, img_size, directions, vmamba_v052d, scan_backend, num_classes, dim, depths):
    """VMamba image classifier (SS2D with 4, 2 or 1 scan directions), images -> logits."""
    from effprof.models.vmamba import VMAMBA_PUBLISHED, build_vmamba, scan_flops_per_image
    from effprof.ops.selective_scan import resolve_backend

    _check_size(img_size)
    mode = scan_mode(directions, vmamba_v052d)
    backend = resolve_backend(scan_backend, ctx.device)
    model = build_vmamba(preset, mode, backend, num_classes, device=ctx.device, dtype=ctx.dtype, dim=dim,
                         depths=_depths(depths)).eval()
    model.preprocess = Preprocess(img_size, crop_pct=0.875)  # VMamba evaluates as Swin: resize 256, crop 224
    info = {**_scan_info(mode, backend), "image_size": img_size, "tokens_in": (img_size // PATCH) ** 2,
            "tokens_out": (img_size // 32) ** 2, "d_state": model.config.d_state,
            "scan_gflops_per_img": scan_flops_per_image(model.config, img_size, mode) / 1e9}
    as_published = mode == "cross4" and img_size == 224 and num_classes == 1000 and dim is None and depths is None
    published = VMAMBA_PUBLISHED[preset] if as_published else None
    return Built(model, _images(ctx, img_size), "img", info={**info, **_published(published)})


@register_component("ss2d", unit="img", family="vision", params=[
    Param("d_model", int, 96, "Block width (VMamba-T stage 1: 96).", low=1, high=MAX_WIDTH),
    Param("d_state", int, 1, "SSM state size N (VMamba v2: 1; vanilla: 16).", low=1, high=MAX_STATE),
    Param("ssm_ratio", float, 1.0, "d_inner / d_model (VMamba-T: 1.0, S/B: 2.0).", low=0, low_open=True,
          high=MAX_STATE),
    Param("img_size", int, 224, "Image side in pixels; the block runs on the stage-1 map, (img/4)².", low=4,
          high=MAX_IMAGE_SIDE),
    DIRECTIONS, V052D, SCAN,
])
def ss2d(ctx: BuildContext, d_model, d_state, ssm_ratio, img_size, directions, vmamba_v052d, scan_backend):
    """One SS2D block (VMamba v05_noz) on a (batch, img/4, img/4, d_model) map, for kernel-level rows."""
    import torch

    from effprof.modules.ss2d import SS2D
    from effprof.ops.selective_scan import resolve_backend

    if img_size % PATCH:
        raise ParamError(f"--img-size: {img_size} is not a multiple of the patch size {PATCH}")
    mode = scan_mode(directions, vmamba_v052d)
    backend = resolve_backend(scan_backend, ctx.device)
    side = img_size // PATCH
    block = SS2D(d_model, d_state, ssm_ratio, scan_mode=mode, scan_backend=backend, device=ctx.device,
                 dtype=ctx.dtype).eval()

    def make_inputs(batch: int) -> tuple:
        return (torch.randn(batch, side, side, d_model, device=ctx.device, dtype=ctx.dtype),)

    length = side * side
    scan_flops = block.k_group * (9 * length * block.d_inner * d_state + length * block.d_inner)
    info = {**_scan_info(mode, backend), "image_size": img_size, "tokens_in": length,
            "tokens_out": length, "d_inner": block.d_inner,
            "scan_gflops_per_img": scan_flops / 1e9}
    return Built(block, make_inputs, "img", info=info)


@register_component("mambavision", unit="img", family="vision", params=[
    Param("preset", str, "t", "MambaVision size (NVlabs' published configs).", choices=("t", "s", "b")),
    IMG, SCAN, NUM_CLASSES, DIM, DEPTHS,
])
def mambavision(ctx: BuildContext, preset, img_size, scan_backend, num_classes, dim, depths):
    """MambaVision hybrid classifier (conv stages, then MambaVision mixers and self-attention), images -> logits."""
    from effprof.models.mambavision import MAMBAVISION_PUBLISHED, MambaVisionTower, build_mambavision
    from effprof.ops.selective_scan import resolve_backend

    _check_size(img_size)
    backend = resolve_backend(scan_backend, ctx.device)
    if dim is not None and dim % 4:
        raise ParamError(f"--dim: {dim} is not a multiple of 4 (the attention heads split 4·dim and 8·dim)")
    model = build_mambavision(preset, num_classes, backend, device=ctx.device, dtype=ctx.dtype, dim=dim,
                              depths=_depths(depths)).eval()
    model.preprocess = Preprocess(img_size, crop_pct=model.config.crop_pct)  # NVlabs' default_cfgs
    info = {"scan_backend": backend, "image_size": img_size,
            "tokens_in": (img_size // PATCH) ** 2, "tokens_out": MambaVisionTower.num_tokens(img_size)}
    as_published = img_size == 224 and num_classes == 1000 and dim is None and depths is None
    published = MAMBAVISION_PUBLISHED[preset] if as_published else None
    return Built(model, _images(ctx, img_size), "img", info={**info, **_published(published)})
