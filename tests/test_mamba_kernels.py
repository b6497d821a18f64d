"""Mamba's Triton kernels besides the scan: the causal depthwise conv1d (prefill and decode-state update)
and the fused decode step, each against its reference.

The kernels run on CPU tensors under TRITON_INTERPRET=1, which must be set before triton is first imported:
`test_kernel_tests_in_interpreter_subprocess` reruns this file's `triton` tests in a child process with it
set (they run directly when the suite itself runs with it), as tests/test_selective_scan.py does.
"""
from __future__ import annotations

import importlib.util

import pytest
from conftest import op_recorder
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from effprof.core.errors import BackendUnavailable, UsageError
from effprof.models.generation import greedy_mamba
from effprof.ops.causal_conv1d import (causal_conv1d, causal_conv1d_ref, causal_conv1d_update,
                                       causal_conv1d_update_ref, resolve_conv_backend)
from effprof.ops.selective_scan import available_backends

CPU = torch.device("cpu")
HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRETED = HAS_TRITON and "triton" in available_backends(CPU)
needs_triton = pytest.mark.skipif(not INTERPRETED, reason="needs triton and TRITON_INTERPRET=1 at start "
                                  "(run by test_kernel_tests_in_interpreter_subprocess)")
N_TRITON_TESTS = 39  # the `triton` tests this file holds (the subprocess checks they all ran, or are slow)


@pytest.mark.skipif(not HAS_TRITON or INTERPRETED, reason="triton missing, or the triton tests run directly")
def test_kernel_tests_in_interpreter_subprocess(triton_interpreter):
    assert triton_interpreter(__file__) == N_TRITON_TESTS


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
@pytest.mark.parametrize("case", CONV_CASES)
def test_triton_conv_writes_the_conv_state(case):
    """state_out receives the last `width` inputs (zeros before the first: L = 1 and L = 3 < width), the
    state a decoding step continues from, and y is the same as without it."""
    batch, channels, L, width, with_bias, silu = case
    g = torch.Generator().manual_seed(L + 1)
    x = torch.randn(batch, L, 2 * channels, generator=g).transpose(1, 2)[:, :channels]   # channel-last view
    weight = torch.randn(channels, width, generator=g)
    bias = torch.randn(channels, generator=g) if with_bias else None
    act = "silu" if silu else None
    state = torch.full((batch, channels, width), float("nan"))
    y = causal_conv1d(x, weight, bias, act, backend="triton", state_out=state)
    assert torch.equal(y, causal_conv1d(x, weight, bias, act, backend="triton"))
    expected = torch.zeros(batch, channels, width)
    kept = min(L, width)
    expected[..., width - kept:] = x[..., L - kept:]
    assert torch.equal(state, expected)
    ref_state = torch.full_like(state, float("nan"))
    causal_conv1d(x, weight, bias, act, backend="ref", state_out=ref_state)
    assert torch.equal(ref_state, expected)
    with pytest.raises(ValueError, match="state_out must be"):
        causal_conv1d(x, weight, bias, act, backend="triton", state_out=state[..., 1:])


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


# ---------------------------------------------------------------------------------------------------
# The fused decode step
# ---------------------------------------------------------------------------------------------------
def _block(d_model, d_state, dtype, conv_bias=True, seed=0, device=CPU):
    from effprof.modules.mamba import MambaBlock

    torch.manual_seed(seed)
    block = MambaBlock(d_model, d_state, conv_bias=conv_bias, device=device, dtype=dtype)  # A_log, D stay fp32
    with torch.no_grad():  # perturb A_log, D and the conv so that no parameter sits at a special value
        block.A_log.add_(0.3 * torch.randn_like(block.A_log))
        block.D.copy_(torch.randn_like(block.D))
        block.conv1d.weight.mul_(2.0)
    return block


# (batch, d_model, d_state, conv bias): d_inner = 2·d_model (odd: 42, 2·37 = 74), d_state 1 and 16
STEP_CASES = [(2, 21, 16, True), (1, 37, 1, False), (3, 8, 4, True)]


def _run_steps(block, backend, hidden, prefill):
    state = block.allocate_state(hidden.shape[0])
    with torch.no_grad():
        block(hidden[:, :prefill], state)
        block.decode_backend = backend
        out = torch.cat([block.step(hidden[:, t:t + 1], state) for t in range(prefill, hidden.shape[1])], 1)
        block.decode_backend = "ref"
    return out, state


@needs_triton
@pytest.mark.parametrize("case", STEP_CASES)
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_triton_fused_step_matches_the_step_reference(case, dtype, tol):
    batch, d_model, d_state, conv_bias = case
    block = _block(d_model, d_state, dtype, conv_bias, seed=d_model)
    hidden = torch.randn(batch, 9, d_model, generator=torch.Generator().manual_seed(1)).to(dtype)
    ref, ref_state = _run_steps(block, "ref", hidden, prefill=3)
    out, state = _run_steps(block, "triton", hidden, prefill=3)
    assert out.dtype == dtype and rel_err(out, ref) < tol
    assert torch.equal(state.conv_state, ref_state.conv_state)          # the shift is exact
    # bf16: the kernel rounds where the reference's bf16 matmuls round (x_proj, dt_proj, the conv output), but
    # sums in another order, and the interpreter truncates float32 -> bf16 (the GPU rounds to nearest)
    assert rel_err(state.ssm_state, ref_state.ssm_state) < (1e-5 if dtype == torch.float32 else 3e-2)
    full = block(hidden)                                                # and both equal the prefill forward
    assert rel_err(out, full[:, 3:]) < tol


@needs_triton
def test_triton_add_rms_norm_matches_reference():
    from effprof.ops.mamba_decode import add_rms_norm, add_rms_norm_ref

    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(3, 1, 37, generator=g).to(torch.bfloat16)
    residual = torch.randn(3, 1, 37, generator=g)
    weight = (1 + 0.1 * torch.randn(37, generator=g)).to(torch.bfloat16)
    for res in (None, residual):
        normed, new_res = add_rms_norm(hidden, res, weight, 1e-5, backend="triton")
        ref_normed, ref_res = add_rms_norm_ref(hidden, res, weight, 1e-5)
        assert normed.dtype == torch.bfloat16 and new_res.dtype == torch.float32
        # one bf16 ulp (4e-3) at most; the interpreter truncates to bf16 where the GPU rounds
        assert torch.equal(new_res, ref_res) and rel_err(normed, ref_normed) < 8e-3
    normed, _ = add_rms_norm(hidden.float(), residual, weight.float(), 1e-5, backend="triton")
    assert rel_err(normed, add_rms_norm_ref(hidden.float(), residual, weight.float(), 1e-5)[0]) < 1e-6


@needs_triton
# the GEMV kernel (at 2 rows: its loop over rows, as greedy generation's test sets gemv_max_batch), and (above
# gemv_max_batch) add + norm then F.linear
@pytest.mark.parametrize("rows, gemv_max_batch", [(1, 1), (2, 2), (3, 1)])
def test_triton_norm_in_proj_matches_reference(monkeypatch, rows, gemv_max_batch):
    from effprof.ops.mamba_decode import norm_in_proj, norm_in_proj_ref

    g = torch.Generator().manual_seed(rows)
    hidden, residual = torch.randn(rows, 40, generator=g), torch.randn(rows, 40, generator=g)
    from effprof.ops.mamba_decode_triton import DECODE_CONFIG, use_gemv
    monkeypatch.setitem(DECODE_CONFIG, "gemv_max_batch", gemv_max_batch)
    assert use_gemv(rows, torch.zeros(36, 40)) == (rows <= gemv_max_batch)
    norm_weight, in_proj = 1 + 0.1 * torch.randn(40, generator=g), torch.randn(36, 40, generator=g)
    for res in (None, residual):
        xz, new_res = norm_in_proj(hidden, res, norm_weight, 1e-5, in_proj, backend="triton")
        ref_xz, ref_res = norm_in_proj_ref(hidden, res, norm_weight, 1e-5, in_proj)
        assert xz.shape == (rows, 36) and torch.equal(new_res, ref_res) and rel_err(xz, ref_xz) < 1e-6
    with FlopCounterMode(display=False) as counter:
        norm_in_proj(hidden, residual, norm_weight, 1e-5, in_proj, backend="triton")
    assert counter.get_total_flops() == 2 * rows * 36 * 40


@needs_triton
def test_triton_fused_step_counts_the_reference_flops():
    from effprof.ops.mamba_decode import mamba_decode_step_flops

    block = _block(8, 4, torch.float32)
    hidden = torch.randn(2, 1, 8)
    counts = {}
    for backend in ("ref", "triton"):
        state = block.allocate_state(2)
        block.decode_backend = backend
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            block.step(hidden, state)
        counts[backend] = counter.get_total_flops()
    E, R, N = 16, block.dt_rank, 4
    projections = 2 * 2 * 8 * 2 * E + 2 * 2 * E * 8                    # in_proj and out_proj
    assert counts["ref"] == counts["triton"] == projections + mamba_decode_step_flops(2, E, 4, R, N, True)
    assert mamba_decode_step_flops(2, E, 4, R, N, True) == 2 * 2 * E * 4 + 2 * 2 * E * (R + 2 * N) + 2 * 2 * R * E \
        + 9 * 2 * E * N + 2 * 2 * E
    # a whole LM step with in_proj and out_proj fused in (batch 1: the GEMV and the fused out_proj)
    from effprof.modules.mamba import MambaLM, MambaLMConfig

    model = MambaLM(MambaLMConfig(d_model=8, n_layer=2, vocab_size=32, d_state=4)).eval()
    ids = torch.tensor([[3]])
    for backend in ("ref", "triton"):
        model.set_backends(decode_backend=backend)
        cache = model.allocate_cache(1)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.step(ids, cache)
        counts[f"lm_{backend}"] = counter.get_total_flops()
    assert counts["lm_ref"] == counts["lm_triton"] > 0
    # the bytes a step reads: every mixer weight reaches exactly one op of the step (the byte count reads each
    # op's tensor arguments), so no weight is counted twice
    weights = {p.data_ptr(): name for name, p in model.named_parameters() if ".mixer." in name}
    assert len(weights) == 2 * 9                                        # 2 layers x 9 mixer parameters
    model.set_backends(decode_backend="triton")
    ops = op_recorder()
    with torch.no_grad(), ops:
        model.step(ids, model.allocate_cache(1))
    effprof_calls = [set(pointers) for func, pointers in ops.calls if func.namespace == "effprof"]
    seen = {ptr: sum(ptr in call for call in effprof_calls) for ptr in weights}
    assert {weights[p]: n for p, n in seen.items() if n != 1} == {}
    from effprof.ops import mamba_decode_triton  # and all layers in the persistent kernel's op

    with pytest.MonkeyPatch.context() as patch, torch.no_grad(), FlopCounterMode(display=False) as counter:
        patch.setitem(mamba_decode_triton.DECODE_CONFIG, "persistent_max_d_model", 64)
        model.step(ids, model.allocate_cache(1))
    assert counter.get_total_flops() == counts["lm_ref"]
    assert "mamba_lm_decode_persistent" in str(counter.get_flop_counts())


@needs_triton
@pytest.mark.slow  # CI: its kernels one by one (GEMV rows, fused step, conv) and the per-layer kernels' LM steps
def test_triton_greedy_generation_equals_the_step_reference(monkeypatch):
    """Greedy tokens of a small random-weight LM (float32): the fused step picks the same tokens as the
    step-by-step reference, with logits equal to float32 rounding (bench_mamba.py checks 64 tokens of
    Mamba-130m on the GPU; 16 here keep the interpreter fast)."""
    from effprof.modules.mamba import MambaLM, MambaLMConfig

    from effprof.ops import mamba_decode_triton

    # batch 2 through every fused kernel: the GEMV (its loop over rows) and out_proj in the step kernel, whose
    # channel blocks (32) do not divide d_inner (48)
    monkeypatch.setitem(mamba_decode_triton.DECODE_CONFIG, "gemv_max_batch", 2)
    monkeypatch.setitem(mamba_decode_triton.DECODE_CONFIG, "step_block_d", 32)
    monkeypatch.setitem(mamba_decode_triton.DECODE_CONFIG, "layer_max_batch", 0)  # the two-kernel step
    assert mamba_decode_triton.use_fused_out(2, torch.zeros(24, 48))
    torch.manual_seed(0)
    model = MambaLM(MambaLMConfig(d_model=24, n_layer=2, vocab_size=64, d_state=16), conv_backend="triton").eval()
    prompt = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(0))
    ref_tokens, ref_logits = greedy_mamba(model, prompt, 16, "ref")
    tokens, logits = greedy_mamba(model, prompt, 16, "triton")
    assert torch.equal(tokens, ref_tokens)
    assert rel_err(logits, ref_logits) < 1e-5
    assert (logits[:, 1:] - logits[:, :-1]).abs().amax() > 1e-3  # the state moves the logits step to step


def _lm_steps_per_layer_kernels(model, prompt, n_steps):
    """Prefill, then n_steps greedy steps through the op-by-op reference and through the per-layer kernels
    (counted): (reference logits, logits, reference cache, cache, layer-kernel calls)."""
    from effprof.ops import mamba_decode_layer_triton

    calls = []
    real = mamba_decode_layer_triton.layer_decode_triton
    runs = {}
    for backend in ("ref", "triton"):
        model.set_backends(decode_backend=backend)
        cache = model.allocate_cache(prompt.shape[0])
        with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
            patch.setattr(mamba_decode_layer_triton, "layer_decode_triton",
                          lambda *a, **k: calls.append(k["fuse_out"]) or real(*a, **k))
            logits = model(prompt, cache, num_last_tokens=1)
            steps = []
            for _ in range(n_steps):
                logits = model.step(logits[:, -1].argmax(-1, keepdim=True), cache)
                steps.append(logits[:, -1])
        runs[backend] = (torch.stack(steps, 1), cache)
    return runs["ref"][0], runs["triton"][0], runs["ref"][1], runs["triton"][1], calls


@needs_triton
@pytest.mark.parametrize("fuse_out, prefetch, batch, split_k, norm_in, pre_tiles", [
    (True, False, 2, 1, True, 1), (True, True, 1, 1, False, 0), (False, False, 1, 2, True, 2),
    # every value of every option is in the three above (CI); these two combine them otherwise
    pytest.param(False, True, 1, 2, True, 0, marks=pytest.mark.slow),
    pytest.param(False, False, 2, 1, False, 0, marks=pytest.mark.slow)])
def test_triton_per_layer_kernels_equal_the_step_reference(monkeypatch, fuse_out, prefetch, batch, split_k, norm_in,
                                                           pre_tiles):
    """The whole-LM step (prologue, then in_proj + conv + x_proj, the state update with out_proj fused in or
    its own GEMV, the residual add + next norm by the last program or by every program of the next layer's
    first kernel (norm_in); weights loaded in loops of 16 columns or
    as one tile, at batch 1 the conv state with them; a loop's first 1 or 2 tiles loaded before the wait
    (pre_tiles); out_proj split in two): logits and both states equal the
    op-by-op reference to
    float32 rounding over 4 greedy steps, at d_inner 42 (a block of in_proj rows straddles x and z), d_state 1,
    with and without conv bias."""
    from effprof.modules.mamba import MambaLM, MambaLMConfig
    from effprof.ops import mamba_decode_layer_triton, mamba_decode_triton

    monkeypatch.setitem(mamba_decode_triton.DECODE_CONFIG, "layer_max_batch", 2)
    monkeypatch.setitem(mamba_decode_triton.DECODE_CONFIG, "layer_fuse_out_max_batch", 2)
    monkeypatch.setitem(mamba_decode_triton.DECODE_CONFIG, "layer_fuse_out_max_bytes", 1 << 20 if fuse_out else 0)
    monkeypatch.setitem(mamba_decode_triton.DECODE_CONFIG, "layer_prefetch", prefetch)
    monkeypatch.setitem(mamba_decode_triton.DECODE_CONFIG, "layer_block_k", 256 if prefetch else 16)
    monkeypatch.setitem(mamba_decode_triton.DECODE_CONFIG, "layer_out_split_k", split_k)
    monkeypatch.setitem(mamba_decode_triton.DECODE_CONFIG, "layer_norm_in", norm_in)
    monkeypatch.setitem(mamba_decode_triton.DECODE_CONFIG, "layer_pre_tiles", pre_tiles)
    real = mamba_decode_layer_triton.layer_decode_triton   # loops of 16 columns where not one tile
    monkeypatch.setattr(mamba_decode_layer_triton, "layer_decode_triton", lambda *a, **k: real(*a, **k, loop_tile=0))
    torch.manual_seed(1)
    model = MambaLM(MambaLMConfig(d_model=21, n_layer=2, vocab_size=40, d_state=1, conv_bias=prefetch)).eval()
    with torch.no_grad():
        for mixer in model.mixers:
            mixer.D.copy_(torch.randn_like(mixer.D))
    prompt = torch.randint(0, 40, (batch, 3), generator=torch.Generator().manual_seed(2))
    ref, out, ref_cache, cache, calls = _lm_steps_per_layer_kernels(model, prompt, 4)
    assert calls == [fuse_out] * 8                                      # 2 layers x 4 steps, the path chosen
    assert rel_err(out, ref) < 1e-5 and (ref[:, 1:] - ref[:, :-1]).abs().amax() > 1e-3
    for layer, ref_layer in zip(cache.layers, ref_cache.layers):  # in_proj sums in another order than F.linear
        assert rel_err(layer.conv_state, ref_layer.conv_state) < 1e-6
        assert rel_err(layer.ssm_state, ref_layer.ssm_state) < 1e-5


@needs_triton
@pytest.mark.parametrize("conv_bias, programs", [(True, 3), pytest.param(False, 5, marks=pytest.mark.slow)])
def test_triton_persistent_step_equals_the_step_reference(monkeypatch, conv_bias, programs):
    """The persistent whole-step kernel (mamba_decode_persistent_triton.py) through its interpreter model (one
    grid per phase where the GPU meets at a grid barrier; 3 or 5 programs, so units wrap around programs and
    some programs have none): logits and both states of 3 layers equal the op-by-op reference to float32
    rounding over 4 greedy steps, at d_inner 42 (a unit of in_proj rows straddles x and z), d_state 1."""
    from effprof.modules.mamba import MambaLM, MambaLMConfig
    from effprof.ops import mamba_decode_persistent_triton, mamba_decode_triton

    monkeypatch.setitem(mamba_decode_triton.DECODE_CONFIG, "persistent_max_d_model", 64)
    monkeypatch.setitem(mamba_decode_triton.DECODE_CONFIG, "persistent_programs", programs)
    calls = []
    real = mamba_decode_persistent_triton.step_persistent_triton
    monkeypatch.setattr(mamba_decode_persistent_triton, "step_persistent_triton",
                        lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    torch.manual_seed(1)
    model = MambaLM(MambaLMConfig(d_model=21, n_layer=3, vocab_size=40, d_state=1, conv_bias=conv_bias)).eval()
    with torch.no_grad():
        for mixer in model.mixers:
            mixer.D.copy_(torch.randn_like(mixer.D))
    prompt = torch.randint(0, 40, (1, 3), generator=torch.Generator().manual_seed(2))
    ref, out, ref_cache, cache, _ = _lm_steps_per_layer_kernels(model, prompt, 4)
    assert calls == [3] * 4                                              # 4 steps, all 3 layers in one kernel
    assert rel_err(out, ref) < 1e-5 and (ref[:, 1:] - ref[:, :-1]).abs().amax() > 1e-3
    for layer, ref_layer in zip(cache.layers, ref_cache.layers):
        assert rel_err(layer.conv_state, ref_layer.conv_state) < 1e-6
        assert rel_err(layer.ssm_state, ref_layer.ssm_state) < 1e-5


def test_persistent_layer_table_refuses_mixed_layers():
    """Layers of different shapes, or a tensor off the 16-element grid, cannot share the persistent kernel."""
    pytest.importorskip("triton")
    from effprof.ops.mamba_decode_persistent_triton import KINDS, layer_table

    def tensors(shapes):
        return {kind: [torch.zeros(shape) for shape in shapes] for kind in KINDS}

    found = layer_table(tensors([(4, 8), (4, 8)]))
    assert found is not None and found[1].shape == (2, 12) and found[1][0].eq(0).all()
    assert layer_table(tensors([(4, 8), (4, 9)])) is None
    odd = tensors([(4, 8), (4, 8)])
    odd["A_log"][1] = torch.zeros(40)[3:35].view(4, 8)
    assert layer_table(odd) is None


def test_decode_backend_resolution(monkeypatch):
    from effprof.ops.mamba_decode import resolve_decode_backend

    assert resolve_decode_backend("auto", CPU) == "ref"
    with pytest.raises(UsageError, match="unknown decode backend"):
        resolve_decode_backend("cuda-graphs", CPU)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailable, match="fused triton decode step needs a CUDA device"):
        resolve_decode_backend("triton", CPU)


def test_bulk_rows_prefetch_covers_the_columns_after_the_preloaded_tiles():
    """The bulk L2 prefetch's geometry (`bulk_rows_geometry`): about the asked bytes spread over every row from
    the first column after the pre-loaded tiles, in 16-byte units, never past a row's end; off where nothing is
    asked, nothing is left, or rows or base are not 16-byte aligned."""
    from effprof.ops.l2_prefetch_triton import bulk_rows_geometry

    w = torch.empty(2560, 5120, dtype=torch.bfloat16)                      # Mamba-2.8B's out_proj
    rows, row_bytes, first, per_row = bulk_rows_geometry(w, 8 << 20, 512)
    assert (rows, row_bytes, first) == (2560, 10240, 1024)
    assert per_row % 16 == 0 and 8 << 20 >= rows * per_row > (8 << 20) - 16 * rows
    assert bulk_rows_geometry(w, 1 << 40, 512)[3] == (5120 - 512) * 2     # at most the rest of each row
    assert bulk_rows_geometry(w, 0, 512)[3] == 0
    assert bulk_rows_geometry(w, 8 << 20, 5120)[3] == 0                   # the tiles already cover the rows
    assert bulk_rows_geometry(w[:, 1:], 8 << 20, 512)[3] == 0             # base 2 bytes past an aligned one
    assert bulk_rows_geometry(torch.empty(8, 4100, dtype=torch.bfloat16)[:, :4096], 1 << 20, 0)[3] == 0


@pytest.mark.skipif(not HAS_TRITON or INTERPRETED, reason="needs triton's compiler (not the interpreter)")
def test_bulk_prefetch_compiles_for_an_h100_class_gpu():
    """The state-update and out_proj kernels with bulk L2 prefetches assemble for sm_90 with the ptxas of the triton
    wheel (no GPU needed): one `cp.async.bulk.prefetch.L2` in their PTX where asked for, none when off."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from effprof.ops.mamba_decode_layer_triton import _layer_out_kernel, _layer_ssm_kernel

    names = _layer_ssm_kernel.arg_names
    types = {n: "*bf16" for n in names if n.endswith("_ptr")}
    types.update({n: "*fp32" for n in ("A_log_ptr", "D_ptr", "ssm_ptr", "acc_ptr", "res_ptr", "xacc_ptr",
                                        "acc_zero_ptr")}, count_ptr="*i32", eps="fp32")
    for bulk in (0, 1, 2):
        constants = dict(BLOCK_D=16, R_PAD=256, N_PAD=16, HAS_D=True, FUSE_OUT=False, BLOCK_M=512, BLOCK_MODEL=4096,
                         O_PAD=256, USE_PDL=True, PREFETCH=True, NORM_IN=False, L2_AHEAD=False, EPL_PF=64, LINES=256,
                         BULK=bulk)
        source = ASTSource(fn=_layer_ssm_kernel,
                           signature={n: "constexpr" if n in constants else types.get(n, "i32") for n in names},
                           constexprs={(names.index(k),): v for k, v in constants.items()})
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        assert len(compiled.asm["cubin"]) > 0
        assert compiled.asm["ptx"].count("cp.async.bulk.prefetch.L2.global") == (1 if bulk else 0)
    names = _layer_out_kernel.arg_names
    types.update(wout_ptr="*bf16", bulk_ptr="*bf16", pf_ptr="*bf16")
    for bulk in (False, True):
        constants = dict(BLOCK_M=8, BLOCK_K=512, NUM_STAGES=3, BLOCK_MODEL=4096, O_PAD=256, USE_PDL=True,
                         PREFETCH=False, SPLIT_K=1, NORM_IN=False, L2_SELF=False, L2_AHEAD=False, EPL_W=64,
                         EPL_PF=64, LINES=256, PRE_TILES=1, BULK=bulk)
        source = ASTSource(fn=_layer_out_kernel,
                           signature={n: "constexpr" if n in constants else types.get(n, "i32") for n in names},
                           constexprs={(names.index(k),): v for k, v in constants.items()})
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        assert compiled.asm["ptx"].count("cp.async.bulk.prefetch.L2.global") == (1 if bulk else 0)


needs_cuda = pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_cuda_conv_and_fused_step_match_references(dtype, tol):
    """The compiled kernels (not the interpreter): conv prefill and update, the fused step and add + norm."""
    cuda = torch.device("cuda")
    for batch, channels, L, width, with_bias, silu in CONV_CASES + [(2, 1536, 4099, 4, True, True)]:
        x = torch.randn(batch, 2 * channels, L, device=cuda).to(dtype)[:, :channels]
        weight, bias = torch.randn(channels, width, device=cuda).to(dtype), torch.randn(channels, device=cuda)
        bias = bias.to(dtype) if with_bias else None
        act = "silu" if silu else None
        y = causal_conv1d(x, weight, bias, act, backend="triton")
        expected = loop_causal_conv(x.cpu(), weight.cpu(), None if bias is None else bias.cpu(), silu)
        assert rel_err(y.cpu(), expected) < tol
        state, ref_state = (torch.randn(batch, channels, width, device=cuda).to(dtype) for _ in range(2))
        ref_state.copy_(state)
        out = causal_conv1d_update(x[..., 0], state, weight, bias, act, backend="triton")
        ref = causal_conv1d_update_ref(x[..., 0], ref_state, weight, bias, act)
        assert torch.equal(state, ref_state) and rel_err(out, ref) < tol
    for batch, d_model, d_state, conv_bias in STEP_CASES + [(64, 768, 16, True), (1, 2560, 16, True)]:
        block = _block(d_model, d_state, dtype, conv_bias, seed=d_model, device=cuda)
        hidden = torch.randn(batch, 6, d_model, device=cuda).to(dtype)
        ref, ref_state = _run_steps(block, "ref", hidden, prefill=2)
        out, state = _run_steps(block, "triton", hidden, prefill=2)
        assert rel_err(out, ref) < tol and torch.equal(state.conv_state, ref_state.conv_state)
        assert rel_err(state.ssm_state, ref_state.ssm_state) < tol
    from effprof.modules.mamba import MambaLM, MambaLMConfig  # the per-layer kernels (batch 1, both out_proj paths)
    from effprof.ops import mamba_decode_triton

    for d_model, fuse_out in ((768, True), (2560, False)):
        torch.manual_seed(0)
        model = MambaLM(MambaLMConfig(d_model=d_model, n_layer=2, vocab_size=512), device=cuda, dtype=dtype).eval()
        with pytest.MonkeyPatch.context() as patch:
            patch.setitem(mamba_decode_triton.DECODE_CONFIG, "layer_fuse_out_max_bytes", 1 << 40 if fuse_out else 0)
            prompt = torch.tensor([[3, 5]], device=cuda)
            ref, out, ref_cache, cache, calls = _lm_steps_per_layer_kernels(model, prompt, 4)
        assert calls == [fuse_out] * 8 and rel_err(out, ref) < tol
        assert rel_err(cache.layers[1].ssm_state, ref_cache.layers[1].ssm_state) < tol


@needs_cuda
@pytest.mark.parametrize("config", [
    {"persistent_max_d_model": 1024},                                            # grid barrier, L2 prefetch, head
    {"persistent_max_d_model": 1024, "persistent_l2": False, "persistent_programs": 7, "persistent_num_warps": 4},
    {"layer_l2_self": True, "layer_l2_ahead": True, "layer_l2_ahead_in": True},  # per-layer, out_proj fused
    {"layer_l2_self": True, "layer_l2_ahead": True, "layer_fuse_out_max_bytes": 0, "layer_block_m": 4},
    {"layer_pre_tiles": 2, "layer_fuse_out_max_bytes": 0},                      # first tiles before the wait
    {"layer_l2_bulk_out": 1 << 20, "layer_fuse_out_max_bytes": 0, "layer_block_m": 8},  # bulk L2, after the wait
    {"layer_l2_bulk_out": 1 << 20, "layer_l2_bulk_early": True, "layer_fuse_out_max_bytes": 0, "layer_block_m": 8},
    {"layer_l2_bulk_in": 1 << 20, "layer_fuse_out_max_bytes": 0}])                # the next in_proj, bulk
def test_cuda_persistent_step_and_l2_prefetch_match_reference(config):
    """On the GPU: the persistent whole-step kernel with its real grid barrier, and the per-layer kernels with
    L2 prefetches, give the op-by-op reference's logits and states (bf16, 3 layers: odd, so the last layer's
    buffers are the second pair), and a CUDA graph of the step replays to what the eager step gives."""
    import copy

    from effprof.modules.mamba import MambaLM, MambaLMConfig
    from effprof.ops import mamba_decode_persistent_triton, mamba_decode_triton

    cuda = torch.device("cuda")
    torch.manual_seed(0)
    model = MambaLM(MambaLMConfig(d_model=768, n_layer=3, vocab_size=512), device=cuda, dtype=torch.bfloat16).eval()
    calls = []
    with pytest.MonkeyPatch.context() as patch:
        for key, value in config.items():
            patch.setitem(mamba_decode_triton.DECODE_CONFIG, key, value)
        real = mamba_decode_persistent_triton.step_persistent_triton
        patch.setattr(mamba_decode_persistent_triton, "step_persistent_triton",
                      lambda *a, **k: calls.append(a[2]) or real(*a, **k))
        ref, out, ref_cache, cache, _ = _lm_steps_per_layer_kernels(model, torch.tensor([[3, 5]], device=cuda), 4)
        assert len(calls) == (4 if "persistent_max_d_model" in config else 0)
        assert rel_err(out, ref) < 1e-2
        for layer, ref_layer in zip(cache.layers, ref_cache.layers):  # in_proj's bf16 output may differ by an ulp
            assert rel_err(layer.ssm_state, ref_layer.ssm_state) < 1e-2
            assert rel_err(layer.conv_state, ref_layer.conv_state) < 1e-2
        ids = torch.tensor([[7]], device=cuda)
        eager_cache = copy.deepcopy(cache)
        with torch.no_grad():
            eager = [model.step(ids, eager_cache) for _ in range(2)]
            saved = copy.deepcopy(cache)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm up off the graph on these very states (caches the table)
                model.step(ids, cache)
            torch.cuda.current_stream().wait_stream(stream)
            for layer, kept in zip(cache.layers, saved.layers):
                layer.conv_state.copy_(kept.conv_state)
                layer.ssm_state.copy_(kept.ssm_state)
            calls.clear()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                logits = model.step(ids, cache)
            replayed = []
            for _ in range(2):
                graph.replay()
                replayed.append(logits.clone())
        torch.cuda.synchronize()
        assert len(calls) == (1 if "persistent_max_d_model" in config else 0)  # the capture took that path too
        for a, b in zip(replayed, eager):  # float32 atomics add in any order: to about a bf16 rounding
            assert rel_err(a, b) < 1e-2


def test_block_step_is_the_ops_reference_step():
    """MambaBlock.step's op-by-op path (kept in the module for subclasses) equals mamba_decode_step_ref."""
    import copy

    from effprof.ops.mamba_decode import mamba_decode_step_ref

    block = _block(12, 3, torch.float32)
    state = block.allocate_state(2)
    with torch.no_grad():
        block(torch.randn(2, 5, 12), state)
        hidden = torch.randn(2, 1, 12)
        ref_state = copy.deepcopy(state)
        out = block.step(hidden, state)
        x, z = F.linear(hidden[:, 0], block.in_proj.weight).chunk(2, dim=-1)
        y = mamba_decode_step_ref(x, z, ref_state.conv_state, ref_state.ssm_state, block.conv1d.weight.squeeze(1),
                                  block.conv1d.bias, block.x_proj.weight, block.dt_proj.weight, block.dt_proj.bias,
                                  block.A_log, block.D, out_proj_weight=block.out_proj.weight)
    torch.testing.assert_close(out[:, 0], y)
    torch.testing.assert_close(state.ssm_state, ref_state.ssm_state)
    assert torch.equal(state.conv_state, ref_state.conv_state)


def test_components_report_the_decode_path(tmp_path, fast):
    """The record names the decode path that ran (auto = ref on CPU), and an unavailable one is refused."""
    from effprof.cli.main import main
    from effprof.report.files import read_json

    path = tmp_path / "r.json"
    assert main(["run", "mamba-lm", "--d-model", "16", "--n-layer", "1", "--seq-len", "4", "--mode", "decode",
                 *fast, "--json", str(path)]) == 0
    record = read_json(path)[0]
    assert record["decode_backend"] == "ref" and record["conv_backend"] == "ref" and record["status"] == "ok"
    if not INTERPRETED:
        assert main(["run", "mamba", "--d-model", "16", "--mode", "decode", "--decode-backend", "triton", *fast]) == 2
