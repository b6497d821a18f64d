"""The convolutional view of a diagonal SSM, and its distillation into a low-rank or sparse kernel.

A diagonal state-space model (S4D: Gu, Gupta, Goel, Ré 2022, "On the Parameterization and Initialization
of Diagonal State Space Models") with H = d_state/2 complex modes per channel, discretised by
zero-order hold with step dt, maps an input u to

    h_t = exp(dt·A) ⊙ h_{t-1} + (exp(dt·A) - 1)/A · B · u_t,        y_t = 2·Re(C · h_t)

(the modes come in conjugate pairs, hence d_state/2 stored modes and the factor 2: S4D's reference code).
Unrolled, y = K * u, a causal convolution with the kernel

    K[l, d] = 2·Re( sum_n C[d,n] · (exp(dt_d·A[d,n]) - 1)/A[d,n] · B[d,n] · exp(dt_d·A[d,n]·l) ),

materialised once here as a (length, d_model) matrix (B = 1 as in S4D; the skip term D·u is omitted: it
is a pointwise term outside the kernel). Initialisation: A[n] = -1/2 + iπn (S4D-Lin) or
-1/2 + i(H/π)(H/(2n+1) - 1) (S4D-Inv, the paper's formula with H modes), C ~ complex normal, dt
log-uniform in [1e-3, 1e-1].

Distillation (the issue's "selective kernel distillation"):
- rank r: the truncated SVD K ≈ U_r S_r V_r^T (Eckart-Young: the best rank-r approximation in Frobenius
  norm). Channel d's kernel is sum_j U[:, j]·(S_j V[d, j]): r temporal bases shared by all channels, mixed
  per channel. Stored numbers drop from L·D to r·(L + D + 1). Compute does NOT shrink the same way:
  the convolution is still per channel, so the input's B·D FFTs and inverse FFTs stay; only the kernel's
  spectrum costs r FFTs plus a (D, r) @ (r, 2F) matmul instead of D FFTs (see effprof/ops/fft_conv.py).
  With the full kernel's spectrum cached (inference with frozen weights) the two forwards cost the same;
  the modules here transform the kernel on every call, as an SSM layer does while its parameters change.
- sparse taps k: keep the k delays with the most kernel energy summed over channels (one support shared
  by all channels, so it is applied as k shifted multiply-adds; a structured sparse form) with their
  per-channel weights. Stored numbers: k·D weights + k delays. Direct compute: 2·B·L·D·k FLOPs.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from effprof.ops.fft_conv import fft_causal_conv, fft_causal_conv_lowrank, sparse_tap_conv

S4D_INITS = ("lin", "inv")


def s4d_parameters(d_model: int, d_state: int, init: str = "lin", dt_min: float = 1e-3, dt_max: float = 1e-1,
                   generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Random S4D parameters in float64/complex128 on the CPU: A, C (d_model, d_state/2) complex, dt (d_model,)."""
    if d_state < 2 or d_state % 2:
        raise ValueError(f"d_state must be an even number >= 2 (conjugate pairs), got {d_state}")
    if init not in S4D_INITS:
        raise ValueError(f"init must be one of {S4D_INITS}, got {init!r}")
    modes = d_state // 2
    n = torch.arange(modes, dtype=torch.float64)
    if init == "lin":
        imag = math.pi * n
    else:
        imag = modes / math.pi * (modes / (2 * n + 1) - 1)
    A = torch.complex(torch.full((modes,), -0.5, dtype=torch.float64), imag).expand(d_model, modes).clone()
    C = torch.randn(d_model, modes, dtype=torch.complex128, generator=generator)
    log_dt = torch.rand(d_model, dtype=torch.float64, generator=generator) * (math.log(dt_max) - math.log(dt_min))
    dt = torch.exp(log_dt + math.log(dt_min))
    return {"A": A, "C": C, "dt": dt}


def s4d_kernel(A: Tensor, C: Tensor, dt: Tensor, length: int, channels_per_chunk: int = 32) -> Tensor:
    """The ZOH convolution kernel (length, d_model) in float64, on A's device.

    Computed in chunks of channels: one chunk holds a (chunk, d_state/2, length) complex128 power table.
    """
    d_model = A.shape[0]
    steps = torch.arange(length, dtype=torch.float64, device=A.device)
    kernel = torch.empty(length, d_model, dtype=torch.float64, device=A.device)
    for start in range(0, d_model, channels_per_chunk):
        sl = slice(start, start + channels_per_chunk)
        dtA = dt[sl, None] * A[sl]                                   # (c, H)
        coef = C[sl] * (torch.exp(dtA) - 1) / A[sl]                   # C · B̄ with B = 1
        powers = torch.exp(dtA[..., None] * steps)                   # (c, H, L)
        kernel[:, sl] = 2 * torch.einsum("ch,chl->lc", coef, powers).real
    return kernel


def s4d_recurrence(u: Tensor, A: Tensor, C: Tensor, dt: Tensor) -> Tensor:
    """Reference: run the discretised SSM step by step on u (batch, length, d_model); complex128 state."""
    dA = torch.exp(dt[:, None] * A)                                   # (D, H)
    dB = (dA - 1) / A
    h = torch.zeros(u.shape[0], *A.shape, dtype=torch.complex128, device=u.device)
    ys = []
    for t in range(u.shape[1]):
        h = dA * h + dB * u[:, t, :, None].to(torch.complex128)
        ys.append(2 * (C * h).sum(-1).real)
    return torch.stack(ys, dim=1).to(u.dtype)


def svd_factors(kernel: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    """Truncated SVD of a (length, d_model) kernel: U (length, r), S (r,), V (d_model, r), in the kernel's dtype."""
    if not 1 <= rank <= min(kernel.shape):
        raise ValueError(f"rank must be in [1, {min(kernel.shape)}] for a {tuple(kernel.shape)} kernel, got {rank}")
    U, S, Vh = torch.linalg.svd(kernel, full_matrices=False)
    return U[:, :rank].contiguous(), S[:rank].contiguous(), Vh[:rank].t().contiguous()


def lowrank_kernel_rel_error(singular_values: Tensor, rank: int) -> float:
    """‖K - K_r‖_F / ‖K‖_F from the singular values (Eckart-Young): sqrt(sum of the dropped σ²) / sqrt(sum σ²)."""
    energy = singular_values.double().pow(2)
    return float((energy[rank:].sum() / energy.sum()).sqrt())


def top_energy_taps(kernel: Tensor, taps: int) -> tuple[list[int], Tensor]:
    """The `taps` delays with the largest energy sum_d K[l, d]², ascending, and their weights (taps, d_model)."""
    if not 1 <= taps <= kernel.shape[0]:
        raise ValueError(f"sparse taps must be in [1, {kernel.shape[0]}], got {taps}")
    energy = kernel.double().pow(2).sum(dim=1)
    delays = torch.topk(energy, taps).indices.sort().values
    return [int(d) for d in delays.tolist()], kernel[delays].contiguous()


class SSMConv(nn.Module):
    """Causal long convolution with a full materialised kernel (length, d_model), applied by FFT.

    forward: x (batch, length, d_model) -> (batch, length, d_model), same dtype as x. The kernel is an
    nn.Parameter (counted in params) kept in float32 whatever the run dtype (see effprof/ops/fft_conv.py).
    """

    kernel_form = "full"

    def __init__(self, kernel: Tensor):
        super().__init__()
        self.kernel = nn.Parameter(kernel.float().contiguous())

    @property
    def params_stored(self) -> int:
        return self.kernel.numel()

    def materialised_kernel(self) -> Tensor:
        return self.kernel

    def forward(self, x: Tensor) -> Tensor:
        return fft_causal_conv(x, self.kernel)


class LowRankSSMConv(nn.Module):
    """The rank-r distilled kernel U diag(S) V^T, applied by FFT with r kernel transforms (see module docstring)."""

    kernel_form = "lowrank"

    def __init__(self, temporal_bases: Tensor, singular_values: Tensor, channel_factors: Tensor):
        super().__init__()
        self.temporal_bases = nn.Parameter(temporal_bases.float().contiguous())    # (L, r)
        self.singular_values = nn.Parameter(singular_values.float().contiguous())  # (r,)
        self.channel_factors = nn.Parameter(channel_factors.float().contiguous())  # (D, r)

    @classmethod
    def distill(cls, kernel: Tensor, rank: int) -> "LowRankSSMConv":
        """Truncated SVD of `kernel` (computed in float64)."""
        return cls(*svd_factors(kernel.double(), rank))

    @property
    def rank(self) -> int:
        return self.singular_values.numel()

    @property
    def params_stored(self) -> int:
        return self.temporal_bases.numel() + self.singular_values.numel() + self.channel_factors.numel()

    def materialised_kernel(self) -> Tensor:
        return (self.temporal_bases * self.singular_values) @ self.channel_factors.t()

    def forward(self, x: Tensor) -> Tensor:
        # S·V is an elementwise product of D·r numbers: not counted, like every elementwise op.
        return fft_causal_conv_lowrank(x, self.temporal_bases, self.channel_factors * self.singular_values)


class SparseTapSSMConv(nn.Module):
    """The kernel restricted to its k highest-energy delays (shared by all channels), applied directly."""

    kernel_form = "sparse"

    def __init__(self, delays: list[int], weights: Tensor):
        super().__init__()
        self.delays = list(delays)
        self.weights = nn.Parameter(weights.float().contiguous())  # (k, D)

    @classmethod
    def distill(cls, kernel: Tensor, taps: int) -> "SparseTapSSMConv":
        return cls(*top_energy_taps(kernel, taps))

    @property
    def params_stored(self) -> int:
        return self.weights.numel() + len(self.delays)

    def materialised_kernel(self, length: int) -> Tensor:
        kernel = torch.zeros(length, self.weights.shape[1], dtype=self.weights.dtype, device=self.weights.device)
        kernel[self.delays] = self.weights
        return kernel

    def forward(self, x: Tensor) -> Tensor:
        return sparse_tap_conv(x, self.delays, self.weights)


def relative_error(approx: Tensor, reference: Tensor) -> float:
    """‖approx − reference‖ / ‖reference‖ (Frobenius / L2 over all elements), in float64."""
    approx, reference = approx.detach().double(), reference.detach().double()
    return float((approx - reference).norm() / reference.norm())
