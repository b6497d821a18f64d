"""Roofline fields of a record: how far a measured latency is from the device's compute and memory floors.

The roofline model (Williams, Waterman & Patterson, "Roofline: an insightful visual performance model
for multicore architectures", CACM 52(4), 2009) bounds the time of a piece of work from below by

    compute floor = FLOPs / peak FLOP/s          memory floor = bytes / peak bandwidth

and, with compute and memory traffic overlapped, by the larger of the two. The ratio of the two is
set by the arithmetic intensity FLOPs / bytes against the ridge point peak FLOP/s / bandwidth.

Verdict (the three regimes of H. He, "Making Deep Learning Go Brrrr From First Principles", 2022):

- `overhead` when the measured latency exceeds `OVERHEAD_FACTOR` (10) × the larger floor: less than
  10% of the roofline bound is attained, so neither arithmetic nor compulsory memory traffic explains
  the time; it goes to kernel launches, host work, synchronisation or kernels far from both ceilings.
  Tuned kernels reach 50-90% of a ceiling; a transformer at batch 1 reaches 1-5% (launch bound).
  10× leaves room for the bytes counted being a lower bound (real kernels move 2-3× more).
- otherwise `compute` when the compute floor is the larger floor, else `memory`.

The memory floor assumes the bytes come from device memory. In warm timing a working set smaller
than the L2 cache is served from it, so `achieved_gb_per_s` can exceed the DRAM ceiling
(`pct_of_bandwidth_ceiling` > 100): read memory-side figures from cold (`--cold`) measurements.

Pure functions on plain numbers (no torch): FLOPs in GFLOP, bytes in bytes, times in ms,
compute ceilings in TFLOP/s (dense, no sparsity), bandwidth in GB/s (1e9 bytes/s).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

OVERHEAD_FACTOR = 10.0
# A roofline fraction above this is "above the roof": timing noise and ceilings measured a few % under the
# device's best leave room for ~1.0x; far above, the counted bytes or FLOPs did not all reach DRAM or the units.
ROOF_TOLERANCE = 1.05
DTYPE_KEYS = ("bf16", "fp16", "tf32", "fp32")


@dataclass
class Ceilings:
    """Peak dense matmul throughput per dtype (TFLOP/s) and copy bandwidth (GB/s, read + write) of a device.

    `source` is "measured" (effprof calibrate), "datasheet" (published vendor peaks) or "unknown".
    """

    device_name: str
    source: str
    matmul_tflops: dict[str, float | None] = field(default_factory=dict)
    bandwidth_gb_per_s: float | None = None
    driver_version: str = ""
    notes: str = ""
    measured_utc: str = ""
    torch_version: str = ""

    def compute_tflops(self, dtype: str, allow_tf32: bool = False) -> float | None:
        """Peak for a record's dtype name ("bf16", "fp16", "fp32"); fp32 matmuls run on TF32 tensor cores
        when `torch.backends.cuda.matmul` allows it."""
        key = "tf32" if dtype == "fp32" and allow_tf32 else dtype
        return self.matmul_tflops.get(key)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Ceilings":
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if "device_name" not in known or "source" not in known:
            raise ValueError("device_name and source are required")
        ceilings = cls(**known)
        if not isinstance(ceilings.matmul_tflops, dict):
            raise ValueError("matmul_tflops must be a mapping of dtype to TFLOP/s")
        for key, value in ceilings.matmul_tflops.items():
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"matmul_tflops[{key!r}] = {value!r} is not a positive number")
        bw = ceilings.bandwidth_gb_per_s
        if bw is not None and not (isinstance(bw, (int, float)) and bw > 0):
            raise ValueError(f"bandwidth_gb_per_s = {bw!r} is not a positive number")
        return ceilings


def floors_ms(gflops: float | None, bytes_moved: int | None, peak_tflops: float | None,
              bandwidth_gb_per_s: float | None) -> tuple[float | None, float | None]:
    """(compute floor, memory floor) in ms; None where a number is missing."""
    compute = gflops / peak_tflops if gflops is not None and peak_tflops else None  # GFLOP / (TFLOP/s) = ms
    memory = bytes_moved / bandwidth_gb_per_s / 1e6 if bytes_moved is not None and bandwidth_gb_per_s else None
    return compute, memory


def verdict(latency_ms: float, compute_floor_ms: float | None, memory_floor_ms: float | None,
            overhead_factor: float = OVERHEAD_FACTOR) -> str | None:
    """"compute", "memory" or "overhead" (see the module docstring); None without any floor."""
    floors = [f for f in (compute_floor_ms, memory_floor_ms) if f is not None]
    if not floors or latency_ms <= 0:
        return None
    bound = max(floors)
    if latency_ms > overhead_factor * bound:
        return "overhead"
    if compute_floor_ms is not None and (memory_floor_ms is None or compute_floor_ms >= memory_floor_ms):
        return "compute"
    return "memory"


def roofline_fields(gflops: float | None, bytes_moved: int | None, latency_ms: float,
                    ceilings: Ceilings | None, dtype: str = "bf16", allow_tf32: bool = False,
                    overhead_factor: float = OVERHEAD_FACTOR) -> dict[str, Any]:
    """Record fields placing one measurement on the device roofline.

    - `tflops_per_s`: achieved GFLOP / ms; `pct_of_compute_ceiling`: 100 × that / peak of `dtype`;
    - `moved_mib_lower_bound`: bytes moved (lower bound, see `effprof.measure.bytes`) in MiB (2^20 B);
      `achieved_gb_per_s`: those bytes / latency (so a lower bound on the bandwidth achieved);
      `pct_of_bandwidth_ceiling`: 100 × that / bandwidth ceiling;
    - `arithmetic_intensity_flop_per_byte`: FLOPs / bytes;
    - `compute_floor_ms`, `memory_floor_ms`: the two floors; `roofline_fraction`: larger floor / latency
      (1 = on the roof);
    - `verdict` in {compute, memory, overhead}; `ceilings_source`: measured | datasheet | unknown;
    - `roofline_above` (only when true): the fraction is above ROOF_TOLERANCE, faster than the floors allow, so
      the counts overstate what reached DRAM or the units (L2 hits across calls, compiled code's fusion).
    """
    fields: dict[str, Any] = {}
    if gflops is not None and latency_ms > 0:
        fields["tflops_per_s"] = gflops / latency_ms
    if bytes_moved is not None:
        fields["moved_mib_lower_bound"] = bytes_moved / 2**20
        if latency_ms > 0:
            fields["achieved_gb_per_s"] = bytes_moved / 1e6 / latency_ms  # MB / ms = GB/s
        if gflops is not None and bytes_moved > 0:
            fields["arithmetic_intensity_flop_per_byte"] = gflops * 1e9 / bytes_moved
    peak = ceilings.compute_tflops(dtype, allow_tf32) if ceilings is not None else None
    bandwidth = ceilings.bandwidth_gb_per_s if ceilings is not None else None
    compute_floor, memory_floor = floors_ms(gflops, bytes_moved, peak, bandwidth)
    fields.update(
        ceilings_source=ceilings.source if ceilings is not None else "unknown",
        peak_tflops=peak,
        peak_gb_per_s=bandwidth,
        pct_of_compute_ceiling=(100 * fields["tflops_per_s"] / peak
                                if peak and "tflops_per_s" in fields else None),
        pct_of_bandwidth_ceiling=(100 * fields["achieved_gb_per_s"] / bandwidth
                                  if bandwidth and "achieved_gb_per_s" in fields else None),
        compute_floor_ms=compute_floor,
        memory_floor_ms=memory_floor,
        roofline_fraction=(max(f for f in (compute_floor, memory_floor) if f is not None) / latency_ms
                           if latency_ms > 0 and (compute_floor is not None or memory_floor is not None)
                           else None),
        verdict=verdict(latency_ms, compute_floor, memory_floor, overhead_factor),
    )
    if fields["roofline_fraction"] is not None and fields["roofline_fraction"] > ROOF_TOLERANCE:
        fields["roofline_above"] = True
    return fields
