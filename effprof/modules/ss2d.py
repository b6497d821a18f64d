"""VMamba's blocks: the 2-D selective scan (SS2D) and the visual state-space block (VSSBlock).

Liu et al. 2024, "VMamba: Visual State Space Model". The layout follows VMamba's
classification/models/vmamba.py (read, not copied) so parameter counts equal the released models:

SS2D, forward type `v05_noz` (VMamba v2, T/S/B):
    in_proj  Linear(d_model, d_inner, bias=False)            (no z branch)
    conv2d   depthwise k×k over d_inner, bias off             -> SiLU
    cross_scan into K sequences; per direction k:
        x_proj_weight[k] (dt_rank + 2N, d_inner), dt_projs_weight[k] (d_inner, dt_rank),
        dt_projs_bias[k], A_logs[k], Ds[k]: one selective scan (delta softplus, D skip)
    cross_merge (sum of the K outputs at their pixels) -> LayerNorm(d_inner) -> out_proj Linear(d_inner, d_model)
SS2D, forward type `v0` (vanilla VMamba): in_proj to 2·d_inner (x and z), conv bias on,
    y = LayerNorm(y) · SiLU(z) before out_proj.

d_inner = ssm_ratio · d_model, dt_rank = ceil(d_model / 16). Every tensor is channel-last (batch, H, W, C)
between blocks; the conv and the scans run channel-first. Where L = H·W is not a multiple of 8, the x and
dt projections multiply channel-last rows (a transposed copy of the sequences) instead of channel-first
columns, whose leading dimension L would send cuBLAS to its alignment-1 kernels (`effprof.ops.layout`). `scan_mode` (effprof.ops.cross_scan) sets
the routes and K: "cross4" (VMamba), "bi2" (a true two-direction scan, K = 2 parameter sets and
sequences), "uni1", or VMamba's own "v052d"/"v051d" (two or one routes, but K = 4 sequences and
parameter sets, as VMamba builds them). The K scans run through effprof's selective scan op, one call
per direction (`selective_scan_directions`), with the backend named in `scan_backend`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from effprof.ops.cross_scan import cross_merge, cross_scan, num_sequences
from effprof.ops.grouped_scan import selective_scan_directions


class SS2D(nn.Module):
    """2-D selective scan: (batch, H, W, d_model) -> same (see the module docstring)."""

    def __init__(self, d_model: int, d_state: int = 1, ssm_ratio: float = 2.0, d_conv: int = 3,
                 conv_bias: bool = False, gated: bool = False, scan_mode: str = "cross4", scan_backend: str = "ref",
                 device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.d_state = d_model, d_state
        self.d_inner = int(ssm_ratio * d_model)
        self.dt_rank = math.ceil(d_model / 16)
        self.gated, self.scan_mode, self.scan_backend = gated, scan_mode, scan_backend
        self.k_group = k = num_sequences(scan_mode)
        d_inner, rank = self.d_inner, self.dt_rank
        self.in_proj = nn.Linear(d_model, d_inner * (2 if gated else 1), bias=False, **factory)
        self.conv2d = nn.Conv2d(d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner,
                                bias=conv_bias, **factory)
        self.x_proj_weight = nn.Parameter(torch.empty(k, rank + 2 * d_state, d_inner, **factory))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d_inner, rank, **factory))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, d_inner, **factory))
        self.A_logs = nn.Parameter(torch.empty(k * d_inner, d_state, **factory))
        self.Ds = nn.Parameter(torch.empty(k * d_inner, **factory))
        self.out_norm = nn.LayerNorm(d_inner, **factory)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False, **factory)
        if self.Ds.device.type != "meta":
            self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1) -> None:
        """Mamba's initialisation (as VMamba's `mamba_init`): S4D-real A, D = 1, dt bias = softplus⁻¹ of a
        log-uniform step in [dt_min, dt_max], projections uniform in ±1/sqrt(fan_in)."""
        d_inner, rank = self.d_inner, self.dt_rank
        nn.init.uniform_(self.x_proj_weight, -d_inner ** -0.5, d_inner ** -0.5)
        nn.init.uniform_(self.dt_projs_weight, -rank ** -0.5, rank ** -0.5)
        dt = torch.exp(torch.rand(self.dt_projs_bias.shape, device=self.Ds.device)
                       * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=1e-4)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        states = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.Ds.device)
        self.A_logs.copy_(torch.log(states).expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        k, d_inner, n, rank = self.k_group, self.d_inner, self.d_state, self.dt_rank
        x = self.in_proj(x)
        if self.gated:
            x, z = x.chunk(2, dim=-1)
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2)))                      # (batch, d_inner, H, W)
        xs = cross_scan(x, self.scan_mode, direction_first=True)            # (K, batch, d_inner, L)
        if xs.shape[-1] % 8 == 0:
            x_dbl = torch.matmul(self.x_proj_weight.unsqueeze(1), xs)       # (K, batch, rank + 2N, L)
            dts, Bs, Cs = torch.split(x_dbl, [rank, n, n], dim=2)
            dts = torch.matmul(self.dt_projs_weight.unsqueeze(1), dts)      # (K, batch, d_inner, L)
        else:  # channel-first GEMMs would have leading dimension L: multiply channel-last rows instead
            x_dbl = torch.matmul(xs.transpose(2, 3).contiguous(), self.x_proj_weight.transpose(1, 2).unsqueeze(1))
            dts, Bs, Cs = (t.transpose(2, 3) for t in torch.split(x_dbl, [rank, n, n], dim=3))
            dts = torch.matmul(dts.transpose(2, 3), self.dt_projs_weight.transpose(1, 2).unsqueeze(1)).transpose(2, 3)
        As = -torch.exp(self.A_logs.float()).view(k, d_inner, n)
        ys = selective_scan_directions(xs, dts, As, Bs, Cs, self.Ds.view(k, d_inner), None,
                                       self.dt_projs_bias, delta_softplus=True, backend=self.scan_backend,
                                       stack=False)
        y = cross_merge(ys, self.scan_mode, height, width)                  # (batch, d_inner, L)
        y = self.out_norm(y.transpose(1, 2).reshape(batch, height, width, d_inner))
        if self.gated:
            y = y * F.silu(z)
        return self.out_proj(y)


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2 (timm's Mlp), channel-last."""

    def __init__(self, dim: int, hidden: int, device=None, dtype=None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, device=device, dtype=dtype)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VSSBlock(nn.Module):
    """x + SS2D(LN(x)), then x + MLP(LN(x)) when mlp_ratio > 0; (batch, H, W, C) -> same."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, device=None, dtype=None, **ss2d):
        super().__init__()
        self.norm = nn.LayerNorm(dim, device=device, dtype=dtype)
        self.op = SS2D(dim, device=device, dtype=dtype, **ss2d)
        self.mlp = None
        if mlp_ratio > 0:
            self.norm2 = nn.LayerNorm(dim, device=device, dtype=dtype)
            self.mlp = Mlp(dim, int(dim * mlp_ratio), device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.op(self.norm(x))
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return x
