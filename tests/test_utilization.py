"""MFU and MBU (issue 27): exact values from the formula on fake records and ceilings, each naming its convention;
and a real decode row against a measured ceiling in the calibration cache."""
import pytest

from effprof.measure.calibrate import datasheet_ceilings
from effprof.measure.roofline import Ceilings
from effprof.measure.utilization import mbu_pct, mfu_pct, utilization_fields

H100 = datasheet_ceilings("NVIDIA H100 80GB HBM3")
MEASURED = Ceilings("NVIDIA H100 80GB HBM3", "measured", {"bf16": 700.0, "fp32": 50.0, "tf32": 400.0}, 2800.0)
MIB = 2**20


def test_formulas():
    assert mfu_pct(494.5, 1.0, 989.0) == pytest.approx(50.0, rel=1e-12)  # 494.5 GFLOP in 1 ms = 494.5 TFLOP/s
    assert mfu_pct(1.0, 0.5, 4.0) == pytest.approx(50.0, rel=1e-12)
    assert mbu_pct(3.35e9, 2.0, 3350.0) == pytest.approx(50.0, rel=1e-12)  # 3.35 GB in 2 ms = 1675 GB/s
    assert mfu_pct(None, 1.0, 989.0) is None and mfu_pct(1.0, 0.0, 989.0) is None and mbu_pct(1.0, 1.0, None) is None


def test_the_datasheet_peak_is_the_dense_one():
    assert H100.matmul_tflops["bf16"] == 989 and H100.bandwidth_gb_per_s == 3350  # not 1979 (with sparsity)


def test_mfu_against_the_datasheet_and_the_measured_ceiling():
    record = {"dtype": "bf16", "gflops": 395.6, "latency_ms_median": 2.0, "device_name": "NVIDIA H100 80GB HBM3"}
    fields = utilization_fields(record, H100, MEASURED)
    assert fields["mfu_datasheet_pct"] == pytest.approx(100 * 395.6 / 2.0 / 989, rel=1e-12)  # 20.0
    assert fields["mfu_measured_pct"] == pytest.approx(100 * 395.6 / 2.0 / 700, rel=1e-12)
    assert "989 TFLOP/s bf16 dense" in fields["mfu_convention"] and "700 TFLOP/s" in fields["mfu_convention"]
    assert "vision tower" in fields["mfu_convention"]
    assert "mbu_datasheet_pct" not in fields  # not a decode row
    fp32 = utilization_fields({**record, "dtype": "fp32"}, H100, MEASURED, allow_tf32=True)
    assert fp32["mfu_datasheet_pct"] == pytest.approx(100 * 395.6 / 2.0 / 494, rel=1e-12)
    assert utilization_fields({**record, "dtype": "fp32"}, H100, MEASURED)["mfu_datasheet_pct"] == \
        pytest.approx(100 * 395.6 / 2.0 / 67, rel=1e-12)


def test_a_cached_datasheet_is_not_a_measurement_and_cpu_has_no_datasheet():
    record = {"dtype": "fp32", "gflops": 1.0, "latency_ms_median": 1.0, "device_name": "AMD EPYC"}
    fields = utilization_fields(record, None, Ceilings("AMD EPYC", "datasheet", {"fp32": 1.0}, 10.0))
    assert fields["mfu_datasheet_pct"] is None and fields["mfu_measured_pct"] is None
    assert "no dense datasheet peak for AMD EPYC fp32" in fields["utilization_note"]
    assert "effprof calibrate" in fields["utilization_note"]


def test_mbu_of_a_decode_step_and_of_a_generation():
    decode = {"dtype": "bf16", "param_mode": "decode", "gflops": 14.0, "latency_ms_median": 5.0,
              "moved_mib_lower_bound": 13.5e9 / MIB}
    fields = utilization_fields(decode, H100, MEASURED)
    assert fields["mbu_mib_per_token"] == pytest.approx(13.5e9 / MIB, rel=1e-12)
    assert fields["mbu_datasheet_pct"] == pytest.approx(100 * 13.5e9 / 1e6 / 5.0 / 3350, rel=1e-12)  # 80.6%
    assert fields["mbu_measured_pct"] == pytest.approx(100 * 13.5e9 / 1e6 / 5.0 / 2800, rel=1e-12)
    assert "Databricks" in fields["mbu_convention"] and "3350 GB/s" in fields["mbu_convention"]
    generate = {"dtype": "bf16", "gflops": 100.0, "latency_ms_median": 50.0, "new_tokens": 5, "tpot_ms_mean": 6.0,
                "stage_decode_moved_mib": 4 * 13.0e9 / MIB}
    fields = utilization_fields(generate, H100, None)
    assert fields["mbu_datasheet_pct"] == pytest.approx(100 * 13.0e9 / 1e6 / 6.0 / 3350, rel=1e-12)
    assert fields["mbu_measured_pct"] is None and "4 steps" in fields["mbu_convention"]
    assert fields["mfu_datasheet_pct"] == pytest.approx(100 * 100.0 / 50.0 / 989, rel=1e-12)


def test_a_real_decode_row_against_a_measured_cpu_ceiling(tmp_path, monkeypatch, fast):
    """The tracker reads `effprof calibrate`'s cache: with a fake CPU measurement there, MFU and MBU follow the
    formula from the row's own FLOPs, bytes and latency."""
    import json

    import torch

    from effprof.cli.main import main
    from effprof.measure.calibrate import cache_path, write_cached

    monkeypatch.setenv("EFFPROF_CACHE_DIR", str(tmp_path / "cache"))
    cpu = Ceilings("cpu", "measured", {"fp32": 0.25}, 20.0)
    write_cached(cache_path(torch.device("cpu")), cpu)
    out = tmp_path / "r.json"
    assert main(["run", "mamba-lm", "--d-model", "32", "--n-layer", "2", "--seq-len", "16", "--mode", "decode",
                 *fast, "--json", str(out)]) == 0
    r = json.loads(out.read_text())["records"][0]
    assert r["mfu_datasheet_pct"] is None  # no datasheet for a CPU
    assert r["mfu_measured_pct"] == pytest.approx(100 * r["gflops"] / r["latency_ms_median"] / 0.25, rel=1e-9)
    assert r["mbu_measured_pct"] == pytest.approx(
        100 * r["moved_mib_lower_bound"] * MIB / 1e6 / r["latency_ms_median"] / 20.0, rel=1e-9)
    assert "measured 0.25 TFLOP/s fp32" in r["mfu_convention"] and "measured copy 20 GB/s" in r["mbu_convention"]


def test_a_table_of_decode_and_generation_rows_states_the_mbu_definition_once():
    from effprof.report.table import utilization_notes
    decode = {"dtype": "bf16", "param_mode": "decode", "gflops": 14.0, "latency_ms_median": 5.0,
              "moved_mib_lower_bound": 13.5e9 / MIB}
    generate = {"dtype": "bf16", "gflops": 100.0, "latency_ms_median": 50.0, "new_tokens": 5, "tpot_ms_mean": 6.0,
                "stage_decode_moved_mib": 4 * 13.0e9 / MIB}
    records = [utilization_fields(decode, H100, None), utilization_fields(generate, H100, None)]
    lines = utilization_notes(records, {"mbu"})
    assert len(lines) == 1 and lines[0].count("Databricks") == 1
    for record in records:   # each row's own bytes-per-token rule is still there, after the shared definition
        assert record["mbu_convention"].partition(": ")[2] in lines[0]
