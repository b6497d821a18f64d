"""LLaVA projectors as components: dims default to LLaVA-1.5 (576 tokens of 1024-d CLIP ViT-L/14-336
features into a 4096-d language model); every dimension can be overridden.

`--pretrained` loads a projector state dict (LLaVA's `mm_projector.bin`, a `.pt`, or `.safetensors`),
stripping any `...mm_projector.` prefix from the keys; the shapes must match the chosen dims.
"""
from __future__ import annotations

import math

from effprof.core.errors import ParamError, PretrainedNotFound
from effprof.core.lazy import lazy_import
from effprof.core.limits import MAX_TOKENS, MAX_WIDTH
from effprof.core.params import Param
from effprof.core.pretrained import expand_spec, load_state_dict
from effprof.core.registry import BuildContext, Built, register_component

TOKENS = Param("tokens", int, 576, "visual tokens per image (LLaVA-1.5: 24×24 = 576)", low=1,
               high=MAX_TOKENS)
IN_DIM = Param("in_dim", int, 1024, "vision feature width (CLIP ViT-L/14: 1024)", low=1, high=MAX_WIDTH)
OUT_DIM = Param("out_dim", int, 4096, "language model width (Vicuna-7B: 4096)", low=1, high=MAX_WIDTH)
PRETRAINED = Param("pretrained", str, None, "projector state dict (mm_projector.bin / .pt / .safetensors)",
                   optional=True)
COMMON = (TOKENS, IN_DIM, OUT_DIM, PRETRAINED)
RANK = Param("rank", int, 256, "rank of the factorisation", low=1, high=MAX_WIDTH)
LORA_RANK = Param("rank", int, 8, "LoRA adapter rank", low=1, high=MAX_WIDTH)
LORA_ALPHA = Param("alpha", float, 16.0, "LoRA scaling numerator (scale = alpha / rank)", low=0, low_open=True, high=1e6)

# Imported when a factory runs, not when the component is listed (effprof/core/lazy.py).
torch = lazy_import("torch")
nn = lazy_import("torch.nn")
P = lazy_import("effprof.modules.projectors")

PROJECTOR_FILES = ("mm_projector.bin", "mm_projector.safetensors", "projector.safetensors", "projector.pt")


def load_projector_state(spec: str) -> dict[str, torch.Tensor]:
    """Read a projector state dict from a file or a directory holding one of PROJECTOR_FILES."""
    path = expand_spec(spec)
    if path.is_dir():
        found = [path / name for name in PROJECTOR_FILES if (path / name).is_file()]
        if not found:
            raise PretrainedNotFound(f"--pretrained {spec}: none of {', '.join(PROJECTOR_FILES)} in it")
        path = found[0]
    if not path.is_file():
        raise PretrainedNotFound(f"--pretrained {spec}: no such file or directory")
    state = load_state_dict(path, spec)
    return {key.split("mm_projector.")[-1]: value for key, value in state.items()}


def projector(ctx: BuildContext, module: nn.Module, tokens: int, in_dim: int, pretrained: str | None,
              tokens_out: int | None = None) -> Built:
    if pretrained:
        state = load_projector_state(pretrained)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
            raise PretrainedNotFound(f"--pretrained {pretrained}: does not fit this projector ({first})") from None
    module = module.to(device=ctx.device, dtype=ctx.dtype).eval()

    def make_inputs(batch: int):
        return (torch.randn(batch, tokens, in_dim, device=ctx.device, dtype=ctx.dtype),)

    return Built(module, make_inputs, unit="tok", items_per_sample=tokens,
                 info={"tokens_in": tokens, "tokens_out": tokens if tokens_out is None else tokens_out})


@register_component("linear", unit="tok", params=COMMON, family="projector")
def linear(ctx, tokens, in_dim, out_dim, pretrained):
    """LLaVA-1 linear projector: one nn.Linear."""
    return projector(ctx, nn.Linear(in_dim, out_dim), tokens, in_dim, pretrained)


@register_component("lowrank", unit="tok", params=COMMON + (RANK,), family="projector")
def lowrank(ctx, tokens, in_dim, out_dim, pretrained, rank):
    """Low-rank projector: Linear(in, r, no bias) then Linear(r, out)."""
    return projector(ctx, P.LowRankProjector(in_dim, out_dim, rank), tokens, in_dim, pretrained)


@register_component("mlp", unit="tok", params=COMMON, family="projector")
def mlp(ctx, tokens, in_dim, out_dim, pretrained):
    """LLaVA-1.5 mlp2x_gelu projector: Linear, GELU, Linear."""
    return projector(ctx, P.mlp2x_gelu(in_dim, out_dim), tokens, in_dim, pretrained)


@register_component("gated", unit="tok", params=COMMON, family="projector")
def gated(ctx, tokens, in_dim, out_dim, pretrained):
    """Sigmoid-gated linear fusion: σ(W_g x) ⊙ (W_v x)."""
    return projector(ctx, P.GatedProjector(in_dim, out_dim), tokens, in_dim, pretrained)


@register_component("lora", unit="tok", params=COMMON + (LORA_RANK, LORA_ALPHA), family="projector")
def lora(ctx, tokens, in_dim, out_dim, pretrained, rank, alpha):
    """Frozen linear plus rank-r LoRA adapters (trainable params reported separately)."""
    return projector(ctx, P.LoRAProjector(in_dim, out_dim, rank, alpha), tokens, in_dim, pretrained)


@register_component("ldp", unit="tok", params=COMMON, family="projector")
def ldp(ctx, tokens, in_dim, out_dim, pretrained):
    """MobileVLM lightweight downsample projector (Cobra's): MLP, then depthwise-conv blocks, 576 -> 144 tokens."""
    if math.isqrt(tokens) ** 2 != tokens:
        raise ParamError(f"--tokens: ldp needs a square token grid, {tokens} is not a perfect square")
    return projector(ctx, P.LDPProjector(in_dim, out_dim), tokens, in_dim, pretrained,
                     tokens_out=P.LDPProjector.tokens_out(tokens))
