"""Tables of `effprof estimate` (plain numbers in, rich tables out). Bytes in MiB/GiB (2^20, 2^30 bytes),
FLOPs in GFLOP/TFLOP (1e9, 1e12; 2 × MAC), bandwidth in GB/s (1e9 bytes/s): effprof's one convention per unit."""
from __future__ import annotations

import math

from rich.table import Table

from effprof.measure.estimate import WEIGHT_BYTES, estimate

MIB, GIB = 2**20, 2**30


def _fmt(x: float, digits: int = 4) -> str:
    """Plain numbers, no scientific notation: 4 significant digits, thousands separated."""
    if x == 0:
        return "0"
    if abs(x) >= 1e4:
        return f"{x:,.0f}"
    decimals = max(0, digits - 1 - int(math.floor(math.log10(abs(x)))))
    return f"{x:,.{decimals}f}"


def estimate_tables(spec: dict, values: dict, batch: int, ceilings) -> list[Table]:
    """Per-layer and whole-LM tables of prefill (`spec["prefill_tokens"]` tokens) and decode (one token at a
    context of `spec["context"]`) for the shape in `spec` (`Built.hooks["estimate"]`)."""
    shape = spec["shape"]
    prefill_tokens = spec.get("prefill_tokens") or (
        spec["tokens"] if spec["stage"] == "prefill" else values.get("prompt_tokens", spec["tokens"]))
    context = spec.get("context") or values.get("context", spec["tokens"])
    head = spec.get("head", True)
    cache = getattr(shape, "cache_name", "KV")
    peak = ceilings.compute_tflops("bf16") if ceilings else None
    bandwidth = ceilings.bandwidth_gb_per_s if ceilings else None
    where = (f"{ceilings.device_name} ({ceilings.source}: {peak:g} TFLOP/s bf16, {bandwidth:,.0f} GB/s)"
             if peak and bandwidth else "no ceilings (pass --gpu NAME)")
    what_head = "LM head on the last position" if head else "no LM head (backbone, as this row measures)"
    tables = []
    for stage, tokens in (("prefill", prefill_tokens), ("decode", context)):
        est = estimate(shape, stage, batch, tokens, head=head)
        what = f"{tokens} tokens" if stage == "prefill" else f"1 token at context {tokens}"
        table = Table(title=f"{stage}, batch {batch}, {what}: one of {shape.layers} layers, bf16 weights; {where}",
                      title_justify="left")
        for header in ("op", "GFLOP (2×MAC)", "elementwise Gop", "weights MiB", "act. MiB", f"{cache} MiB",
                       "FLOP/byte", "bound", "floor µs"):
            table.add_column(header, justify="left" if header == "op" else "right")
        for op in est.layer + est.head:
            row = [op.name, _fmt(op.flops / 1e9), _fmt(op.elementwise_ops / 1e9), _fmt(op.weight_bytes / MIB),
                   _fmt(op.act_bytes / MIB), _fmt(op.cache_bytes / MIB),
                   _fmt((op.flops + op.elementwise_ops) / op.bytes if op.bytes else 0)]
            if peak and bandwidth:
                row += [op.bound(peak, bandwidth), _fmt(op.bound_ms(peak, bandwidth) * 1e3)]
            else:
                row += ["-", "-"]
            table.add_row(*row)
        tables.append(table)
        totals = Table(title=f"{stage} totals (whole LM, {shape.layers} layers, final norm, {what_head}); "
                       "int8/int4 are weight-only and analytic", title_justify="left")
        for header in ("weights", "TFLOP (2×MAC)", "GiB moved", "FLOP/byte", "bound ms"):
            totals.add_column(header, justify="right")
        for weight in WEIGHT_BYTES:
            e = estimate(shape, stage, batch, tokens, weight, head)
            bound = _fmt(e.bound_ms(peak, bandwidth)) if peak and bandwidth else "-"
            totals.add_row(weight, _fmt(e.flops / 1e12), _fmt(e.bytes / GIB), _fmt(e.flops / e.bytes), bound)
        tables.append(totals)
    return tables
