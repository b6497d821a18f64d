"""effprof.ops.gemv: the Triton kernel (norm prologue, silu*up and residual epilogues) against `gemv_ref` at
odd sizes under TRITON_INTERPRET=1 (in a subprocess, see tests/test_selective_scan.py), the rotary + cache
write kernel (effprof.ops.rotary_cache), the split-KV decode attention, a whole Llama decode step on both against transformers' forward, and
the GEMV's FLOP count."""
import importlib.util

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from effprof.ops.gemv import gemv, gemv_ref

HAS_TRITON = importlib.util.find_spec("triton") is not None


def _interpreted() -> bool:
    from effprof.ops.selective_scan import available_backends

    return HAS_TRITON and "triton" in available_backends(torch.device("cpu"))


needs_triton = pytest.mark.skipif(not _interpreted(), reason="needs triton and TRITON_INTERPRET=1 at start "
                                  "(run by test_decode_kernels_in_interpreter_subprocess)")


@pytest.mark.skipif(not HAS_TRITON or _interpreted(), reason="triton missing, or the triton tests run directly")
def test_decode_kernels_in_interpreter_subprocess(triton_interpreter):
    assert triton_interpreter(__file__) == 9


@needs_triton
@pytest.mark.parametrize("rows, norm, silu_mul, residual, bias", [(1, True, False, False, False),
                                                                 (3, False, True, False, True),
                                                                 (2, True, True, False, False),
                                                                 (5, False, False, True, True)])
def test_triton_gemv_matches_the_reference(rows, norm, silu_mul, residual, bias):
    g = torch.Generator().manual_seed(rows)
    k, n = 37, 2 * 11 if silu_mul else 13  # odd sizes: partial tiles in both dimensions
    x = torch.randn(rows, 1, k, generator=g)
    args = dict(weight=torch.randn(n, k, generator=g) / k**0.5,
                bias=torch.randn(n, generator=g) if bias else None,
                residual=torch.randn(rows, 1, n // 2 if silu_mul else n, generator=g) if residual else None,
                norm_weight=torch.rand(k, generator=g) + 0.5 if norm else None, eps=1e-5, silu_mul=silu_mul)
    out = gemv(x, backend="triton", **args)
    torch.testing.assert_close(out, gemv_ref(x, **args), rtol=1e-5, atol=1e-5)


def test_gemv_counts_the_flops_of_its_matrix_product():
    counts = []
    for device, backend in (("cpu", "ref"), ("meta", "triton")):  # on meta the custom op runs its fake
        x, weight = torch.randn(2, 1, 24, device=device), torch.randn(10, 24, device=device)
        with FlopCounterMode(display=False) as counter:
            out = gemv(x, weight, norm_weight=torch.ones(24, device=device), silu_mul=True, backend=backend)
        assert out.shape == (2, 1, 5)
        counts.append(counter.get_total_flops())
    assert counts == [2 * 2 * 10 * 24] * 2


@needs_triton
def test_triton_rotary_cache_write_matches_the_reference():
    from effprof.ops.rotary_cache import rotary_cache

    g = torch.Generator().manual_seed(0)
    batch, heads, kv_heads, dim, slots = 2, 3, 1, 6, 5  # a head width that is not a power of two
    qkv = torch.randn(batch, 1, (heads + 2 * kv_heads) * dim, generator=g)
    angles = torch.rand(1, 1, dim // 2, generator=g).repeat(1, 1, 2) * 3
    position = torch.full((1, 1), 3)
    out = {}
    for backend in ("ref", "triton"):
        keys, values = torch.zeros(batch, kv_heads, slots, dim), torch.zeros(batch, kv_heads, slots, dim)
        q = rotary_cache(qkv, angles.cos(), angles.sin(), keys, values, position, heads, backend)
        out[backend] = q, keys, values
    for got, ref in zip(out["triton"], out["ref"]):
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    assert out["ref"][1][:, :, [0, 1, 2, 4]].abs().sum() == 0 and out["ref"][1][:, :, 3].abs().sum() > 0


@needs_triton
@pytest.mark.parametrize("batch, heads, kv_heads, dim, slots, position", [(2, 6, 2, 6, 23, 17), (1, 4, 4, 8, 9, 8),
                                                                         (1, 2, 1, 4, 40, 0)])
def test_triton_split_kv_decode_attention_matches_masked_sdpa(batch, heads, kv_heads, dim, slots, position):
    from effprof.ops.decode_attention import decode_attention

    g = torch.Generator().manual_seed(slots)
    q = torch.randn(batch, heads, 1, dim, generator=g)
    keys, values = torch.randn(2, batch, kv_heads, slots, dim, generator=g)
    keys[:, :, position + 1:] = float("nan")  # slots past the position are never read
    out = decode_attention(q, keys, values, torch.full((1, 1), position), dim**-0.5, "triton")
    ref = decode_attention(q, keys[:, :, :position + 1], values[:, :, :position + 1], torch.full((1, 1), position),
                           dim**-0.5, "ref")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@needs_triton
@pytest.mark.slow  # CI: the kernels above one by one, and test_llama_decode's full-forward check of the same step on ref
def test_triton_decode_step_matches_a_full_forward():
    from test_llama_decode import decode_against_a_full_forward

    got, reference = decode_against_a_full_forward("triton", seed=4)
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not HAS_TRITON or _interpreted(), reason="needs triton's compiler (not the interpreter)")
def test_decode_kernels_compile_for_an_h100_class_gpu():
    """The interpreter runs what the GPU compiler may refuse (e.g. a non-constexpr global): compile each kernel
    for sm_90 with the ptxas that ships in the triton wheel, no GPU needed, at LLaVA-7B's sizes."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from effprof.ops.decode_attention_triton import _merge_kernel, _split_kernel
    from effprof.ops.gemv_triton import _gemv_kernel
    from effprof.ops.rotary_cache_triton import _rotary_cache_kernel

    def compile_for_sm90(fn, pointers, constants, **options):
        names = fn.arg_names
        signature = {n: "constexpr" if n in constants else pointers.get(n, "i32") for n in names}
        source = ASTSource(fn=fn, signature=signature,
                           constexprs={(names.index(k),): v for k, v in constants.items()})
        return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options).asm["cubin"]

    bf16 = "*bf16"
    kernels = [
        (_gemv_kernel, dict(x_ptr=bf16, w_ptr=bf16, b_ptr=bf16, res_ptr=bf16, nw_ptr=bf16, out_ptr=bf16, eps="fp32"),
         dict(K=4096, ROWS=1, HAS_BIAS=True, NORM=True, SILU_MUL=True, HAS_RES=True, BLOCK_N=8, BLOCK_K=512),
         dict(num_warps=4, num_stages=3)),
        (_rotary_cache_kernel, dict(qkv_ptr=bf16, cos_ptr=bf16, sin_ptr=bf16, k_ptr=bf16, v_ptr=bf16, pos_ptr="*i64",
                                    q_ptr=bf16), dict(HEADS=32, KV_HEADS=8, DIM=128, BLOCK_D=128), {}),
        (_split_kernel, dict(q_ptr=bf16, k_ptr=bf16, v_ptr=bf16, pos_ptr="*i64", m_ptr="*fp32", l_ptr="*fp32",
                             acc_ptr="*fp32", scale="fp32"),
         dict(SLOTS=4097, HEADS=32, GROUP=4, DIM=128, BLOCK_D=128, CHUNK=320, BLOCK_S=64, SPLITS=13), {}),
        (_merge_kernel, dict(m_ptr="*fp32", l_ptr="*fp32", acc_ptr="*fp32", out_ptr=bf16),
         dict(DIM=128, BLOCK_D=128, SPLITS=13, BLOCK_SPLITS=16), {})]
    for fn, pointers, constants, options in kernels:
        assert len(compile_for_sm90(fn, pointers, constants, **options)) > 0
