"""Fan-out over worker processes and tensor-parallel rows, on CPU (the same code runs one worker per GPU,
NCCL instead of gloo)."""
import pickle

import numpy as np
import pytest
import torch
import yaml

import multigpu_helpers  # noqa: F401  (registers test-worker-dies here; workers load it via EFFPROF_PLUGINS)
from effprof.cli.main import main
from effprof.launch.torchrun import add_tp_scaling, expand_tp, launch
from effprof.launch.pool import add_ratios_same_device, host_summary
from effprof.report.files import read_csv
from effprof.runner import Config, RunOptions, measure_many
from effprof.modules.tensor_parallel import RowParallelLinear, colwise

OPTIONS = {"device": "cpu", "dtype": "fp32", "batch": 2, "min_time": 0.02, "warmup": 0}
DIMS = {"tokens": 16, "in_dim": 32, "out_dim": 64}
# What does not depend on timing or on where a row ran: equal in a fan-out and a serial run.
STABLE = ("label", "component", "params", "status", "params_total", "params_trainable", "weights_mib", "gflops",
          "mbytes_lower_bound", "tokens_in", "tokens_out", "items_per_call", "param_rank")


def _profile(tmp_path, rows, name="fan.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"title": "fan-out", "options": OPTIONS, "rows": rows}, sort_keys=False))
    return str(path)


def test_fan_out_over_two_workers_matches_serial_and_survives_dying_workers(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFPROF_PLUGINS", "multigpu_helpers")
    rows = [{"component": "linear", "params": DIMS},
            {"component": "test-worker-dies", "params": {"how": "assert"}, "label": "asserts"},
            {"component": "mlp", "params": DIMS},
            {"component": "test-worker-dies", "params": {"how": "exit"}, "label": "dies"},
            {"component": "lowrank", "params": {**DIMS, "rank": 8}},
            {"component": "gated", "params": DIMS}]
    out = tmp_path / "fan.csv"
    assert main(["compare", _profile(tmp_path, rows), "--workers", "2", "--csv", str(out)]) == 1
    fan = read_csv(out)
    assert [r["label"] for r in fan] == ["linear", "asserts", "mlp", "dies", "lowrank", "gated"]  # profile order
    assert [r["status"] for r in fan] == ["ok", "error", "ok", "error", "ok", "ok"]
    assert "device-side assert" in fan[1]["error"]
    assert "exit code 7" in fan[3]["error"] and "simulated hard crash" in fan[3]["error"]
    # two workers at the start, each replaced once (after the assert and after the hard exit)
    assert len({r["worker_pid"] for r in fan if r["worker_pid"] is not None}) >= 3
    assert all(r["worker"] in (0, 1) and r["rows_in_flight_max"] in (1, 2) for r in fan)
    assert fan[0]["gflops"] == pytest.approx(2 * 2 * 16 * 32 * 64 / 1e9)  # 2 × batch·tokens·in·out MACs

    opts = RunOptions(**OPTIONS)
    serial = measure_many([Config(r["component"], r["params"], opts, r.get("label", "")) for r in rows
                           if r["component"] != "test-worker-dies"])
    ok = [r for r in fan if r["status"] == "ok"]
    for a, b in zip(ok, serial):
        for key in STABLE:
            want = b.get(key)
            assert a.get(key) == (pytest.approx(want) if isinstance(want, float) else want), key


def test_isolate_runs_every_row_in_a_fresh_process(tmp_path):
    rows = [{"component": "linear", "params": DIMS, "label": "a"}, {"component": "linear", "params": DIMS,
                                                                    "label": "b"}]
    out = tmp_path / "iso.csv"
    assert main(["compare", _profile(tmp_path, rows), "--isolate", "--csv", str(out)]) == 0
    iso = read_csv(out)
    assert [r["status"] for r in iso] == ["ok", "ok"] and all(r["isolated"] for r in iso)
    assert iso[0]["worker_pid"] != iso[1]["worker_pid"]


def test_configs_pickle_and_pool_options_are_checked(tmp_path, capsys):
    config = Config("mamba-lm", {"d_model": 32}, RunOptions(device="cpu", tp=2), "x")
    assert pickle.loads(pickle.dumps(config)) == config
    profile = _profile(tmp_path, [{"component": "linear", "params": DIMS}])
    assert main(["compare", profile, "--gpus", "2", "--device", "cpu"]) == 2
    assert main(["compare", profile, "--workers", "0"]) == 2
    assert main(["compare", profile, "--gpus", "1", "--workers", "2"]) == 2
    assert main(["run", "linear", "--tp", "2", "--device", "cpu"]) == 2
    assert main(["run", "linear", "--tp", "two", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "no tensor-parallel plan" in err and "Traceback" not in err and len(err.strip().splitlines()) == 5


def test_ratios_only_between_rows_of_the_same_device_model():
    def row(label, device, latency):
        return {"label": label, "status": "ok", "device_name": device, "latency_ms_median": latency,
                "params_total": 10, "gflops": 1.0, "peak_mem_mib": 4.0, "host_cpu_busy_pct": 50.0,
                "host_cpus": 8, "rows_in_flight_max": 2, "verdict": "overhead"}

    records = [row("base", "NVIDIA H200", 2.0), row("same", "NVIDIA H200", 1.0), row("other", "NVIDIA H100", 0.5)]
    warnings = add_ratios_same_device(records, 0)
    assert records[1]["speedup"] == 2.0 and records[2]["speedup"] is None and "H100" in records[2]["ratio_note"]
    assert len(warnings) == 1 and "mixed host" in warnings[0]
    assert "busy 50%" in host_summary(records) and "base, same, other" in host_summary(records)


def test_tp_scaling_columns_and_expansion():
    records = [{"component": "mamba-lm", "params": "p", "status": "ok", "latency_ms_median": 10.0},
               {"component": "mamba-lm", "params": "p", "status": "ok", "latency_ms_median": 8.0, "tp": 2}]
    add_tp_scaling(records)
    assert records[1]["tp_speedup"] == 1.25 and records[1]["tp_scaling_efficiency"] == 0.625
    configs = expand_tp([Config("mamba-lm", {}, RunOptions(), "lm")], "1,2")
    assert [(c.label, c.options.tp) for c in configs] == [("lm tp=1", 1), ("lm tp=2", 2)]


def test_column_and_row_parallel_linears_add_up_to_the_whole():
    torch.manual_seed(0)
    linear, x = torch.nn.Linear(8, 6), torch.randn(3, 8)
    with torch.no_grad():
        cols = torch.cat([colwise(linear, r, 2)(x) for r in range(2)], dim=-1)
        # without a process group the all-reduce is a no-op: add the ranks' partial sums by hand, bias once
        parts = [RowParallelLinear(linear, r, 2) for r in range(2)]
        rows = sum(torch.nn.functional.linear(x.chunk(2, -1)[r], parts[r].weight) for r in range(2)) + linear.bias
        assert torch.allclose(cols, linear(x), atol=1e-6) and torch.allclose(rows, linear(x), atol=1e-6)


def test_tp2_on_gloo_gives_the_outputs_of_tp1():
    """transformer-lm, mamba-lm, llava (its Llama LM by the model's own transformers plan) and cobra (its
    Mamba LM), prefill and decode: the ranks' output equals the unsplit model's on the same inputs."""
    from effprof.models.cobra import PRESETS as COBRA_PRESETS

    cases = [("transformer-lm", {"d_model": 128, "n_layer": 2, "seq_len": 16}),
             ("transformer-lm", {"d_model": 128, "n_layer": 2, "seq_len": 16, "mode": "decode", "head": True}),
             ("mamba-lm", {"d_model": 32, "n_layer": 2, "seq_len": 16}),
             ("mamba-lm", {"d_model": 32, "n_layer": 2, "seq_len": 16, "mode": "decode", "head": True}),
             ("llava", {"preset": "tiny", "prompt_tokens": 8}),
             ("llava", {"preset": "tiny", "mode": "decode", "context": 16, "decode_impl": "fused"}),
             ("cobra", {"preset": "tiny", "prompt_tokens": 8}),
             ("cobra", {"preset": "tiny", "mode": "decode", "context": 16})]
    results = launch(multigpu_helpers.sharded_vs_whole, (cases,), 2, "cpu")
    # 2 layers each: GPT-NeoX 4 split linears per layer, Mamba 4 (in, x, dt, out), Llama 7 (q k v o gate up down)
    cobra_layers = 4 * COBRA_PRESETS["tiny"].lm.n_layer
    assert [split for _, _, split in results] == [8, 8, 8, 8, 14, 14, cobra_layers, cobra_layers]
    for diff, scale, _ in results:
        assert scale > 0.1 and diff < 1e-5 * max(1.0, scale)


def test_run_tp_1_and_2_reports_scaling_and_communication(tmp_path):
    out = tmp_path / "tp.csv"
    assert main(["run", "mamba-lm", "--d-model", "32", "--n-layer", "2", "--seq-len", "32", "--tp", "1,2",
                 "--device", "cpu", "--min-time", "0.02", "--warmup", "0", "--csv", str(out)]) == 0
    one, two = read_csv(out)
    assert (one["tp"], two["tp"], two["tp_backend"]) == (1, 2, "gloo")
    assert two["params_total"] == one["params_total"] and two["params_per_rank"] < one["params_total"]
    assert two["gflops"] == pytest.approx(one["gflops"], rel=1e-3)  # the ranks' FLOPs add up to the whole
    assert two["gflops_per_rank"] == pytest.approx(one["gflops"] / 2, rel=0.05)
    assert two["tp_speedup"] == pytest.approx(one["latency_ms_median"] / two["latency_ms_median"])
    assert two["tp_scaling_efficiency"] == pytest.approx(two["tp_speedup"] / 2)
    assert 0 < two["comm_share"] < 1 and two["timing_method"].endswith("-lockstep")


needs_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")


@needs_two_gpus
def test_nccl_tp2_gives_the_outputs_of_tp1():
    cases = [("transformer-lm", {"d_model": 128, "n_layer": 2, "seq_len": 16}),
             ("mamba-lm", {"d_model": 64, "n_layer": 2, "seq_len": 16, "mode": "decode", "head": True}),
             ("llava", {"preset": "tiny", "prompt_tokens": 8})]
    for diff, scale, split in launch(multigpu_helpers.sharded_vs_whole, (cases, "cuda"), 2, "cuda"):
        assert split > 0 and diff < 1e-3 * max(1.0, scale)  # cuDNN's conv may use TF32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fan_out_over_every_gpu(tmp_path):
    rows = [{"component": c, "params": DIMS} for c in ("linear", "mlp", "gated", "lowrank")]
    out = tmp_path / "gpus.csv"
    path = tmp_path / "gpus.yaml"
    path.write_text(yaml.safe_dump({"title": "gpus", "options": {"device": "cuda", "batch": 2, "min_time": 0.05},
                                    "rows": rows}, sort_keys=False))
    assert main(["compare", str(path), "--gpus", "all", "--csv", str(out)]) == 0
    fan = read_csv(out)
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    assert all(r["status"] == "ok" and r["gpu_name"] == names[r["gpu_index"]] for r in fan)


PROCESS_ROWS = [{"component": "linear", "params": DIMS}, {"component": "mlp", "params": DIMS},
                {"component": "test-worker-dies", "params": {"how": "exit"}, "label": "dies"}]


def _check_pooled(records):
    """Records of PROCESS_ROWS measured in 2 processes each: the ok rows pooled over both, the dying row failed."""
    assert [r["label"] for r in records] == ["linear", "mlp", "dies"]
    for r in records[:2]:
        assert r["processes"] == 2 and r["processes_ok"] == 2 and r["status"] == "ok"
        sizes, samples = r["latency_samples_process_sizes"], r["latency_samples_ms"]
        assert len(samples) == sum(sizes) and len(r["latency_ms_process_medians"]) == 2
        first = samples[:sizes[0]]
        assert r["latency_ms_process_medians"][0] == pytest.approx(sorted(first)[len(first) // 2], rel=0.5)
        assert r["latency_ms_median"] == pytest.approx(float(np.median(samples)))
        assert r["latency_ms_ci95_low"] <= min(r["latency_ms_process_medians"])
        assert r["latency_ms_ci95_high"] >= max(r["latency_ms_process_medians"])
        assert r["throughput_per_s"] == pytest.approx(r["items_per_call"] / (r["latency_ms_median"] / 1e3))
    assert records[2]["status"] == "error" and "exit code 7" in records[2]["error"]


def test_processes_pool_every_row_over_fresh_processes_on_two_workers(tmp_path, monkeypatch):
    """--processes 2 --workers 2 (one worker per GPU on a GPU host): each row pooled over two passes, the second
    pass on the slot the first did not use, a worker that dies failing its row only; bad combinations refused."""
    import json

    monkeypatch.setenv("EFFPROF_PLUGINS", "multigpu_helpers")
    out = tmp_path / "passes.json"
    assert main(["compare", _profile(tmp_path, PROCESS_ROWS), "--processes", "2", "--workers", "2",
                 "--json", str(out)]) == 1
    records = json.loads(out.read_text())["records"]
    _check_pooled(records)
    for r in records[:2]:
        assert sorted(r["worker_by_process"]) == [0, 1]
    rows = PROCESS_ROWS[:1]
    assert main(["compare", _profile(tmp_path, rows), "--processes", "0"]) == 2
    assert main(["compare", _profile(tmp_path, rows), "--processes", "17"]) == 2
    assert main(["compare", _profile(tmp_path, rows), "--processes", "2", "--device", "meta"]) == 2
    assert main(["compare", _profile(tmp_path, rows), "--processes", "2", "--tp", "2"]) == 2


@pytest.mark.slow  # CI: the test above (the same passes over two workers; each worker start is seconds on a CPU)
def test_processes_pool_every_row_over_fresh_processes(tmp_path, monkeypatch):
    """--processes 2 on one worker: both passes of every row on it."""
    import json

    monkeypatch.setenv("EFFPROF_PLUGINS", "multigpu_helpers")
    out = tmp_path / "passes.json"
    assert main(["compare", _profile(tmp_path, PROCESS_ROWS), "--processes", "2", "--json", str(out)]) == 1
    records = json.loads(out.read_text())["records"]
    _check_pooled(records)
    assert all(r["worker_by_process"] == [0, 0] for r in records[:2])


def test_merged_record_rescales_what_divides_by_the_latency():
    from effprof.launch.passes import merge_passes

    base = {"status": "ok", "latency_ms_median": 2.0, "n_calls": 10, "throughput_per_s": 500.0,
            "tflops_per_s": 1.0, "items_per_call": 1, "gflops": 2.0, "compute_floor_ms": 0.3, "memory_floor_ms": 0.1, "verdict": "compute",
            "latency_samples_ms": [2.0] * 10, "label": "x"}
    other = dict(base, latency_ms_median=4.0, latency_samples_ms=[4.0] * 30, n_calls=30)
    merged = merge_passes([base, other])
    assert merged["latency_ms_median"] == 4.0 and merged["n_calls"] == 40
    assert merged["throughput_per_s"] == 250.0 and merged["tflops_per_s"] == 0.5
    assert merged["verdict"] == "overhead"   # 4 ms against a 0.3 ms floor: past the factor 10 (2 ms was not)
    assert merged["latency_ms_ci95_low"] <= 2.0 and merged["latency_ms_ci95_high"] >= 4.0
    failed = {"status": "error", "error": "boom", "label": "x"}
    assert merge_passes([failed, failed]) == failed
    assert merge_passes([failed, base])["processes_ok"] == 1
