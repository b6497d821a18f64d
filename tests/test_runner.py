"""The runner's contract: stages, trackers, count-only on the meta device, --debug."""
import pytest
import torch
from torch import nn

from effprof.cli.main import main
from effprof.core.params import Param
from effprof.core.registry import Built, Stage, register_component
from effprof.runner import Config, RunOptions, measure, measure_many
from effprof.trackers import Tracker, register_tracker, unregister_tracker

FAST = RunOptions(device="cpu", dtype="fp32", min_time=0.02, warmup=0.0)


class TwoLinears(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.first = nn.Linear(width, 2 * width)
        self.second = nn.Linear(2 * width, width, bias=False)


@register_component("test-staged", unit="tok", params=[Param("width", int, 8, "width", low=1)])
def staged(ctx, width):
    """Two linears as two stages."""
    model = TwoLinears(width).to(ctx.device, ctx.dtype)
    stages = [Stage("first", lambda inputs: model.first(inputs[0]), model.first),
              Stage("second", lambda hidden: model.second(hidden), model.second)]
    return Built(model, lambda batch: (torch.randn(batch, 4, width, device=ctx.device, dtype=ctx.dtype),),
                 "tok", items_per_sample=4, stages=stages)


@register_component("test-raises", unit="tok", params=[])
def fails(ctx):
    """Raises at call time."""
    return Built(nn.Identity(), lambda batch: (torch.zeros(batch),), "tok",
                 forward=lambda m, inputs: (_ for _ in ()).throw(RuntimeError("boom in forward")))


def test_stages_report_their_own_params_flops_and_add_up_to_the_whole():
    width, batch = 16, 3
    r = measure(Config("test-staged", {"width": width}, FAST.__class__(**{**FAST.__dict__, "batch": batch})))
    assert r["stage_names"] == "first,second"
    assert r["stage_first_params"] == width * 2 * width + 2 * width
    assert r["stage_second_params"] == 2 * width * width
    tokens = batch * 4
    assert r["stage_first_gflops"] * 1e9 == pytest.approx(2 * tokens * width * 2 * width)
    assert r["stage_second_gflops"] * 1e9 == pytest.approx(2 * tokens * 2 * width * width)
    assert r["stage_first_gflops"] + r["stage_second_gflops"] == pytest.approx(r["gflops"])
    assert r["stages_sum_ms"] == pytest.approx(r["stage_first_ms"] + r["stage_second_ms"])
    assert r["stage_first_share"] + r["stage_second_share"] == pytest.approx(1.0)
    assert r["stages_sum_over_whole"] == pytest.approx(r["stages_sum_ms"] / r["latency_ms_median"])


def test_a_staged_call_is_counted_once_stage_by_stage(monkeypatch):
    """The counts tracker counts a staged call along its chain and the stage split takes those counts, so the
    ops are counted once (a counting pass over a whole generation costs a minute on a 7B LM)."""
    import effprof.trackers.counts as counts_tracker
    import effprof.trackers.stages as stages_tracker

    counted = []
    real = counts_tracker.count_flops_and_bytes

    def counting(fn, *args, **kwargs):
        counted.append(fn)
        return real(fn, *args, **kwargs)
    monkeypatch.setattr(counts_tracker, "count_flops_and_bytes", counting)
    monkeypatch.setattr(stages_tracker, "count_flops_and_bytes", counting)
    r = measure(Config("test-staged", {"width": 8}, FAST))
    assert len(counted) == 2 and r["stage_first_gflops"] > 0 and r["stage_second_gflops"] > 0
    assert r["stage_first_gflops"] + r["stage_second_gflops"] == pytest.approx(r["gflops"])
    assert r["stage_first_moved_mib"] + r["stage_second_moved_mib"] == pytest.approx(r["moved_mib_lower_bound"])


@register_component("test-sleepy", unit="tok", params=[])
def sleepy(ctx):
    """Two stages of known length (sleeps of 20 and 40 ms): the split must find them and add up to the whole."""
    import time

    def nap(seconds):
        def run(carry):
            time.sleep(seconds)
            return carry
        return run

    return Built(nn.Identity(), lambda batch: (torch.zeros(1),), "tok",
                 stages=[Stage("short", nap(0.02)), Stage("long", nap(0.04))])


def test_stage_times_add_up_to_the_whole():
    r = measure(Config("test-sleepy", {}, RunOptions(device="cpu", dtype="fp32", min_time=0.2, warmup=0.0)))
    assert 20 <= r["stage_short_ms"] < 30 and 40 <= r["stage_long_ms"] < 55
    assert r["stage_long_share"] == pytest.approx(2 / 3, abs=0.06)
    assert r["stages_sum_over_whole"] == pytest.approx(1.0, abs=0.15)


def test_a_stage_split_that_does_not_add_up_is_marked():
    from effprof.report.table import footer

    r = measure(Config("test-sleepy", {}, RunOptions(device="cpu", dtype="fp32", min_time=0.2, warmup=0.0)))
    assert r["stages_additive"] is (abs(r["stages_sum_over_whole"] - 1) <= 0.05)
    assert r["stages_whole_ms"] == pytest.approx(r["stages_sum_ms"], rel=0.2)
    bad = dict(r, label="prumerge+", stages_additive=False, stages_sum_over_whole=1.71)
    text = footer([bad])
    assert "stage split not additive: prumerge+ (stages sum / whole = 1.71)" in text
    assert "stage split not additive" not in footer([dict(r, stages_additive=True)])


@register_component("test-two-linears", unit="tok", params=[])
def two_linears(ctx):
    """Two stages, each a Linear: something for torch.compile to compile per stage."""
    first, second = nn.Linear(8, 8), nn.Linear(8, 4)
    return Built(nn.ModuleList([first, second]), lambda batch: (torch.randn(batch, 8),), "tok",
                 stages=[Stage("first", lambda carry: torch.relu(first(carry[0])), first),
                         Stage("second", lambda carry: second(carry), second)])


def test_compile_rows_split_the_compiled_stages_without_compiling_again(monkeypatch):
    """A --compile row of a staged component times each stage's compiled step, and its stage split times the
    same compiled steps: Dynamo serves them from its cache, so each stage compiles once in the whole row."""
    graphs = []

    def counting(gm, example_inputs):  # a backend that counts what Dynamo hands it and runs it as is
        graphs.append(gm)
        return gm.forward

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: real(fn, backend=counting))
    torch._dynamo.reset()
    r = measure(Config("test-two-linears", {}, RunOptions(device="cpu", dtype="fp32", compile=True,
                                                          min_time=0.05, warmup=0.0, count_flops=False)))
    torch._dynamo.reset()
    assert r["exec_mode"] == "compile" and r["compile_s"] > 0
    assert r["stage_method"] == "perf_counter between stages, compiled"
    assert len(graphs) == 2                    # one graph per stage: the split compiled nothing again
    assert r["stage_first_ms"] > 0 and r["stage_second_ms"] > 0


def test_a_new_tracker_adds_a_column_without_touching_the_runner():
    class CallsSeen(Tracker):
        name = "test-calls-seen"

        def start(self, run):
            self.started = True

        def fields(self, run):
            return {"test_calls_seen": run.calls, "test_started": self.started,
                    "test_gflops_seen": run.record.get("gflops")}

    register_tracker(CallsSeen)
    try:
        r = measure(Config("linear", {"tokens": 4, "in_dim": 8, "out_dim": 8}, FAST))
    finally:
        unregister_tracker("test-calls-seen")
    assert r["test_started"] is True
    assert r["test_calls_seen"] >= r["n_calls"]  # warm-up calls are counted too
    assert r["test_gflops_seen"] == pytest.approx(2 * 4 * 8 * 8 / 1e9)
    r2 = measure(Config("linear", {"tokens": 4, "in_dim": 8, "out_dim": 8}, FAST))
    assert "test_calls_seen" not in r2


def test_meta_device_counts_without_timing_or_memory():
    r = measure(Config("mlp", {"tokens": 576, "in_dim": 1024, "out_dim": 4096}, RunOptions(device="meta")))
    params = 1024 * 4096 + 4096 + 4096 * 4096 + 4096
    assert r["params_total"] == params
    assert r["weights_mib"] == pytest.approx(params * 2 / 2**20)  # bf16 by default on meta
    assert r["gflops"] * 1e9 == pytest.approx(2 * 576 * (1024 * 4096 + 4096 * 4096))
    assert r["exec_mode"].startswith("count-only") and "latency_ms_median" not in r


def test_meta_device_through_the_cli(capsys):
    assert main(["run", "lowrank", "--device", "meta", "--rank", "64"]) == 0
    assert "count-only" in capsys.readouterr().out
    assert main(["run", "linear", "--device", "meta", "--cold"]) == 2


def test_a_failing_row_keeps_its_traceback_only_with_debug():
    quiet = measure_many([Config("test-raises", {}, FAST)])[0]
    assert quiet["status"] == "error" and "boom in forward" in quiet["error"] and "traceback" not in quiet
    loud = measure_many([Config("test-raises", {}, RunOptions(**{**FAST.__dict__, "debug": True}))])[0]
    assert "Traceback" in loud["traceback"] and "boom in forward" in loud["traceback"]


def test_stage_names_must_be_distinct():
    with pytest.raises(ValueError):
        Built(nn.Identity(), lambda b: (), "tok", stages=[Stage("a", lambda x: x), Stage("a", lambda x: x)])


def test_the_stage_split_runs_each_stage_at_most_once_more():
    """The split's eager pass: the counts tracker's counts reused, the peak's run (CUDA) or a plain run giving the
    next stage its input, the last stage not run where nothing is measured from it (CPU, counts made), and a
    count-only row whose counts are all made runs nothing."""
    from types import SimpleNamespace

    from effprof.core.registry import Stage
    from effprof.measure.bytes import count_flops_and_bytes
    from effprof.trackers.stages import counts_and_peaks

    calls = {"first": 0, "second": 0}

    def step(name, fn):
        def run(carry):
            calls[name] += 1
            return fn(carry)
        return run
    weight = torch.randn(8, 8)
    stages = [Stage("first", step("first", lambda inputs: inputs[0] @ weight)),
              Stage("second", step("second", lambda hidden: hidden @ weight))]
    x = torch.randn(4, 8)
    made = {"first": count_flops_and_bytes(lambda: x @ weight), "second": count_flops_and_bytes(lambda: x @ weight)}

    def split(shared, count_only):
        fields = {}
        calls.update(first=0, second=0)
        run = SimpleNamespace(shared={"stage_counts": shared}, input_sets=[(x,)], count_only=count_only,
                              options=SimpleNamespace(count_flops=True), device=torch.device("cpu"))
        counts_and_peaks(run, stages, fields)
        return fields
    fields = split(made, count_only=False)
    assert calls == {"first": 1, "second": 0} and fields["stage_second_gflops"] == made["second"].flops / 1e9
    assert split(made, count_only=True) and calls == {"first": 0, "second": 0}
    fields = split({}, count_only=False)                        # counted here: each stage once, in its count
    assert calls == {"first": 1, "second": 1} and fields["stage_first_gflops"] == 2 * 4 * 8 * 8 / 1e9
