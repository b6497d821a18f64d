"""The lanes scan kernel (time inside a thread, states across lanes) without a GPU: its decomposition in
plain PyTorch against the reference, its launch plan, and its sm_90 compilation (registers, no local
memory, one exp2 per element). `test_cuda_kernels_match_reference` in test_selective_scan.py runs the
kernel itself on a GPU."""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

from effprof.ops.selective_scan import selective_scan_ref

HAS_GLUON = importlib.util.find_spec("triton") is not None and importlib.util.find_spec("triton.experimental.gluon")
pytestmark = pytest.mark.skipif(not HAS_GLUON, reason="needs triton with Gluon (3.5+)")


def rel_err(out, ref) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def make_inputs(batch, d_inner, L, d_state, with_D=True, with_z=True, with_bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    return dict(u=rnd(batch, d_inner, L), delta=0.5 * torch.rand(batch, d_inner, L, generator=g) - 0.1,
                A=-torch.exp(0.5 * rnd(d_inner, d_state)), B=rnd(batch, d_state, L), C=rnd(batch, d_state, L),
                D=rnd(d_inner) if with_D else None, z=rnd(batch, d_inner, L) if with_z else None,
                delta_bias=0.3 * rnd(d_inner) if with_bias else None)


@pytest.mark.parametrize("shape, config", [
    ((2, 5, 37, 3, True, True, True), {}),                              # d_state 3: padded to 4, 2 lanes of 2
    ((1, 4, 1, 16, False, False, False), {}),                           # L = 1
    ((2, 3, 70, 16, True, True, True), {"states_per_thread": 8, "CHUNK": 16}),  # several chunks, a partial one
    ((1, 2, 19, 64, False, True, False), {"states_per_thread": 1}),     # 64 states: at least 2 per lane
    ((1, 3, 45, 16, True, False, True), {"states_per_thread": 2, "CHUNK": 32}),
    # time parts: each sub-block's steps split over lanes, composed by (decay, state) pairs
    ((2, 5, 37, 3, True, True, True), {"time_parts": 2}),
    ((1, 3, 70, 16, True, True, True), {"time_parts": 4, "CHUNK": 64, "sub": 32}),   # several chunks, odd L
    ((1, 4, 1, 16, False, False, False), {"time_parts": 4, "CHUNK": 64, "sub": 32}),  # L = 1
    ((1, 2, 19, 64, False, True, False), {"time_parts": 8}),                          # clamped to 2 (16 lanes)
    ((1, 3, 45, 16, True, False, True), {"states_per_thread": 8, "time_parts": 8, "sub": 8}),  # 1 step per part
])
def test_lanes_decomposition_matches_reference(shape, config):
    from effprof.ops.selective_scan_lanes import scan_lanes_model
    batch, d_inner, L, d_state, with_D, with_z, with_bias = shape
    inputs = make_inputs(batch, d_inner, L, d_state, with_D, with_z, with_bias, seed=L + d_state)
    ref_y, ref_last = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
    y, last = scan_lanes_model(**inputs, delta_softplus=True, config=config)
    assert y.shape == ref_y.shape and last.shape == ref_last.shape
    assert rel_err(y, ref_y) < 1e-5 and rel_err(last, ref_last) < 1e-5


def test_lanes_plan():
    from effprof.ops.selective_scan_lanes import io_geometry, lanes_geometry, plan
    assert plan(1, 4096, {}) is None                  # one state: no lanes to spread over (Gluon kernel)
    p = plan(16, 4096, {})
    assert (p["chunk"], p["states_per_thread"], p["sub"], p["num_warps"], p["lane_order"]) == (32, 4, 16, 4, 2)
    assert lanes_geometry(16, 4, 4) == (16, 4, 32)    # 4 lanes per channel, 8 channels per warp
    assert plan(16, 1, {})["chunk"] == 16             # at least 4 steps per lane, even for L = 1
    assert plan(64, 100, {})["lane_order"] == 1       # 16 lane groups > 4 warps: channels on the low lane bits
    assert plan(3, 100, {})["states_per_thread"] == 2  # padded to 4 states: 2 lanes of 2
    assert lanes_geometry(64, 1, 4) == (64, 2, 4)     # at most 32 lanes per channel
    assert plan(16, 4096, {"states_per_thread": 1, "CHUNK": 32})["chunk"] == 64  # 16 lanes x 4 steps
    # time parts: threads per channel = lanes x parts (at most 32), BLOCK_D shrinks accordingly
    p = plan(16, 793, {"time_parts": 4, "CHUNK": 64, "sub": 32})
    assert (p["time_parts"], p["chunk"], p["sub"]) == (4, 64, 32)
    assert lanes_geometry(16, 4, 4, 1, 4) == (16, 4, 8)  # 16 threads per channel, 8 channels per program
    assert plan(64, 100, {"time_parts": 8})["time_parts"] == 2  # 16 lanes of a channel: 2 parts fill the warp
    assert plan(16, 100, {"time_parts": 3})["time_parts"] == 4  # rounded up to a power of two
    assert plan(16, 4096, {"time_parts": 8, "sub": 4})["sub"] == 8  # at least one step per part
    assert io_geometry(8, 64, 4) == (4, 2, 1)   # 4 values per thread: 4 channels, 2 threads along channels
    assert io_geometry(32, 32, 4) == (8, 4, 1)  # 8 channels (16 bytes of bf16) per thread, 4 threads
    assert io_geometry(64, 64, 8) == (8, 8, 1)


def test_lanes_kernel_compiles_for_hopper_with_one_exp2_per_element():
    """Compile the kernel for sm_90 with triton's ptxas (no GPU needed): no local memory, at most 128
    registers (4 programs of 4 warps per SM), and in the chunk loop exactly one MUFU per (channel,
    state, step) element plus three per (channel, step) (softplus' ex2 and lg2, silu's tanh), i.e. the
    per-channel work is not repeated in the lanes of a channel."""
    triton = pytest.importorskip("triton")
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not cuobjdump.exists():
        pytest.skip("triton's wheel ships no cuobjdump here")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "diagnostics"))
    from sass_scan import compile_kernel, loop_mix, sass_of

    from effprof.ops.selective_scan_lanes import _scan_lanes_kernel
    chunk, states, lanes = 32, 4, 4
    constants = dict(N=16, N_PAD=16, S=states, HAS_D=True, HAS_Z=True, HAS_DELTA_BIAS=True, DELTA_SOFTPLUS=True,
                     CHUNK=chunk, SUB=16, ROWS=1, PAD=True, LANE_ORDER=2, EVEN_L=True, EVEN_D=True, FAST_MATH=True,
                     POLY_EVERY=0, num_warps=4)  # the default of selective_scan_triton.DEFAULT_CONFIG
    compiled = compile_kernel(_scan_lanes_kernel, constants, 4)
    assert ".local" not in compiled.asm["ptx"]
    sass, usage = sass_of(compiled)
    assert int(re.search(r"STACK:(\d+)", usage).group(1)) == 0
    assert int(re.search(r"REG:(\d+)", usage).group(1)) <= 128, usage
    count, mix = loop_mix(sass)
    assert mix["MUFU"] == chunk * states + 3 * chunk // lanes
    assert count < 7.7 * chunk * states  # 7.45 SASS instructions per element when written (scan_notes.md)


@pytest.mark.parametrize("channel_last, mode", [(False, 1), (False, 2), (True, 0), (True, 2)])
def test_lanes_kernel_time_split_and_strided_modes_compile_within_the_register_budget(channel_last, mode):
    """The time split's launches (MODE 1: chunk end states, MODE 2: output from the carried state) and
    channel-last strides (time stride a run-time argument) compile for sm_90 without local memory and
    within the 128 registers of 4 resident programs, like the default; MODE 1 skips silu's tanh."""
    triton = pytest.importorskip("triton")
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not cuobjdump.exists():
        pytest.skip("triton's wheel ships no cuobjdump here")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "diagnostics"))
    from sass_scan import compile_kernel, lanes_constants, loop_mix, sass_of

    from effprof.ops.selective_scan_lanes import _scan_lanes_kernel
    constants = dict(N=16, N_PAD=16, S=4, HAS_D=True, HAS_Z=True, HAS_DELTA_BIAS=True, DELTA_SOFTPLUS=True,
                     CHUNK=32, SUB=16, ROWS=1, PAD=True, LANE_ORDER=2, EVEN_L=False, EVEN_D=True, FAST_MATH=True,
                     POLY_EVERY=0, num_warps=4, **lanes_constants(channel_last, mode))
    compiled = compile_kernel(_scan_lanes_kernel, constants, 4)
    assert ".local" not in compiled.asm["ptx"]
    sass, usage = sass_of(compiled)
    assert int(re.search(r"STACK:(\d+)", usage).group(1)) == 0
    assert int(re.search(r"REG:(\d+)", usage).group(1)) <= 128, usage
    _, mix = loop_mix(sass)
    assert mix["MUFU"] == 32 * 4 + (2 if mode == 1 else 3) * 32 // 4


def test_time_split_first_launch_reads_no_C_and_stores_no_partial_y():
    """The time split's first launch (MODE 1) keeps only each chunk's end state and Σ delta: it never loads C
    (C_ptr is not even read from the kernel's parameters) and its chunk loop stores no partial y to shared
    memory, so it issues fewer shared stores and loads than the last launch (MODE 2), which makes y."""
    triton = pytest.importorskip("triton")
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not cuobjdump.exists():
        pytest.skip("triton's wheel ships no cuobjdump here")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "diagnostics"))
    from sass_scan import compile_kernel, lanes_constants, loop_mix, sass_of

    from effprof.ops.selective_scan_lanes import _scan_lanes_kernel
    c_param = f"_scan_lanes_kernel_param_{_scan_lanes_kernel.arg_names.index('C_ptr')}]"
    mixes = {}
    for mode in (1, 2):
        constants = dict(N=16, N_PAD=16, S=4, HAS_D=True, HAS_Z=True, HAS_DELTA_BIAS=True, DELTA_SOFTPLUS=True,
                         CHUNK=32, SUB=16, ROWS=1, PAD=True, LANE_ORDER=2, EVEN_L=False, EVEN_D=True,
                         FAST_MATH=True, POLY_EVERY=0, num_warps=4, **lanes_constants(False, mode))
        compiled = compile_kernel(_scan_lanes_kernel, constants, 4)
        assert (c_param in compiled.asm["ptx"]) == (mode == 2)
        _, mixes[mode] = loop_mix(sass_of(compiled)[0])
    assert mixes[1]["STS"] < mixes[2]["STS"] and mixes[1]["LDS"] < mixes[2]["LDS"]


def test_batch1_config_compiles_for_hopper_with_one_exp2_per_element():
    """The batch-1 config of `selective_scan_triton` (time parts across lanes, channel-fast loads of channel-last
    inputs with channel stride 1) compiles for sm_90 without local memory, and its chunk loop still has one
    MUFU per (channel, state, step) element plus three per (channel, step): the warp-level scan over time
    parts adds shuffles and multiplies, no second exponential."""
    triton = pytest.importorskip("triton")
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not cuobjdump.exists():
        pytest.skip("triton's wheel ships no cuobjdump here")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "diagnostics"))
    from sass_scan import compile_kernel, lanes_constants, loop_mix, sass_of

    from effprof.ops.selective_scan_lanes import _scan_lanes_kernel, io_geometry, lanes_geometry, plan
    from effprof.ops.selective_scan_triton import BATCH1_LANES_CONFIG
    p = plan(16, 793, BATCH1_LANES_CONFIG)
    n_pad, s, block_d = lanes_geometry(16, p["states_per_thread"], p["num_warps"], p["rows"], p["time_parts"])
    tp, chunk, warps = p["time_parts"], p["chunk"], p["num_warps"]
    vd, td, wd = io_geometry(block_d, chunk, warps) if p["io"] == "channel" else (0, 1, 1)
    constants = dict(lanes_constants(channel_last=True, channel_stride_one=True), N=16, N_PAD=n_pad, S=s, HAS_D=True,
                     HAS_Z=True, HAS_DELTA_BIAS=True, DELTA_SOFTPLUS=True, CHUNK=chunk, SUB=p["sub"], ROWS=p["rows"],
                     PAD=True, LANE_ORDER=p["lane_order"], TP=tp, IO_VD=vd, IO_TD=td, IO_WD=wd, EVEN_L=False,
                     EVEN_D=True, FAST_MATH=True, POLY_EVERY=0, num_warps=warps)
    compiled = compile_kernel(_scan_lanes_kernel, constants, warps)
    assert ".local" not in compiled.asm["ptx"]
    sass, usage = sass_of(compiled)
    assert int(re.search(r"STACK:(\d+)", usage).group(1)) == 0
    _, mix = loop_mix(sass)
    per_thread_elements = chunk // tp * s                          # a thread's steps of the chunk x its states
    per_thread_steps = block_d * chunk // (32 * warps)             # (channel, step) pairs of phases 1 and 3
    assert mix["MUFU"] == per_thread_elements + 3 * per_thread_steps
    if tp > 1:
        assert mix["SHFL"] > 0                                     # the scan across time parts: warp shuffles
