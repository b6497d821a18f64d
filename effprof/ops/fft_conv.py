"""Long causal convolutions per channel: by FFT (full or low-rank kernel), by sparse taps, and directly.

Layout: the input `x` is (batch, length, channels), channels last like a Mamba block's activations; a
kernel is (length, channels), one causal filter per channel:

    y[b, t, d] = sum_{s=0..t} kernel[s, d] · x[b, t - s, d]

The fast paths are `torch.library` custom ops so that `FlopCounterMode` sees one op each and counts it
with the formula registered below (FlopCounterMode has no formula for aten's FFTs and would count 0).

FLOP convention (an estimate, as every FFT count is: the exact count depends on the FFT library's
algorithm):
- a complex FFT of length n costs 5·n·log2(n) real FLOPs (the FFTW benchmark convention); a real FFT
  (rfft) or its inverse (irfft) of length n costs half of that, 2.5·n·log2(n);
- a complex × complex multiply costs 6 FLOPs (4 mul + 2 add);
- a real (m, k) @ (k, n) matmul costs 2·m·k·n (2×MAC, as everywhere in effprof).
The FFT length is n = 2·length (zero padding to twice the length makes the circular convolution causal
and exact); F = n/2 + 1 = length + 1 frequency bins.

The FFT ops compute in float32 (float64 for float64 inputs): cuFFT has no bfloat16 transform, so a
bf16 input is upcast, convolved and cast back. The ops are forward-only (no autograd formula), as
profiling needs. References (`direct_causal_conv`, and `s4d_recurrence` in effprof/modules/ssm_conv.py)
sit beside them and are tested against them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula


def fft_size(length: int) -> int:
    """FFT length used for a causal convolution of `length` samples: 2·length."""
    return 2 * length


def rfft_flops(n: int) -> float:
    """Estimated real FLOPs of one real FFT (or inverse real FFT) of length n: 2.5·n·log2(n)."""
    return 2.5 * n * math.log2(n)


def fft_conv_flops(batch: int, length: int, channels: int, kernel_ffts: int, mixing_rank: int = 0) -> int:
    """FLOPs of one FFT causal convolution, by the convention in the module docstring.

    batch·channels rffts of the input + `kernel_ffts` rffts of kernels + 4·F·rank·channels for a
    low-rank spectrum (a real (channels, rank) @ (rank, 2F) matmul over the real and imaginary parts)
    + 6·batch·F·channels for the complex products + batch·channels irffts.
    """
    n = fft_size(length)
    bins = n // 2 + 1
    transforms = (2 * batch * channels + kernel_ffts) * rfft_flops(n)
    return int(round(transforms + 4 * bins * mixing_rank * channels + 6 * batch * bins * channels))


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _apply_spectrum(x: Tensor, kernel_spectrum: Tensor) -> Tensor:
    """Multiply rfft(x) along time by a (channels, F) spectrum and return to (batch, length, channels)."""
    length = x.shape[1]
    n = fft_size(length)
    x_spectrum = torch.fft.rfft(x.transpose(1, 2).to(_compute_dtype(x)), n=n)  # (B, D, F)
    y = torch.fft.irfft(x_spectrum * kernel_spectrum, n=n)[..., :length]
    return y.transpose(1, 2).to(x.dtype).contiguous()


def _check(x: Tensor, length: int, channels: int, what: str) -> None:
    if x.dim() != 3 or x.shape[1] != length or x.shape[2] != channels:
        raise ValueError(f"{what}: x must be (batch, {length}, {channels}), got {tuple(x.shape)}")


@torch.library.custom_op("effprof::fft_causal_conv", mutates_args=())
def fft_causal_conv(x: Tensor, kernel: Tensor) -> Tensor:
    """Causal per-channel convolution of x (B, L, D) with kernel (L, D) by FFT; returns (B, L, D)."""
    _check(x, kernel.shape[0], kernel.shape[1], "fft_causal_conv")
    n = fft_size(x.shape[1])
    kernel_spectrum = torch.fft.rfft(kernel.t().to(_compute_dtype(x)), n=n)  # (D, F)
    return _apply_spectrum(x, kernel_spectrum)


@fft_causal_conv.register_fake
def _(x, kernel):
    return torch.empty_like(x)


@register_flop_formula(torch.ops.effprof.fft_causal_conv)
def _fft_causal_conv_flops(x_shape, kernel_shape, *args, out_shape=None, **kwargs) -> int:
    batch, length, channels = x_shape
    return fft_conv_flops(batch, length, channels, kernel_ffts=channels)


@torch.library.custom_op("effprof::fft_causal_conv_lowrank", mutates_args=())
def fft_causal_conv_lowrank(x: Tensor, temporal_bases: Tensor, channel_weights: Tensor) -> Tensor:
    """Causal convolution with the rank-r kernel K = temporal_bases @ channel_weights.T, by FFT.

    temporal_bases (L, r), channel_weights (D, r). Because the FFT along time is linear, the kernel's
    spectrum is rfft(bases) @ weights.T: r FFTs and a (D, r) @ (r, 2F) real matmul instead of D FFTs.
    The input's FFTs, the products and the inverse FFTs are those of the full kernel.
    """
    length, rank = temporal_bases.shape
    _check(x, length, channel_weights.shape[0], "fft_causal_conv_lowrank")
    n = fft_size(length)
    dtype = _compute_dtype(x)
    bases_spectrum = torch.fft.rfft(temporal_bases.t().to(dtype), n=n)  # (r, F) complex
    bins = bases_spectrum.shape[-1]
    real_imag = torch.view_as_real(bases_spectrum).reshape(rank, 2 * bins)
    mixed = channel_weights.to(dtype) @ real_imag  # (D, 2F): real and imaginary parts mixed alike
    kernel_spectrum = torch.view_as_complex(mixed.reshape(-1, bins, 2).contiguous())
    return _apply_spectrum(x, kernel_spectrum)


@fft_causal_conv_lowrank.register_fake
def _(x, temporal_bases, channel_weights):
    return torch.empty_like(x)


@register_flop_formula(torch.ops.effprof.fft_causal_conv_lowrank)
def _fft_causal_conv_lowrank_flops(x_shape, bases_shape, weights_shape, *args, out_shape=None, **kwargs) -> int:
    batch, length, channels = x_shape
    rank = bases_shape[1]
    return fft_conv_flops(batch, length, channels, kernel_ffts=rank, mixing_rank=rank)


def sparse_tap_flops(batch: int, length: int, channels: int, taps: int) -> int:
    """FLOPs of `sparse_tap_conv`: one multiply-add per tap, position, channel and batch element."""
    return 2 * batch * length * channels * taps


@torch.library.custom_op("effprof::sparse_tap_conv", mutates_args=())
def sparse_tap_conv(x: Tensor, taps: list[int], weights: Tensor) -> Tensor:
    """Causal convolution whose kernel is nonzero only at the delays `taps` (shared by all channels).

    y[b, t, d] = sum_j weights[j, d] · x[b, t - taps[j], d] (x before time 0 is zero). Applied directly,
    one shifted multiply-add per tap over a zero-padded input: batch·length·channels MACs per tap.
    """
    batch, length, channels = x.shape
    if weights.shape != (len(taps), channels):
        raise ValueError(f"sparse_tap_conv: weights must be ({len(taps)}, {channels}), got {tuple(weights.shape)}")
    dtype = _compute_dtype(x)
    max_delay = max(taps) if taps else 0
    padded = F.pad(x.to(dtype), (0, 0, max_delay, 0))
    y = torch.zeros(batch, length, channels, dtype=dtype, device=x.device)
    w = weights.to(dtype)
    for j, delay in enumerate(taps):
        start = max_delay - delay
        y.addcmul_(padded[:, start:start + length], w[j])
    return y.to(x.dtype)


@sparse_tap_conv.register_fake
def _(x, taps, weights):
    return torch.empty_like(x)


@register_flop_formula(torch.ops.effprof.sparse_tap_conv)
def _sparse_tap_conv_flops(x_shape, taps, weights_shape, *args, out_shape=None, **kwargs) -> int:
    batch, length, channels = x_shape
    return sparse_tap_flops(batch, length, channels, len(taps))


def direct_causal_conv(x: Tensor, kernel: Tensor) -> Tensor:
    """Reference: the causal per-channel convolution computed directly (depthwise conv1d), O(L²)."""
    batch, length, channels = x.shape
    taps = kernel.shape[0]
    weight = kernel.t().flip(-1).unsqueeze(1).to(x.dtype)  # (D, 1, taps): conv1d cross-correlates
    padded = F.pad(x.transpose(1, 2), (taps - 1, 0))
    return F.conv1d(padded, weight, groups=channels).transpose(1, 2)
