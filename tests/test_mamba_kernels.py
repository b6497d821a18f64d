"""Mamba's Triton kernels besides the scan: the causal depthwise conv1d (prefill and decode-state update)
and the fused decode step, each against its reference.

The kernels run on CPU tensors under TRITON_INTERPRET=1, which must be set before triton is first imported:
`test_kernel_tests_in_interpreter_subprocess` reruns this file's `triton` tests in a child process with it
set (they run directly when the suite itself runs with it), as tests/test_selective_scan.py does.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from effprof.errors import BackendUnavailable, UsageError
from effprof.ops.causal_conv1d import (causal_conv1d, causal_conv1d_ref, causal_conv1d_update,
                                       causal_conv1d_update_ref, resolve_conv_backend)
from effprof.ops.selective_scan import available_backends

CPU = torch.device("cpu")
HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRETED = HAS_TRITON and "triton" in available_backends(CPU)
needs_triton = pytest.mark.skipif(not INTERPRETED, reason="needs triton and TRITON_INTERPRET=1 at start "
                                  "(run by test_kernel_tests_in_interpreter_subprocess)")
N_TRITON_TESTS = 15  # the `triton` tests this file holds (the subprocess checks they all ran)


@pytest.mark.skipif(not HAS_TRITON or INTERPRETED, reason="triton missing, or the triton tests run directly")
def test_kernel_tests_in_interpreter_subprocess():
    env = dict(os.environ, TRITON_INTERPRET="1")
    repo_root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__)),
                           "-k", "triton and not subprocess"], cwd=repo_root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) == N_TRITON_TESTS, proc.stdout[-2000:]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def loop_causal_conv(x, weight, bias, silu):
    """The definition as a loop over taps, in float64 (independent of F.conv1d)."""
    x, weight = x.double(), weight.double()
    width, L = weight.shape[1], x.shape[-1]
    y = torch.zeros_like(x) + (bias.double()[:, None] if bias is not None else 0)
    for k in range(width):
        shift = width - 1 - k                       # tap k reads x[t - shift]
        if shift < L:
            y[..., shift:] += weight[:, k, None] * x[..., :L - shift]
    return F.silu(y) if silu else y


# (batch, channels, L, width, bias, silu): odd lengths, L = 1, L shorter than the width, width 2..4
CONV_CASES = [(2, 5, 37, 4, True, True), (1, 3, 1, 4, False, True), (2, 7, 3, 4, True, False),
              (1, 70, 130, 3, True, True), (3, 4, 20, 2, False, False)]


@needs_triton
@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_triton_conv_matches_reference(case, dtype, tol):
    batch, channels, L, width, with_bias, silu = case
    g = torch.Generator().manual_seed(L * 10 + width)
    # x as Mamba's block has it: the first half of a (2·channels, batch·L) matmul output, viewed (batch, channels, L)
    xz = torch.randn(2 * channels, batch * L, generator=g).to(dtype)
    x = xz.view(2 * channels, batch, L).transpose(0, 1)[:, :channels]
    weight = torch.randn(channels, width, generator=g).to(dtype)
    bias = torch.randn(channels, generator=g).to(dtype) if with_bias else None
    act = "silu" if silu else None
    y = causal_conv1d(x, weight, bias, act, backend="triton")
    assert y.shape == x.shape and y.dtype == dtype and y.is_contiguous()
    assert rel_err(y, loop_causal_conv(x, weight, bias, silu)) < tol
    assert rel_err(y, causal_conv1d_ref(x, weight, bias, act)) < tol


@needs_triton
@pytest.mark.parametrize("case", CONV_CASES[:3] + CONV_CASES[4:])
def test_triton_conv_update_steps_equal_the_conv(case):
    batch, channels, L, width, with_bias, silu = case
    g = torch.Generator().manual_seed(L)
    x = torch.randn(batch, 2 * channels, L, generator=g)[:, ::2]   # strided channels
    weight = torch.randn(channels, width, generator=g)
    bias = torch.randn(channels, generator=g) if with_bias else None
    act = "silu" if silu else None
    state = torch.randn(batch, channels, width, generator=g)       # overwritten: starts from zeros below
    state.zero_()
    ref_state = state.clone()
    steps = []
    for t in range(L):
        steps.append(causal_conv1d_update(x[..., t], state, weight, bias, act, backend="triton"))
        ref_step = causal_conv1d_update_ref(x[..., t], ref_state, weight, bias, act)
        assert rel_err(steps[-1], ref_step) < 1e-6
        assert torch.equal(state, ref_state)                     # the shift is exact
    assert rel_err(torch.stack(steps, -1), loop_causal_conv(x, weight, bias, silu)) < 1e-6


@needs_triton
def test_triton_conv_counts_the_reference_flops():
    x, weight, bias = torch.randn(2, 6, 11), torch.randn(6, 4), torch.randn(6)
    counts = []
    for backend in ("ref", "triton"):
        with FlopCounterMode(display=False) as counter:
            causal_conv1d(x, weight, bias, "silu", backend=backend)
            causal_conv1d_update(x[..., 0], torch.zeros(2, 6, 4), weight, bias, "silu", backend=backend)
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] == 2 * 2 * 6 * 4 * 11 + 2 * 2 * 6 * 4


def test_conv_backend_resolution(monkeypatch):
    assert resolve_conv_backend("auto", CPU) == "ref" and resolve_conv_backend("ref", CPU) == "ref"
    with pytest.raises(UsageError, match="unknown conv backend"):
        resolve_conv_backend("fft", CPU)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailable, match="the triton conv needs a CUDA device"):
        resolve_conv_backend("triton", CPU)
    with pytest.raises(ValueError, match="conv_state must be"):
        causal_conv1d_update(torch.zeros(2, 3), torch.zeros(2, 3, 3), torch.zeros(3, 4))
