"""Component `ssm-conv`: an S4D kernel as a long FFT convolution, full or distilled (low rank, sparse taps).

One row = one causal per-channel convolution of a (batch, length, d_model) input. `--rank none` keeps the
full materialised kernel (length × d_model numbers); `--rank r` applies its rank-r truncated SVD;
`--sparse-taps k` keeps its k highest-energy delays. The record gets `params_stored`, the kernel's
relative Frobenius error `rel_err_kernel`, and `rel_err` = ‖y_r − y_full‖/‖y_full‖ on the row's first
input set, both outputs computed in float32 from the same input (so the figure measures the distillation,
not the run dtype). FLOPs come from the custom ops' registered formulas (FFT convention in
effprof/ops/fft_conv.py); `conv_gflops` repeats the convolution's own count (FFT or direct) for reference.

The kernel weights stay in float32 whatever `--dtype` says (the FFT runs in float32: cuFFT has no bf16
transform); inputs and outputs are in the run dtype. `kernel_dtype` records this.
"""
from __future__ import annotations

from effprof.core.errors import ParamError
from effprof.core.lazy import lazy_from, lazy_import
from effprof.core.limits import MAX_STATE, MAX_TOKENS, MAX_WIDTH
from effprof.core.params import Param
from effprof.core.registry import BuildContext, Built, register_component

# Imported when a factory runs, not when the component is listed (effprof/core/lazy.py).
torch = lazy_import("torch")
(LowRankSSMConv, SparseTapSSMConv, SSMConv, lowrank_kernel_rel_error, relative_error, s4d_kernel,
 s4d_parameters) = lazy_from("effprof.modules.ssm_conv", "LowRankSSMConv", "SparseTapSSMConv", "SSMConv",
                             "lowrank_kernel_rel_error", "relative_error", "s4d_kernel", "s4d_parameters")
fft_causal_conv, fft_conv_flops, sparse_tap_flops = lazy_from("effprof.ops.fft_conv", "fft_causal_conv",
                                                              "fft_conv_flops", "sparse_tap_flops")
S4D_INITS = ("lin", "inv")  # = effprof.modules.ssm_conv.S4D_INITS (tests/test_cli_fast.py)

PARAMS = [
    Param("rank", int, None, "Rank of the distilled kernel (truncated SVD); none (or full) = the full kernel.",
          low=1, high=MAX_WIDTH, optional=True, none_aliases=("full",)),
    Param("sparse_taps", int, None, "Keep only this many highest-energy delays (shared by all channels), "
          "applied directly; none = off. Exclusive with --rank.", low=1, high=MAX_TOKENS,
          optional=True),
    Param("length", int, 8192, "Sequence and kernel length L (tokens).", low=2, high=MAX_TOKENS),
    Param("d_model", int, 512, "Channels D (one kernel per channel).", low=1, high=MAX_WIDTH),
    Param("d_state", int, 64, "SSM state size N (even: N/2 complex conjugate-pair modes, as in S4D).", low=2, high=MAX_STATE),
    Param("init", str, "lin", "S4D initialisation of A: lin (S4D-Lin) or inv (S4D-Inv).", choices=S4D_INITS),
]


@register_component("ssm-conv", unit="seq", params=PARAMS, family="ssm",
                    description="S4D kernel as a long FFT convolution; full, rank-r SVD or sparse-tap distilled")
def build_ssm_conv(ctx: BuildContext, rank, sparse_taps, length, d_model, d_state, init) -> Built:
    if d_state % 2:
        raise ParamError(f"--d-state: {d_state} must be even (S4D stores d_state/2 conjugate-pair modes)")
    if rank is not None and sparse_taps is not None:
        raise ParamError("--rank and --sparse-taps are exclusive: distil to one form per row")
    if rank is not None and rank > min(length, d_model):
        raise ParamError(f"--rank: {rank} exceeds min(length, d_model) = {min(length, d_model)}")
    if sparse_taps is not None and sparse_taps > length:
        raise ParamError(f"--sparse-taps: {sparse_taps} exceeds --length {length}")

    generator = torch.Generator().manual_seed(ctx.seed)
    ssm = {k: v.to(ctx.device) for k, v in s4d_parameters(d_model, d_state, init, generator=generator).items()}
    kernel64 = s4d_kernel(ssm["A"], ssm["C"], ssm["dt"], length)
    full_kernel = kernel64.float()
    info = {"kernel_dtype": "float32", "fft_size": 2 * length, "params_full_kernel": length * d_model}
    if rank is not None:
        U, singular_values, Vh = torch.linalg.svd(kernel64, full_matrices=False)
        module = LowRankSSMConv(U[:, :rank], singular_values[:rank], Vh[:rank].t())
        info.update(kernel_form="lowrank", conv_path="fft-lowrank",
                    rel_err_kernel=lowrank_kernel_rel_error(singular_values, rank))
    elif sparse_taps is not None:
        module = SparseTapSSMConv.distill(kernel64, sparse_taps)
        info.update(kernel_form="sparse", conv_path="direct-sparse-taps",
                    rel_err_kernel=relative_error(module.materialised_kernel(length), kernel64))
    else:
        module = SSMConv(kernel64)
        info.update(kernel_form="full", conv_path="fft", rel_err_kernel=0.0)
    del kernel64
    module = module.to(ctx.device).eval()  # weights stay float32: see the module docstring
    info["params_stored"] = module.params_stored

    def make_inputs(batch: int) -> tuple:
        return (torch.randn(batch, length, d_model, device=ctx.device, dtype=ctx.dtype),)

    def extras(mod, inputs) -> dict:
        x = inputs[0].float()
        batch = x.shape[0]
        reference = fft_causal_conv(x, full_kernel)
        rel_err = 0.0 if mod.kernel_form == "full" else relative_error(mod(x), reference)
        if mod.kernel_form == "sparse":
            conv_flops = sparse_tap_flops(batch, length, d_model, sparse_taps)
        else:
            kernel_ffts = d_model if rank is None else rank
            conv_flops = fft_conv_flops(batch, length, d_model, kernel_ffts, mixing_rank=rank or 0)
        return {"rel_err": rel_err, "conv_gflops": conv_flops / 1e9}

    return Built(module, make_inputs, unit="seq", info=info, extras=extras)
