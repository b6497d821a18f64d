"""VMamba's cross-scan/merge (effprof/ops/cross_scan.py) and the grouped scan (effprof/ops/grouped_scan.py)."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from effprof.ops.cross_scan import (SCAN_MODES, cross_merge, cross_merge_ref, cross_scan, cross_scan_ref,
                                    distinct_directions, num_sequences, scan_order)
from effprof.ops.grouped_scan import (selective_scan_directions, selective_scan_grouped,
                                      selective_scan_grouped_ref)
from effprof.ops.selective_scan import selective_scan_flops, selective_scan_ref

SHAPES = [(3, 5), (4, 4), (1, 7), (6, 1)]


@pytest.mark.parametrize("height,width", SHAPES)
@pytest.mark.parametrize("mode", list(SCAN_MODES))
def test_every_direction_visits_every_pixel_once(mode, height, width):
    order = scan_order(height, width, mode)
    assert order.shape == (num_sequences(mode), height * width)
    for route in order:
        assert sorted(route.tolist()) == list(range(height * width))


def test_routes_are_the_published_ones():
    # 2 x 3 image, pixels numbered row-major: 0 1 2 / 3 4 5
    order = scan_order(2, 3, "cross4").tolist()
    assert order == [[0, 1, 2, 3, 4, 5], [0, 3, 1, 4, 2, 5], [5, 4, 3, 2, 1, 0], [5, 2, 4, 1, 3, 0]]
    assert scan_order(2, 3, "bi2").tolist() == [order[0], order[2]]
    assert scan_order(2, 3, "v052d").tolist() == [order[0], order[0], order[2], order[2]]
    assert [num_sequences(m) for m in ("cross4", "bi2", "uni1", "v052d", "v051d")] == [4, 2, 1, 4, 4]
    assert [distinct_directions(m) for m in ("cross4", "bi2", "uni1", "v052d", "v051d")] == [4, 2, 1, 2, 1]


@pytest.mark.parametrize("height,width", SHAPES)
@pytest.mark.parametrize("mode", list(SCAN_MODES))
def test_scan_and_merge_match_reference_and_invert(mode, height, width):
    x = torch.randn(2, 3, height, width)
    xs = cross_scan(x, mode)
    assert torch.equal(xs, cross_scan_ref(x, mode))
    assert torch.equal(cross_scan(x, mode, direction_first=True), xs.transpose(0, 1))
    k = num_sequences(mode)
    # merging the unrolled sequences puts every value back where it came from, once per direction
    assert torch.equal(cross_merge(xs, mode, height, width), k * x.flatten(2))
    assert torch.equal(cross_merge(xs.view(2, k, 3, height, width), mode), k * x.flatten(2))
    ys = torch.randn_like(xs)
    torch.testing.assert_close(cross_merge(ys, mode, height, width), cross_merge_ref(ys, mode, height, width))
    torch.testing.assert_close(cross_merge(list(ys.unbind(1)), mode, height, width),
                               cross_merge_ref(ys, mode, height, width))


def test_merge_refuses_wrong_k():
    with pytest.raises(ValueError, match="K=4"):
        cross_merge(torch.randn(1, 2, 3, 6), "cross4", 2, 3)
    with pytest.raises(ValueError, match="unknown scan mode"):
        cross_scan(torch.randn(1, 2, 2, 2), "diagonal")


def _grouped_inputs(batch=2, groups=4, d_inner=3, d_state=2, length=7, shared=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    per = 1 if shared else groups
    u = torch.randn(batch, groups * d_inner, length, generator=g)
    delta = torch.randn(batch, groups * d_inner, length, generator=g)
    A = -torch.rand(per * d_inner, d_state, generator=g) - 0.2
    B = torch.randn(batch, groups, d_state, length, generator=g)
    C = torch.randn(batch, groups, d_state, length, generator=g)
    D = torch.randn(per * d_inner, generator=g)
    bias = torch.randn(per * d_inner, generator=g)
    z = torch.randn(batch, groups * d_inner, length, generator=g)
    return u, delta, A, B, C, D, z, bias


@pytest.mark.parametrize("d_state", [1, 4])
@pytest.mark.parametrize("shared", [False, True])
def test_grouped_scan_equals_ungrouped_scan_per_group(d_state, shared):
    u, delta, A, B, C, D, z, bias = _grouped_inputs(d_state=d_state, shared=shared)
    groups, d_inner = 4, 3
    y = selective_scan_grouped(u, delta, A, B, C, D, z, bias, delta_softplus=True)
    ref = selective_scan_grouped_ref(u, delta, A, B, C, D, z, bias, delta_softplus=True)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    for k in range(groups):
        block = slice(k * d_inner, (k + 1) * d_inner)
        params = slice(None) if shared else block
        one = selective_scan_ref(u[:, block], delta[:, block], A[params], B[:, k], C[:, k], D[params], z[:, block],
                                 bias[params], delta_softplus=True)
        torch.testing.assert_close(y[:, block], one, rtol=1e-5, atol=1e-5)


def test_four_directions_with_identical_weights_equal_four_separate_scans():
    batch, d_inner, d_state, height, width = 2, 3, 1, 3, 4
    length = height * width
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, d_inner, height, width, generator=g)
    A = -torch.rand(d_inner, d_state, generator=g) - 0.1
    D, bias = torch.randn(d_inner, generator=g), torch.randn(d_inner, generator=g)
    xs = cross_scan(x, "cross4", direction_first=True)                    # (4, batch, d_inner, L)
    delta = xs * 0.5
    Bs = torch.randn(4, batch, d_state, length, generator=g)
    Cs = torch.randn(4, batch, d_state, length, generator=g)
    ys = selective_scan_directions(xs, delta, A.expand(4, -1, -1), Bs, Cs, D.expand(4, -1), None,
                                   bias.expand(4, -1), True)
    separate = [selective_scan_ref(xs[k], delta[k], A, Bs[k], Cs[k], D, None, bias, True) for k in range(4)]
    torch.testing.assert_close(ys, torch.stack(separate), rtol=1e-5, atol=1e-5)
    # and the same through VMamba's layout with the parameters repeated per direction
    vm = selective_scan_grouped(xs.transpose(0, 1).reshape(batch, 4 * d_inner, length),
                                delta.transpose(0, 1).reshape(batch, 4 * d_inner, length), A.repeat(4, 1),
                                Bs.transpose(0, 1), Cs.transpose(0, 1), D.repeat(4), None, bias.repeat(4), True)
    torch.testing.assert_close(vm.view(batch, 4, d_inner, length).transpose(0, 1), torch.stack(separate),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_grouped_scan_flops_count_every_direction(groups):
    u, delta, A, B, C, D, z, bias = _grouped_inputs(groups=groups, d_state=1)
    with FlopCounterMode(display=False) as counter:
        selective_scan_grouped(u, delta, A, B, C, D, None, bias, True)
    assert counter.get_total_flops() == groups * selective_scan_flops(2, 3, 7, 1, True, False)
    assert counter.get_total_flops() == 9 * 2 * groups * 3 * 7 * 1 + 2 * groups * 3 * 7
