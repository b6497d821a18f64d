"""The scan kernels' shared Triton device functions: the associative combine, bf16 unpacking, softplus and silu
(with the inline-PTX fast-math variants). `selective_scan_triton` and `selective_scan_split` both use them; importing
this module also applies the CPU interpreter's fix for numpy >= 2.4 that every scan kernel's tests need."""
import triton
import triton.language as tl


def _fix_interpreter_scalar_index() -> None:
    """Under TRITON_INTERPRET=1 with numpy >= 2.4, triton <= 3.6's interpreter turns a run-time scalar
    (a 1-element array) into a loop bound with `int(array)`, which numpy 2.4 rejects
    (triton-lang/triton#9171, fixed upstream by #9172). Apply that one-line fix, in interpret mode only."""
    import os
    if os.environ.get("TRITON_INTERPRET", "0") != "1":
        return
    from triton.runtime import interpreter
    original = interpreter._patch_lang_tensor
    if getattr(original, "effprof_fixed", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched.effprof_fixed = True
    interpreter._patch_lang_tensor = patched


_fix_interpreter_scalar_index()


@triton.jit
def _scan_combine(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _scan_combine_pair(a1, b1, c1, d1, a2, b2, c2, d2):
    return a1 * a2, a2 * b1 + b2, c1 * c2, c2 * d1 + d2


@triton.jit
def _to_float32(x, FAST_UNPACK: tl.constexpr):
    """bf16 -> float32. FAST_UNPACK: two values per 32-bit register with one shift and one mask (the
    compiler's own conversion spends a byte permute and a shift on the high half: 3 instructions per
    pair instead of 2; B and C are unpacked once per state, ~1 of the loop's 14 instructions per element)."""
    if FAST_UNPACK:
        return tl.inline_asm_elementwise("{ shl.b32 $0, $2, 16; and.b32 $1, $2, 0xffff0000; }", "=r,=r,r", [x],
                                         dtype=tl.float32, is_pure=True, pack=2)
    else:
        return x.to(tl.float32)


@triton.jit
def _log2(x, FAST_MATH: tl.constexpr):
    if FAST_MATH:  # one MUFU.LG2 instead of libm's ~20-instruction polynomial
        return tl.inline_asm_elementwise("lg2.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.log2(x)


@triton.jit
def _softplus(x, FAST_MATH: tl.constexpr):
    # log(1 + e^x) through exp2/log2; identity above 20 (torch's threshold, and Mamba's kernel's)
    return tl.where(x <= 20.0, _log2(1.0 + tl.exp2(x * 1.4426950408889634), FAST_MATH) * 0.6931471805599453, x)


@triton.jit
def _silu(z, FAST_MATH: tl.constexpr):
    if FAST_MATH:  # z sigmoid(z) = z/2 (1 + tanh(z/2)): one MUFU.TANH
        half = 0.5 * z
        t = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=r,r", [half], dtype=tl.float32,
                                      is_pure=True, pack=1)
        return half + half * t
    else:  # z sigmoid(z) with an approximate division (MUFU.RCP + FMUL, ~1 ulp)
        return tl.fdiv(z, 1.0 + tl.exp2(-z * 1.4426950408889634), ieee_rounding=False)
