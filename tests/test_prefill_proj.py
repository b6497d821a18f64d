"""The Mamba block's prefill projections fused into kernels, against their definitions: `effprof.ops.conv_x_proj`
(the causal conv with x_proj on its tiles) and `effprof.ops.dt_proj` (dt_proj and the scan's B/C layout).

The kernel runs on CPU tensors under TRITON_INTERPRET=1 (`test_kernel_tests_in_interpreter_subprocess` reruns
this file's `triton` tests in a child process with it set). The interpreter's tl.dot mishandles bfloat16
operands (its numpy arrays have no bf16), so the interpreted tests use float16; the CUDA tests run bfloat16.
"""
from __future__ import annotations

import importlib.util

import pytest
from conftest import triton_tests_in_interpreter
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from effprof.modules.mamba import MambaBlock
from effprof.ops.causal_conv1d import causal_conv1d_ref
from effprof.ops.conv_x_proj import conv_x_proj, conv_x_proj_fits
from effprof.ops.dt_proj import dt_proj_bc, dt_proj_bc_ref, dt_proj_fits
from effprof.ops.selective_scan import available_backends

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRETED = HAS_TRITON and "triton" in available_backends(torch.device("cpu"))
needs_triton = pytest.mark.skipif(not INTERPRETED, reason="needs triton and TRITON_INTERPRET=1 at start "
                                  "(run by test_kernel_tests_in_interpreter_subprocess)")
needs_cuda = pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="needs a CUDA device")
N_TRITON_TESTS = 10  # the `triton` tests this file holds (the subprocess checks they all ran)


@pytest.mark.skipif(not HAS_TRITON or INTERPRETED, reason="triton missing, or the triton tests run directly")
def test_kernel_tests_in_interpreter_subprocess():
    assert triton_tests_in_interpreter(__file__) == N_TRITON_TESTS


def loop_reference(x_dbl, weight, dt_rank):
    """The definition in float64, by explicit sums (independent of F.linear): delta[b, t, d] = Σ_r dt_low[b, t, r]
    W[d, r]; bc[b, j, t] = x_dbl[b, t, dt_rank + j]."""
    x, w = x_dbl.double(), weight.double()
    delta = (x[..., :dt_rank, None] * w.t()[None, None]).sum(dim=2)
    return delta, x[..., dt_rank:].permute(0, 2, 1)


# (batch, L, dt_rank, N, d_inner): Mamba-130m's dt_rank 48 at an odd length, L = 1, a dt_rank that is not a multiple
# of the kernel's K slice (20) with batch 2, widths that are not multiples of the blocks
CASES = [(1, 37, 48, 16, 96), (1, 1, 48, 16, 96), (2, 5, 20, 4, 40), (3, 70, 160, 16, 130)]


@needs_triton
@pytest.mark.parametrize("case", CASES)
def test_triton_kernel_matches_the_definition(case):
    from effprof.ops.dt_proj_triton import dt_proj_bc_triton
    batch, L, R, N, D = case
    torch.manual_seed(0)
    x = torch.randn(batch, L, R + 2 * N, dtype=torch.float16)
    w = (torch.randn(D, R) / R ** 0.5).half()
    delta, bc = dt_proj_bc_triton(x, w, R)
    ref_delta, ref_bc = loop_reference(x, w, R)
    assert delta.shape == (batch, L, D) and delta.dtype == torch.float16 and delta.is_contiguous()
    assert bc.shape == (batch, 2 * N, L) and bc.is_contiguous()
    assert torch.equal(bc.double(), ref_bc)                      # a copy: exact
    # one rounding of a float32 sum to float16: within half an ulp of the float16 result, relative 2^-11
    assert ((delta.double() - ref_delta).abs() <= ref_delta.abs() * 2 ** -10 + 1e-3).all()


@needs_triton
def test_triton_op_counts_the_flops_of_the_linear_it_replaces():
    x = torch.randn(2, 9, 48 + 32, dtype=torch.float16)
    w = torch.randn(96, 48, dtype=torch.float16)
    with FlopCounterMode(display=False) as fused:
        delta, bc = torch.ops.effprof.dt_proj_bc(x, w, 48)
    with FlopCounterMode(display=False) as ref:
        F.linear(x[..., :48].float(), w.float())
    assert fused.get_total_flops() == ref.get_total_flops() == 2 * 2 * 9 * 48 * 96
    assert torch.equal(bc, x[..., 48:].transpose(1, 2))


def test_reference_is_the_two_ops_of_the_block_and_cpu_takes_it():
    torch.manual_seed(1)
    x = torch.randn(2, 11, 8 + 2 * 3)
    w = torch.randn(24, 8)
    assert not dt_proj_fits(x, w)                                # CPU: the kernel is CUDA-only in the block
    delta, B, C = dt_proj_bc(x, w, 8, "triton")
    ref_delta, ref_bc = loop_reference(x, w, 8)
    torch.testing.assert_close(delta.double(), ref_delta, rtol=1e-5, atol=1e-5)
    assert torch.equal(B, x[..., 8:11].transpose(1, 2)) and torch.equal(C, x[..., 11:].transpose(1, 2))
    assert B.stride()[1:] == C.stride()[1:] == (11, 1)            # views of one (batch, 2N, L) tensor, time-contiguous
    assert B.untyped_storage().data_ptr() == C.untyped_storage().data_ptr()


@pytest.mark.parametrize("x_shape, w_shape, dt_rank", [((1, 5, 14), (24, 6), 8),    # weight's width is not dt_rank
                                                       ((1, 5, 8), (24, 8), 8),     # no B/C columns
                                                       ((1, 5, 13), (24, 8), 8),    # an odd number of B/C columns
                                                       ((5, 14), (24, 8), 8)])      # not (batch, L, width)
def test_bad_shapes_are_refused_in_one_line(x_shape, w_shape, dt_rank):
    with pytest.raises(ValueError, match="dt_proj_bc: x_dbl must be"):
        dt_proj_bc(torch.zeros(x_shape), torch.zeros(w_shape), dt_rank)


def test_fake_tensor_shapes_for_meta_counting():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        delta, bc = torch.ops.effprof.dt_proj_bc(torch.empty(2, 7, 48 + 32, dtype=torch.bfloat16),
                                                 torch.empty(96, 48, dtype=torch.bfloat16), 48)
    assert delta.shape == (2, 7, 96) and bc.shape == (2, 32, 7) and delta.dtype == torch.bfloat16


@needs_cuda
@pytest.mark.parametrize("batch, L", [(1, 793), (2, 37), (1, 1)])
def test_cuda_kernel_matches_cublas_and_the_block_takes_it(batch, L, monkeypatch):
    from effprof.ops.dt_proj_triton import dt_proj_bc_triton
    torch.manual_seed(0)
    x = torch.randn(batch, L, 160 + 32, device="cuda", dtype=torch.bfloat16)
    w = (torch.randn(5120, 160, device="cuda") / 160 ** 0.5).bfloat16()
    delta, bc = dt_proj_bc_triton(x, w, 160)
    ref = F.linear(x[..., :160].float(), w.float())
    assert torch.equal(bc, x[..., 160:].transpose(1, 2).contiguous())
    assert ((delta.float() - ref).abs() <= ref.abs() * 2 ** -7 + 1e-2).all()   # one bf16 rounding
    # the block: the fused path (taken) against the two ops (the kernel's fit turned off), same module and input
    block = MambaBlock(256, scan_backend="triton", conv_backend="triton", device="cuda", dtype=torch.bfloat16)
    h = torch.randn(batch, L, 256, device="cuda", dtype=torch.bfloat16)
    calls = []
    monkeypatch.setattr("effprof.modules.mamba.dt_proj_bc", lambda *a: calls.append(1) or dt_proj_bc(*a))
    with torch.no_grad():
        fused = block(h)
        assert calls, "the block did not take dt_proj_bc"
        monkeypatch.setattr("effprof.modules.mamba.dt_proj_fits", lambda *a: False)
        plain = block(h)
    assert len(calls) == 1
    torch.testing.assert_close(fused.float(), plain.float(), rtol=2e-2, atol=2e-2)


# (batch, channels, L, width, n_out, config): odd lengths, L = 1 and L < width, channels that are not a multiple
# of the chunk, several splits and one, one time block and several
CONV_CASES = [(1, 96, 37, 4, 40, (16, 32, 4, 64)), (2, 70, 5, 4, 24, (16, 16, 4, 32)),
              (1, 64, 1, 4, 20, (16, 32, 4, 512)), (2, 130, 70, 3, 40, (32, 32, 4, 64))]


@needs_triton
@pytest.mark.parametrize("case", CONV_CASES)
def test_triton_conv_x_proj_matches_the_two_ops(case):
    from effprof.ops.conv_x_proj_triton import conv_x_proj_triton
    batch, C, L, width, n_out, config = case
    torch.manual_seed(0)
    xz = torch.randn(batch, L, 2 * C, dtype=torch.float16)
    x = xz.transpose(1, 2)[:, :C]                               # channel-last, a view of in_proj's output
    cw, cb = torch.randn(C, width, dtype=torch.float16), torch.randn(C, dtype=torch.float16)
    xw = (torch.randn(n_out, C) / C ** 0.5).half()
    state = torch.full((batch, C, width), float("nan"), dtype=torch.float16)
    y, x_dbl = conv_x_proj_triton(x, cw, cb, True, xw, state_out=state, config=config)
    ref_y = causal_conv1d_ref(x.double(), cw.double(), cb.double(), "silu")
    assert y.stride(1) == 1 and x_dbl.shape == (batch, L, n_out) and x_dbl.is_contiguous()
    assert ((y.double() - ref_y).abs() <= ref_y.abs() * 2 ** -10 + 1e-3).all()
    # x_proj of the rounded conv output (what F.linear reads in the two ops), summed in float32, rounded once
    ref_x = y.double().transpose(1, 2) @ xw.double().t()
    assert ((x_dbl.double() - ref_x).abs() <= ref_x.abs() * 2 ** -10 + 1e-3).all()
    padded = torch.nn.functional.pad(x, (max(0, width - L), 0))[..., -width:]
    assert torch.equal(state, padded)                           # the last `width` inputs, zeros before t = 0


def test_conv_x_proj_reference_path_and_refusals():
    torch.manual_seed(2)
    x = torch.randn(2, 6, 9)
    cw, cb, xw = torch.randn(6, 4), torch.randn(6), torch.randn(5, 6)
    assert not conv_x_proj_fits(x, xw)                          # CPU, float32, channels-first: the two ops run
    state = torch.empty(2, 6, 4)
    y_rows, x_dbl = conv_x_proj(x, cw, cb, "silu", xw, state_out=state, fused=True)
    ref_y = causal_conv1d_ref(x, cw, cb, "silu")
    torch.testing.assert_close(y_rows, ref_y.transpose(1, 2))
    torch.testing.assert_close(x_dbl, ref_y.transpose(1, 2) @ xw.t())
    assert torch.equal(state, x[..., -4:])
    with pytest.raises(ValueError, match="x_proj_weight must be"):
        conv_x_proj(x, cw, cb, "silu", torch.randn(5, 7))


def test_conv_x_proj_counts_the_flops_of_both_ops():
    x = torch.randn(1, 8, 5, dtype=torch.float16)
    args = (x, torch.randn(8, 4, dtype=torch.float16), None, True, torch.randn(6, 8, dtype=torch.float16))
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode(allow_non_fake_inputs=True), FlopCounterMode(display=False) as counter:
        y, x_dbl = torch.ops.effprof.conv_x_proj(*args)
    assert counter.get_total_flops() == 2 * 8 * 4 * 5 + 2 * 5 * 8 * 6
    assert y.shape == (1, 8, 5) and y.stride(1) == 1 and x_dbl.shape == (1, 5, 6)


@needs_cuda
@pytest.mark.parametrize("batch, L", [(1, 793), (2, 37), (1, 2)])
def test_cuda_conv_x_proj_matches_the_two_ops(batch, L):
    from effprof.ops.causal_conv1d_triton import causal_conv1d_triton
    from effprof.ops.conv_x_proj_triton import conv_x_proj_triton
    torch.manual_seed(0)
    C = 5120
    x = torch.randn(batch, L, 2 * C, device="cuda", dtype=torch.bfloat16).transpose(1, 2)[:, :C]
    cw = torch.randn(C, 4, device="cuda", dtype=torch.bfloat16)
    cb = torch.randn(C, device="cuda", dtype=torch.bfloat16)
    xw = (torch.randn(192, C, device="cuda") / C ** 0.5).bfloat16()
    state = torch.full((batch, C, 4), float("nan"), device="cuda", dtype=torch.bfloat16)
    y, x_dbl = conv_x_proj_triton(x, cw, cb, True, xw, state_out=state)
    ref_state = torch.empty_like(state)
    ref_y = causal_conv1d_triton(x, cw, cb, True, state_out=ref_state)
    assert torch.equal(y, ref_y) and torch.equal(state, ref_state)   # the same conv arithmetic as the conv kernel
    ref_x = F.linear(y.transpose(1, 2).float(), xw.float())
    assert ((x_dbl.float() - ref_x).abs() <= ref_x.abs() * 2 ** -7 + 1e-2).all()
    assert conv_x_proj_fits(x, xw)


@needs_triton
def test_triton_block_prefill_takes_the_fused_kernels_and_matches_the_ops(monkeypatch):
    """A float16 Mamba block on the triton conv and scan runs conv_x_proj's and dt_proj_bc's kernels (interpreter)
    and gives the output, the decoding states and the FLOP count of the same block op by op (their fits off)."""
    import effprof.modules.mamba as mamba_module
    torch.manual_seed(0)
    block = MambaBlock(32, d_state=4, scan_backend="triton", conv_backend="triton", dtype=torch.float16).eval()
    hidden = torch.randn(2, 9, 32, dtype=torch.float16)
    calls = []
    for name in ("conv_x_proj", "dt_proj_bc"):
        real = getattr(mamba_module, name)
        monkeypatch.setattr(mamba_module, name,
                            lambda *a, real=real, name=name, **k: calls.append(name) or real(*a, **k))
    import effprof.ops.conv_x_proj as conv_x_proj_module
    real_fits, fitted = conv_x_proj_module.conv_x_proj_fits, []
    monkeypatch.setattr(conv_x_proj_module, "conv_x_proj_fits", lambda *a: fitted.append(real_fits(*a)) or fitted[-1])
    outputs, states, flops = [], [], []
    with torch.no_grad():
        for fits in (True, False):
            if not fits:
                monkeypatch.setattr("effprof.ops.conv_x_proj.conv_x_proj_fits", lambda *a: False)
                monkeypatch.setattr(mamba_module, "dt_proj_fits", lambda *a: False)
            state = block.allocate_state(2)
            with FlopCounterMode(display=False) as counter:
                outputs.append(block(hidden, state).double())
            states.append(state)
            flops.append(counter.get_total_flops())
    assert fitted == [True]                                          # the first pass took conv_x_proj's kernels
    assert flops[0] == flops[1] > 0                                  # the ops' FLOP formulas: the same count
    assert calls == ["conv_x_proj", "dt_proj_bc", "conv_x_proj"]   # unfused: conv_x_proj's two ops, no dt_proj_bc
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-2, atol=1e-2)
    assert torch.equal(states[0].conv_state, states[1].conv_state)
    torch.testing.assert_close(states[0].ssm_state, states[1].ssm_state, rtol=1e-2, atol=1e-2)
