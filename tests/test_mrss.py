"""MRSS: exactness of the gate and branches, padding, resampling, causality, streams, the `mrss` component."""
import pytest
import torch

from effprof.cli.main import main
from effprof.measure.flops import count_flops
from effprof.modules.mamba import MambaBlock
from effprof.modules.mrss import MRSS, pad_to_multiple
from effprof.core.registry import create
from effprof.report.files import read_json

D = 16


def mrss(ratio, seq_len=None, **kw):
    torch.manual_seed(0)
    return MRSS(D, ratio, d_state=4, **kw).eval()


def force_gate(module, value):
    """Make σ(W_g x + b_g) exactly `value` (0 or 1) for every token: W_g = 0, b_g = ∓inf."""
    with torch.no_grad():
        module.gate.weight.zero_()
        module.gate.bias.fill_(float("-inf") if value == 0 else float("inf"))


@pytest.mark.parametrize("ratio", [1, 2, 4])
def test_gate_zero_gives_exactly_the_full_resolution_block(ratio):
    module = mrss(ratio)
    force_gate(module, 0)
    x = torch.randn(2, 32, D)
    with torch.no_grad():
        assert torch.equal(module(x), module.high(x))


def test_gate_one_at_r1_gives_exactly_the_low_block():
    module = mrss(1)
    force_gate(module, 1)
    x = torch.randn(2, 32, D)
    with torch.no_grad():
        assert torch.equal(module(x), module.low(x))
        assert not torch.equal(module.low(x), module.high(x))  # the branches have their own weights


def test_output_is_the_gated_mix_of_the_branches():
    module = mrss(2)
    x = torch.randn(2, 32, D)
    with torch.no_grad():
        y_high, y_low = module.branches(x)
        g = torch.sigmoid(x @ module.gate.weight.t() + module.gate.bias)
        torch.testing.assert_close(module(x), g * y_low + (1 - g) * y_high, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seq_len, ratio, padded", [(60, 8, 4), (33, 2, 1), (64, 4, 0), (5, 8, 3)])
def test_lengths_not_divisible_by_r_are_padded_and_cropped(seq_len, ratio, padded):
    module = mrss(ratio)
    assert module.padded_tokens(seq_len) == padded
    x = torch.randn(2, seq_len, D)
    xp = pad_to_multiple(x, ratio)
    assert xp.shape == (2, seq_len + padded, D) and torch.equal(xp[:, :seq_len], x)
    assert all(torch.equal(xp[:, seq_len + i], x[:, -1]) for i in range(padded))
    with torch.no_grad():
        assert module(x).shape == (2, seq_len, D)
        assert module.low(module.down(xp)).shape == (2, (seq_len + padded) // ratio, D)


def test_downsampling_modes():
    x = torch.arange(8.0).view(1, 8, 1).expand(1, 8, D).contiguous()
    assert mrss(4, downsample="avg").down(x)[0, :, 0].tolist() == [1.5, 5.5]
    assert mrss(4, downsample="strided").down(x)[0, :, 0].tolist() == [0.0, 4.0]
    learned = mrss(4, downsample="learned")
    with torch.no_grad():  # initialised to the average: equals avg pooling before training
        torch.testing.assert_close(learned.down(x), mrss(4, downsample="avg").down(x))


def test_upsampling_modes():
    y = torch.tensor([0.0, 2.0]).view(1, 2, 1).expand(1, 2, D)
    nearest = mrss(2, upsample="nearest").up(y, 4)
    linear = mrss(2, upsample="linear").up(y, 4)
    assert nearest.shape == linear.shape == (1, 4, D)
    assert nearest[0, :, 0].tolist() == [0.0, 0.0, 2.0, 2.0]
    assert linear[0, :, 0].tolist() == [0.0, 0.5, 1.5, 2.0]  # align_corners=False, edges clamped


@pytest.mark.parametrize("downsample, upsample, causal", [("strided", "nearest", True), ("avg", "nearest", False),
                                                           ("strided", "linear", False)])
def test_causality_is_what_is_causal_says(downsample, upsample, causal):
    module = mrss(4, downsample=downsample, upsample=upsample)
    assert module.is_causal is causal
    x = torch.randn(1, 32, D)
    past_unchanged = []
    for token in (10, 12, 14):  # inside window 2, first of window 3 (the strided sample), inside window 3
        changed = x.clone()
        changed[:, token] += 5.0
        with torch.no_grad():
            past_unchanged.append(torch.equal(module(x)[:, :token], module(changed)[:, :token]))
    assert all(past_unchanged) is causal


def test_streams_on_cpu_are_refused_not_ignored(capsys, fast):
    module = mrss(2, streams=True)
    with pytest.raises(ValueError, match="CUDA"):
        module(torch.randn(1, 8, D))
    assert main(["run", "mrss", "--d-model", "16", "--seq-len", "32", "--streams", "true", *fast]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs a CUDA device" in err and "\n" not in err


def test_flops_are_both_branches_plus_the_gate():
    batch, seq_len, ratio = 2, 32, 4
    x = torch.randn(batch, seq_len, D)
    block = MambaBlock(D, d_state=4)
    module = mrss(ratio)
    with torch.no_grad():
        full = count_flops(lambda: block(x))[0]
        low = count_flops(lambda: block(x[:, ::ratio]))[0]
        total = count_flops(lambda: module(x))[0]
    assert full > 0 and total == full + low + 2 * batch * seq_len * D


def test_fidelity_extras_are_zero_where_they_must_be():
    base = create("mrss", variant="baseline", d_model=D, seq_len=32, d_state=4)
    r1 = create("mrss", r=1, d_model=D, seq_len=32, d_state=4)
    r4 = create("mrss", r=4, d_model=D, seq_len=32, d_state=4)
    with torch.no_grad():
        e_base = base.extras(base.module, base.make_inputs(1))
        e_r1, e_r4 = r1.extras(r1.module, r1.make_inputs(1)), r4.extras(r4.module, r4.make_inputs(1))
    assert set(e_base.values()) == {0.0}
    assert e_r1["lowres_rel_err_smooth"] == e_r1["lowres_rel_err_rough"] == 0.0
    assert all(e_r4[k] > 0 for k in e_r4)


def test_component_through_the_cli(tmp_path, fast):
    path = tmp_path / "r.json"
    assert main(["run", "mrss", "--d-model", "16", "--seq-len", "36", "--d-state", "4", "--r", "8",
                 "--batch", "2", *fast, "--json", str(path)]) == 0
    r = read_json(path)[0]
    assert r["status"] == "ok" and r["unit"] == "seq" and r["scan_backend"] == "ref"
    assert r["padded_tokens"] == 4 and r["lowres_tokens"] == 5 and r["causal"] is False
    assert r["items_per_call"] == 2 and r["gflops"] > 0 and "lowres_rel_err_rough" in r
    block_params = sum(p.numel() for p in MambaBlock(16, d_state=4).parameters())
    assert r["params_total"] == 2 * block_params + 16 + 1  # two blocks and the Linear(D, 1) gate


@pytest.mark.parametrize("argv, says", [(["--r", "3"], "not a power of two"), (["--r", "0"], "outside the allowed"),
                                        (["--scan-backend", "triton"], "unavailable")])
def test_bad_values_are_refused_in_one_line(argv, says, capsys, fast):
    assert main(["run", "mrss", "--d-model", "16", "--seq-len", "32", *argv, *fast]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "\n" not in err
