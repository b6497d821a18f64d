"""The built-in reducers, a few lines each: where they act, their parameters, their published defaults.

Implementations live in `effprof/modules/reducers/`; each module's docstring cites its paper and code.
"""
from __future__ import annotations

from effprof.core.limits import MAX_LAYERS, MAX_TOKENS
from effprof.core.params import Param
from effprof.core.reducers import register_reducer


@register_reducer("identity", where="vision-output")
def identity():
    """No reduction: the feature layer's N patch tokens as they are (the baseline of a reducer table)."""
    from effprof.modules.reducers.vision import Identity

    return Identity()


@register_reducer("vtp", where="vision-inner", params=[
    Param("keep", float, 0.5, "Fraction of patch embeddings kept by L2 norm (⌈keep·N⌉).", low=0.0, high=1.0,
          low_open=True),
    Param("summary_token", bool, True, "Add one token = mean of all patch embeddings.")])
def vtp(keep, summary_token):
    """Patch-embedding L2-norm top-k + mean summary token before the encoder (as clip-vtp)."""
    from effprof.modules.reducers.vtp import VTP

    return VTP(keep, summary_token)


@register_reducer("tome", where="vision-inner", params=[
    Param("r", int, 16, "Tokens merged in every block (ToMe's r; capped at (T-1)//2 per block).", low=0,
          high=MAX_TOKENS),
    Param("proportional_attention", bool, True, "Add log(size) to the attention logits (ToMe's default).")])
def tome(r, proportional_attention):
    """ToMe: bipartite soft matching in every block, size-weighted means, class token protected."""
    from effprof.modules.reducers.tome import ToMe

    return ToMe(r, proportional_attention)


_NEIGHBOURS = Param("neighbours", int, 32, "Nearest patches (by key cosine) merged into each kept token.", low=1,
                   high=MAX_TOKENS)
_MERGE = Param("merge", str, "batched", "batched = one tensor op for the batch; loop = the reference's "
               "per-token Python loop (slow; for comparison).", choices=("batched", "loop"))


@register_reducer("prumerge", where="vision-output", params=[_NEIGHBOURS, _MERGE])
def prumerge(neighbours, merge):
    """PruMerge: class-attention IQR outliers kept, merged with key-similar neighbours, + 1 pruned-mass token."""
    from effprof.modules.reducers.prumerge import PruMerge

    return PruMerge(False, neighbours, merge == "batched")


@register_reducer("prumerge+", where="vision-output", params=[_NEIGHBOURS, _MERGE])
def prumerge_plus(neighbours, merge):
    """PruMerge+: PruMerge's outliers plus spatially uniform samples (~144 of 576 in the paper)."""
    from effprof.modules.reducers.prumerge import PruMerge

    return PruMerge(True, neighbours, merge == "batched")


@register_reducer("visionzip", where="vision-output", params=[
    Param("dominant", int, 54, "Dominant tokens (class token + top class-attention patches); 108/162 for the "
          "128/192 variants.", low=1, high=MAX_TOKENS),
    Param("contextual", int, 10, "Contextual tokens merged by key similarity; 20/30 for 128/192.", low=1,
          high=MAX_TOKENS),
    Param("contextual_merge", str, "authors", "authors = target + mean of its members (the reference code); "
          "mean = mean of target and members (half the scale; for comparison).", choices=("authors", "mean"))])
def visionzip(dominant, contextual, contextual_merge):
    """VisionZip: dominant tokens by class attention + contextual tokens merged by key similarity."""
    from effprof.modules.reducers.visionzip import VisionZip

    return VisionZip(dominant, contextual, contextual_merge)


@register_reducer("fastv", where="lm", params=[
    Param("fastv_k", int, 2, "FastV's K: tokens are dropped before layer K, ranked in layer K-1.", low=1, high=MAX_LAYERS),
    Param("fastv_ratio", float, 0.5, "FastV's R: fraction of image tokens dropped.", low=0.0, high=1.0,
          high_open=True)])
def fastv(fastv_k, fastv_ratio):
    """FastV: after layer K-1 drop the R of image tokens the last token attends to least."""
    from effprof.modules.reducers.lm_reducers import FastV

    return FastV(fastv_k, fastv_ratio)


def _layers(text: str, option: str, lowest: int = 1, most: int | None = None) -> tuple[int, ...]:
    from effprof.core.errors import ParamError

    try:
        layers = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ParamError(f"{option}: {text!r} is not a comma-separated list of layers") from None
    if list(layers) != sorted(set(layers)) or layers[0] < lowest or (most is not None and len(layers) > most):
        most_text = f"at most {most} " if most else ""
        raise ParamError(f"{option}: {text!r} must be {most_text}increasing layer numbers >= {lowest}")
    return layers


@register_reducer("sparsevlm", where="lm", params=[
    Param("sparse_version", str, "v1", "v1 = SparseVLM (the reference's default USE_VERSION=1_0: positions renumbered "
          "after every drop, recycling); v2 = SparseVLM+ (USE_VERSION=2_0: original positions kept, RoPE-corrected "
          "scores from 14 priority heads, no recycling, its own schedules).", choices=("v1", "v2")),
    Param("sparse_tokens", int, 192, "SparseVLM's schedule (average image tokens kept).", choices=(192, 128, 96, 64)),
    Param("sparse_layers", str, "2,6,15", "Layers whose raters' attention prunes (SparseVLM's 2,6,15); fewer "
          "layers use the first steps of the schedule (for shallow test LMs)."),
    Param("recycle", bool, None, "Recycle part of the pruned tokens into cluster tokens; none = the version's own "
          "(v1 yes, v2 no).", optional=True)])
def sparsevlm(sparse_version, sparse_tokens, sparse_layers, recycle):
    """SparseVLM (v1) or SparseVLM+ (v2): text raters' attention ranks image tokens at layers 2, 6, 15."""
    from effprof.modules.reducers.lm_reducers import SparseVLM

    return SparseVLM(sparse_tokens, _layers(sparse_layers, "--sparse-layers", 0, 3), recycle=recycle,
                     version=sparse_version)


@register_reducer("pyramiddrop", where="lm", params=[
    Param("pdrop_layers", str, "8,16,24", "Layers after which image tokens are ranked and dropped."),
    Param("pdrop_ratio", float, 0.5, "PyramidDrop's λ: fraction of image tokens kept at each stage.", low=0.0,
          high=1.0, low_open=True)])
def pyramiddrop(pdrop_layers, pdrop_ratio):
    """PyramidDrop: the last instruction token's attention ranks image tokens after layers 8/16/24, keep λ each."""
    from effprof.modules.reducers.lm_reducers import PyramidDrop

    return PyramidDrop(_layers(pdrop_layers, "--pdrop-layers"), pdrop_ratio)
