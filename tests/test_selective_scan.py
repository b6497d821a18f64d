"""Selective scan: reference vs an independent closed form, every backend vs the reference, the decode
step vs the scan, backend resolution, and the FLOP formula as FlopCounterMode sees it.

The triton backend runs on CPU tensors under TRITON_INTERPRET=1, at small sizes (the interpreter is slow).
Triton reads that variable when it is first imported, and `torch.utils.flop_counter` imports triton, so
it must be set before Python starts: `test_triton_tests_in_interpreter_subprocess` reruns this file's
triton tests in a child process with it set (they run directly when the suite itself runs with it).
"""
from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from effprof.core.errors import BackendUnavailable, UsageError
from effprof.ops.selective_scan import (BACKENDS, available_backends, resolve_backend, selective_scan,
                                        selective_scan_flops, selective_scan_ref, selective_state_update)

CPU = torch.device("cpu")
HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRETED = HAS_TRITON and "triton" in available_backends(CPU)  # TRITON_INTERPRET=1 from the start
needs_triton = pytest.mark.skipif(not INTERPRETED, reason="needs triton and TRITON_INTERPRET=1 at start "
                                  "(run by test_triton_tests_in_interpreter_subprocess)")


@pytest.mark.skipif(not HAS_TRITON or INTERPRETED, reason="triton missing, or the triton tests run directly")
def test_triton_tests_in_interpreter_subprocess(triton_interpreter):
    assert triton_interpreter(__file__) >= 11  # the 11 triton checks ran


@pytest.mark.skipif(not HAS_TRITON or INTERPRETED, reason="needs triton imported without the interpreter")
def test_triton_interpret_set_too_late_is_reported(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(BackendUnavailable, match="before starting Python"):
        resolve_backend("triton", CPU)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def make_inputs(batch, d_inner, L, d_state, *, dtype=torch.float32, with_D=True, with_z=True, with_bias=True,
                seed=0):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    return dict(
        u=rnd(batch, d_inner, L).to(dtype),
        delta=(0.5 * torch.rand(batch, d_inner, L, generator=g) - 0.1).to(dtype),
        A=-torch.exp(0.5 * rnd(d_inner, d_state)),  # negative real, as Mamba's A = -exp(A_log)
        B=rnd(batch, d_state, L).to(dtype),
        C=rnd(batch, d_state, L).to(dtype),
        D=rnd(d_inner) if with_D else None,
        z=rnd(batch, d_inner, L).to(dtype) if with_z else None,
        delta_bias=0.3 * rnd(d_inner) if with_bias else None,
    )


def closed_form_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """h_t = sum_{s<=t} exp(A (S_t - S_s)) delta_s B_s u_s with S the inclusive cumulative sum of delta,
    in float64: the unrolled recurrence, written independently of the step-by-step reference."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = torch.nn.functional.softplus(delta)
    S = delta.cumsum(-1)                                                      # (b, d, L)
    L = u.shape[-1]
    causal = torch.ones(L, L, dtype=torch.bool).tril()                         # [t, s]: s <= t
    gap = (S[..., :, None] - S[..., None, :]).masked_fill(~causal, 0)           # (b, d, t, s)
    weight = torch.exp(gap[..., None] * A[None, :, None, None, :]) * causal[..., None]  # (b, d, t, s, n)
    drive = (delta * u)[..., None] * B.transpose(1, 2)[:, None]                # (b, d, s, n)
    h = torch.einsum("bdtsn,bdsn->bdtn", weight, drive)
    y = torch.einsum("bdtn,bnt->bdt", h, C)
    if D is not None:
        y = y + D.double()[:, None] * u
    if z is not None:
        y = y * torch.nn.functional.silu(z.double())
    return y, h[..., -1, :]


@pytest.mark.parametrize("shape", [(2, 3, 9, 4), (1, 2, 1, 1), (2, 4, 17, 7)])
@pytest.mark.parametrize("softplus", [False, True])
def test_reference_matches_closed_form(shape, softplus):
    inputs = make_inputs(*shape)
    y, last = selective_scan_ref(**inputs, delta_softplus=softplus, return_last_state=True)
    y_closed, last_closed = closed_form_scan(**inputs, delta_softplus=softplus)
    assert y.shape == shape[:3] and last.shape == (shape[0], shape[1], shape[3]) and last.dtype == torch.float32
    assert rel_err(y, y_closed) < 1e-5 and rel_err(last, last_closed) < 1e-5


# (batch, d_inner, L, d_state, with_D, with_z, with_bias, softplus); odd L, L = 1, d_state 1..64
TRITON_CASES = [
    (2, 5, 37, 3, True, True, True, True),
    (1, 4, 1, 16, False, False, False, False),
    (2, 3, 70, 1, True, False, True, False),
    (1, 6, 19, 64, False, True, False, True),
    (1, 5, 130, 16, True, True, False, True),
]


def _check_backend(backend, case, dtype, tol, config=None, device=CPU):
    batch, d_inner, L, d_state, with_D, with_z, with_bias, softplus = case
    inputs = make_inputs(batch, d_inner, L, d_state, dtype=dtype, with_D=with_D, with_z=with_z,
                         with_bias=with_bias, seed=L * 100 + d_state)
    inputs = {k: v.to(device) if v is not None else None for k, v in inputs.items()}
    ref_y, ref_last = selective_scan_ref(**inputs, delta_softplus=softplus, return_last_state=True)
    if config is None:
        y, last = selective_scan(**inputs, delta_softplus=softplus, return_last_state=True, backend=backend)
    else:
        from effprof.ops.selective_scan_triton import selective_scan_triton
        y, last = selective_scan_triton(**inputs, delta_softplus=softplus, config=config)
    assert y.shape == ref_y.shape and y.dtype == dtype and last.dtype == torch.float32
    assert torch.isfinite(y.float()).all()
    assert rel_err(y, ref_y) < tol, rel_err(y, ref_y)
    assert rel_err(last, ref_last) < 1e-5


@needs_triton
# the 130 steps of the last case (5 chunks, d_state 16) take the interpreter seconds: L 37 and 70 cross chunks in CI
@pytest.mark.parametrize("case", TRITON_CASES[:-1] + [pytest.param(TRITON_CASES[-1], marks=pytest.mark.slow)])
def test_triton_matches_reference_float32(case):
    assert "triton" in available_backends(CPU)  # interpret mode + CPU tensors
    _check_backend("triton", case, torch.float32, 1e-5)


@needs_triton
@pytest.mark.parametrize("case", TRITON_CASES[:2])
def test_triton_matches_reference_bf16(case):
    # The reference reads the same bf16 inputs; the gap is the final rounding to bf16 (the interpreter
    # truncates float32 -> bf16 where the GPU rounds to nearest).
    _check_backend("triton", case, torch.bfloat16, 1e-2)


@needs_triton
@pytest.mark.parametrize("config, case", [
    ({"BLOCK_D": 4, "CHUNK": 8, "num_warps": 1}, TRITON_CASES[0]),
    ({"BLOCK_D": 2, "CHUNK": 32, "num_stages": 2}, TRITON_CASES[0]),
    ({"BLOCK_D": 4, "CHUNK": 16, "pair_states": True}, (2, 5, 37, 4, True, True, True, True)),  # two states per scan
    ({"BLOCK_D": 4, "CHUNK": 16, "pair_states": True}, TRITON_CASES[0]),  # odd d_state: one state per scan
])
def test_triton_variants_match_reference(config, case):
    # (fast_unpack is inline PTX: the interpreter cannot run it; bench_scan.py checks it on the GPU)
    _check_backend("triton", case, torch.float32, 1e-5, config=config)


needs_cuda = pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()),
                                reason="needs a CUDA device: the Gluon kernel has no interpreter")
# TRITON_CASES plus one with several programs and chunks, neither size a multiple of the blocks
CUDA_CASES = TRITON_CASES + [(2, 70, 300, 16, True, True, True, True)]


# "kernel" and "gluon" explicit (these small shapes would otherwise get the lanes kernel with a time split);
# the lanes kernel (selective_scan_lanes) first, on every case; its variants (as in bench_scan.py's
# TUNE_CONFIGS) on odd d_state and L, 64 states, and several programs and chunks (compile time on the GPU)
CUDA_CONFIGS = {
    "lanes_order_warp": {"kernel": "lanes", "sub": 16, "lane_order": "warp"},  # DEFAULT_CONFIG's on CUDA
    "lanes_sub16": {"kernel": "lanes", "sub": 16},
    "lanes_sub16_order_d": {"kernel": "lanes", "sub": 16, "lane_order": "d"},
    "lanes_s2r2_order_d": {"kernel": "lanes", "states_per_thread": 2, "rows": 2, "sub": 4, "lane_order": "d"},
    "lanes": {"kernel": "lanes"},
    "lanes-s8-w2": {"kernel": "lanes", "states_per_thread": 8, "num_warps": 2},
    "lanes-s1-chunk64": {"kernel": "lanes", "states_per_thread": 1, "CHUNK": 64, "sub": 16},
    "lanes-chunk16-poly8": {"kernel": "lanes", "CHUNK": 16, "sub": 16, "poly_every": 8},
    "lanes-unpadded": {"kernel": "lanes", "pad": False},
    "lanes-rows2": {"kernel": "lanes", "rows": 2, "sub": 4, "num_warps": 2},
    "gluon": {"kernel": "chunked", "gluon": True, "CHUNK": 32},
    "gluon-chunk64": {"kernel": "chunked", "gluon": True, "CHUNK": 64},
    "gluon-chunk8": {"kernel": "chunked", "gluon": True, "CHUNK": 8, "num_warps": 1},
    "tl": {"kernel": "chunked", "gluon": False},
    "gluon-poly2": {"kernel": "chunked", "gluon": True, "CHUNK": 32, "poly_every": 2},
}
CUDA_PAIRS = [pytest.param(config, case, id=f"{name}-case{i}") for name, config in CUDA_CONFIGS.items()
              for i, case in enumerate(CUDA_CASES)
              if name in ("lanes_order_warp", "lanes", "lanes_sub16", "lanes_sub16_order_d")
              or not name.startswith("lanes") or i in (0, 3, 5)]


@needs_cuda
@pytest.mark.parametrize("config, case", CUDA_PAIRS)
def test_cuda_kernels_match_reference(case, config):
    # exact math for the float32 bound; fast math (approximate lg2/tanh) with bf16 inputs
    _check_backend("triton", case, torch.float32, 1e-5, config={**config, "fast_math": False},
                   device=torch.device("cuda"))
    _check_backend("triton", case, torch.bfloat16, 1e-2, config=config, device=torch.device("cuda"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_available_backend_matches_reference_triton_too(backend):
    if backend not in available_backends(CPU):
        pytest.skip(f"{backend} is not available on CPU here")
    _check_backend(backend, (2, 3, 11, 5, True, True, True, True), torch.float32, 1e-5)


@pytest.mark.parametrize("backend", ["ref", pytest.param("triton", marks=needs_triton)])
def test_state_update_steps_equal_the_scan_triton_too(backend):
    batch, d_inner, L, d_state = 2, 5, 13, 6
    inputs = make_inputs(batch, d_inner, L, d_state, seed=7)
    ref_y, ref_last = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
    state = torch.zeros(batch, d_inner, d_state)
    ys = [selective_state_update(state, inputs["u"][..., t], inputs["delta"][..., t], inputs["A"],
                                 inputs["B"][..., t], inputs["C"][..., t], inputs["D"], inputs["z"][..., t],
                                 dt_bias=inputs["delta_bias"], dt_softplus=True, backend=backend)
          for t in range(L)]
    assert rel_err(torch.stack(ys, -1), ref_y) < 1e-5
    assert rel_err(state, ref_last) < 1e-5  # updated in place


@pytest.mark.parametrize("backend", ["ref", pytest.param("triton", marks=needs_triton)])
def test_scan_writes_the_last_state_into_state_out_triton_too(backend):
    """state_out (a decoding cache's SSM state) receives the last state in place and y is unchanged; the
    FLOP count is the scan's; a state_out of the wrong shape, dtype or layout is refused in one line."""
    inputs = make_inputs(2, 5, 13, 6, seed=8)
    ref_y, ref_last = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
    state = torch.full((2, 5, 6), float("nan"))                 # every value is overwritten
    with FlopCounterMode(display=False) as counter:
        y = selective_scan(**inputs, delta_softplus=True, backend=backend, state_out=state)
    assert counter.get_total_flops() == selective_scan_flops(2, 5, 13, 6, True, True)
    assert rel_err(y, ref_y) < 1e-5 and rel_err(state, ref_last) < 1e-5
    for bad in (torch.zeros(2, 5, 7), torch.zeros(2, 5, 6, dtype=torch.float64), torch.zeros(2, 6, 5).transpose(1, 2)):
        with pytest.raises(ValueError, match="state_out must be a contiguous float32"):
            selective_scan(**inputs, backend=backend, state_out=bad)
    with pytest.raises(ValueError, match="not both"):
        selective_scan(**inputs, backend=backend, state_out=state, return_last_state=True)


def test_backend_resolution(monkeypatch):
    assert resolve_backend("auto", CPU) == "ref" and resolve_backend("ref", CPU) == "ref"
    with pytest.raises(BackendUnavailable, match="mamba-ssm"):
        resolve_backend("mamba-ssm", CPU)
    with pytest.raises(BackendUnavailable):
        selective_scan(**make_inputs(1, 2, 3, 2), backend="mamba-ssm")
    with pytest.raises(UsageError, match="unknown scan backend"):
        resolve_backend("cuda-magic", CPU)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert available_backends(CPU) == ["ref"]
    with pytest.raises(BackendUnavailable, match="CUDA device"):
        resolve_backend("triton", CPU)


@pytest.mark.parametrize("with_D,with_z", [(False, False), (True, False), (True, True)])
def test_flop_counter_sees_the_formula_once(with_D, with_z):
    batch, d_inner, L, d_state = 2, 4, 7, 3
    inputs = make_inputs(batch, d_inner, L, d_state, with_D=with_D, with_z=with_z)
    with FlopCounterMode(display=False) as counter:
        selective_scan(**inputs, delta_softplus=True, backend="ref")
    expected = 9 * batch * L * d_inner * d_state + (with_D + with_z) * batch * d_inner * L  # VMamba's count
    assert selective_scan_flops(batch, d_inner, L, d_state, with_D, with_z) == expected
    assert counter.get_total_flops() == expected
    ops = counter.get_flop_counts()["Global"]
    assert [str(op) for op in ops] == ["effprof.selective_scan"]  # inner aten ops of the ref not counted

    state = torch.zeros(batch, d_inner, d_state)
    with FlopCounterMode(display=False) as counter:
        for t in range(L):
            selective_state_update(state, inputs["u"][..., t], inputs["delta"][..., t], inputs["A"],
                                   inputs["B"][..., t], inputs["C"][..., t], inputs["D"],
                                   None if inputs["z"] is None else inputs["z"][..., t])
    assert counter.get_total_flops() == expected  # L steps of 9·B·D·N (+D, +z) = one scan


def test_custom_op_under_inference_mode_bf16_and_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode
    inputs = make_inputs(2, 3, 8, 4, dtype=torch.bfloat16)
    with torch.inference_mode():
        y, last = selective_scan(**inputs, delta_softplus=True, return_last_state=True)
    ref_y = selective_scan_ref(**inputs, delta_softplus=True)
    assert y.dtype == torch.bfloat16 and last.dtype == torch.float32 and torch.equal(y, ref_y)
    with FakeTensorMode():
        fake = make_inputs(2, 3, 8, 4, dtype=torch.bfloat16)
        y, last = selective_scan(**fake, return_last_state=True)
        assert y.shape == (2, 3, 8) and y.dtype == torch.bfloat16
        assert last.shape == (2, 3, 4) and last.dtype == torch.float32


def test_bad_shapes_raise_one_clear_error():
    inputs = make_inputs(2, 3, 8, 4)
    inputs["B"] = inputs["B"][:, None]  # grouped B (batch, groups, d_state, L) is not supported
    with pytest.raises(ValueError, match="B must have shape"):
        selective_scan(**inputs)


def test_lanes_kernel_splits_time_when_the_batch_cannot_fill_the_gpu(monkeypatch):
    pytest.importorskip("triton")
    from types import SimpleNamespace

    from effprof.ops import selective_scan_triton as kernels

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(multi_processor_count=132))
    cuda = torch.device("cuda")
    assert kernels.occupancy_config(8, 1536, cuda) == {}  # 384 blocks of 32 channels: the default lanes kernel
    # batch-1 prefill (160 and 48 blocks for 132 SMs): the lanes kernel with more threads per channel
    assert kernels.occupancy_config(1, 5120, cuda) == kernels.BATCH1_LANES_CONFIG
    assert kernels.occupancy_config(1, 1536, cuda) == kernels.BATCH1_NARROW_LANES_CONFIG
    assert kernels.occupancy_config(1, 5120, torch.device("cpu")) == {}
    chunks = lambda batch, d_inner, L: kernels.lanes_time_chunks(batch, d_inner, L, cuda, {})  # noqa: E731
    assert chunks(8, 1536, 4096) == 1     # 384 programs of 32 channels: no split
    assert chunks(1, 5120, 793) == 1      # Cobra's LM prefill: 160 programs, every SM has one: no split
    assert chunks(1, 1536, 16384) == 9    # Mamba-130m: 48 programs -> 9 chunks (3 programs per SM)
    assert chunks(1, 1536, 300) == 2      # at least 128 steps per chunk
    assert chunks(1, 1536, 100) == 1
    assert kernels.lanes_time_chunks(1, 1536, 4096, torch.device("cpu"), {}) == 1


@pytest.mark.skipif(not HAS_TRITON or INTERPRETED, reason="needs triton imported without the interpreter")
def test_gluon_kernel_compiles_for_hopper_without_local_memory():
    """No GPU here: compile the CUDA default kernel for sm_90 with triton's own ptxas and read its
    resource use. Spilling, or more than 168 registers (3 programs of 4 warps per SM, the occupancy its
    speed was measured at), would be a regression the CPU-only CI can still see."""
    from effprof.ops import selective_scan_triton as kernels

    if not kernels.gluon_available():
        pytest.skip("this triton has no Gluon")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    from effprof.ops.selective_scan_gluon import _scan_gluon_kernel

    kernel = _scan_gluon_kernel
    types = {"u_ptr": "*bf16", "delta_ptr": "*bf16", "A_ptr": "*fp32", "B_ptr": "*bf16", "C_ptr": "*bf16",
             "D_ptr": "*fp32", "z_ptr": "*bf16", "bias_ptr": "*fp32", "y_ptr": "*bf16", "last_ptr": "*fp32",
             "d_inner": "i32", "L": "i32"}
    constants = dict(N=16, N_PAD=16, HAS_D=True, HAS_Z=True, HAS_DELTA_BIAS=True, DELTA_SOFTPLUS=True,
                     CHUNK=kernels.DEFAULT_CONFIG["CHUNK"], EVEN_L=True, EVEN_D=True, FAST_MATH=True,
                     POLY_EVERY=kernels.DEFAULT_CONFIG.get("poly_every", 0),
                     num_warps=kernels.DEFAULT_CONFIG["num_warps"])
    names = kernel.arg_names
    source = GluonASTSource(fn=kernel, signature={n: types.get(n, "constexpr") for n in names},
                            constexprs={(names.index(n),): v for n, v in constants.items()},
                            attrs={(names.index(n),): [["tt.divisibility", 16]] for n in types})
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": kernels.DEFAULT_CONFIG["num_warps"]})
    ptx = compiled.asm["ptx"]
    assert "shfl.sync.up.b32" in ptx and "shfl.sync.idx.b32" in ptx  # the lanes' scan and carry
    assert ".local" not in ptx                                       # no local-memory arrays
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not cuobjdump.exists():
        pytest.skip("triton's wheel ships no cuobjdump here")
    cubin = Path(__file__).parent / ".gluon_scan.cubin.tmp"
    try:
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run([str(cuobjdump), "-res-usage", str(cubin)], capture_output=True, text=True).stdout
    finally:
        cubin.unlink(missing_ok=True)
    registers = int(re.search(r"REG:(\d+)", usage).group(1))
    stack = int(re.search(r"STACK:(\d+)", usage).group(1))
    assert stack == 0 and registers <= 168, usage
