"""Cross-check of effprof's FLOP count against fvcore and thop (the `flops` extra).

Both tools count multiply-accumulates (MACs), not FLOPs: effprof's `gflops` (2 × MAC) should be about
twice their figure. They also see less: fvcore traces the module with `torch.jit` and has no handle for
`scaled_dot_product_attention` (skipped), thop only counts the modules it knows (nn.Linear, nn.Conv*,
norms, ...) through forward hooks, so attention matmuls written as functions are missed
(ANCHORS.md: ViT-B/16 35.13 GFLOP by FlopCounterMode vs 16.87 G fvcore, 16.86 G thop).

Both run on a CPU fp32 deep copy of the module (the tools mutate modules, and fvcore's tracer and some
CPU kernels do not take bf16), fed CPU fp32 copies of the inputs. Either field is None with a
`*_note` saying why when the tool is missing or fails.
"""
from __future__ import annotations

import copy
import warnings
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from effprof.core.registry import Built


class _Call(torch.nn.Module):
    """`built.call` as a module taking positional inputs and returning a flat tuple of tensors, so that
    tracers (fvcore's jit trace) accept components with a custom forward or dataclass outputs."""

    def __init__(self, module: torch.nn.Module, forward):
        super().__init__()
        self.inner = module
        self._forward = forward

    def forward(self, *inputs):
        out = self._forward(self.inner, inputs) if self._forward is not None else self.inner(*inputs)
        leaves = [t for t in torch.utils._pytree.tree_flatten(_plain(out))[0] if isinstance(t, torch.Tensor)]
        return tuple(leaves)


def _plain(out: Any) -> Any:
    """HF ModelOutput and other mappings to plain dicts (pytree-flattenable)."""
    if hasattr(out, "to_tuple"):
        return out.to_tuple()
    return out


def _cpu_fp32(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return value.float() if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(_cpu_fp32(v) for v in value)
    if isinstance(value, dict):
        return {k: _cpu_fp32(v) for k, v in value.items()}
    return value


def _copy(built: "Built", inputs: tuple) -> tuple[torch.nn.Module, tuple]:
    module = copy.deepcopy(built.module).cpu().float().eval()
    return _Call(module, built.forward), tuple(_cpu_fp32(list(inputs)))


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160] if text else ''}"


def fvcore_macs(built: "Built", inputs: tuple) -> tuple[int | None, str]:
    """(MACs counted by fvcore's FlopCountAnalysis, note)."""
    try:
        with warnings.catch_warnings():  # fvcore decorates helpers with the deprecated torch.jit.script
            warnings.simplefilter("ignore")
            from fvcore.nn import FlopCountAnalysis
    except ImportError:
        return None, "fvcore not installed (pip install 'effprof[flops]')"
    module, args = _copy(built, inputs)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            analysis = FlopCountAnalysis(module, args)
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            total = int(analysis.total())
            skipped = sorted(analysis.unsupported_ops())
    except Exception as exc:  # a tracer failure is a fact about the tool, not an effprof error
        return None, f"fvcore failed: {_reason(exc)}"
    note = "MACs; not counted: " + ", ".join(skipped[:6]) if skipped else "MACs"
    return total, note


def thop_macs(built: "Built", inputs: tuple) -> tuple[int | None, str]:
    """(MACs counted by thop's profile, note)."""
    try:
        from thop import profile
    except ImportError:
        return None, "thop not installed (pip install 'effprof[flops]')"
    module, args = _copy(built, inputs)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            macs, _params = profile(module, inputs=args, verbose=False)
    except Exception as exc:
        return None, f"thop failed: {_reason(exc)}"
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = f"ultralytics-thop {version('ultralytics-thop')}"
    except PackageNotFoundError:
        release = "thop"
    return int(macs), f"MACs ({release}: module rules, plus functional matmuls and SDPA from ultralytics-thop 2.x)"


def crosscheck(built: "Built", inputs: tuple) -> dict[str, Any]:
    """Record fields `fvcore_gmacs`, `thop_gmacs` (GMAC per call, whole batch) and their notes."""
    fv, fv_note = fvcore_macs(built, inputs)
    th, th_note = thop_macs(built, inputs)
    return {
        "fvcore_gmacs": fv / 1e9 if fv is not None else None,
        "fvcore_note": fv_note,
        "thop_gmacs": th / 1e9 if th is not None else None,
        "thop_note": th_note,
    }
