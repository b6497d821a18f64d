"""The CLI as a user meets it: refusals, files, comparisons, interruptions."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from effprof.cli.main import main
from effprof.core.registry import Built, register_component
from effprof.core.errors import ParamError
from effprof.core.params import Param
from effprof.report.files import read_csv, read_json
from effprof.runner import Config, RunOptions, add_ratios, measure_many

SMALL = ["--tokens", "16", "--in-dim", "32", "--out-dim", "48"]


@pytest.mark.parametrize("argv, says", [
    (["run", "no-such-component"], "unknown component"),
    (["run", "linear", "--tokens", "0"], "outside the allowed range"),
    (["run", "linear", "--tokens", "many"], "is not a int"),
    (["run", "linear", "--bogus", "1"], "unknown option '--bogus'"),
    (["run", "linear", "--tokens"], "needs a value"),
    (["run", "linear", "--dtype", "int8"], "--dtype"),
    (["run", "linear", "--batch", "0"], "--batch"),
    (["run", "linear", "--device", "tpu"], "--device"),
    (["compare", "no-such-profile"], "no profile"),
    (["compare", "linear", "--grid", "tokens"], "NAME=V1,V2"),
    (["compare", "linear", "--grid", "nope=1,2"], "no parameter 'nope'"),
    (["compare", "linear", "--grid", "tokens=8,-1"], "outside the allowed range"),
    (["run", "linear", "--min-time", "abc"], "--min-time"),
])
def test_bad_input_is_one_line_and_exit_2(argv, says, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert says in err
    assert "\n" not in err and "Traceback" not in err


def test_bad_input_through_the_real_console_script():
    proc = subprocess.run([sys.executable, "-m", "effprof", "run", "linear", "--tokens", "-3"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


def test_run_writes_csv_and_json_that_round_trip(tmp_path, fast):
    csv_path, json_path = tmp_path / "r.csv", tmp_path / "r.json"
    assert main(["run", "linear", *SMALL, "--batch", "2", *fast, "--csv", str(csv_path), "--json", str(json_path)]) == 0
    from_csv, from_json = read_csv(csv_path)[0], read_json(json_path)[0]
    assert len(from_json["latency_samples_ms"]) >= 5  # the raw samples travel in the JSON only
    assert "latency_samples_ms" not in from_csv
    for key, value in from_json.items():
        if isinstance(value, list):
            continue
        if isinstance(value, float):
            assert from_csv[key] == pytest.approx(value, rel=1e-12), key
        else:
            assert from_csv[key] == value, key
    r = from_json
    assert r["status"] == "ok" and r["unit"] == "tok" and r["items_per_call"] == 2 * 16
    assert r["latency_ms_p10"] <= r["latency_ms_median"] <= r["latency_ms_p90"]
    assert r["gflops"] == pytest.approx(2 * 2 * 16 * 32 * 48 / 1e9)
    assert r["throughput_per_s"] == pytest.approx(32 / (r["latency_ms_median"] / 1e3))
    assert r["params_total"] == 32 * 48 + 48 and r["param_tokens"] == 16
    assert "resident set" in r["peak_mem_method"]  # a tiny call: below the method's resolution, or a number above it
    assert (r["peak_mem_mib"] is None and r["peak_mem_below_resolution"]) or r["peak_mem_mib"] >= 0.0625
    for column in ("device_name", "torch_version", "effprof_version", "timestamp_utc"):
        assert r[column]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_compare_grid_adds_ratio_columns(tmp_path, fast):
    out = tmp_path / "g.json"
    assert main(["compare", "lowrank", "--grid", "rank=4,8", "--grid", "tokens=16", *fast, "--json", str(out)]) == 0
    rows = read_json(out)
    assert [r["label"] for r in rows] == ["rank=4,tokens=16", "rank=8,tokens=16"]
    assert rows[0]["speedup"] == 1.0 and rows[0]["baseline"] == "rank=4,tokens=16"
    i, o = 1024, 4096
    assert rows[1]["params_ratio"] == pytest.approx((i * 8 + 8 * o + o) / (i * 4 + 4 * o + o))


def test_compare_profile_file_and_list(tmp_path, fast, capsys):
    profile = tmp_path / "mine.yaml"
    profile.write_text(textwrap.dedent("""
        title: two projectors
        options: {batch: 2}
        baseline: big
        rows:
          - {component: linear, params: {tokens: 4, in_dim: 8, out_dim: 8}, label: small}
          - {component: linear, params: {tokens: 4, in_dim: 8, out_dim: 64}, label: big}
    """))
    out = tmp_path / "p.csv"
    assert main(["compare", str(profile), *fast, "--csv", str(out)]) == 0
    rows = read_csv(out)
    assert [r["label"] for r in rows] == ["small", "big"] and rows[1]["speedup"] == 1.0
    assert rows[0]["gflops_ratio"] == pytest.approx(8 / 64) and rows[0]["batch"] == 2
    assert main(["list", "proj*"]) == 2  # no component is named like that
    assert main(["list"]) == 0
    listing = capsys.readouterr().out  # a line per component; the parameters are in `list COMPONENT`
    assert "clip-vtp" in listing and "projectors" in listing and "--keep" not in listing
    assert len([line for line in listing.splitlines() if line.startswith("clip-vtp ")]) == 1
    assert main(["list", "clip-vtp"]) == 0
    detail = capsys.readouterr().out
    assert "--keep" in detail and "(0, 1]" in detail
    assert main(["list", "clip-*"]) == 0  # several matches: a line each
    assert "--keep" not in capsys.readouterr().out


def test_bad_profile_is_refused_before_running(tmp_path, capsys):
    profile = tmp_path / "bad.yaml"
    profile.write_text("rows:\n  - {component: linear, params: {tokens: 0}}\n")
    assert main(["compare", str(profile)]) == 2
    assert "tokens" in capsys.readouterr().err
    profile.write_text("rows: [\n")
    assert main(["compare", str(profile)]) == 2


@register_component("test-fails", unit="seq", params=[Param("mode", str, "ok", "what happens",
                                                              choices=("ok", "oom", "crash", "refuse"))])
def _failing(ctx, mode):
    """A component that runs out of memory, crashes or refuses its parameters on demand."""
    if mode == "refuse":
        raise ParamError("--mode: refuse cannot be combined with this device")
    if mode == "oom":
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80 GiB")
    if mode == "crash":
        raise ValueError("something broke\nsecond line")
    layer = torch.nn.Linear(4, 4)
    return Built(layer, lambda b: (torch.randn(b, 4),), unit="seq")


def test_oom_row_is_marked_and_the_comparison_goes_on():
    opts = RunOptions(device="cpu", min_time=0.01, warmup=0)
    configs = [Config("test-fails", {"mode": m}, opts, m) for m in ("ok", "oom", "crash", "refuse", "ok")]
    rows = measure_many(configs)
    assert [r["status"] for r in rows] == ["ok", "OOM", "error", "refused", "ok"]
    assert "cannot be combined" in rows[3]["error"]
    assert rows[2]["error"] == "ValueError: something broke"
    add_ratios(rows)
    assert rows[1]["speedup"] is None and rows[4]["speedup"] > 0


def test_a_refused_row_keeps_the_others_and_exits_2(tmp_path, fast):
    out = tmp_path / "r.csv"
    assert main(["compare", "test-fails", "--grid", "mode=ok,refuse,ok", *fast, "--csv", str(out)]) == 2
    assert [r["status"] for r in read_csv(out)] == ["ok", "refused", "ok"]


@register_component("test-interrupt", unit="seq", params=[Param("n", int, 1, "row number")])
def _interrupt(ctx, n):
    """Simulates Ctrl-C arriving while the third row is measured."""
    layer = torch.nn.Linear(4, 4)

    def forward(module, inputs):
        if n == 3:
            raise KeyboardInterrupt
        return module(*inputs)

    return Built(layer, lambda b: (torch.randn(b, 4),), unit="seq", forward=forward)


def test_interrupted_comparison_keeps_a_valid_csv_of_finished_rows(tmp_path, capsys):
    # in this process: a real signal in a real process is tests/test_bad_input.py's (SIGINT and SIGTERM)
    out, out_json = tmp_path / "rows.csv", tmp_path / "rows.json"
    code = main(["compare", "test-interrupt", "--grid", "n=1,2,3,4", "--device", "cpu", "--min-time", "0.01",
                 "--warmup", "0", "--csv", str(out), "--json", str(out_json)])
    err = capsys.readouterr().err
    assert code == 130, err
    assert "interrupted after 2 of 4 rows" in err and "Traceback" not in err
    rows = read_csv(out)
    assert [r["label"] for r in rows] == ["n=1", "n=2"] and all(r["status"] == "ok" for r in rows)
    assert len(json.loads(out_json.read_text())["records"]) == 2


def test_env_lists_optional_modules(capsys):
    assert main(["env", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for name in ("torch_version", "fvcore", "mamba_ssm", "triton", "pynvml"):
        assert name in out


def test_missing_output_folder_is_refused_before_measuring(tmp_path, capsys):
    missing = tmp_path / "no" / "such"
    for argv in (["run", "linear", "--csv", str(missing / "r.csv")],
                 ["compare", "projectors", "--json", str(missing / "r.json")],
                 ["compare", "projectors", "--plot", str(missing / "p.png")]):
        assert main(argv) == 2
        err = capsys.readouterr()
        assert "does not exist" in err.err and err.out == ""  # nothing was measured or printed


def test_compare_plot_and_roofline_from_saved_records(tmp_path, fast, capsys):
    pytest.importorskip("matplotlib")
    out, png = tmp_path / "g.json", tmp_path / "g.png"
    assert main(["compare", "lowrank", "--grid", "rank=4,8", "--grid", "tokens=16", *fast,
                 "--json", str(out), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # CPU records carry no device ceilings: refused in one line
    assert main(["roofline", "--from-json", str(out), "--plot", str(tmp_path / "r.png")]) == 2
    assert "no device ceilings" in capsys.readouterr().err
    # records as a GPU run writes them (peak columns, intensity, verdict) plot without measuring
    records = [{"label": f"row{i}", "dtype": "bf16", "status": "ok", "device_name": "NVIDIA H100 80GB HBM3",
                "ceilings_source": "measured", "peak_tflops": 700.0, "peak_gb_per_s": 3000.0,
                "arithmetic_intensity_flop_per_byte": ai, "tflops_per_s": tf, "verdict": v}
               for i, (ai, tf, v) in enumerate([(50.0, 120.0, "memory"), (900.0, 600.0, "compute")])]
    saved = tmp_path / "gpu.json"
    saved.write_text(json.dumps({"effprof": {}, "records": records}))
    assert main(["roofline", "--from-json", str(saved), "--plot", str(tmp_path / "r.png")]) == 0
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["roofline", "--from-json", str(tmp_path / "missing.json"), "--plot", str(tmp_path / "r.png")]) == 2
