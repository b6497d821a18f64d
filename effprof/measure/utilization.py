"""MFU and MBU of a record, each against two peaks and each naming its convention (pure functions, no torch).

- **MFU** (model FLOPs utilization): achieved FLOP/s / peak FLOP/s, where the FLOPs are those effprof counts
  for the whole call (2 x MAC, FlopCounterMode plus effprof's formulas: attention, scans; for a VLM the vision
  tower, the projector and the LM together; most trainers' MFU leaves the vision tower out), the time is the
  call's median latency, and the peak is the dense matmul peak of the row's dtype (fp32 on TF32 tensor cores
  when torch allows it): `mfu_datasheet_pct` against NVIDIA's published dense figure (never the "with
  sparsity" one: effprof.measure.calibrate.DATASHEET holds the dense peaks), `mfu_measured_pct` against the
  matmul ceiling `effprof calibrate` measured and cached. A --train row's FLOPs are forward + backward as the
  step runs them (with --grad-checkpointing the recomputed forward is counted, PaLM's "hardware FLOPs").
- **MBU** (model bandwidth utilization, Databricks, "LLM Inference Performance Engineering: Best Practices",
  2023): (weights + KV cache or SSM state read per output token) / time per output token / peak bandwidth,
  for decode rows (`--mode decode`: one call = one step of the batch) and generation rows. The bytes are
  those effprof counts for one decode step (`effprof.measure.bytes`: each weight read once, the KV cache or
  the SSM state read, the new entries written: a lower bound, in which the weights and the cache dominate;
  for a generation, the decode stage's bytes / its new_tokens - 1 steps over the mean TPOT).
  `mbu_datasheet_pct` against the datasheet bandwidth, `mbu_measured_pct` against `effprof calibrate`'s copy.

Units: GFLOP per call, ms, TFLOP/s, bytes, GB/s (1e9 B/s); percentages.
"""
from __future__ import annotations

from typing import Any

from effprof.measure.roofline import Ceilings

MIB = 2**20


def mfu_pct(gflops: float | None, latency_ms: float | None, peak_tflops: float | None) -> float | None:
    """100 x (GFLOP / ms = TFLOP/s) / peak TFLOP/s; None where a number is missing."""
    if gflops is None or not latency_ms or not peak_tflops or latency_ms <= 0:
        return None
    return 100.0 * gflops / latency_ms / peak_tflops


def mbu_pct(bytes_per_step: float | None, step_ms: float | None, peak_gb_per_s: float | None) -> float | None:
    """100 x (bytes / 1e6 / ms = GB/s) / peak GB/s; None where a number is missing."""
    if bytes_per_step is None or not step_ms or not peak_gb_per_s or step_ms <= 0:
        return None
    return 100.0 * bytes_per_step / 1e6 / step_ms / peak_gb_per_s


def decode_step(record: dict[str, Any]) -> tuple[float, float, str] | None:
    """(bytes one decode step moves, the step's time in ms, what they are) of a decode or generation row."""
    if record.get("param_mode") == "decode" and record.get("moved_mib_lower_bound") is not None:
        return (record["moved_mib_lower_bound"] * MIB, record.get("latency_ms_median"),
                "the counted bytes of one decode step / its median latency")
    steps = (record.get("new_tokens") or 0) - 1
    if record.get("tpot_ms_mean") is not None and record.get("stage_decode_moved_mib") is not None and steps > 0:
        return (record["stage_decode_moved_mib"] * MIB / steps, record["tpot_ms_mean"],
                f"the decode stage's counted bytes / {steps} steps, over the mean TPOT")
    return None


def _peak_text(ceilings: Ceilings, key: str) -> str:
    return f"{ceilings.matmul_tflops.get(key):g} TFLOP/s {key}"


def utilization_fields(record: dict[str, Any], datasheet: Ceilings | None, measured: Ceilings | None,
                       allow_tf32: bool = False) -> dict[str, Any]:
    """MFU and MBU columns of `record` (see the module docstring); every row gets every column, None where
    a figure cannot be had, and `utilization_note` says why."""
    dtype = record.get("dtype") or ""
    key = "tf32" if dtype == "fp32" and allow_tf32 else dtype
    measured = measured if measured is not None and measured.source == "measured" else None
    gflops, latency = record.get("gflops"), record.get("latency_ms_median")
    fields: dict[str, Any] = {"mfu_datasheet_pct": None, "mfu_measured_pct": None}
    notes = []
    peaks = []
    if datasheet is not None and datasheet.matmul_tflops.get(key):
        fields["mfu_datasheet_pct"] = mfu_pct(gflops, latency, datasheet.matmul_tflops[key])
        peaks.append(f"datasheet {_peak_text(datasheet, key)} dense")
    else:
        notes.append(f"no dense datasheet peak for {record.get('device_name') or '?'} {key}")
    if measured is not None and measured.matmul_tflops.get(key):
        fields["mfu_measured_pct"] = mfu_pct(gflops, latency, measured.matmul_tflops[key])
        peaks.append(f"measured {_peak_text(measured, key)} (effprof calibrate)")
    else:
        notes.append("no measured ceiling (run effprof calibrate)")
    if gflops is None:
        notes.append("FLOPs not counted")
    if peaks:
        fields["mfu_convention"] = ("MFU % = counted FLOPs of the whole call (2×MAC; a VLM's vision tower, projector "
                                    "and LM included) / median latency / peak: " + "; ".join(peaks))
    step = decode_step(record)
    if step is not None:
        bytes_per_step, step_ms, what = step
        fields.update(mbu_datasheet_pct=None, mbu_measured_pct=None, mbu_mib_per_token=bytes_per_step / MIB)
        bandwidths = []
        if datasheet is not None and datasheet.bandwidth_gb_per_s:
            fields["mbu_datasheet_pct"] = mbu_pct(bytes_per_step, step_ms, datasheet.bandwidth_gb_per_s)
            bandwidths.append(f"datasheet {datasheet.bandwidth_gb_per_s:g} GB/s")
        if measured is not None and measured.bandwidth_gb_per_s:
            fields["mbu_measured_pct"] = mbu_pct(bytes_per_step, step_ms, measured.bandwidth_gb_per_s)
            bandwidths.append(f"measured copy {measured.bandwidth_gb_per_s:g} GB/s")
        if bandwidths:
            fields["mbu_convention"] = ("MBU % = (weights + KV cache or SSM state) read per output token / time per "
                                        f"output token / peak bandwidth (Databricks): {what}; "
                                        + "; ".join(bandwidths))
    if notes and (fields["mfu_datasheet_pct"] is None or fields["mfu_measured_pct"] is None):
        fields["utilization_note"] = "; ".join(notes)
    return fields
