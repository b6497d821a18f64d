"""MambaVision's blocks (Hatamizadeh & Kautz, "MambaVision: A Hybrid Mamba-Transformer Vision Backbone",
CVPR 2025), laid out as NVlabs/MambaVision's mambavision/models/mamba_vision.py (read, not copied):

- `MambaVisionMixer`: the symmetric mixer. in_proj (d, d) splits into x and z halves; each half gets its
  own depthwise conv (k 3, no bias, 'same' padding) and SiLU; x goes through a selective scan
  (d_state 8, D skip, no z gate), z does not (the "non-SSM path"); the two are concatenated and
  projected back by out_proj. As in the released code, dt_proj's bias is added twice (once by the
  projection, once as the scan's delta_bias), so checkpoints behave as trained.
- `WindowAttention`: multi-head self-attention (SDPA) with a qkv bias, on windows of tokens.
- `HybridBlock`: x + γ₁·mixer(LN(x)), x + γ₂·MLP(LN(x)), mixer = MambaVisionMixer or attention.
- `ConvBlock`: x + BN(conv(GELU(BN(conv(x))))) (3×3 convs with bias, tanh-approximated GELU).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from effprof.modules.ss2d import Mlp
from effprof.ops.layout import gemm_rows
from effprof.ops.selective_scan import selective_scan


class MambaVisionMixer(nn.Module):
    """(batch, L, d_model) -> same (see the module docstring)."""

    def __init__(self, d_model: int, d_state: int = 8, d_conv: int = 3, expand: int = 1, scan_backend: str = "ref",
                 device=None, dtype=None):
        super().__init__()
        f = {"device": device, "dtype": dtype}
        self.d_inner = int(expand * d_model)
        half = self.d_inner // 2
        self.d_state, self.dt_rank, self.scan_backend = d_state, math.ceil(d_model / 16), scan_backend
        self.in_proj = nn.Linear(d_model, self.d_inner, bias=False, **f)
        self.x_proj = nn.Linear(half, self.dt_rank + 2 * d_state, bias=False, **f)
        self.dt_proj = nn.Linear(self.dt_rank, half, bias=True, **f)
        self.A_log = nn.Parameter(torch.empty(half, d_state, **f))
        self.D = nn.Parameter(torch.empty(half, **f))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False, **f)
        self.conv1d_x = nn.Conv1d(half, half, d_conv, groups=half, bias=False, padding="same", **f)
        self.conv1d_z = nn.Conv1d(half, half, d_conv, groups=half, bias=False, padding="same", **f)
        if self.D.device.type != "meta":
            self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1) -> None:
        """Mamba's initialisation: S4D-real A, D = 1, dt bias = softplus⁻¹ of a log-uniform step."""
        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        dt = torch.exp(torch.rand(self.D.shape, device=self.D.device) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=1e-4)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        states = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.D.device)
        self.A_log.copy_(torch.log(states).expand_as(self.A_log))
        self.D.fill_(1.0)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Channel-leading GEMM operands at any L (`effprof.ops.layout`): x_proj and dt_proj multiply
        (batch·L, channels) rows, out_proj the channel-last concatenation of y and z."""
        x, z = self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)            # (batch, d_inner/2, L) views
        x = F.silu(self.conv1d_x(x))
        z = F.silu(self.conv1d_z(z))
        x_dbl = self.x_proj(gemm_rows(x.transpose(1, 2)))                       # (batch, L, rank + 2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = self.dt_proj(gemm_rows(dt)).transpose(1, 2)                        # (batch, d_inner/2, L)
        A = -torch.exp(self.A_log.float())
        y = selective_scan(x, dt, A, B.transpose(1, 2), C.transpose(1, 2), self.D, None, self.dt_proj.bias,
                           delta_softplus=True, backend=self.scan_backend)
        return self.out_proj(torch.cat([y.transpose(1, 2), z.transpose(1, 2)], dim=-1))


class WindowAttention(nn.Module):
    """Multi-head self-attention over (windows, tokens, dim), fused SDPA."""

    def __init__(self, dim: int, num_heads: int, device=None, dtype=None):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True, device=device, dtype=dtype)
        self.proj = nn.Linear(dim, dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class HybridBlock(nn.Module):
    """x + γ₁·mixer(LN(x)); x + γ₂·MLP(LN(x)); mixer = attention or the MambaVision mixer."""

    def __init__(self, dim: int, num_heads: int, attention: bool, mlp_ratio: float = 4.0,
                 layer_scale: float | None = None, scan_backend: str = "ref", device=None, dtype=None):
        super().__init__()
        f = {"device": device, "dtype": dtype}
        self.norm1 = nn.LayerNorm(dim, **f)
        self.mixer = (WindowAttention(dim, num_heads, **f) if attention
                      else MambaVisionMixer(dim, d_state=8, d_conv=3, expand=1, scan_backend=scan_backend, **f))
        self.norm2 = nn.LayerNorm(dim, **f)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), **f)
        self.gamma_1 = self.gamma_2 = None
        if layer_scale is not None:
            self.gamma_1 = nn.Parameter(torch.full((dim,), float(layer_scale), **f))
            self.gamma_2 = nn.Parameter(torch.full((dim,), float(layer_scale), **f))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = self.mixer(self.norm1(x))
        x = x + (mixed if self.gamma_1 is None else self.gamma_1 * mixed)
        out = self.mlp(self.norm2(x))
        return x + (out if self.gamma_2 is None else self.gamma_2 * out)


class ConvBlock(nn.Module):
    """x + BN(conv3×3(GELU_tanh(BN(conv3×3(x))))) on (batch, C, H, W)."""

    def __init__(self, dim: int, device=None, dtype=None):
        super().__init__()
        f = {"device": device, "dtype": dtype}
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1, **f)
        self.norm1 = nn.BatchNorm2d(dim, eps=1e-5, **f)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1, **f)
        self.norm2 = nn.BatchNorm2d(dim, eps=1e-5, **f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm2(self.conv2(F.gelu(self.norm1(self.conv1(x)), approximate="tanh")))
