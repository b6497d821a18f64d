"""The time-split scan (`effprof.ops.selective_scan_split`): each channel's sequence cut into chunks across
programs, chunk summaries carried over the boundaries. Checked against the reference scan and the
float64 closed form on odd lengths, chunk counts that do not divide L, channel-last and strided inputs,
and through the op and a Mamba block. Runs under TRITON_INTERPRET=1 (in a subprocess, see conftest.py);
`test_cuda_split_kernel_matches_reference` runs the compiled kernel on a GPU.
"""
from __future__ import annotations

import importlib.util

import pytest
import torch

from effprof.ops.selective_scan import available_backends, selective_scan, selective_scan_ref

CPU = torch.device("cpu")
HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRETED = HAS_TRITON and "triton" in available_backends(CPU)
needs_triton = pytest.mark.skipif(not INTERPRETED, reason="needs TRITON_INTERPRET=1 at start (run by the subprocess test)")
needs_cuda = pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="needs a CUDA device")


@pytest.mark.skipif(not HAS_TRITON or INTERPRETED, reason="triton missing, or the triton tests run directly")
def test_triton_split_tests_in_interpreter_subprocess(triton_interpreter):
    assert triton_interpreter(__file__) >= 8


def rel_err(out, ref) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def make_inputs(batch, d_inner, L, d_state, *, channel_last=True, with_D=True, with_z=True, with_bias=True,
                dtype=torch.float32, device=CPU, seed=0):
    """Random scan inputs; channel_last: u, delta, z are (batch, channels, L) views of (batch, L, ·) buffers
    (z the second half of a wider one, as a Mamba block's x/z split) and B, C strided views of x_dbl."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    if channel_last:
        u = rnd(batch, L, d_inner).transpose(1, 2)
        delta = (0.5 * torch.rand(batch, L, d_inner, generator=g) - 0.1).transpose(1, 2)
        z = rnd(batch, L, 2 * d_inner).transpose(1, 2)[:, d_inner:]
        x_dbl = rnd(batch, L, 3 + 2 * d_state)
        B, C = x_dbl[..., 3:3 + d_state].transpose(1, 2), x_dbl[..., 3 + d_state:].transpose(1, 2)
    else:
        u, z = rnd(batch, d_inner, L), rnd(batch, d_inner, L)
        delta = 0.5 * torch.rand(batch, d_inner, L, generator=g) - 0.1
        B, C = rnd(batch, d_state, L), rnd(batch, d_state, L)
    out = dict(u=u, delta=delta, A=-torch.exp(0.5 * rnd(d_inner, d_state)), B=B, C=C,
               D=rnd(d_inner) if with_D else None, z=z if with_z else None,
               delta_bias=0.3 * rnd(d_inner) if with_bias else None)
    return {k: (v.to(device=device, dtype=dtype if k in ("u", "delta", "z", "B", "C") else v.dtype)
                if v is not None else None) for k, v in out.items()}


CASES = [  # (batch, d_inner, L, d_state, channel_last, config)
    ((1, 8, 37, 4, True), {"chunks": 3, "CHUNK": 8}),            # 3 chunks of 16 steps, the last partial
    ((2, 6, 37, 3, False), {"chunks": 2, "CHUNK": 16}),          # contiguous inputs, odd d_state, 6 channels
    ((1, 8, 5, 4, True), {}),                                    # L < CHUNK: one chunk
    ((1, 4, 40, 2, True), {"chunks": 5, "CHUNK": 8}),            # chunks that divide L exactly
    ((1, 10, 21, 5, True), {"chunks": 21, "CHUNK": 8}),          # more chunks asked than CHUNK blocks: capped
]


@needs_triton
@pytest.mark.parametrize("shape, config", CASES)
def test_triton_split_matches_reference(shape, config):
    from effprof.ops.selective_scan_split import selective_scan_split

    *dims, channel_last = shape
    inputs = make_inputs(*dims, channel_last=channel_last)
    y, last = selective_scan_split(**inputs, delta_softplus=True, config=config)
    ref_y, ref_last = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
    assert rel_err(y, ref_y) < 1e-5 and rel_err(last, ref_last) < 1e-5
    assert y.stride() == (inputs["u"].transpose(1, 2).contiguous().transpose(1, 2).stride() if channel_last
                          else inputs["u"].stride())                         # y in u's layout


@needs_triton
def test_triton_split_matches_the_closed_form_without_options():
    """No D, z, bias or softplus: the float64 closed form of test_selective_scan.py, 4 chunks."""
    from test_selective_scan import closed_form_scan

    from effprof.ops.selective_scan_split import selective_scan_split

    inputs = make_inputs(1, 6, 29, 3, with_D=False, with_z=False, with_bias=False, seed=3)
    y, last = selective_scan_split(**inputs, config={"chunks": 4, "CHUNK": 8})
    exact_y, exact_last = closed_form_scan(**inputs, delta_softplus=False)
    assert rel_err(y, exact_y) < 1e-5 and rel_err(last, exact_last) < 1e-5


@needs_triton
def test_triton_split_chosen_explicitly_through_the_op_keeps_the_layout():
    from effprof.ops import selective_scan_triton as kernels

    inputs = make_inputs(1, 8, 23, 4, dtype=torch.bfloat16)
    y, last = kernels.selective_scan_triton(**inputs, delta_softplus=True,
                                            config={"kernel": "split", "chunks": 2, "CHUNK": 8})
    ref_y, ref_last = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
    assert rel_err(y, ref_y) < 1e-2 and rel_err(last, ref_last) < 1e-3
    op_y = selective_scan(**inputs, delta_softplus=True, backend="triton")   # the op: lanes/tl path on CPU
    assert op_y.stride(1) == 1 and rel_err(op_y, ref_y) < 1e-2


@needs_triton
def test_triton_mamba_block_with_split_scan_equals_ref(monkeypatch):
    """A channel-last Mamba block through the split kernel (forced) equals the all-ref block, with state."""
    from effprof.modules.mamba import MambaBlock
    from effprof.ops import selective_scan_triton as kernels

    monkeypatch.setattr(kernels, "occupancy_config", lambda *a: {"kernel": "split", "chunks": 3, "CHUNK": 8})
    torch.manual_seed(0)
    block = MambaBlock(16, d_state=4)
    h = torch.randn(1, 37, 16)
    s_ref, s_tri = block.allocate_state(1), block.allocate_state(1)
    with torch.no_grad():
        ref = block(h, s_ref)
        block.scan_backend, block.conv_backend = "triton", "triton"
        out = block(h, s_tri)
    assert rel_err(out, ref) < 1e-5
    assert rel_err(s_tri.ssm_state, s_ref.ssm_state) < 1e-5
    torch.testing.assert_close(s_tri.conv_state, s_ref.conv_state)


def test_split_plan_fills_the_gpu_and_caps_the_chunks():
    pytest.importorskip("triton")
    from effprof.ops.selective_scan_split import split_plan

    p = split_plan(1, 5120, 793, 132)          # Cobra's prefill on an H100/H200: 160 blocks of 32 channels
    assert p["BLOCK_D"] == 32 and p["K"] * 160 >= 4 * 132 and p["T"] % p["CHUNK"] == 0
    assert (p["K"] - 1) * p["T"] < 793 <= p["K"] * p["T"]                     # K chunks cover L, none empty
    assert split_plan(1, 1536, 16384, 132)["K"] == 11                        # 48 blocks: ceil(528 / 48)
    assert split_plan(1, 1536, 40, 132)["K"] == 2                            # at most one chunk per CHUNK steps
    assert split_plan(64, 5120, 4096, 132)["K"] == 1                         # big batch: no split


@needs_cuda
@pytest.mark.parametrize("shape, config", CASES + [((1, 300, 1000, 16, True), {}), ((2, 70, 300, 16, False), {})])
def test_cuda_split_kernel_matches_reference(shape, config):
    from effprof.ops.selective_scan_split import selective_scan_split

    *dims, channel_last = shape
    cuda = torch.device("cuda")
    for dtype, tol, fast in ((torch.float32, 1e-5, False), (torch.bfloat16, 1e-2, True)):
        inputs = make_inputs(*dims, channel_last=channel_last, dtype=dtype, device=cuda)
        y, last = selective_scan_split(**inputs, delta_softplus=True, config=config, fast_math=fast)
        ref_y, ref_last = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
        assert rel_err(y, ref_y) < tol and rel_err(last, ref_last) < max(tol, 1e-3)


@needs_triton
def test_triton_carry_kernel_turns_chunk_states_into_entering_states():
    """`selective_scan_lanes._carry_kernel` (plain triton, so the interpreter runs it): hend[k] <- the state
    entering chunk k + 1 = exp(A Σ_k) H_k + hend[k], H_0 = 0, against the same recurrence in float64."""
    from effprof.ops.selective_scan_lanes import _carry_kernel

    g = torch.Generator().manual_seed(5)
    batch, K, N, d_inner = 2, 4, 3, 5
    hend = torch.randn(batch, K, N, d_inner, generator=g)
    dsum = torch.rand(batch, K, d_inner, generator=g)
    A = -torch.rand(d_inner, N, generator=g)
    expect = hend.double().clone()
    H = torch.zeros(batch, N, d_inner, dtype=torch.float64)
    for k in range(K - 1):
        H = torch.exp(A.double().t()[None] * dsum.double()[:, k, None, :]) * H + hend.double()[:, k]
        expect[:, k] = H
    _carry_kernel[(batch, 1)](hend, dsum, A, d_inner, K, N=N, BLOCK=16)
    assert rel_err(hend, expect) < 1e-6


@needs_cuda
@pytest.mark.parametrize("shape, time_chunks", [((1, 300, 1000, 16, True), 3), ((1, 64, 777, 16, True), 5),
                                                ((2, 70, 300, 16, False), 2), ((1, 40, 500, 3, True), 4),
                                                ((1, 300, 1000, 16, True), 1), ((1, 5120, 793, 16, True), None)])
def test_cuda_lanes_time_split_matches_reference(shape, time_chunks):
    """The lanes kernel on channel-last or contiguous inputs, its sequence split into chunks across programs
    (None: the automatic split of `lanes_time_chunks`); y in u's layout, the last state from the last chunk."""
    from effprof.ops.selective_scan_triton import selective_scan_triton

    *dims, channel_last = shape
    cuda = torch.device("cuda")
    config = {"kernel": "lanes"} if time_chunks is None else {"kernel": "lanes", "time_chunks": time_chunks}
    for dtype, tol, fast in ((torch.float32, 1e-5, False), (torch.bfloat16, 1e-2, True)):
        inputs = make_inputs(*dims, channel_last=channel_last, dtype=dtype, device=cuda)
        y, last = selective_scan_triton(**inputs, delta_softplus=True, config={**config, "fast_math": fast})
        ref_y, ref_last = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
        assert rel_err(y, ref_y) < tol and rel_err(last, ref_last) < max(tol, 1e-3)
        assert (y.stride(1) == 1) == channel_last


# The batch-1 lanes configs (time parts across lanes, fewer states per thread, channel-fast loads), through
# selective_scan_triton on a GPU: odd L, L = 1, d_state 1 (the Gluon kernel), 3, 16, 64, several programs and
# a partial channel block, channel-last and contiguous inputs, with and without D, z and the bias
TIME_PART_CONFIGS = {
    "tp4-w8": {"kernel": "lanes", "time_parts": 4, "num_warps": 8, "CHUNK": 64, "sub": 32},
    "tp4-w4-io-channel": {"kernel": "lanes", "time_parts": 4, "CHUNK": 64, "sub": 32, "io": "channel"},
    "tp2-io-time": {"kernel": "lanes", "time_parts": 2, "io": "time"},
    "tp8-sub64": {"kernel": "lanes", "time_parts": 8, "CHUNK": 64, "sub": 64, "num_warps": 8},
    "s2-w8-io-channel": {"kernel": "lanes", "states_per_thread": 2, "num_warps": 8, "io": "channel"},
    "tp4-k3": {"kernel": "lanes", "time_parts": 4, "CHUNK": 64, "sub": 32, "time_chunks": 3},  # and across programs
    "s4-w2-io-channel": {"kernel": "lanes", "num_warps": 2, "io": "channel"},       # BATCH1_LANES_CONFIG
    "auto": None,                                                                  # what the dispatcher picks
}
TIME_PART_SHAPES = [  # (batch, d_inner, L, d_state, channel_last), with D / z / bias
    ((1, 300, 1000, 16, True), (True, True, True)), ((1, 64, 777, 16, True), (True, False, True)),
    ((2, 70, 300, 16, False), (True, True, True)), ((1, 40, 501, 3, True), (False, True, False)),
    ((1, 24, 1, 16, True), (True, True, True)), ((1, 33, 129, 64, True), (True, True, True)),
    ((1, 20, 65, 1, True), (True, True, True)),
]


@needs_cuda
@pytest.mark.parametrize("name", list(TIME_PART_CONFIGS))
@pytest.mark.parametrize("shape, flags", TIME_PART_SHAPES)
def test_cuda_lanes_time_parts_match_reference(name, shape, flags):
    from effprof.ops.selective_scan_triton import selective_scan_triton

    *dims, channel_last = shape
    with_D, with_z, with_bias = flags
    cuda = torch.device("cuda")
    config = TIME_PART_CONFIGS[name] or {}
    for dtype, tol, fast in ((torch.float32, 1e-5, False), (torch.bfloat16, 1e-2, True)):
        inputs = make_inputs(*dims, channel_last=channel_last, with_D=with_D, with_z=with_z, with_bias=with_bias,
                             dtype=dtype, device=cuda, seed=dims[2])
        y, last = selective_scan_triton(**inputs, delta_softplus=True, config={**config, "fast_math": fast})
        ref_y, ref_last = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
        assert rel_err(y, ref_y) < tol and rel_err(last, ref_last) < max(tol, 1e-3), (rel_err(y, ref_y),
                                                                                       rel_err(last, ref_last))
        if dims[3] > 1:  # (d_state 1 runs the Gluon kernel on contiguous copies; the op restores the layout)
            assert (y.stride(1) == 1) == channel_last
