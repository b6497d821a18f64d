"""NvmlSampler against a fake NVML module: normal, throttled, no energy counter, old API, no NVML."""
import itertools
import statistics
import time

import pytest

from effprof.measure.nvml import CallCounter, NvmlSampler, reason_names


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):
    pass


class FakeNvml:
    """The pynvml calls NvmlSampler makes, with scripted answers; every value returned is recorded."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0
    NVMLError = NVMLError

    def __init__(self, sm=(1980,), power_mw=(500_000,), temps=(60,), reasons=(0,), energy_mj=(10_000, 15_000),
                 old_api=False, fail_init=False):
        self.sm = itertools.cycle(sm)
        self.power = itertools.cycle(power_mw)
        self.temps = itertools.cycle(temps)
        self.reasons = itertools.cycle(reasons)
        self.energy = iter(energy_mj) if energy_mj is not None else None
        self.fail_init = fail_init
        self.returned = {"sm": [], "power": [], "temp": [], "reasons": []}
        self.shut_down = False
        if old_api:
            self.nvmlDeviceGetCurrentClocksThrottleReasons = self._reasons
        else:
            self.nvmlDeviceGetCurrentClocksEventReasons = self._reasons

    def nvmlInit(self):
        if self.fail_init:
            raise NVMLError("Driver Not Loaded")

    def nvmlShutdown(self):
        self.shut_down = True

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("handle", index)

    def nvmlDeviceGetName(self, handle):
        return b"NVIDIA H100 80GB HBM3"

    def nvmlSystemGetDriverVersion(self):
        return "570.86.15"

    def nvmlDeviceGetClockInfo(self, handle, which):
        if which == self.NVML_CLOCK_SM:
            value = next(self.sm)
            self.returned["sm"].append(value)
            return value
        return 2619

    def nvmlDeviceGetPowerUsage(self, handle):
        value = next(self.power)
        self.returned["power"].append(value)
        return value

    def nvmlDeviceGetTemperature(self, handle, sensor):
        value = next(self.temps)
        self.returned["temp"].append(value)
        return value

    def _reasons(self, handle):
        value = next(self.reasons)
        self.returned["reasons"].append(value)
        return value

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if self.energy is None:
            raise NVMLError_NotSupported("Not Supported")
        return next(self.energy)


def run_region(fake, seconds=0.03, interval_s=0.002):
    with NvmlSampler(0, interval_s=interval_s, nvml=fake) as sampler:
        time.sleep(seconds)
    return sampler


def test_normal_region():
    fake = FakeNvml(sm=(1980, 1755, 1980), temps=(60, 63, 61), reasons=(0x1, 0x0))  # GpuIdle is ignored
    sampler = run_region(fake)
    f = sampler.fields(items=100)
    assert f["gpu_name"] == "NVIDIA H100 80GB HBM3" and f["driver_version"] == "570.86.15"
    assert len(sampler.samples) >= 3 and f["nvml_samples"] == len(sampler.samples)
    assert f["sm_clock_mhz_min"] == min(fake.returned["sm"])
    assert f["sm_clock_mhz_median"] == statistics.median(fake.returned["sm"])
    assert 1755 in fake.returned["sm"] and f["sm_clock_mhz_min"] == 1755
    assert f["mem_clock_mhz_median"] == 2619
    assert f["temp_c_max"] == max(fake.returned["temp"])
    assert f["power_w_median"] == pytest.approx(500.0)
    assert f["energy_j"] == pytest.approx(5.0)           # (15000 - 10000) mJ
    assert f["energy_j_per_item"] == pytest.approx(0.05)
    assert f["energy_method"] == "energy-counter"
    assert f["throttled"] is False and f["throttle_reasons"] == ""
    assert f["nvml_region_s"] >= 0.03
    assert fake.shut_down


def test_throttled_region_names_reasons_and_ignores_app_clocks():
    fake = FakeNvml(reasons=(0x0, 0x4 | 0x2, 0x40))
    f = run_region(fake).fields(10)
    assert f["throttled"] is True
    assert f["throttle_reasons"] == "SwPowerCap,HwThermalSlowdown"
    only_settings = run_region(FakeNvml(reasons=(0x2 | 0x100 | 0x1,))).fields(10)
    assert only_settings["throttled"] is False and only_settings["throttle_reasons"] == ""


def test_reason_names():
    assert reason_names(0) == []
    assert reason_names(0x1 | 0x2 | 0x100) == []
    assert reason_names(0x8 | 0x10 | 0x20 | 0x80) == ["HwSlowdown", "SyncBoost", "SwThermalSlowdown",
                                                       "HwPowerBrakeSlowdown"]


def test_energy_counter_unsupported_falls_back_to_power_integration():
    fake = FakeNvml(power_mw=(200_000,), energy_mj=None)
    sampler = run_region(fake, seconds=0.04)
    f = sampler.fields(items=4)
    first, last = sampler.samples[0]["t"], sampler.samples[-1]["t"]
    assert f["energy_method"] == "power-integration"
    assert f["energy_j"] == pytest.approx(200.0 * (last - first))   # constant power: power x time
    assert f["energy_j_per_item"] == pytest.approx(f["energy_j"] / 4)
    assert f["energy_j"] > 200.0 * 0.03


def test_older_throttle_reasons_api():
    f = run_region(FakeNvml(reasons=(0x4,), old_api=True)).fields(1)
    assert f["throttled"] is True and f["throttle_reasons"] == "SwPowerCap"


def test_nvml_unavailable_gives_a_note_only():
    sampler = run_region(FakeNvml(fail_init=True), seconds=0.0)
    assert not sampler.available
    f = sampler.fields(10)
    assert list(f) == ["nvml_note"] and "Driver Not Loaded" in f["nvml_note"]


def test_real_pynvml_without_a_gpu_degrades():
    pytest.importorskip("pynvml")
    with NvmlSampler(0) as sampler:
        pass
    f = sampler.fields(1)
    assert ("gpu_name" in f) == sampler.available   # on a GPU machine: real fields; here: a note
    if not sampler.available:
        assert list(f) == ["nvml_note"]


def test_call_counter():
    counted = CallCounter(lambda: 7)
    assert [counted() for _ in range(3)] == [7, 7, 7] and counted.calls == 3


def test_idle_power_before_the_region_gives_energy_above_idle():
    # energy counter: 1000 -> 1300 mJ over the idle window, then 10000 -> 15000 mJ over the region
    fake = FakeNvml(power_mw=(500_000,), energy_mj=(1_000, 1_300, 10_000, 15_000))
    with NvmlSampler(0, interval_s=0.002, nvml=fake, idle_s=0.02) as sampler:
        time.sleep(0.03)
    assert sampler.idle_method == "energy-counter" and sampler.idle_power_w > 0
    f = sampler.fields(items=100)
    assert f["energy_j"] == pytest.approx(5.0) and f["energy_j_per_item"] == pytest.approx(0.05)  # total, unchanged
    region = sampler.end_s - sampler.start_s
    assert f["idle_power_w"] == sampler.idle_power_w and f["idle_power_method"] == "energy-counter"
    assert f["energy_above_idle_j_per_item"] == pytest.approx((5.0 - sampler.idle_power_w * region) / 100)
    assert f["energy_above_idle_j_per_item"] < f["energy_j_per_item"]


def test_idle_power_from_power_readings_without_an_energy_counter():
    fake = FakeNvml(power_mw=(70_000, 90_000, 80_000), energy_mj=None)
    with NvmlSampler(0, interval_s=0.002, nvml=fake, idle_s=0.02) as sampler:
        time.sleep(0.03)
    idle_readings = fake.returned["power"][:len(fake.returned["power"]) - len(sampler.samples)]
    assert sampler.idle_method == "power-samples"
    assert sampler.idle_power_w == pytest.approx(statistics.median(idle_readings) / 1e3)
    f = sampler.fields(items=10)
    assert f["energy_above_idle_j_per_item"] == pytest.approx(
        (f["energy_j"] - sampler.idle_power_w * (sampler.end_s - sampler.start_s)) / 10)
    assert "idle_power_w" not in run_region(FakeNvml()).fields(1)  # idle_s = 0: no idle figure, as before


def test_idle_power_once_per_process_is_measured_before_the_first_region_and_reused(monkeypatch):
    import effprof.measure.nvml as nvml_module

    monkeypatch.setattr(nvml_module, "_IDLE_ONCE", {})
    first_fake = FakeNvml(power_mw=(500_000,), energy_mj=(1_000, 1_300, 10_000, 15_000))
    with NvmlSampler(0, interval_s=0.002, nvml=first_fake, idle_s=0.02, idle_once=True) as first:
        pass
    assert first.idle_power_w > 0 and first.idle_method.startswith("energy-counter, once per process")
    # a later region on the same board waits no idle window: the first figure, the same method
    later_fake = FakeNvml(power_mw=(900_000,), energy_mj=(20_000, 26_000))
    start = time.perf_counter()
    with NvmlSampler(0, interval_s=0.002, nvml=later_fake, idle_s=5.0, idle_once=True) as later:
        pass
    assert time.perf_counter() - start < 1.0
    assert (later.idle_power_w, later.idle_method) == (first.idle_power_w, first.idle_method)
