"""The SSM convolution view and its distillation: references, exact FLOPs, the `ssm-conv` component."""
import math

import pytest
import torch

from effprof.cli.main import main
from effprof.measure.flops import count_flops
from effprof.modules.ssm_conv import (LowRankSSMConv, SparseTapSSMConv, SSMConv, lowrank_kernel_rel_error,
                                      relative_error, s4d_kernel, s4d_parameters, s4d_recurrence, svd_factors)
from effprof.ops.fft_conv import direct_causal_conv, fft_causal_conv, fft_causal_conv_lowrank, rfft_flops
from effprof.report.files import read_json

TINY = ["--length", "64", "--d-model", "16", "--d-state", "8"]


def s4d(d_model=6, d_state=8, length=40, init="lin", seed=0):
    params = s4d_parameters(d_model, d_state, init, generator=torch.Generator().manual_seed(seed))
    return params, s4d_kernel(params["A"], params["C"], params["dt"], length, channels_per_chunk=4)


def test_direct_conv_is_the_causal_convolution_formula():
    torch.manual_seed(0)
    x, kernel = torch.randn(2, 7, 3, dtype=torch.float64), torch.randn(7, 3, dtype=torch.float64)
    expected = torch.zeros_like(x)
    for t in range(7):
        for s in range(t + 1):
            expected[:, t] += kernel[s] * x[:, t - s]
    torch.testing.assert_close(direct_causal_conv(x, kernel), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-11), (torch.float32, 2e-5)])
def test_fft_conv_matches_direct_conv(dtype, tol):
    torch.manual_seed(1)
    x, kernel = torch.randn(3, 50, 5, dtype=torch.float64), torch.randn(50, 5, dtype=torch.float64)
    reference = direct_causal_conv(x, kernel)
    y = fft_causal_conv(x.to(dtype), kernel.to(dtype))
    assert y.dtype == dtype and y.shape == (3, 50, 5)
    assert relative_error(y, reference) < tol


@pytest.mark.parametrize("init", ["lin", "inv"])
def test_kernel_equals_the_step_by_step_recurrence(init):
    params, kernel = s4d(d_model=6, d_state=8, length=40, init=init)
    u = torch.randn(2, 40, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    recurrent = s4d_recurrence(u, params["A"], params["C"], params["dt"])
    assert relative_error(fft_causal_conv(u, kernel), recurrent) < 1e-11
    assert relative_error(direct_causal_conv(u, kernel), recurrent) < 1e-11


def test_full_rank_distillation_reproduces_the_full_kernel_output():
    _, kernel = s4d(d_model=16, length=48)
    full, distilled = SSMConv(kernel), LowRankSSMConv.distill(kernel, rank=16)  # rank = min(L, D)
    x = torch.randn(2, 48, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert relative_error(distilled(x), full(x)) < 1e-5
        assert relative_error(distilled.materialised_kernel(), kernel) < 1e-6


def test_svd_error_decreases_with_rank_and_equals_the_tail_singular_values():
    _, kernel = s4d(d_model=12, length=48)
    singular_values = torch.linalg.svdvals(kernel)
    errors = []
    for rank in range(1, 13):
        U, S, V = svd_factors(kernel, rank)
        measured = relative_error((U * S) @ V.t(), kernel)
        predicted = lowrank_kernel_rel_error(singular_values, rank)
        assert measured == pytest.approx(predicted, rel=1e-7, abs=1e-12)
        errors.append(measured)
    assert all(a > b for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 1e-12


def test_sparse_taps_keep_the_highest_energy_delays_and_match_direct_conv():
    _, kernel = s4d(d_model=5, length=30)
    module = SparseTapSSMConv.distill(kernel, taps=6)
    energy = kernel.pow(2).sum(1)
    assert module.delays == sorted(torch.argsort(energy, descending=True)[:6].tolist())
    x = torch.randn(2, 30, 5, dtype=torch.float64)
    sparse_kernel = module.materialised_kernel(30).double()
    with torch.no_grad():
        assert relative_error(module(x), direct_causal_conv(x, sparse_kernel)) < 1e-7  # weights stored in fp32


def test_flop_formulas_count_exactly_what_is_documented():
    B, L, D, r, k = 2, 64, 16, 4, 8
    n, bins = 2 * L, L + 1
    assert rfft_flops(n) == 2.5 * 128 * 7 == 2240
    _, kernel = s4d(d_model=D, length=L)
    x = torch.randn(B, L, D)
    full = (2 * B * D + D) * 2240 + 6 * B * bins * D                       # 179200 + 12480
    lowrank = (2 * B * D + r) * 2240 + 4 * bins * r * D + 6 * B * bins * D  # 152320 + 16640 + 12480
    assert (full, lowrank) == (191680, 181440)
    with torch.no_grad():
        assert count_flops(lambda: SSMConv(kernel)(x))[0] == full
        assert count_flops(lambda: LowRankSSMConv.distill(kernel, r)(x))[0] == lowrank
        assert count_flops(lambda: SparseTapSSMConv.distill(kernel, k)(x))[0] == 2 * B * L * D * k


def test_lowrank_op_equals_fft_conv_of_the_materialised_kernel():
    torch.manual_seed(5)
    bases, weights = torch.randn(20, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    x = torch.randn(2, 20, 4, dtype=torch.float64)
    expected = direct_causal_conv(x, bases @ weights.t())
    assert relative_error(fft_causal_conv_lowrank(x, bases, weights), expected) < 1e-11


@pytest.mark.parametrize("extra, stored, weights", [([], 64 * 16, 64 * 16),
                                                    (["--rank", "4"], 4 * (64 + 16 + 1), 4 * (64 + 16 + 1)),
                                                    (["--sparse-taps", "8"], 8 * 16 + 8, 8 * 16)])  # + 8 delays
def test_component_through_the_cli(tmp_path, fast, extra, stored, weights):
    path = tmp_path / "r.json"
    assert main(["run", "ssm-conv", *TINY, *extra, "--batch", "2", *fast, "--json", str(path)]) == 0
    r = read_json(path)[0]
    assert r["status"] == "ok" and r["unit"] == "seq"
    assert r["params_stored"] == stored and r["params_total"] == weights
    assert r["params_full_kernel"] == 64 * 16 and r["kernel_dtype"] == "float32"
    if not extra:
        assert r["rel_err"] == 0.0 and r["gflops"] * 1e9 == pytest.approx(191680)
    else:
        assert 0 < r["rel_err"] < 1 and 0 < r["rel_err_kernel"] < 1
    assert r["gflops"] == pytest.approx(r["conv_gflops"])


@pytest.mark.parametrize("argv, says", [
    (["--rank", "0"], "outside the allowed range"),
    (["--rank", "17"], "exceeds min(length, d_model)"),
    (["--rank", "2", "--sparse-taps", "2"], "exclusive"),
    (["--d-state", "7"], "must be even"),
])
def test_bad_values_are_refused_in_one_line(argv, says, capsys, fast):
    assert main(["run", "ssm-conv", "--length", "64", "--d-model", "16", *argv, *fast]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "\n" not in err


def test_rank_sweep_output_error_shrinks_to_zero_at_full_rank():
    _, kernel = s4d(d_model=8, length=32)
    x = torch.randn(2, 32, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    reference = direct_causal_conv(x, kernel)
    with torch.no_grad():
        errors = [relative_error(LowRankSSMConv.distill(kernel, r)(x), reference) for r in (1, 2, 4, 8)]
    assert errors[0] > errors[-1] and errors[-1] < 1e-6
    assert not math.isnan(sum(errors))
