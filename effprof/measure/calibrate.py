"""Device ceilings for the roofline: measured once (dense matmul TFLOP/s per dtype, copy GB/s) and cached.

- `measure_matmul_tflops`: an n×n by n×n matmul (2·n³ FLOPs) timed with `effprof.measure.timing.time_callable`
  (warm-up, blocked CUDA-event timing, median), the practical compute ceiling of the dtype;
- `measure_copy_bandwidth`: a device-to-device copy of ≥ 1 GiB on CUDA, counting bytes read + written
  (the convention of `effprof.measure.bytes` and of STREAM's "copy"), the practical bandwidth ceiling;
- `calibrate`: both, cached as JSON under `$EFFPROF_CACHE_DIR`, else `$XDG_CACHE_HOME/effprof`, else
  `~/.cache/effprof`, one file per device name + driver version;
- `ceilings`: the cached measurement, else the vendor's published dense peaks (`source="datasheet"`),
  else `source="unknown"` (CPU, unlisted GPUs).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path

import torch

from effprof.core.errors import EffprofError, UsageError
from effprof.core.fileio import write_atomic
from effprof.measure.env import device_name, nvidia_driver
from effprof.measure.roofline import DTYPE_KEYS, Ceilings
from effprof.measure.timing import time_callable

GIB = 2**30
TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "tf32": torch.float32, "fp32": torch.float32}


class CalibrationCacheError(EffprofError):
    """The calibration cache file exists but cannot be read as effprof ceilings."""


# Published dense (no structured sparsity) peaks: (name pattern, matmul TFLOP/s per dtype, GB/s).
# NVIDIA datasheets: H100 Tensor Core GPU datasheet (SXM / PCIe / NVL columns), H200 Tensor Core GPU
# datasheet (SXM / NVL), A100 80GB datasheet (SXM4 / PCIe, 2021), L4 datasheet, A10 datasheet,
# T4 datasheet, L40S datasheet. Datasheets print tensor-core figures "with sparsity": halved here.
DATASHEET: list[tuple[str, dict[str, float | None], float]] = [
    (r"h100.*(pcie)", {"bf16": 756, "fp16": 756, "tf32": 378, "fp32": 51}, 2000),
    (r"h100.*nvl", {"bf16": 835, "fp16": 835, "tf32": 418, "fp32": 60}, 3900),
    (r"h100", {"bf16": 989, "fp16": 989, "tf32": 494, "fp32": 67}, 3350),          # SXM5 (80GB HBM3)
    (r"h200.*nvl", {"bf16": 835, "fp16": 835, "tf32": 418, "fp32": 60}, 4800),
    (r"h200", {"bf16": 989, "fp16": 989, "tf32": 494, "fp32": 67}, 4800),          # SXM
    (r"a100.*80gb.*pcie", {"bf16": 312, "fp16": 312, "tf32": 156, "fp32": 19.5}, 1935),
    (r"a100.*sxm.*80gb|a100.*80gb", {"bf16": 312, "fp16": 312, "tf32": 156, "fp32": 19.5}, 2039),
    (r"a100", {"bf16": 312, "fp16": 312, "tf32": 156, "fp32": 19.5}, 1555),         # 40GB SXM4 / PCIe
    (r"l40s", {"bf16": 362, "fp16": 362, "tf32": 183, "fp32": 91.6}, 864),
    (r"\bl4\b", {"bf16": 121, "fp16": 121, "tf32": 60, "fp32": 30.3}, 300),
    (r"\ba10\b", {"bf16": 125, "fp16": 125, "tf32": 62.5, "fp32": 31.2}, 600),
    (r"\bt4\b", {"bf16": None, "fp16": 65, "tf32": None, "fp32": 8.1}, 320),        # Turing: no bf16/tf32
]


def datasheet_ceilings(name: str) -> Ceilings | None:
    """Published peaks for a device name as torch reports it ("NVIDIA H100 80GB HBM3"), or None."""
    lowered = name.lower()
    for pattern, tflops, gb_per_s in DATASHEET:
        if re.search(pattern, lowered):
            return Ceilings(name, "datasheet", dict(tflops), float(gb_per_s),
                            notes=f"NVIDIA datasheet dense peaks (pattern {pattern!r})")
    return None


@contextmanager
def tf32_matmul(enabled: bool):
    """Allow (or forbid) TF32 for fp32 CUDA matmuls inside the block; restore the setting after.

    Uses the API the process already uses: torch ≥ 2.9 refuses to read the legacy `allow_tf32` flag
    after the new `fp32_precision` one was set.
    """
    matmul = torch.backends.cuda.matmul
    try:
        previous, legacy = matmul.allow_tf32, True
    except RuntimeError:  # the new API is in use
        previous, legacy = matmul.fp32_precision, False
    if legacy:
        matmul.allow_tf32 = enabled
    else:
        matmul.fp32_precision = "tf32" if enabled else "ieee"
    try:
        yield
    finally:
        if legacy:
            matmul.allow_tf32 = previous
        else:
            matmul.fp32_precision = previous


def tf32_enabled() -> bool:
    """Whether fp32 CUDA matmuls may run on TF32 tensor cores now (picks the ceiling of fp32 records)."""
    matmul = torch.backends.cuda.matmul
    try:
        return bool(matmul.allow_tf32)
    except RuntimeError:
        return matmul.fp32_precision == "tf32"


def measure_matmul_tflops(device: torch.device, dtype: str, n: int = 8192, min_time_s: float = 0.5) -> float:
    """Dense n×n @ n×n matmul throughput in TFLOP/s (2·n³ FLOPs / median latency)."""
    if dtype not in TORCH_DTYPES:
        raise UsageError(f"dtype {dtype!r} is not one of {', '.join(TORCH_DTYPES)}")
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=TORCH_DTYPES[dtype], generator=generator)
    b = torch.randn(n, n, device=device, dtype=TORCH_DTYPES[dtype], generator=generator)
    out = torch.empty_like(a)
    with tf32_matmul(dtype == "tf32"), torch.inference_mode():
        timing = time_callable(lambda: torch.mm(a, b, out=out), device, warmup_s=0.2, min_time_s=min_time_s)
    return 2 * n**3 / (timing.median_ms / 1e3) / 1e12


def measure_copy_bandwidth(device: torch.device, nbytes: int | None = None, min_time_s: float = 0.5) -> float:
    """Device-to-device copy bandwidth in GB/s (1e9 B/s), counting bytes read + written (2 × nbytes).

    `nbytes` defaults to 1 GiB on CUDA (far larger than any L2 cache) and 256 MiB on CPU.
    """
    if nbytes is None:
        nbytes = GIB if device.type == "cuda" else 256 * 2**20
    if device.type == "cuda" and nbytes < GIB:
        raise UsageError(f"copy of {nbytes} bytes: use at least 1 GiB on CUDA so that the L2 cache does not help")
    src = torch.ones(nbytes // 4, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    with torch.inference_mode():
        timing = time_callable(lambda: dst.copy_(src), device, warmup_s=0.2, min_time_s=min_time_s)
    return 2 * src.numel() * 4 / (timing.median_ms / 1e3) / 1e9


def cache_dir() -> Path:
    """Where calibrations are kept: $EFFPROF_CACHE_DIR, else $XDG_CACHE_HOME/effprof, else ~/.cache/effprof."""
    if os.environ.get("EFFPROF_CACHE_DIR"):
        return Path(os.environ["EFFPROF_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "effprof"


def cache_key(name: str, driver: str) -> str:
    """File-name-safe key of a device name + driver version."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", f"{name}-driver-{driver or 'none'}").strip("-")


def cache_path(device: torch.device) -> Path:
    driver = nvidia_driver() if device.type == "cuda" else ""
    return cache_dir() / f"ceilings-{cache_key(device_name(device), driver)}.json"


def read_cached(path: Path) -> Ceilings | None:
    """The ceilings in `path`, None if there is no such file; a damaged file raises CalibrationCacheError."""
    if not path.exists():
        return None
    try:
        return Ceilings.from_dict(json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError, TypeError, AttributeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CalibrationCacheError(f"calibration cache {path} is damaged ({reason}); "
                                    "run `effprof calibrate --force` to measure again") from None


def write_cached(path: Path, ceilings: Ceilings) -> None:
    """Atomic write: readers never see half a file."""
    write_atomic(path, json.dumps(ceilings.as_dict(), indent=1) + "\n", make_parents=True)


def calibrate(device: torch.device, force: bool = False, dtypes: tuple[str, ...] | None = None,
              n: int | None = None, copy_bytes: int | None = None, min_time_s: float = 0.5) -> Ceilings:
    """Measured ceilings of `device`, from the cache unless `force` (or absent); measured and cached otherwise.

    Defaults: all four dtypes and n = 8192 on CUDA; fp32 and n = 1024 on CPU.
    """
    path = cache_path(device)
    if not force:
        cached = read_cached(path)
        if cached is not None:
            return cached
    on_cuda = device.type == "cuda"
    dtypes = dtypes or (DTYPE_KEYS if on_cuda else ("fp32",))
    n = n or (8192 if on_cuda else 1024)
    tflops: dict[str, float | None] = {}
    for dtype in dtypes:
        if on_cuda and dtype == "bf16" and not torch.cuda.is_bf16_supported():
            tflops[dtype] = None
            continue
        tflops[dtype] = measure_matmul_tflops(device, dtype, n, min_time_s)
    bandwidth = measure_copy_bandwidth(device, copy_bytes, min_time_s)
    copied = copy_bytes or (GIB if on_cuda else 256 * 2**20)
    ceilings = Ceilings(
        device_name(device), "measured", tflops, bandwidth,
        driver_version=nvidia_driver() if on_cuda else "",
        notes=f"matmul {n}x{n}x{n} median; copy of {copied / GIB:.2f} GiB, read + write counted",
        measured_utc=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        torch_version=torch.__version__,
    )
    write_cached(path, ceilings)
    return ceilings


def ceilings(device: torch.device) -> Ceilings:
    """Cached measurement, else datasheet peaks, else `source="unknown"` with no numbers (CPU, unlisted GPU)."""
    cached = read_cached(cache_path(device))
    if cached is not None:
        return cached
    name = device_name(device)
    if device.type == "cuda":
        sheet = datasheet_ceilings(name)
        if sheet is not None:
            return sheet
    return Ceilings(name, "unknown", {}, None, notes="no calibration cached: run `effprof calibrate`")
