"""Ceilings: datasheet table, measurement on CPU, the JSON cache and its refusal when damaged."""
import json

import pytest
import torch

from effprof.core.errors import UsageError
from effprof.measure import calibrate as cal
from effprof.measure.roofline import Ceilings

CPU = torch.device("cpu")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFPROF_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("name, bf16, tf32, fp32, gb_per_s", [
    ("NVIDIA H100 80GB HBM3", 989, 494, 67, 3350),
    ("NVIDIA H100 PCIe", 756, 378, 51, 2000),
    ("NVIDIA H100 NVL", 835, 418, 60, 3900),
    ("NVIDIA H200", 989, 494, 67, 4800),
    ("NVIDIA A100-SXM4-80GB", 312, 156, 19.5, 2039),
    ("NVIDIA A100 80GB PCIe", 312, 156, 19.5, 1935),
    ("NVIDIA A100-SXM4-40GB", 312, 156, 19.5, 1555),
    ("NVIDIA A10", 125, 62.5, 31.2, 600),
    ("NVIDIA L4", 121, 60, 30.3, 300),
    ("Tesla T4", None, None, 8.1, 320),
])
def test_datasheet_peaks(name, bf16, tf32, fp32, gb_per_s):
    sheet = cal.datasheet_ceilings(name)
    assert sheet.source == "datasheet"
    assert sheet.matmul_tflops["bf16"] == bf16
    assert sheet.matmul_tflops["tf32"] == tf32
    assert sheet.matmul_tflops["fp32"] == fp32
    assert sheet.bandwidth_gb_per_s == gb_per_s


def test_unlisted_device_has_no_datasheet():
    assert cal.datasheet_ceilings("NVIDIA GeForce GTX 1080") is None


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("EFFPROF_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cal.cache_dir() == tmp_path / "xdg" / "effprof"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cal.cache_dir() == tmp_path / "home" / ".cache" / "effprof"
    monkeypatch.setenv("EFFPROF_CACHE_DIR", str(tmp_path / "mine"))
    assert cal.cache_dir() == tmp_path / "mine"


def test_cache_key_is_a_safe_file_name():
    assert cal.cache_key("NVIDIA H100 80GB HBM3", "570.86.15") == "NVIDIA-H100-80GB-HBM3-driver-570.86.15"
    assert cal.cache_key("a/b c", "") == "a-b-c-driver-none"


def test_cpu_measurements_are_positive():
    assert cal.measure_matmul_tflops(CPU, "fp32", n=128, min_time_s=0.02) > 0
    assert cal.measure_copy_bandwidth(CPU, 4 * 2**20, min_time_s=0.02) > 0
    with pytest.raises(UsageError):
        cal.measure_matmul_tflops(CPU, "int8", n=16)


def test_cuda_copy_below_one_gib_is_refused():
    with pytest.raises(UsageError, match="1 GiB"):
        cal.measure_copy_bandwidth(torch.device("cuda"), 2**20)


def test_calibrate_caches_and_force_measures_again(cache, monkeypatch):
    measured = cal.calibrate(CPU, n=64, copy_bytes=2**20, min_time_s=0.01)
    assert measured.source == "measured"
    assert set(measured.matmul_tflops) == {"fp32"} and measured.matmul_tflops["fp32"] > 0
    assert measured.bandwidth_gb_per_s > 0
    files = list(cache.glob("ceilings-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["source"] == "measured"
    assert not list(cache.glob(".*tmp"))  # the atomic write left no temporary file

    def no_measuring(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(cal, "measure_matmul_tflops", no_measuring)
    assert cal.calibrate(CPU) == measured
    assert cal.ceilings(CPU) == measured
    monkeypatch.setattr(cal, "measure_matmul_tflops", lambda device, dtype, n, min_time_s: 123.0)
    again = cal.calibrate(CPU, force=True, copy_bytes=2**20, min_time_s=0.01)
    assert again.matmul_tflops == {"fp32": 123.0}
    assert cal.ceilings(CPU).matmul_tflops == {"fp32": 123.0}


@pytest.mark.parametrize("damage", ["{not json", json.dumps([1, 2]), json.dumps({"device_name": "cpu"}),
                                    json.dumps({"device_name": "cpu", "source": "measured",
                                                "matmul_tflops": {"fp32": "fast"}})])
def test_damaged_cache_is_refused_in_one_line(cache, damage, monkeypatch):
    path = cal.cache_path(CPU)
    path.parent.mkdir(parents=True)
    path.write_text(damage)
    for read in (lambda: cal.calibrate(CPU), lambda: cal.ceilings(CPU)):
        with pytest.raises(cal.CalibrationCacheError) as info:
            read()
        message = str(info.value)
        assert "\n" not in message and "effprof calibrate --force" in message and str(path) in message
    monkeypatch.setattr(cal, "measure_matmul_tflops", lambda device, dtype, n, min_time_s: 5.0)
    fixed = cal.calibrate(CPU, force=True, copy_bytes=2**20, min_time_s=0.01)
    assert cal.ceilings(CPU) == fixed


def test_ceilings_without_cache_on_cpu_are_unknown(cache):
    found = cal.ceilings(CPU)
    assert found.source == "unknown" and found.matmul_tflops == {} and found.bandwidth_gb_per_s is None
    assert isinstance(found, Ceilings)


def test_tf32_switch_restores_either_api():
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    with cal.tf32_matmul(True):
        assert matmul.allow_tf32 and cal.tf32_enabled()
    assert matmul.allow_tf32 == before
    matmul.fp32_precision = "tf32"  # a process using the new API
    try:
        with cal.tf32_matmul(False):
            assert matmul.fp32_precision == "ieee" and not cal.tf32_enabled()
        assert matmul.fp32_precision == "tf32" and cal.tf32_enabled()
    finally:
        matmul.fp32_precision = "none"
    assert matmul.allow_tf32 == before
