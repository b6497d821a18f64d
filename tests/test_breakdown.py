"""Per-module breakdown on CPU: children plus self add up to the parent; params, FLOPs, bytes per module."""
import time

import pytest
import torch
from rich.console import Console

from effprof.measure.breakdown import breakdown
from effprof.report.tree import breakdown_table, print_breakdown

CPU = torch.device("cpu")


class Sleep(torch.nn.Module):
    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return x


class Slow(torch.nn.Module):
    """Known time split: fast child 10 ms, slow child 30 ms, 5 ms of the parent's own work."""

    def __init__(self):
        super().__init__()
        self.fast = Sleep(0.010)
        self.slow = Sleep(0.030)

    def forward(self, x):
        time.sleep(0.005)
        return self.slow(self.fast(x))


def by_name(nodes):
    return {n["name"]: n for n in nodes}


def test_times_follow_the_work_and_children_plus_self_make_the_parent():
    nodes = by_name(breakdown(Slow(), lambda: None, CPU, warmup=0, repeats=2, count=False))
    assert nodes == {}  # the call never ran the module: nothing to show

    model, x = Slow(), torch.zeros(1)
    nodes = by_name(breakdown(model, lambda: model(x), CPU, warmup=0, repeats=2, count=False))
    root, fast, slow = nodes[""], nodes["fast"], nodes["slow"]
    assert fast["time_ms"] >= 10 and slow["time_ms"] >= 30 and root["time_ms"] >= 45
    assert root["children_ms"] == pytest.approx(fast["time_ms"] + slow["time_ms"])
    assert root["self_ms"] >= 5 and root["self_ms"] + root["children_ms"] == pytest.approx(root["time_ms"])
    assert slow["share_of_total"] > fast["share_of_total"] and root["share_of_total"] == 1.0
    assert all(n["additivity_ok"] and n["method"] == "hooks-perf_counter" for n in nodes.values())


def mlp():
    return torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(),
                               torch.nn.Sequential(torch.nn.Linear(256, 32), torch.nn.ReLU()))


@pytest.mark.parametrize("method", ["hooks-perf_counter", "profiler-cpu"])
def test_counts_per_module_and_additivity(method):
    model, x = mlp(), torch.randn(8, 64)
    with torch.inference_mode():
        nodes = breakdown(model, lambda: model(x), CPU, depth=2, repeats=3, method=method)
    assert [n["name"] for n in nodes] == ["", "0", "1", "2", "2.0", "2.1"]   # pre-order
    assert [n["path"] for n in nodes][:2] == ["Sequential", "Sequential.0"]
    named = by_name(nodes)
    assert named[""]["params"] == 64 * 256 + 256 + 256 * 32 + 32
    assert named["2"]["params"] == 256 * 32 + 32
    assert named["0"]["gflops"] == pytest.approx(2 * 8 * 64 * 256 / 1e9)
    assert named[""]["gflops"] == pytest.approx(2 * 8 * (64 * 256 + 256 * 32) / 1e9)
    assert named["0"]["moved_mib"] == pytest.approx(4 * (8 * 64 + 64 * 256 + 256 + 8 * 256) / 2**20)
    assert named["1"]["moved_mib"] == pytest.approx(4 * 2 * 8 * 256 / 2**20)
    for node in nodes:
        assert node["method"] == method and node["calls"] == 1
        assert node["additivity_ok"], node
        assert node["self_ms"] + node["children_ms"] == pytest.approx(node["time_ms"])
    assert named["2"]["children_ms"] == pytest.approx(named["2.0"]["time_ms"] + named["2.1"]["time_ms"])


def test_depth_limits_the_nodes_shown_not_the_residual():
    model, x = mlp(), torch.randn(8, 64)
    nodes = by_name(breakdown(model, lambda: model(x), CPU, depth=1, repeats=2, count=False))
    assert set(nodes) == {"", "0", "1", "2"}
    assert nodes["2"]["children_ms"] > 0 and nodes["2"]["gflops"] is None


def test_module_list_children_hang_from_the_parent():
    class Stack(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList(torch.nn.Linear(16, 16) for _ in range(3))

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    model, x = Stack(), torch.randn(4, 16)
    nodes = by_name(breakdown(model, lambda: model(x), CPU, depth=2, repeats=2))
    assert "layers" not in nodes  # a ModuleList never runs itself
    assert nodes[""]["children_ms"] == pytest.approx(sum(nodes[f"layers.{i}"]["time_ms"] for i in range(3)))
    assert nodes[""]["gflops"] == pytest.approx(3 * 2 * 4 * 16 * 16 / 1e9)


def test_shared_module_counts_each_call(linear_applied_twice):
    model, x = linear_applied_twice(8), torch.randn(2, 8)
    nodes = by_name(breakdown(model, lambda: model(x), CPU, repeats=2))
    assert nodes["lin"]["calls"] == 2 and nodes["lin"]["gflops"] == pytest.approx(2 * 2 * 2 * 8 * 8 / 1e9)


def test_bad_method_is_refused():
    model = mlp()
    with pytest.raises(ValueError):
        breakdown(model, lambda: None, CPU, method="profiler-device")
    with pytest.raises(ValueError):
        breakdown(model, lambda: None, CPU, method="stopwatch")


def test_rendering():
    model, x = mlp(), torch.randn(8, 64)
    nodes = breakdown(model, lambda: model(x), CPU, depth=2, repeats=2)
    console = Console(record=True, width=140)
    print_breakdown(nodes, title="mlp", console=console)
    text = console.export_text()
    assert "Sequential" in text and "GELU" in text and "hooks-perf_counter" in text and "16,640 params" in text
    console = Console(record=True, width=140)
    console.print(breakdown_table(nodes))
    table = console.export_text()
    assert "    2.0" in table and "100.0" in table


def test_top_kernels_per_call_sorted_with_shares_summing_to_one():
    from effprof.measure.breakdown import top_kernels

    layers = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64))
    x = torch.randn(32, 64)
    with torch.inference_mode():
        rows = top_kernels(lambda: layers(x), torch.device("cpu"), top=3, repeats=4)
    assert len(rows) <= 4 and rows[-1]["name"].startswith("(other")
    times = [r["time_ms"] for r in rows[:-1]]
    assert times == sorted(times, reverse=True)
    assert abs(sum(r["share"] for r in rows) - 1) < 1e-9
    names = {r["name"]: r for r in top_kernels(lambda: layers(x), torch.device("cpu"), top=50, repeats=4)}
    assert names["aten::addmm"]["calls"] == 2  # two Linear layers per call, whatever the repeat count
