"""Bytes moved under effprof's convention: inputs read once, outputs written once, views free."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from effprof.measure.bytes import BytesFlopsMode, count_bytes, count_flops_and_bytes, tensor_bytes
from effprof.measure.flops import count_flops

F32 = 4


@pytest.mark.parametrize("inference", [False, True])
@pytest.mark.parametrize("shape", [(5, 8), (2, 3, 8)])
def test_linear_reads_input_weight_bias_and_writes_output(inference, shape):
    lin = torch.nn.Linear(8, 16)
    x = torch.randn(*shape)
    rows = x.numel() // 8
    expected = F32 * (rows * 8 + 8 * 16 + 16 + rows * 16)
    with torch.inference_mode(inference):
        assert count_bytes(lambda: lin(x)) == expected


def test_linear_without_bias_in_bf16():
    lin = torch.nn.Linear(32, 64, bias=False).to(torch.bfloat16)
    x = torch.randn(4, 32, dtype=torch.bfloat16)
    assert count_bytes(lambda: lin(x)) == 2 * (4 * 32 + 32 * 64 + 4 * 64)


def test_elementwise_ops():
    a, b = torch.randn(100), torch.randn(100)
    n = 100 * F32
    assert count_bytes(lambda: a + b) == 3 * n          # two inputs, one output
    assert count_bytes(lambda: a * a) == 2 * n          # the same tensor twice is read once
    assert count_bytes(lambda: a.add_(b)) == 3 * n      # in place: read a and b, write a
    assert count_bytes(lambda: a.copy_(b)) == 2 * n     # destination only written
    assert count_bytes(lambda: a.zero_()) == n
    out = torch.empty(100)
    assert count_bytes(lambda: torch.add(a, b, out=out)) == 3 * n   # out= is not read
    assert count_bytes(lambda: torch.add(a, b, out=a)) == 3 * n     # ... unless it is also an input


def test_views_and_metadata_ops_move_nothing():
    x = torch.randn(4, 6)
    for view in (lambda: x.view(24), lambda: x.reshape(6, 4), lambda: x.t(), lambda: x.transpose(0, 1),
                 lambda: x.permute(1, 0), lambda: x[None].expand(3, 4, 6), lambda: x[1:3], lambda: x[2],
                 lambda: x.select(1, 2), lambda: x.as_strided((2, 2), (1, 1)), lambda: x.detach(),
                 lambda: x.unsqueeze(0), lambda: x.split(2), lambda: x.unbind(0), lambda: x.narrow(0, 1, 2),
                 lambda: torch.empty(10, 10), lambda: x.size(), lambda: x.is_contiguous()):
        assert count_bytes(view) == 0


def test_copying_reshape_and_contiguous_count_one_copy():
    x = torch.randn(4, 6)
    assert count_bytes(lambda: x.t().contiguous()) == 2 * 24 * F32
    assert count_bytes(lambda: x.t().reshape(24)) == 2 * 24 * F32   # not a view: clone + _unsafe_view


def test_broadcast_dimensions_count_once():
    row = torch.randn(1, 8)
    expanded = row.expand(5, 8)
    assert tensor_bytes(expanded) == 8 * F32
    assert count_bytes(lambda: expanded + 1) == (8 + 40) * F32
    full = torch.randn(5, 8)
    assert count_bytes(lambda: full + row) == (40 + 8 + 40) * F32
    assert count_bytes(lambda: torch.randn(5, 8)) == 40 * F32  # a random fill writes its output


def test_flops_match_flop_counter_and_per_module_counts():
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(),
                                torch.nn.Sequential(torch.nn.Linear(16, 4), torch.nn.ReLU()))
    x = torch.randn(2, 3, 8)
    with torch.inference_mode():
        counts = count_flops_and_bytes(lambda: model(x), model)
        reference, _ = count_flops(lambda: model(x))
    rows = 6
    assert counts.flops == reference == 2 * rows * (8 * 16 + 16 * 4)
    lin1 = F32 * (rows * 8 + 8 * 16 + 16 + rows * 16)
    gelu = F32 * 2 * rows * 16
    lin2 = F32 * (rows * 16 + 16 * 4 + 4 + rows * 4)
    relu = F32 * 2 * rows * 4
    assert counts.bytes_per_module == {"": lin1 + gelu + lin2 + relu, "0": lin1, "1": gelu, "2": lin2 + relu,
                                       "2.0": lin2, "2.1": relu}
    assert counts.flops_per_module == {"": counts.flops, "0": 2 * rows * 8 * 16, "1": 0, "2": 2 * rows * 16 * 4,
                                       "2.0": 2 * rows * 16 * 4, "2.1": 0}
    assert counts.bytes == counts.bytes_per_module[""]


def test_module_called_twice_counts_twice(linear_applied_twice):
    model, x = linear_applied_twice(4), torch.randn(3, 4)
    counts = count_flops_and_bytes(lambda: model(x), model)
    once = F32 * (12 + 16 + 4 + 12)
    assert counts.bytes_per_module["lin"] == 2 * once == counts.bytes
    assert counts.flops_per_module["lin"] == 2 * 2 * 3 * 4 * 4


def test_nests_with_flop_counter_mode():
    lin, x = torch.nn.Linear(8, 16), torch.randn(5, 8)
    with FlopCounterMode(display=False) as flop_counter, BytesFlopsMode() as mode:
        lin(x)
    assert flop_counter.get_total_flops() == mode.total_flops == 2 * 5 * 8 * 16
    assert mode.total_bytes == F32 * (40 + 128 + 16 + 80)


def test_attention_reads_q_k_v_and_writes_output():
    q, k, v = (torch.randn(2, 4, 16, 8) for _ in range(3))
    n = q.numel() * F32
    with torch.inference_mode():
        moved = count_bytes(lambda: F.scaled_dot_product_attention(q, k, v))
        counts = count_flops_and_bytes(lambda: F.scaled_dot_product_attention(q, k, v))
    assert moved == counts.bytes >= 4 * n  # at least q, k, v read and the output written
    assert counts.flops == 2 * 2 * 4 * 16 * 16 * (8 + 8)  # 2·B·H·Tq·Tk·(d_qk + d_v), as count_flops
