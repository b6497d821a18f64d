"""Mamba (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces"): the block,
the language model and the decoding cache, in the layout of the `mamba-ssm` package.

- `MambaBlock` is `mamba_ssm.modules.mamba_simple.Mamba` (Fig. 3 of the paper): in_proj to x and gate z,
  causal depthwise conv1d + SiLU on x, x_proj to (dt, B, C), dt_proj, the selective scan with D skip and
  SiLU(z) gate fused, out_proj. Parameter names and shapes are mamba-ssm's, so its state dicts load as is.
- `MambaLM` is `mamba_ssm.models.mixer_seq_simple.MambaLMHeadModel`: embedding, n_layer pre-norm residual
  blocks (`norm` = RMSNorm, `mixer` = MambaBlock, residual kept in fp32), `norm_f`, and an `lm_head` tied to
  the embedding. With the triton decode backend each residual add + RMSNorm (and the final one) runs as the one
  fused kernel of `effprof.ops.mamba_decode.add_rms_norm`, in prefill as in decoding (mamba-ssm's fused
  add+norm does the same); with "ref", as separate ops. State-dict keys `backbone.embedding.weight`,
  `backbone.layers.{i}.mixer.*`, `backbone.layers.{i}.norm.weight`, `backbone.norm_f.weight`, `lm_head.weight`.
- Decoding keeps per layer a conv state (batch, d_inner, d_conv) in the model dtype and an SSM state
  (batch, d_inner, d_state) in fp32 (mamba-ssm keeps the latter in the model dtype; fp32 is what the
  effprof state-update op takes): constant memory whatever the context length.

The causal depthwise conv runs through `effprof.ops.causal_conv1d` with `conv_backend` (ref | triton |
causal-conv1d), chosen explicitly and reported. A decoding step runs through `effprof.ops.mamba_decode` with
`decode_backend`: "ref" = the ops one by one (conv and scan through their own backends), "triton" = the fused
step (two kernels between in_proj and out_proj) and a fused residual add + RMSNorm between blocks.
The scan runs through `effprof.ops.selective_scan` with `scan_backend` (ref | triton | mamba-ssm).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from effprof.core.errors import UsageError
from effprof.ops.causal_conv1d import (CONV_BACKENDS, causal_conv1d, causal_conv1d_ref,  # noqa: F401 (re-exported)
                                       causal_conv1d_update, causal_conv1d_update_ref, resolve_conv_backend)
from effprof.ops.layout import gemm_rows, time_contiguous_pair
from effprof.ops.mamba_decode import (add_rms_norm, fuse_out_proj, mamba_decode_step, mamba_lm_decode_step_triton,
                                      norm_in_proj, use_layer_decode)
from effprof.ops.selective_scan import selective_scan, selective_state_update

# ---------------------------------------------------------------------------------------------------
# The block
# ---------------------------------------------------------------------------------------------------
@dataclass
class MambaLayerState:
    """Decoding state of one block: conv_state (batch, d_inner, d_conv) model dtype, ssm_state
    (batch, d_inner, d_state) fp32."""

    conv_state: torch.Tensor
    ssm_state: torch.Tensor

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.conv_state, self.ssm_state))


class MambaBlock(nn.Module):
    """mamba-ssm's `Mamba` mixer: (batch, L, d_model) -> (batch, L, d_model). d_inner = expand·d_model,
    dt_rank "auto" = ceil(d_model / 16). A_log and D are fp32 whatever `dtype` (as in mamba-ssm)."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank: int | str = "auto",
                 conv_bias: bool = True, bias: bool = False, scan_backend: str = "ref", conv_backend: str = "ref",
                 decode_backend: str = "ref", dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.scan_backend, self.conv_backend, self.decode_backend = scan_backend, conv_backend, decode_backend
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **kw)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1,
                                bias=conv_bias, **kw)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **kw)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **kw)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state, device=device, dtype=torch.float32))
        self.D = nn.Parameter(torch.empty(self.d_inner, device=device, dtype=torch.float32))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **kw)
        self.reset_ssm_parameters(dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float, dt_max: float, dt_init_floor: float) -> None:
        """mamba-ssm's init: S4D-real A = -(1..N), D = 1, dt_proj weight U(±dt_rank^-0.5) and bias =
        softplus⁻¹(dt) with dt log-uniform in [dt_min, dt_max] (paper §3.6 and Appendix)."""
        std = self.dt_rank ** -0.5
        self.dt_proj.weight.uniform_(-std, std)
        device = self.dt_proj.bias.device
        dt = torch.exp(torch.rand(self.d_inner, device=device) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=device)
        self.A_log.copy_(torch.log(A).expand(self.d_inner, -1))
        self.D.fill_(1.0)

    def allocate_state(self, batch: int, device=None) -> MambaLayerState:
        device = device or self.in_proj.weight.device
        return MambaLayerState(
            torch.zeros(batch, self.d_inner, self.d_conv, device=device, dtype=self.conv1d.weight.dtype),
            torch.zeros(batch, self.d_inner, self.d_state, device=device, dtype=torch.float32))

    def _ssm_inputs(self, x_dbl: torch.Tensor):
        return torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)

    def _A(self) -> torch.Tensor:
        """A = -exp(A_log), (d_inner, d_state) float32. Where no gradient can flow to A_log (inference), kept
        between calls for as long as A_log is the same tensor, unchanged (its storage and version counter; a
        write through `.data` bypasses the counter and is not seen): two elementwise kernels less per layer and
        forward. Recomputed while a CUDA graph is being captured (a tensor made during a capture belongs to the
        graph's memory pool), under torch.compile (which fuses it, and would break its graph on the cache's
        bookkeeping), and where A_log is an inference tensor (a model built under `torch.inference_mode()`:
        such a tensor has no version counter, so a change in place could not be seen)."""
        A_log = self.A_log
        if (torch.is_grad_enabled() and A_log.requires_grad) or torch.compiler.is_compiling() \
                or A_log.is_inference():
            return -torch.exp(A_log.float())
        key = (A_log.data_ptr(), A_log._version)
        if getattr(self, "_A_key", None) != key:
            if A_log.is_cuda and torch.cuda.is_current_stream_capturing():
                return -torch.exp(A_log.float())
            with torch.no_grad():
                self._A_cached = -torch.exp(A_log.float())
            self._A_key = key
        return self._A_cached

    def _delta_bias(self) -> torch.Tensor:
        """dt_proj's bias as the scan takes it: as is for the triton kernels (they read it in any float dtype:
        no copy kernel per layer), float32 for the others (mamba-ssm's CUDA kernel requires it)."""
        bias = self.dt_proj.bias
        return bias if self.scan_backend == "triton" and bias.is_cuda else bias.float()

    def _scan_B_C(self, B: torch.Tensor, C: torch.Tensor):
        """B and C (batch, L, d_state), as `_ssm_inputs` split them, in the scan's (batch, d_state, L). The triton
        scan reads them time-contiguous: at batch 1, where they are adjacent columns of one tensor (x_proj's
        output, or what a subclass's `_ssm_inputs` made of it), one copy gives both (the scan would otherwise
        copy B and C one by one: two kernels); else the strided views (the scan copies them)."""
        if self.scan_backend == "triton" and B.shape[0] == 1 and B.is_cuda:
            both = time_contiguous_pair(B, C)
            if both is not None:
                return both
        return B.transpose(1, 2), C.transpose(1, 2)

    def forward(self, hidden_states: torch.Tensor, state: MambaLayerState | None = None) -> torch.Tensor:
        """hidden_states (batch, L, d_model) -> (batch, L, d_model). With `state`, also writes the conv and
        SSM states after the last step into it (prefill before decoding).

        Channel-last throughout: in_proj, x_proj, dt_proj and out_proj each multiply (batch·L, channels)
        row-major operands, whose leading dimension is a channel count (a multiple of 8 for every
        released size) whatever L is; the conv and the scan read the (batch, channels, L) views of those
        buffers (`effprof.ops.layout`) and write their outputs in the same layout. (mamba-ssm computes in_proj
        as W @ xᵀ, channels-first, whose output and out_proj's input have leading dimension batch·L: at
        L = 793 cuBLAS then runs alignment-1 kernels at a few times the cost; see the diagnostics note
        benchmarks/diagnostics/mamba_prefill_layout.md.)"""
        xz = F.linear(hidden_states, self.in_proj.weight, self.in_proj.bias)    # (batch, L, 2·d_inner)
        x, z = xz.transpose(1, 2).chunk(2, dim=1)                             # (batch, d_inner, L) views
        # with a state to fill, the conv and the scan write it themselves (the last d_conv inputs; the last
        # SSM state): no copy kernels per layer
        x = causal_conv1d(x, self.conv1d.weight.squeeze(1), self.conv1d.bias, "silu", self.conv_backend,
                          state_out=None if state is None else state.conv_state)
        x_rows = gemm_rows(x.transpose(1, 2))                                 # (batch, L, d_inner)
        x_dbl = F.linear(x_rows, self.x_proj.weight)
        dt, B, C = self._ssm_inputs(x_dbl)                                    # (batch, L, dt_rank / N / N)
        delta = F.linear(gemm_rows(dt), self.dt_proj.weight)                  # (batch, L, d_inner)
        B, C = self._scan_B_C(B, C)                                           # (batch, N, L)
        y = selective_scan(x_rows.transpose(1, 2), delta.transpose(1, 2), self._A(), B, C,
                           self.D.float(), z=z, delta_bias=self._delta_bias(), delta_softplus=True,
                           backend=self.scan_backend, state_out=None if state is None else state.ssm_state)
        return F.linear(gemm_rows(y.transpose(1, 2)), self.out_proj.weight, self.out_proj.bias)

    def step(self, hidden_states: torch.Tensor, state: MambaLayerState) -> torch.Tensor:
        """One decoding step: hidden_states (batch, 1, d_model) -> (batch, 1, d_model); `state` updated in place."""
        xz = F.linear(hidden_states.squeeze(1), self.in_proj.weight, self.in_proj.bias)   # (batch, 2·d_inner)
        return self._step_xz(xz, state)

    def step_from_residual(self, hidden_states, residual, norm: "RMSNorm", state: MambaLayerState):
        """The residual block's decoding step with the residual add and `norm` fused into in_proj
        (`decode_backend` triton): returns (out (batch, 1, d_model), residual' float32). out is float32 (not
        yet rounded to the model dtype) where the fused step also did out_proj (`fuse_out_proj`)."""
        xz, residual = norm_in_proj(hidden_states.squeeze(1), None if residual is None else residual.squeeze(1),
                                    norm.weight, norm.eps, self.in_proj.weight, self.decode_backend)
        fused_out = self.out_proj.bias is None and fuse_out_proj(xz.shape[0], self.out_proj.weight)
        return self._step_xz(xz, state, fused_out), residual.unsqueeze(1)

    @property
    def fused_decode(self) -> bool:
        """Whether step() runs the fused triton step: `decode_backend` triton, unless a subclass changes the
        step's math between ops (tensor parallelism sums x_proj's and out_proj's partials across ranks)."""
        return (self.decode_backend == "triton" and type(self).step is MambaBlock.step
                and type(self)._ssm_inputs is MambaBlock._ssm_inputs)

    def _step_xz(self, xz: torch.Tensor, state: MambaLayerState, fused_out: bool = False) -> torch.Tensor:
        x, z = xz.chunk(2, dim=-1)
        if self.fused_decode:
            y = mamba_decode_step(x, z, state.conv_state, state.ssm_state, self.conv1d.weight.squeeze(1),
                                  self.conv1d.bias, self.x_proj.weight, self.dt_proj.weight, self.dt_proj.bias,
                                  self.A_log, self.D, "triton",
                                  out_proj_weight=self.out_proj.weight if fused_out else None)
            return (y if fused_out else F.linear(y, self.out_proj.weight, self.out_proj.bias)).unsqueeze(1)
        # op by op (`mamba_decode_step_ref`'s math, through self._ssm_inputs, which subclasses may extend)
        x = causal_conv1d_update(x, state.conv_state, self.conv1d.weight.squeeze(1), self.conv1d.bias, "silu",
                                 self.conv_backend).to(z.dtype)
        dt, B, C = self._ssm_inputs(F.linear(x, self.x_proj.weight))
        dt = F.linear(dt, self.dt_proj.weight)
        A = -torch.exp(self.A_log.float())
        y = selective_state_update(state.ssm_state, x, dt, A, B, C, self.D.float(), z=z,
                                   dt_bias=self.dt_proj.bias.float(), dt_softplus=True, backend=self.scan_backend)
        return F.linear(y, self.out_proj.weight, self.out_proj.bias).unsqueeze(1)


# ---------------------------------------------------------------------------------------------------
# The language model
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MambaLMConfig:
    """Architecture of a Mamba LM (mamba-ssm's MambaConfig, Mamba-1 layers, RMSNorm, no MLP or attention)."""

    d_model: int
    n_layer: int
    vocab_size: int = 50277
    pad_vocab_size_multiple: int = 8
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | str = "auto"
    conv_bias: bool = True
    bias: bool = False
    norm_eps: float = 1e-5
    residual_in_fp32: bool = True
    tie_embeddings: bool = True

    def checked(self, where: str) -> "MambaLMConfig":
        """Refuse a config whose values have the wrong type or an impossible size, in one line."""
        from effprof.core.errors import CheckpointError
        from effprof.core.limits import MAX_LAYERS, MAX_STATE, MAX_WIDTH

        sizes = {"d_model": MAX_WIDTH, "n_layer": MAX_LAYERS, "vocab_size": 2**22, "pad_vocab_size_multiple": 2**16,
                 "d_state": MAX_STATE, "d_conv": MAX_STATE, "expand": MAX_STATE}
        for name, high in sizes.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise CheckpointError(f"{where}: {name} is {value!r}, not an int")
            if not 1 <= value <= high:
                raise CheckpointError(f"{where}: {name} = {value} is outside [1, {high}]")
        if self.dt_rank != "auto" and (not isinstance(self.dt_rank, int) or isinstance(self.dt_rank, bool)
                                       or not 1 <= self.dt_rank <= MAX_WIDTH):
            raise CheckpointError(f"{where}: dt_rank is {self.dt_rank!r}, not 'auto' or an int in [1, {MAX_WIDTH}]")
        for name in ("conv_bias", "bias", "residual_in_fp32", "tie_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise CheckpointError(f"{where}: {name} is {getattr(self, name)!r}, not true or false")
        eps = self.norm_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
            raise CheckpointError(f"{where}: norm_eps is {eps!r}, not a number in (0, 1)")
        return self

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return self.vocab_size + (-self.vocab_size) % m

    @classmethod
    def from_checkpoint_config(cls, doc: dict[str, Any], where: str = "config.json") -> "MambaLMConfig":
        """Read mamba-ssm's config.json (d_model, n_layer, ssm_cfg, ...) or transformers' MambaConfig
        (hidden_size, num_hidden_layers, state_size, ...). Refuses what this model does not implement."""
        missing = [k for k in ("num_hidden_layers", "vocab_size") if k not in doc] if "hidden_size" in doc else []
        if missing:
            raise UsageError(f"{where}: not a transformers MambaConfig (missing {', '.join(missing)})")
        return cls._from_doc(doc, where).checked(where)

    @classmethod
    def _from_doc(cls, doc: dict[str, Any], where: str) -> "MambaLMConfig":
        if "hidden_size" in doc:  # transformers' MambaConfig: vocab already padded
            return cls(d_model=doc["hidden_size"], n_layer=doc["num_hidden_layers"], vocab_size=doc["vocab_size"],
                       pad_vocab_size_multiple=1, d_state=doc.get("state_size", 16), d_conv=doc.get("conv_kernel", 4),
                       expand=doc.get("expand", 2), dt_rank=doc.get("time_step_rank", "auto"),
                       conv_bias=doc.get("use_conv_bias", True), bias=doc.get("use_bias", False),
                       norm_eps=doc.get("layer_norm_epsilon", 1e-5),
                       residual_in_fp32=doc.get("residual_in_fp32", True),
                       tie_embeddings=doc.get("tie_word_embeddings", True))
        missing = [k for k in ("d_model", "n_layer", "vocab_size") if k not in doc]
        if missing:
            raise UsageError(f"{where}: not a mamba-ssm config (missing {', '.join(missing)})")
        if not isinstance(doc.get("ssm_cfg") or {}, dict):
            raise UsageError(f"{where}: ssm_cfg is {doc['ssm_cfg']!r}, not a mapping")
        ssm = dict(doc.get("ssm_cfg") or {})
        if ssm.get("layer", "Mamba1") != "Mamba1":
            raise UsageError(f"{where}: {ssm['layer']} layers are not supported (Mamba-1 only)")
        if doc.get("d_intermediate", 0) or doc.get("attn_layer_idx"):
            raise UsageError(f"{where}: MLP or attention layers (d_intermediate, attn_layer_idx) are not supported")
        if not doc.get("rms_norm", True):
            raise UsageError(f"{where}: rms_norm=false (LayerNorm) is not supported")
        return cls(d_model=doc["d_model"], n_layer=doc["n_layer"], vocab_size=doc["vocab_size"],
                   pad_vocab_size_multiple=doc.get("pad_vocab_size_multiple", 8), d_state=ssm.get("d_state", 16),
                   d_conv=ssm.get("d_conv", 4), expand=ssm.get("expand", 2), dt_rank=ssm.get("dt_rank", "auto"),
                   conv_bias=ssm.get("conv_bias", True), bias=ssm.get("bias", False),
                   residual_in_fp32=doc.get("residual_in_fp32", True),
                   tie_embeddings=doc.get("tie_embeddings", True))


# The released state-spaces/mamba-* checkpoints (Gu & Dao 2023, Table 12): d_model, n_layer; vocab 50277 -> 50280.
MAMBA_PRESETS = {
    "130m": MambaLMConfig(768, 24), "370m": MambaLMConfig(1024, 48), "790m": MambaLMConfig(1536, 48),
    "1.4b": MambaLMConfig(2048, 48), "2.8b": MambaLMConfig(2560, 64),
}


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x²) + eps) · weight, computed in fp32, returned in x's dtype."""

    def __init__(self, d: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d, device=device, dtype=dtype))

    def forward(self, x):
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


class MambaResidualBlock(nn.Module):
    """mamba-ssm's `Block`: residual += previous output; hidden = mixer(norm(residual)); residual in fp32."""

    def __init__(self, config: MambaLMConfig, mixer: MambaBlock, device=None, dtype=None):
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = RMSNorm(config.d_model, config.norm_eps, device=device, dtype=dtype)
        self.mixer = mixer

    def forward(self, hidden_states, residual, state: MambaLayerState | None = None, step: bool = False):
        if step and self.mixer.fused_decode and self.residual_in_fp32 and self.mixer.in_proj.bias is None:
            return self.mixer.step_from_residual(hidden_states, residual, self.norm, state)
        if self.residual_in_fp32 and self.mixer.decode_backend == "triton":
            # the residual add and the RMSNorm as one kernel (`add_rms_norm`, the same math as the lines below)
            hidden_states, residual = add_rms_norm(hidden_states, residual, self.norm.weight, self.norm.eps, "triton")
        else:
            residual = hidden_states if residual is None else hidden_states + residual
            hidden_states = self.norm(residual.to(self.norm.weight.dtype))
            if self.residual_in_fp32:
                residual = residual.float()
        out = self.mixer.step(hidden_states, state) if step else self.mixer(hidden_states, state)
        return out, residual


@dataclass
class MambaCache:
    """Decoding cache of a MambaLM: one MambaLayerState per layer; its size does not depend on context length."""

    layers: list[MambaLayerState]
    seqlen_offset: int = 0

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers)


class MambaBackbone(nn.Module):
    """mamba-ssm's `MixerModel`: input ids (batch, L) -> final-normed hidden states (batch, L, d_model)."""

    def __init__(self, config: MambaLMConfig, scan_backend="ref", conv_backend="ref", device=None, dtype=None,
                 decode_backend="ref"):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.embedding = nn.Embedding(config.padded_vocab_size, config.d_model, **kw)
        self.layers = nn.ModuleList(
            MambaResidualBlock(config, MambaBlock(config.d_model, config.d_state, config.d_conv, config.expand,
                                                  config.dt_rank, config.conv_bias, config.bias, scan_backend,
                                                  conv_backend, decode_backend, **kw), **kw)
            for _ in range(config.n_layer))
        self.norm_f = RMSNorm(config.d_model, config.norm_eps, **kw)

    def forward(self, input_ids, cache: MambaCache | None = None, step: bool = False):
        """`input_ids` (batch, L) token ids, or (batch, L, d_model) embeddings already looked up (a VLM's
        projected image features and prompt)."""
        embedded = input_ids.is_floating_point()
        hidden_states, residual = (input_ids if embedded else self.embedding(input_ids)), None
        for i, layer in enumerate(self.layers):
            hidden_states, residual = layer(hidden_states, residual, None if cache is None else cache.layers[i], step)
        if cache is not None:
            cache.seqlen_offset += input_ids.shape[1]
        if residual.dtype == torch.float32 and (self.layers[0].mixer.fused_decode if step else
                                                self.layers[0].mixer.decode_backend == "triton"):
            return add_rms_norm(hidden_states, residual, self.norm_f.weight, self.norm_f.eps,
                                self.layers[0].mixer.decode_backend)[0]
        residual = hidden_states + residual
        return self.norm_f(residual.to(self.norm_f.weight.dtype))

    def step(self, input_ids, cache: MambaCache, head_weight=None):
        """One token per sequence: input_ids (batch, 1) -> (batch, 1, d_model); `cache` updated in place.
        With the fused triton step at small batch, the whole step is the per-layer kernels of
        `mamba_lm_decode_step_triton` (same math); `head_weight`, the LM head's weight that reads the result
        next, may be prefetched into L2 by them."""
        if not self._per_layer_kernels(input_ids):
            return self.forward(input_ids, cache, step=True)
        mixers = [layer.mixer for layer in self.layers]
        weights = [{"in_proj_weight": m.in_proj.weight, "conv_weight": m.conv1d.weight.squeeze(1),
                    "conv_bias": m.conv1d.bias, "x_proj_weight": m.x_proj.weight, "dt_proj_weight": m.dt_proj.weight,
                    "dt_proj_bias": m.dt_proj.bias, "A_log": m.A_log, "D": m.D, "out_proj_weight": m.out_proj.weight}
                   for m in mixers]
        out = mamba_lm_decode_step_triton(input_ids.reshape(-1), self.embedding.weight,
                                          [layer.norm.weight for layer in self.layers], weights,
                                          [(s.conv_state, s.ssm_state) for s in cache.layers], self.norm_f.weight,
                                          self.norm_f.eps, head_weight)
        cache.seqlen_offset += 1
        return out.unsqueeze(1)

    def _per_layer_kernels(self, input_ids) -> bool:
        return (not input_ids.is_floating_point() and input_ids.shape[1] == 1
                and all(layer.mixer.fused_decode and layer.residual_in_fp32 and layer.mixer.in_proj.bias is None
                        and layer.mixer.out_proj.bias is None and layer.norm.eps == self.norm_f.eps
                        for layer in self.layers)
                and use_layer_decode(input_ids.shape[0], self.embedding.embedding_dim))


class MambaLM(nn.Module):
    """mamba-ssm's `MambaLMHeadModel`: input ids (batch, L) -> logits (batch, L, padded vocab)."""

    def __init__(self, config: MambaLMConfig, scan_backend="ref", conv_backend="ref", device=None, dtype=None,
                 decode_backend="ref"):
        super().__init__()
        self.config = config
        self.backbone = MambaBackbone(config, scan_backend, conv_backend, device, dtype, decode_backend)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False, device=device, dtype=dtype)
        with torch.no_grad():  # mamba-ssm's _init_weights: embedding N(0, 0.02), out_proj scaled by 1/sqrt(n_layer)
            nn.init.normal_(self.backbone.embedding.weight, std=0.02)
            for layer in self.backbone.layers:
                layer.mixer.out_proj.weight.div_(math.sqrt(config.n_layer))
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    @property
    def mixers(self) -> list[MambaBlock]:
        return [layer.mixer for layer in self.backbone.layers]

    def set_backends(self, scan_backend: str | None = None, conv_backend: str | None = None,
                     decode_backend: str | None = None) -> None:
        for mixer in self.mixers:
            mixer.scan_backend = scan_backend or mixer.scan_backend
            mixer.conv_backend = conv_backend or mixer.conv_backend
            mixer.decode_backend = decode_backend or mixer.decode_backend

    def allocate_cache(self, batch: int, device=None) -> MambaCache:
        return MambaCache([mixer.allocate_state(batch, device) for mixer in self.mixers])

    def forward(self, input_ids, cache: MambaCache | None = None, num_last_tokens: int = 0):
        """Logits (batch, L, vocab), or of the last `num_last_tokens` positions only (generation needs 1)."""
        hidden_states = self.backbone(input_ids, cache)
        if num_last_tokens > 0:
            hidden_states = hidden_states[:, -num_last_tokens:]
        return self.lm_head(hidden_states)

    def step(self, input_ids, cache: MambaCache):
        """Logits (batch, 1, vocab) of one new token per sequence; `cache` updated in place."""
        return self.lm_head(self.backbone.step(input_ids, cache, self.lm_head.weight))


def load_mamba_lm(directory: Path, scan_backend="ref", conv_backend="ref", device=None, dtype=None,
                  decode_backend="ref") -> MambaLM:
    """Build a MambaLM from a checkpoint directory as mamba-ssm's `save_pretrained` writes it (config.json +
    pytorch_model.bin) or as transformers saves MambaForCausalLM (model.safetensors, `backbone.embeddings`)."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise UsageError(f"--pretrained {directory}: no config.json")
    from effprof.core.pretrained import load_state_dict, read_config

    config = MambaLMConfig.from_checkpoint_config(read_config(config_path), str(config_path))
    weights = directory / "model.safetensors"
    state = load_state_dict(weights if weights.is_file() else directory / "pytorch_model.bin")
    state = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in state.items()}
    model = MambaLM(config, scan_backend, conv_backend, device=device, dtype=dtype, decode_backend=decode_backend)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_embeddings)]
    if missing or unexpected:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise UsageError(f"--pretrained {directory}: state dict does not match the Mamba layout ({what}, "
                         f"{len(missing)} missing, {len(unexpected)} unexpected)")
    return model
