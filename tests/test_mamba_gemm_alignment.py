"""Every GEMM a Mamba block runs gets operands cuBLAS can load 16 bytes at a time, at odd lengths too.

A (rows, cols) bf16 operand is aligned when its leading dimension (the stride of its non-unit-stride
dimension) is a multiple of 8 elements and its data starts on a 16-byte boundary (`effprof.ops.layout`).
The blocks are built with widths that are multiples of 8 (d_inner, dt_rank, dt_rank + 2·d_state), so any
misaligned operand can only come from the layout: a leading dimension of L or batch·L (L = 37, 793).
The operands are recorded at the dispatcher (aten.mm / addmm / bmm / baddbmm), after F.linear and
torch.matmul have folded, transposed or copied their inputs: what cuBLAS would receive on a GPU.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

GEMMS = {torch.ops.aten.mm.default: (0, 1), torch.ops.aten.addmm.default: (1, 2),
         torch.ops.aten.bmm.default: (0, 1), torch.ops.aten.baddbmm.default: (1, 2)}


def leading_dimension(t: torch.Tensor) -> int | None:
    """The leading dimension of a row- or column-major matrix (the last two dims); None for a vector (one
    row or column: BLAS needs no leading dimension), -1 if neither dimension is contiguous."""
    rows, cols = t.shape[-2], t.shape[-1]
    if rows == 1 or cols == 1:
        return None
    if t.stride(-1) == 1:
        return t.stride(-2)
    if t.stride(-2) == 1:
        return t.stride(-1)
    return -1


class GemmOperands(TorchDispatchMode):
    """Records (op, shape, stride, leading dimension, byte offset mod 16) of every GEMM operand, the
    output included (its leading dimension is cuBLAS's ldc)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in GEMMS:
            for t in [args[i] for i in GEMMS[func]] + [out]:
                self.seen.append((str(func), tuple(t.shape), t.stride(), leading_dimension(t),
                                  t.data_ptr() % 16))
        return out


def misaligned(seen):
    return [s for s in seen if (s[3] is not None and (s[3] < 0 or s[3] % 8)) or s[4]]


def record(module, x):
    with torch.no_grad(), GemmOperands() as mode:
        module(x)
    assert mode.seen, "no GEMM was recorded"
    return mode.seen


@pytest.mark.parametrize("batch, length", [(1, 37), (2, 37), (1, 793), (1, 1)])
def test_mamba_block_gemms_are_aligned_at_odd_lengths(batch, length):
    from effprof.modules.mamba import MambaBlock

    torch.manual_seed(0)
    block = MambaBlock(128, d_state=16, dtype=torch.bfloat16)               # d_inner 256, dt_rank 8, 8 + 32
    seen = record(block, torch.randn(batch, length, 128, dtype=torch.bfloat16))
    assert len(seen) == 12                                                  # in_proj, x_proj, dt_proj, out_proj
    assert not misaligned(seen), misaligned(seen)


def test_mamba_block_with_state_and_lm_gemms_are_aligned():
    from effprof.modules.mamba import MambaLM, MambaLMConfig

    torch.manual_seed(0)
    lm = MambaLM(MambaLMConfig(128, 2, vocab_size=64), dtype=torch.bfloat16)
    cache = lm.allocate_cache(1)
    with torch.no_grad(), GemmOperands() as mode:
        lm(torch.randint(0, 64, (1, 37)), cache, num_last_tokens=1)
    assert len(mode.seen) == 3 * 2 * 4 + 3                                   # 2 layers × 4 GEMMs + the head
    assert not misaligned(mode.seen), misaligned(mode.seen)


def test_the_channels_first_layout_is_what_the_test_catches():
    """The recorder is not vacuous: mamba-ssm's channels-first in_proj (W @ xᵀ) at L = 37 is flagged."""
    w = torch.randn(512, 128, dtype=torch.bfloat16)
    x = torch.randn(37, 128, dtype=torch.bfloat16)
    with GemmOperands() as mode:
        out = w @ x.t()                                                      # (512, 37): ld 37 downstream
        torch.nn.functional.linear(out.t(), torch.randn(64, 512, dtype=torch.bfloat16))
    assert misaligned(mode.seen)


@pytest.mark.parametrize("batch, length", [(1, 37), (2, 49)])
def test_mambavision_mixer_gemms_are_aligned(batch, length):
    from effprof.modules.mambavision import MambaVisionMixer

    torch.manual_seed(0)
    mixer = MambaVisionMixer(128, d_state=8, dtype=torch.bfloat16)            # half 64, dt_rank 8, 8 + 16
    seen = record(mixer, torch.randn(batch, length, 128, dtype=torch.bfloat16))
    assert not misaligned(seen), misaligned(seen)


@pytest.mark.parametrize("height, width, mode", [(5, 7, "cross4"), (7, 7, "bi2"), (4, 4, "cross4")])
def test_ss2d_gemms_are_aligned(height, width, mode):
    from effprof.modules.ss2d import SS2D

    torch.manual_seed(0)
    ss2d = SS2D(128, d_state=4, scan_mode=mode, dtype=torch.bfloat16)         # d_inner 256, dt_rank 8, 8 + 8
    seen = record(ss2d, torch.randn(1, height, width, 128, dtype=torch.bfloat16))
    assert not misaligned(seen), misaligned(seen)


def test_mamba_block_channel_last_matches_the_reference_loop():
    """The channel-last block computes what the definition does (projections, conv, scan ref) in float32."""
    import torch.nn.functional as F

    from effprof.modules.mamba import MambaBlock
    from effprof.ops.causal_conv1d import causal_conv1d_ref
    from effprof.ops.selective_scan import selective_scan_ref

    torch.manual_seed(1)
    block = MambaBlock(64, d_state=8)
    h = torch.randn(2, 37, 64)
    xz = h @ block.in_proj.weight.t()
    x, z = xz.split(block.d_inner, dim=-1)
    u = causal_conv1d_ref(x.transpose(1, 2).contiguous(), block.conv1d.weight.squeeze(1), block.conv1d.bias, "silu")
    dt, B, C = (u.transpose(1, 2) @ block.x_proj.weight.t()).split([block.dt_rank, 8, 8], dim=-1)
    delta = (dt @ block.dt_proj.weight.t()).transpose(1, 2)
    y = selective_scan_ref(u, delta, -torch.exp(block.A_log), B.transpose(1, 2), C.transpose(1, 2), block.D,
                           z.transpose(1, 2), block.dt_proj.bias, True)
    expect = F.linear(y.transpose(1, 2), block.out_proj.weight)
    with torch.no_grad():
        torch.testing.assert_close(block(h), expect, rtol=1e-5, atol=1e-5)


def test_gemm_rows_copies_only_what_a_copy_can_align():
    from effprof.ops.layout import gemm_rows

    x = torch.randn(2, 5, 40, dtype=torch.bfloat16)
    assert gemm_rows(x) is x                                                 # aligned rows: no copy
    head = x[..., :16]
    assert gemm_rows(head).stride() == head.stride() and gemm_rows(head).data_ptr() == x.data_ptr()  # ld 40
    odd = torch.randn(2, 5, 36, dtype=torch.bfloat16)
    assert gemm_rows(odd[..., :16]).stride() == (80, 16, 1)                   # ld 36 -> a copy with ld 16
    assert gemm_rows(odd[..., :20]).data_ptr() == odd.data_ptr()             # width 20: a copy cannot align it
    t = torch.randn(2, 40, 5, dtype=torch.bfloat16).transpose(1, 2)
    assert gemm_rows(t).is_contiguous()                                      # column-major rows: copied


def test_time_contiguous_pair_copies_adjacent_B_and_C_once():
    from effprof.ops.layout import time_contiguous_pair

    x_dbl = torch.randn(1, 37, 10 + 2 * 4)                                   # (batch, L, dt_rank + 2N)
    _, B, C = torch.split(x_dbl, [10, 4, 4], dim=-1)
    Bt, Ct = time_contiguous_pair(B, C)
    assert torch.equal(Bt, B.transpose(1, 2)) and torch.equal(Ct, C.transpose(1, 2))
    assert Bt.stride(-1) == Ct.stride(-1) == 1 and Ct.data_ptr() == Bt.data_ptr() + 4 * 37 * 4   # one buffer
    assert time_contiguous_pair(C, B) is None                                # C's columns before B's
    assert time_contiguous_pair(B, C.clone()) is None                        # another tensor
    assert time_contiguous_pair(B, x_dbl[..., 15:]) is None                  # overlapping columns


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the batch-1 B/C copy runs for the triton scan on CUDA")
def test_batch1_B_and_C_come_from_what_ssm_inputs_returns():
    """A subclass whose `_ssm_inputs` makes a new tensor of x_proj's output (tensor parallelism sums it across
    ranks) gets B and C from that tensor on the batch-1 triton path, as on the reference path."""
    from effprof.modules.mamba import MambaBlock

    class Rescaled(MambaBlock):
        def _ssm_inputs(self, x_dbl):
            return super()._ssm_inputs(2 * x_dbl)

    torch.manual_seed(0)
    block = Rescaled(64, d_state=16, scan_backend="triton", conv_backend="ref", device="cuda").eval()
    h = torch.randn(1, 37, 64, device="cuda")
    with torch.no_grad():
        fast = block(h)
        block.scan_backend = "ref"
        torch.testing.assert_close(fast, block(h), rtol=1e-3, atol=1e-4)


def test_ss2d_channel_last_projections_equal_the_channel_first_ones():
    """At H·W = 35 SS2D multiplies channel-last rows; the result equals VMamba's channel-first formula."""
    import torch.nn.functional as F

    from effprof.modules.ss2d import SS2D
    from effprof.ops.cross_scan import cross_merge, cross_scan
    from effprof.ops.grouped_scan import selective_scan_directions

    torch.manual_seed(2)
    m = SS2D(32, d_state=4, scan_mode="cross4", gated=True)
    x = torch.randn(2, 5, 7, 32)
    with torch.no_grad():
        out = m(x)
        h = m.in_proj(x)
        h, z = h.chunk(2, dim=-1)
        h = F.silu(m.conv2d(h.permute(0, 3, 1, 2)))
        xs = cross_scan(h, "cross4", direction_first=True)
        dts, Bs, Cs = torch.split(torch.matmul(m.x_proj_weight.unsqueeze(1), xs), [m.dt_rank, 4, 4], dim=2)
        dts = torch.matmul(m.dt_projs_weight.unsqueeze(1), dts)
        ys = selective_scan_directions(xs, dts, -torch.exp(m.A_logs).view(4, m.d_inner, 4), Bs, Cs,
                                       m.Ds.view(4, m.d_inner), None, m.dt_projs_bias, delta_softplus=True,
                                       stack=False)
        y = m.out_norm(cross_merge(ys, "cross4", 5, 7).transpose(1, 2).reshape(2, 5, 7, m.d_inner))
        expect = m.out_proj(y * F.silu(z))
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-5)


def test_mambavision_mixer_equals_its_channel_first_formula():
    import torch.nn.functional as F

    from effprof.modules.mambavision import MambaVisionMixer
    from effprof.ops.selective_scan import selective_scan_ref

    torch.manual_seed(3)
    m = MambaVisionMixer(64, d_state=8)
    hidden = torch.randn(2, 37, 64)
    with torch.no_grad():
        out = m(hidden)
        x, z = m.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)
        x, z = F.silu(m.conv1d_x(x)), F.silu(m.conv1d_z(z))
        dt, B, C = torch.split(m.x_proj(x.transpose(1, 2)), [m.dt_rank, 8, 8], dim=-1)
        y = selective_scan_ref(x, m.dt_proj(dt).transpose(1, 2), -torch.exp(m.A_log.float()), B.transpose(1, 2),
                               C.transpose(1, 2), m.D, None, m.dt_proj.bias, delta_softplus=True)
        expect = m.out_proj(torch.cat([y, z], dim=1).transpose(1, 2))
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-5)
