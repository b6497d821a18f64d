"""Facts about the machine a measurement ran on, for every record."""
from __future__ import annotations

import datetime as _dt
import importlib.util
import platform
from functools import lru_cache
from typing import Any

import torch

from effprof.core.devices import resolve_device  # noqa: F401  (re-exported)

OPTIONAL_MODULES = {
    "fvcore": "flops extra: fvcore FLOP counter",
    "thop": "flops extra: thop MAC counter",
    "mamba_ssm": "mamba extra: mamba-ssm selective-scan CUDA kernel",
    "causal_conv1d": "mamba extra: causal-conv1d CUDA kernel",
    "triton": "Triton (effprof's own kernels)",
    "timm": "timm extra",
    "matplotlib": "plot extra",
    "pynvml": "NVML (nvidia-ml-py): clocks, power, energy",
}


def module_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@lru_cache(maxsize=None)
def nvidia_driver() -> str:
    """Driver version through NVML, or '' when NVML is not usable."""
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # NVML missing or no driver: the field stays empty
        return ""


@lru_cache(maxsize=None)
def cpu_model() -> str:
    """The CPU's model name ("model name" in /proc/cpuinfo on Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def package_version(name: str) -> str | None:
    """An installed distribution's version without importing it (None when it is not installed)."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "meta":
        return "meta (counted, not run)"
    return cpu_model()


def environment(device: torch.device) -> dict[str, Any]:
    """Columns that let two result files from different days be compared."""
    from effprof.core.version import __version__

    return {
        "device_name": device_name(device),
        "device_type": device.type,
        "torch_version": torch.__version__,
        "cpu_model": cpu_model(),
        "torch_num_threads": torch.get_num_threads(),
        "cuda_version": torch.version.cuda,
        "transformers_version": package_version("transformers"),
        "triton_version": package_version("triton"),
        "driver_version": (nvidia_driver() or None) if device.type == "cuda" else None,
        "effprof_version": __version__,
        "python_version": platform.python_version(),
        "timestamp_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
