"""Component `mrss`: multi-resolution selective scanning, against the single full-resolution Mamba block.

`--variant mrss` builds `effprof.modules.mrss.MRSS` (full-resolution Mamba + 1/r-resolution Mamba + a
per-token gate); `--variant baseline` builds the full-resolution `MambaBlock` alone. Both run the scan
through `effprof.ops.selective_scan` with the backend `--scan-backend` resolves to (`scan_backend` in the
record), so the scan is in the FLOP count.

Fidelity extras, computed once on synthetic sequences (2 sequences of the row's shape, same weights):
- smooth: white noise filtered by a 64-token moving average and rescaled to unit variance per channel
  (low-pass noise, little energy above 1/64 cycles per token); rough: white noise N(0, 1).
- `fidelity_rel_err_{smooth,rough}` = ‖mrss(x) − y_high(x)‖ / ‖y_high(x)‖: how far the module's output
  is from its own full-resolution branch. With random, untrained weights the gate sits near 0.5 and
  the low branch has independent weights, so this mostly measures the gate's mixing, not r.
- `lowres_rel_err_{smooth,rough}` = ‖up(B(down(x))) − B(x)‖ / ‖B(x)‖ with B the full-resolution block's
  own weights: what running the same block at 1/r resolution loses, which is what r controls (no dt
  rescaling: each low-resolution step stands for r tokens).
Both are 0 for the baseline and, for the second, for r = 1.
"""
from __future__ import annotations

from effprof.core.errors import ParamError
from effprof.core.lazy import lazy_from, lazy_import
from effprof.core.limits import MAX_STATE, MAX_TOKENS, MAX_WIDTH
from effprof.core.params import Param
from effprof.core.registry import BuildContext, Built, register_component

# Imported when a factory runs, not when the component is listed (effprof/core/lazy.py).
torch = lazy_import("torch")
F = lazy_import("torch.nn.functional")
MRSS, is_power_of_two, pad_to_multiple = lazy_from("effprof.modules.mrss", "MRSS", "is_power_of_two", "pad_to_multiple")
DOWNSAMPLE = ("avg", "strided", "learned")  # = effprof.modules.mrss.DOWNSAMPLE / UPSAMPLE (tests/test_cli_fast.py)
UPSAMPLE = ("nearest", "linear")

SMOOTH_WINDOW = 64  # tokens of the moving average that makes the "smooth" fidelity input
FIDELITY_SEQUENCES = 2

PARAMS = [
    Param("r", int, 2, "Downsampling ratio of the low-resolution branch: a power of two (1, 2, 4, 8, ...).", low=1,
          high=MAX_STATE),
    Param("downsample", str, "avg", "avg (average pooling) | strided (every r-th token) | learned (depthwise "
          "conv, kernel r, stride r, initialised to the average).", choices=DOWNSAMPLE),
    Param("upsample", str, "nearest", "nearest (repeat r times) | linear (F.interpolate, align_corners=False).",
          choices=UPSAMPLE),
    Param("scan_backend", str, "auto", "Selective-scan implementation: auto | ref | triton | mamba-ssm.",
          choices=("auto", "ref", "triton", "mamba-ssm")),
    Param("variant", str, "mrss", "mrss (two branches + gate) | baseline (the full-resolution block alone).",
          choices=("mrss", "baseline")),
    Param("streams", bool, False, "Run the two branches on separate CUDA streams (CUDA only; refused on cpu)."),
    Param("d_model", int, 512, "Model width D.", low=1, high=MAX_WIDTH),
    Param("seq_len", int, 8192, "Sequence length T (tokens); padded to a multiple of r when r does not divide it.",
          low=1, high=MAX_TOKENS),
    Param("d_state", int, 16, "Mamba state size N of each branch.", low=1, high=MAX_STATE),
]


def smooth_noise(batch: int, seq_len: int, d_model: int, device, dtype, generator: torch.Generator) -> torch.Tensor:
    """White noise through a SMOOTH_WINDOW-token moving average, unit variance per channel: (batch, T, D)."""
    noise = torch.randn(batch, d_model, seq_len + SMOOTH_WINDOW - 1, generator=generator)
    smooth = F.avg_pool1d(noise, SMOOTH_WINDOW, stride=1).transpose(1, 2)
    smooth = (smooth - smooth.mean(dim=1, keepdim=True)) / smooth.std(dim=1, keepdim=True).clamp_min(1e-6)
    return smooth.to(device=device, dtype=dtype)


def _rel_err(approx: torch.Tensor, reference: torch.Tensor) -> float:
    approx, reference = approx.double(), reference.double()
    return float((approx - reference).norm() / reference.norm())


@register_component("mrss", unit="seq", params=PARAMS, family="ssm",
                    description="Multi-resolution selective scanning: full + 1/r Mamba branches, gated per token")
def build_mrss(ctx: BuildContext, r, downsample, upsample, scan_backend, variant, streams, d_model, seq_len,
               d_state) -> Built:
    from effprof.modules.mamba import MambaBlock, resolve_conv_backend
    from effprof.ops.selective_scan import resolve_backend

    if not is_power_of_two(r):
        raise ParamError(f"--r: {r} is not a power of two (1, 2, 4, 8, ...)")
    if streams and ctx.device.type != "cuda":
        raise ParamError("--streams true needs a CUDA device (the branches run on separate CUDA streams)")
    if streams and variant == "baseline":
        raise ParamError("--streams true needs --variant mrss (the baseline has a single branch)")
    backend = resolve_backend(scan_backend, ctx.device)
    conv_backend = resolve_conv_backend("auto", ctx.device)
    kw = {"device": ctx.device, "dtype": ctx.dtype}
    if variant == "baseline":
        module = MambaBlock(d_model, d_state=d_state, scan_backend=backend, conv_backend=conv_backend, **kw)
        info = {"padded_tokens": 0, "lowres_tokens": None, "causal": True}
    else:
        module = MRSS(d_model, r, downsample, upsample, d_state=d_state, scan_backend=backend,
                      conv_backend=conv_backend, streams=streams, **kw)
        padded = module.padded_tokens(seq_len)
        info = {"padded_tokens": padded, "lowres_tokens": (seq_len + padded) // r, "causal": module.is_causal}
    info.update(scan_backend=backend, conv_backend=conv_backend, streams=streams)
    module = module.eval()

    def make_inputs(batch: int) -> tuple:
        return (torch.randn(batch, seq_len, d_model, device=ctx.device, dtype=ctx.dtype),)

    def extras(mod, inputs) -> dict:
        if variant == "baseline":
            return {f"{k}_{s}": 0.0 for k in ("fidelity_rel_err", "lowres_rel_err") for s in ("smooth", "rough")}
        generator = torch.Generator().manual_seed(ctx.seed + 7)
        signals = {
            "smooth": smooth_noise(FIDELITY_SEQUENCES, seq_len, d_model, ctx.device, ctx.dtype, generator),
            "rough": torch.randn(FIDELITY_SEQUENCES, seq_len, d_model, generator=generator).to(**kw),
        }
        out = {}
        for name, x in signals.items():
            y_high = mod.high(x)
            out[f"fidelity_rel_err_{name}"] = _rel_err(mod(x), y_high)
            padded = pad_to_multiple(x, mod.ratio)
            same_block_low = mod.up(mod.high(mod.down(padded)), padded.shape[1])[:, :seq_len]
            out[f"lowres_rel_err_{name}"] = _rel_err(same_block_low, y_high)
        return out

    return Built(module, make_inputs, unit="seq", info=info, extras=extras)
