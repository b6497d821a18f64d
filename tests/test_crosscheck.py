"""fvcore / thop cross-check: MACs of known modules, what each tool misses, and graceful failure."""
import sys

import pytest
import torch

from effprof.measure.crosscheck import crosscheck, fvcore_macs, thop_macs
from effprof.measure.flops import count_flops
from effprof.core.registry import Built


def mlp_built(dtype=torch.float32, forward=None):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 16)).to(dtype).eval()
    return Built(module, lambda batch: (torch.randn(batch, 5, 32, dtype=dtype),), "tok", items_per_sample=5,
                 forward=forward)


MLP_MACS = 3 * 5 * (32 * 64 + 64 * 16)   # batch 3 x 5 tokens


def test_fvcore_counts_linear_macs():
    pytest.importorskip("fvcore")
    built = mlp_built()
    macs, note = fvcore_macs(built, built.make_inputs(3))
    assert macs == MLP_MACS and note.startswith("MACs")
    flops, _ = count_flops(lambda: built.call(built.make_inputs(3)))
    assert flops == 2 * macs   # effprof's FLOPs are 2 x MAC


def test_thop_counts_linear_macs():
    pytest.importorskip("thop")
    built = mlp_built()
    macs, _ = thop_macs(built, built.make_inputs(3))
    assert macs == MLP_MACS


def test_bf16_module_is_counted_on_a_cpu_fp32_copy_and_left_untouched():
    pytest.importorskip("fvcore")
    pytest.importorskip("thop")
    built = mlp_built(torch.bfloat16, forward=lambda module, inputs: module(inputs[0] * 1))
    fields = crosscheck(built, built.make_inputs(3))
    assert fields["fvcore_gmacs"] == pytest.approx(MLP_MACS / 1e9)
    assert fields["thop_gmacs"] == pytest.approx(MLP_MACS / 1e9)
    assert all(p.dtype == torch.bfloat16 for p in built.module.parameters())
    assert not any("total_ops" in name for name, _ in built.module.named_buffers())  # thop's buffers on the copy


def test_fvcore_skips_attention_and_says_so():
    pytest.importorskip("fvcore")

    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Linear(16, 48)

        def forward(self, x):
            q, k, v = self.qkv(x).reshape(x.shape[0], x.shape[1], 3, 2, 8).permute(2, 0, 3, 1, 4)
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    built = Built(Attention().eval(), lambda batch: (torch.randn(batch, 10, 16),), "tok")
    inputs = built.make_inputs(2)
    macs, note = fvcore_macs(built, inputs)
    assert macs == 2 * 10 * 16 * 48                    # the projection only
    assert "scaled_dot_product_attention" in note
    flops, _ = count_flops(lambda: built.call(inputs))
    attention_macs = 2 * 2 * (10 * 10 * 8) * 2        # batch 2, 2 heads, QK^T and AV
    assert flops == 2 * (macs + attention_macs)


def test_missing_tools_give_none_and_a_note(monkeypatch):
    monkeypatch.setitem(sys.modules, "fvcore", None)
    monkeypatch.setitem(sys.modules, "fvcore.nn", None)
    monkeypatch.setitem(sys.modules, "thop", None)
    built = mlp_built()
    fields = crosscheck(built, built.make_inputs(1))
    assert fields["fvcore_gmacs"] is None and "not installed" in fields["fvcore_note"]
    assert fields["thop_gmacs"] is None and "not installed" in fields["thop_note"]


def test_failing_tool_gives_none_and_a_note():
    pytest.importorskip("fvcore")
    pytest.importorskip("thop")

    def broken(module, inputs):
        raise RuntimeError("cannot run here\nsecond line")

    built = mlp_built(forward=broken)
    fields = crosscheck(built, built.make_inputs(1))
    assert fields["fvcore_gmacs"] is None and fields["fvcore_note"] == "fvcore failed: RuntimeError: cannot run here"
    assert fields["thop_gmacs"] is None and fields["thop_note"] == "thop failed: RuntimeError: cannot run here"
