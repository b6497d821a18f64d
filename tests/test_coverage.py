"""flop_coverage: the share of a call's time in ops that have a FLOP formula, and the ops counted as zero."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

from effprof.cli.main import main
from effprof.measure.coverage import flop_coverage, formula_op_names, mark_low_coverage

CPU = torch.device("cpu")


# Two custom ops with the same body: one without a FLOP formula (a user's kernel as FlopCounterMode sees it),
# one with a formula registered as effprof registers its scan's (README: "Registering a FLOP formula").
@torch.library.custom_op("wbtest::gram_plain", mutates_args=())
def gram_plain(x: torch.Tensor) -> torch.Tensor:
    return x @ x.t()


@torch.library.custom_op("wbtest::gram_counted", mutates_args=())
def gram_counted(x: torch.Tensor) -> torch.Tensor:
    return x @ x.t()


@register_flop_formula(torch.ops.wbtest.gram_counted)
def _gram_flops(x_shape, *args, out_shape=None, **kwargs) -> int:
    n, k = x_shape
    return 2 * n * n * k


def _coverage(fn, *args):
    with torch.inference_mode():
        return flop_coverage(lambda: fn(*args), CPU, repeats=2)


def test_an_op_without_formula_counts_zero_and_registering_one_covers_it():
    x = torch.randn(64, 32)
    plain, counted = _coverage(torch.ops.wbtest.gram_plain, x), _coverage(torch.ops.wbtest.gram_counted, x)
    assert plain["coverage"] == 0.0 and plain["uncovered"][0]["name"] == "wbtest::gram_plain"
    assert counted["coverage"] == 1.0 and counted["uncovered"] == []
    with FlopCounterMode(display=False) as fc:
        torch.ops.wbtest.gram_counted(x)
    assert fc.get_total_flops() == 2 * 64 * 64 * 32
    assert "wbtest::gram_counted" in formula_op_names() and "aten::mm" in formula_op_names()


def test_matmul_alone_is_covered_and_sort_alone_is_not():
    a, b = torch.randn(128, 128), torch.randn(128, 128)
    assert _coverage(torch.mm, a, b)["coverage"] == 1.0
    found = _coverage(torch.sort, a)
    assert found["coverage"] == 0.0 and found["uncovered"][0]["name"] == "aten::sort"


def test_a_module_with_a_known_uncounted_op():
    class LinearThenSort(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(64, 64)

        def forward(self, x):
            return torch.sort(self.lin(x), dim=-1).values

    module, x = LinearThenSort(), torch.randn(256, 64)
    found = _coverage(module, x)
    assert 0 < found["coverage"] < 1
    names = [r["name"] for r in found["uncovered"]]
    assert "aten::sort" in names and "aten::addmm" not in names  # addmm carries the linear's FLOPs
    # covered + every uncovered op's own time = the whole call (the walk neither loses nor double counts)
    assert found["covered_ms"] + sum(r["time_ms"] for r in found["uncovered"]) == pytest.approx(found["total_ms"],
                                                                                              rel=1e-6)


def test_records_carry_coverage_and_low_rows_are_marked(tmp_path, fast, capsys):
    out = tmp_path / "r.json"
    assert main(["run", "linear", "--tokens", "16", "--in-dim", "32", "--out-dim", "48", *fast, "--json", str(out),
                 "--min-flop-coverage", "1.0"]) == 0
    from effprof.report.files import read_json

    r = read_json(out)[0]
    assert 0 < r["flop_coverage"] <= 1 and "cpu" in r["flop_coverage_method"]
    if r["flop_coverage"] < 1:
        assert r["flop_coverage_low"] is True and "below --min-flop-coverage" in capsys.readouterr().out
    records = [{"label": "a", "flop_coverage": 0.4}, {"label": "b", "flop_coverage": 0.9}, {"label": "c"}]
    assert mark_low_coverage(records, 0.5) == ["a"] and records[1]["flop_coverage_low"] is False


def test_breakdown_uncovered_lists_the_ops_counted_as_zero(capsys, fast):
    assert main(["breakdown", "mlp", "--tokens", "16", "--in-dim", "32", "--out-dim", "48", "--device", "cpu",
                 "--uncovered"]) == 0
    out = capsys.readouterr().out
    assert "FLOP coverage" in out and "aten::gelu" in out  # the MLP's GELU has no FLOP formula


def test_coverage_is_opt_in_on_every_device(tmp_path, fast):
    """Issue 27: on CPU the profiler pass doubled a row's wall time; it is opt-in (--flop-coverage) there too."""
    from types import SimpleNamespace

    from effprof.core.options import RunOptions
    from effprof.trackers.coverage import CoverageTracker

    def enabled(device, **given):
        return CoverageTracker.enabled(SimpleNamespace(options=RunOptions(**given), device=torch.device(device),
                                                       count_only=False))

    assert not enabled("cpu") and not enabled("cuda") and enabled("cuda", flop_coverage=True)
    assert enabled("cpu", flop_coverage=True) and not enabled("cpu", flop_coverage=True, count_flops=False)
    from effprof.report.files import read_json

    out = tmp_path / "r.json"
    assert main(["run", "linear", "--tokens", "8", "--in-dim", "16", "--out-dim", "16", *fast, "--json", str(out)]) == 0
    assert "flop_coverage" not in read_json(out)[0]
    assert main(["run", "linear", "--tokens", "8", "--in-dim", "16", "--out-dim", "16", *fast, "--flop-coverage",
                 "--json", str(out)]) == 0
    row = read_json(out)[0]
    assert 0 <= row["flop_coverage"] <= 1 and row["phase_passes_s"] >= row["phase_coverage_s"] > 0
