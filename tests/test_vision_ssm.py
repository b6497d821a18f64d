"""VMamba and MambaVision: published parameter counts, the papers' FLOP convention, scan FLOPs per
direction count, SS2D against a reference built from the op references, the tower, refusals."""
import math

import pytest
from conftest import needs_interpreter, runs_interpreter_child
import torch
from torch.utils.flop_counter import FlopCounterMode

from effprof.cli.main import main
from effprof.measure.paper_flops import paper_macs
from effprof.models.mambavision import (MAMBAVISION_PUBLISHED, build_mambavision, mambavision_tower)
from effprof.models.vmamba import VMAMBA_PRESETS, VMAMBA_PUBLISHED, build_vmamba, scan_flops_per_image
from effprof.modules.mambavision import MambaVisionMixer
from effprof.modules.ss2d import SS2D
from effprof.ops.cross_scan import cross_merge_ref, cross_scan_ref
from effprof.ops.grouped_scan import selective_scan_grouped_ref
from effprof.report.files import read_json


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def vmamba_closed_form(preset, k=4):
    """Parameters of a VMamba from its config, layer by layer (VMamba's classification/models/vmamba.py)."""
    c = VMAMBA_PRESETS[preset]
    ln = lambda d: 2 * d  # noqa: E731
    total = 0
    if c.version == "v1":
        total += 3 * c.dim * 16 + c.dim + ln(c.dim)
    else:
        half = c.dim // 2
        total += 3 * half * 9 + half + ln(half) + half * c.dim * 9 + c.dim + ln(c.dim)
    for i, depth in enumerate(c.depths):
        d = c.dim * 2 ** i
        d_inner, rank, n = int(c.ssm_ratio * d), math.ceil(d / 16), c.d_state
        ss2d = (d * d_inner * (2 if c.forward_type == "v0" else 1) + d_inner * 9 + (d_inner if c.conv_bias else 0)
                + k * (rank + 2 * n) * d_inner + k * d_inner * rank + k * d_inner + k * d_inner * n + k * d_inner
                + ln(d_inner) + d_inner * d)
        mlp = ln(d) + 2 * d * int(d * c.mlp_ratio) + int(d * c.mlp_ratio) + d if c.mlp_ratio else 0
        total += depth * (ln(d) + ss2d + mlp)
        if i < 3:
            total += (ln(4 * d) + 4 * d * 2 * d) if c.version == "v1" else (d * 2 * d * 9 + 2 * d + ln(2 * d))
    last = c.dim * 8
    return total + ln(last) + last * 1000 + 1000


@pytest.mark.parametrize("preset", ["vanilla-t", "t", "s", "b"])
def test_vmamba_parameter_counts_match_published(preset):
    model = build_vmamba(preset, device="meta")
    count = n_params(model)
    assert count == vmamba_closed_form(preset)
    assert round(count / 1e6) == VMAMBA_PUBLISHED[preset][0]
    if preset == "t":
        assert count == 30_249_064  # VMamba's analyze/tp.py: "GFlops: 4.905609984 Params: 30249064"
    # a true 2-direction SS2D holds 2 parameter sets; VMamba's v052d keeps 4
    assert n_params(build_vmamba(preset, "bi2", device="meta")) == vmamba_closed_form(preset, k=2)
    assert n_params(build_vmamba(preset, "v052d", device="meta")) == count


def test_vmamba_t_paper_flops_equal_vmambas_own_figure(tmp_path):
    out = tmp_path / "vmamba.json"
    assert main(["run", "vmamba", "--device", "meta", "--batch", "2", "--json", str(out)]) == 0
    record = read_json(out)[0]
    # VMamba's fvcore count with its scan handle, per image (analyze/tp.py: "GFlops: 4.905609984")
    assert record["paper_gmacs_per_img"] == pytest.approx(4.905609984, abs=1e-12)
    assert (record["published_gmacs"], record["published_params_m"]) == (4.9, 30)
    assert (record["scan_sequences"], record["tokens_in"], record["tokens_out"]) == (4, 56 * 56, 7 * 7)
    model = build_vmamba("t", device="meta").eval()
    with torch.inference_mode():  # the same through the counting function directly
        assert paper_macs(lambda: model(torch.empty(1, 3, 224, 224, device="meta"))) == 4_905_609_984


def test_mambavision_parameter_counts_match_published():
    counts = {p: n_params(build_mambavision(p, device="meta")) for p in ("t", "s", "b")}
    for preset, count in counts.items():
        assert round(count / 1e5) / 10 == MAMBAVISION_PUBLISHED[preset][0]
    assert counts["t"] == 31_794_248


def _scan_flops(model, images):
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(images)
    return sum(v for k, v in counter.get_flop_counts()["Global"].items() if "selective_scan" in str(k))


def test_scan_flops_count_the_real_number_of_sequences():
    images = torch.empty(2, 3, 64, 64, device="meta")
    scan = {}
    for mode in ("cross4", "bi2", "uni1", "v052d"):
        model = build_vmamba("t", mode, device="meta", dim=16, depths=(1, 1, 2, 1)).eval()
        scan[mode] = _scan_flops(model, images)
        assert scan[mode] == 2 * scan_flops_per_image(model.config, 64, mode)
    assert scan["bi2"] * 2 == scan["cross4"] == scan["uni1"] * 4
    assert scan["v052d"] == scan["cross4"]  # VMamba's "2-direction" type costs 4 directions


@pytest.mark.parametrize("mode,gated", [("cross4", False), ("bi2", False), ("v052d", True)])
def test_ss2d_matches_reference_in_vmambas_layout(mode, gated):
    torch.manual_seed(0)
    block = SS2D(8, d_state=2, ssm_ratio=1.5, conv_bias=gated, gated=gated, scan_mode=mode).eval()
    x = torch.randn(2, 3, 5, 8)
    with torch.no_grad():
        k, d, n, r = block.k_group, block.d_inner, block.d_state, block.dt_rank
        h = block.in_proj(x)
        if gated:
            h, z = h.chunk(2, dim=-1)
        h = torch.nn.functional.silu(block.conv2d(h.permute(0, 3, 1, 2)))
        xs = cross_scan_ref(h, mode)                                           # (B, K, d, L)
        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, block.x_proj_weight)
        dts, Bs, Cs = torch.split(x_dbl, [r, n, n], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, block.dt_projs_weight)
        y = selective_scan_grouped_ref(xs.reshape(2, k * d, -1), dts.reshape(2, k * d, -1),
                                       -torch.exp(block.A_logs), Bs, Cs, block.Ds, None,
                                       block.dt_projs_bias.reshape(-1), True)
        y = cross_merge_ref(y.view(2, k, d, -1), mode, 3, 5).transpose(1, 2).reshape(2, 3, 5, d)
        y = block.out_norm(y)
        if gated:
            y = y * torch.nn.functional.silu(z)
        expected = block.out_proj(y)
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_mambavision_tower_returns_tokens():
    tower = mambavision_tower("t")
    assert tower.num_tokens(224) == 49
    tower = type(tower)(build_mambavision("t", 0, dim=16, depths=(1, 1, 2, 1))).eval()
    with torch.no_grad():
        features = tower(torch.randn(2, 3, 64, 64))
    assert features.shape == (2, tower.num_tokens(64), 128)


def test_v052d_needs_two_directions_and_bad_depths_refused(capsys):
    assert main(["run", "vmamba", "--directions", "4", "--vmamba-v052d", "true", "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    assert "use it with --directions 2" in captured.out + captured.err
    assert main(["run", "mambavision", "--depths", "1,2", "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    assert "four positive integers" in captured.out + captured.err




@runs_interpreter_child
def test_triton_tests_in_interpreter_subprocess(triton_interpreter):
    assert triton_interpreter(__file__) == 1


@needs_interpreter
def test_ss2d_and_mixer_through_the_triton_scan_in_the_interpreter():
    torch.manual_seed(0)
    for mode in ("cross4", "bi2"):
        ref = SS2D(8, 1, 1.0, scan_mode=mode, scan_backend="ref").eval()
        tri = SS2D(8, 1, 1.0, scan_mode=mode, scan_backend="triton").eval()
        tri.load_state_dict(ref.state_dict())
        x = torch.randn(2, 3, 5, 8)
        with torch.inference_mode():
            torch.testing.assert_close(tri(x), ref(x), rtol=1e-4, atol=1e-5)
    ref, tri = MambaVisionMixer(16, scan_backend="ref").eval(), MambaVisionMixer(16, scan_backend="triton").eval()
    tri.load_state_dict(ref.state_dict())
    x = torch.randn(2, 9, 16)
    with torch.inference_mode():
        torch.testing.assert_close(tri(x), ref(x), rtol=1e-4, atol=1e-5)
