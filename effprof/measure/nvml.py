"""Clocks, power, temperature, throttling and energy of a GPU during a timed region, through NVML.

`NvmlSampler` is a context manager: on entry it reads the board's total-energy counter
(`nvmlDeviceGetTotalEnergyConsumption`, mJ since the driver loaded) and starts a thread that samples,
every `interval_s`, the SM and memory clocks (MHz), the board power (`nvmlDeviceGetPowerUsage`, mW),
the GPU temperature (°C) and the clock-event ("throttle") reason bitmask; on exit it stops the thread
and reads the energy counter again. Energy is the whole board's, idle power included.

Where the energy counter is not supported (pre-Volta boards, some virtualised GPUs) energy is the
trapezoidal integral of the sampled power over the region, and `energy_method` says so. NVML's power
reading is itself averaged by the driver (over up to 1 s on some boards): energy and power of regions
shorter than about a second are approximate.

Throttle reasons ignored (they are not throttling): GpuIdle (nothing to run), ApplicationsClocksSetting
(clocks pinned by the administrator, not lowered by the board) and DisplayClockSetting. Counted:
SwPowerCap, HwSlowdown, SyncBoost, SwThermalSlowdown, HwThermalSlowdown, HwPowerBrakeSlowdown.

Idle power (`idle_s` > 0): before the region the sampler waits `idle_s` seconds with nothing launched and
takes the board's idle power from the energy counter over that window (the median of power readings where
the counter is missing). `energy_j_per_item` is then the total, idle included, as Zeus and the ML.ENERGY
leaderboard report it; `energy_above_idle_j_per_item` subtracts idle power × the region's duration: the
energy the work added. Right after work, a board may take longer than the window to settle to its idle
state, so the idle figure is an upper bound and the above-idle figure a lower bound. With `idle_once`
(what the runner asks for) a board's idle power is measured once per process, before its first timed
region, when the board is most nearly at rest, and reused for every later row (a comparison of many
sub-millisecond rows then spends no `idle_s` per row); the method says so.

`nvml` is the `pynvml` module (package nvidia-ml-py) unless a stand-in is injected (tests).
"""
from __future__ import annotations

import statistics
import threading
import time
from typing import Any


# NVML clock-event (formerly "clocks throttle") reason bits: nvml.h, nvmlClocksEventReason*.
REASON_BITS = {
    0x1: "GpuIdle",
    0x2: "ApplicationsClocksSetting",
    0x4: "SwPowerCap",
    0x8: "HwSlowdown",
    0x10: "SyncBoost",
    0x20: "SwThermalSlowdown",
    0x40: "HwThermalSlowdown",
    0x80: "HwPowerBrakeSlowdown",
    0x100: "DisplayClockSetting",
}
NOT_THROTTLING = 0x1 | 0x2 | 0x100
NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0
_IDLE_ONCE: dict[str, tuple[float, str]] = {}  # board -> (idle watts, method), measured once per process


def reason_names(mask: int) -> list[str]:
    """Names of the throttling bits set in `mask` (the ignored bits and unknown bits left out)."""
    return [name for bit, name in REASON_BITS.items() if mask & bit and not bit & NOT_THROTTLING]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlSampler:
    """Samples NVML in a background thread while the `with` block runs; `fields(items)` summarises.

    `device_index` is NVML's index of the GPU, or a `torch.device` (mapped through its UUID, so that
    CUDA_VISIBLE_DEVICES reordering is respected; index fallback).
    """

    def __init__(self, device_index: Any = 0, interval_s: float = 0.01, nvml: Any = None, idle_s: float = 0.0,
                 idle_once: bool = False):
        self.device_index = device_index
        self.interval_s = interval_s
        self.idle_s = idle_s
        self.idle_once = idle_once
        self.idle_power_w: float | None = None
        self.idle_method = ""
        self._nvml = nvml
        self.note = ""
        self.samples: list[dict[str, float]] = []
        self.handle = None
        self.gpu_name = self.driver_version = ""
        self.energy_start_mj = self.energy_end_mj = None
        self.start_s = self.end_s = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reasons_fn = None

    # -- set-up ------------------------------------------------------------------------------------
    def _open(self) -> bool:
        nvml = self._nvml
        if nvml is None:
            try:
                import pynvml as nvml
            except ImportError:
                self.note = "NVML not available: pip install nvidia-ml-py"
                return False
            self._nvml = nvml
        try:
            nvml.nvmlInit()
            self.handle = self._handle(nvml)
            self.gpu_name = _text(nvml.nvmlDeviceGetName(self.handle))
            self.driver_version = _text(nvml.nvmlSystemGetDriverVersion())
        except Exception as exc:  # no driver, no GPU, permissions: the fields stay empty
            self.note = f"NVML not usable: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            self.handle = None
            return False
        for name in ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"):
            if hasattr(nvml, name):  # the newer name first; drivers before 535 have only the older one
                self._reasons_fn = getattr(nvml, name)
                break
        return True

    def _handle(self, nvml):
        index = self.device_index
        if hasattr(index, "type"):  # a torch.device
            import torch

            uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
            if uuid is not None and hasattr(nvml, "nvmlDeviceGetHandleByUUID"):
                try:
                    return nvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
                except Exception:
                    pass
            index = index.index or 0
        return nvml.nvmlDeviceGetHandleByIndex(int(index))

    def _energy_mj(self) -> float | None:
        try:
            return float(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))
        except Exception:  # NotSupported on older boards: fall back to integrating power
            return None

    def _sample(self) -> dict[str, float]:
        nvml, h = self._nvml, self.handle
        sample: dict[str, float] = {"t": time.perf_counter()}
        for key, read in (
            ("sm_mhz", lambda: nvml.nvmlDeviceGetClockInfo(h, getattr(nvml, "NVML_CLOCK_SM", NVML_CLOCK_SM))),
            ("mem_mhz", lambda: nvml.nvmlDeviceGetClockInfo(h, getattr(nvml, "NVML_CLOCK_MEM", NVML_CLOCK_MEM))),
            ("power_w", lambda: nvml.nvmlDeviceGetPowerUsage(h) / 1e3),
            ("temp_c", lambda: nvml.nvmlDeviceGetTemperature(
                h, getattr(nvml, "NVML_TEMPERATURE_GPU", NVML_TEMPERATURE_GPU))),
            ("reasons", lambda: self._reasons_fn(h) if self._reasons_fn is not None else None),
        ):
            try:
                value = read()
            except Exception:  # one unsupported query must not lose the others
                value = None
            if value is not None:
                sample[key] = float(value)
        return sample

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.append(self._sample())

    # -- context manager ---------------------------------------------------------------------------
    def _measure_idle(self) -> None:
        """Idle power over `idle_s` seconds with nothing running (the caller has synchronised)."""
        key = f"{self.gpu_name}:{self.device_index}"
        if self.idle_once and key in _IDLE_ONCE:
            self.idle_power_w, self.idle_method = _IDLE_ONCE[key]
            return
        powers = []
        start, energy_start = time.perf_counter(), self._energy_mj()
        while time.perf_counter() - start < self.idle_s:
            try:
                powers.append(self._nvml.nvmlDeviceGetPowerUsage(self.handle) / 1e3)
            except Exception:
                pass
            time.sleep(self.interval_s)
        seconds, energy_end = time.perf_counter() - start, self._energy_mj()
        if energy_start is not None and energy_end is not None and seconds > 0:
            self.idle_power_w, self.idle_method = (energy_end - energy_start) / 1e3 / seconds, "energy-counter"
        elif powers:
            self.idle_power_w, self.idle_method = statistics.median(powers), "power-samples"
        if self.idle_once and self.idle_power_w is not None:
            self.idle_method += ", once per process before its first timed region"
            _IDLE_ONCE[key] = (self.idle_power_w, self.idle_method)

    def __enter__(self) -> "NvmlSampler":
        if not self._open():
            return self
        if self.idle_s > 0:
            self._measure_idle()
        self.samples.append(self._sample())
        self.energy_start_mj = self._energy_mj()
        self.start_s = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="effprof-nvml", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.handle is None:
            return
        self.end_s = time.perf_counter()
        self.energy_end_mj = self._energy_mj()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.samples.append(self._sample())
        try:
            self._nvml.nvmlShutdown()
        except Exception:
            pass

    # -- results -----------------------------------------------------------------------------------
    @property
    def available(self) -> bool:
        return self.handle is not None

    def energy(self) -> tuple[float | None, str]:
        """(joules over the region, method): the energy counter, else power integrated over time."""
        if self.energy_start_mj is not None and self.energy_end_mj is not None:
            return (self.energy_end_mj - self.energy_start_mj) / 1e3, "energy-counter"
        points = [(s["t"], s["power_w"]) for s in self.samples if "power_w" in s]
        if len(points) < 2:
            return None, "unavailable"
        joules = sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(points, points[1:]))
        return joules, "power-integration"

    def fields(self, items: int | None = None) -> dict[str, Any]:
        """Record fields of the region; `items` = items processed inside it (for energy per item).

        `{"nvml_note": ...}` only, when NVML could not be used.
        """
        if not self.available:
            return {"nvml_note": self.note} if self.note else {}

        def values(key):
            return [s[key] for s in self.samples if key in s]

        def median(key):
            xs = values(key)
            return statistics.median(xs) if xs else None

        mask = 0
        for value in values("reasons"):
            mask |= int(value)
        reasons = reason_names(mask)
        energy_j, method = self.energy()
        sm = values("sm_mhz")
        temps = values("temp_c")
        return {
            "gpu_name": self.gpu_name,
            "driver_version": self.driver_version,
            "sm_clock_mhz_median": median("sm_mhz"),
            "sm_clock_mhz_min": min(sm) if sm else None,
            "mem_clock_mhz_median": median("mem_mhz"),
            "power_w_median": median("power_w"),
            "temp_c_max": max(temps) if temps else None,
            "energy_j": energy_j,
            "energy_j_per_item": energy_j / items if energy_j is not None and items else None,
            "energy_method": method,
            **self._idle_fields(energy_j, items),
            "throttled": bool(reasons) if values("reasons") else None,
            "throttle_reasons": ",".join(reasons),
            "nvml_samples": len(self.samples),
            "nvml_region_s": self.end_s - self.start_s,
        }


    def _idle_fields(self, energy_j: float | None, items: int | None) -> dict[str, Any]:
        if self.idle_power_w is None:
            return {}
        above = None
        if energy_j is not None and items:
            above = (energy_j - self.idle_power_w * (self.end_s - self.start_s)) / items
        return {"idle_power_w": self.idle_power_w, "idle_power_method": self.idle_method,
                "energy_above_idle_j_per_item": above}


class CallCounter:
    """Wraps a zero-argument callable and counts its calls (items in a region = calls × items per call)."""

    def __init__(self, fn):
        self.fn = fn
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.fn()
