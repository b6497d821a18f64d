"""Tables of `effprof estimate` (plain numbers in, rich tables out)."""
from __future__ import annotations

from rich.table import Table

from effprof.measure.estimate import WEIGHT_BYTES, estimate


def _fmt(x: float, digits: int = 4) -> str:
    """Plain numbers, no scientific notation: 4 significant digits, thousands separated."""
    if x == 0:
        return "0"
    if abs(x) >= 1e4:
        return f"{x:,.0f}"
    decimals = max(0, digits - 1 - int(__import__("math").floor(__import__("math").log10(abs(x)))))
    return f"{x:,.{decimals}f}"


def estimate_tables(spec: dict, values: dict, batch: int, ceilings) -> list[Table]:
    shape = spec["shape"]
    prefill_tokens = spec["tokens"] if spec["stage"] == "prefill" else values.get("prompt_tokens", spec["tokens"])
    context = values.get("context", spec["tokens"])
    peak = ceilings.compute_tflops("bf16") if ceilings else None
    bandwidth = ceilings.bandwidth_gb_per_s if ceilings else None
    where = (f"{ceilings.device_name} ({ceilings.source}: {peak:g} TFLOP/s bf16, {bandwidth:,.0f} GB/s)"
             if peak and bandwidth else "no ceilings (pass --gpu NAME)")
    tables = []
    for stage, tokens in (("prefill", prefill_tokens), ("decode", context)):
        est = estimate(shape, stage, batch, tokens)
        what = f"{tokens} tokens" if stage == "prefill" else f"1 token at context {tokens}"
        table = Table(title=f"{stage}, batch {batch}, {what}: one of {shape.layers} layers, bf16 weights; {where}",
                      title_justify="left")
        for header in ("op", "GFLOP (2×MAC)", "elementwise Gop", "weights MB", "act. MB", "KV MB",
                       "FLOP/byte", "bound", "floor µs"):
            table.add_column(header, justify="left" if header == "op" else "right")
        for op in est.layer + est.head:
            row = [op.name, _fmt(op.flops / 1e9), _fmt(op.elementwise_ops / 1e9), _fmt(op.weight_bytes / 1e6),
                   _fmt(op.act_bytes / 1e6), _fmt(op.kv_bytes / 1e6),
                   _fmt((op.flops + op.elementwise_ops) / op.bytes if op.bytes else 0)]
            if peak and bandwidth:
                row += [op.bound(peak, bandwidth), _fmt(op.bound_ms(peak, bandwidth) * 1e3)]
            else:
                row += ["-", "-"]
            table.add_row(*row)
        tables.append(table)
        totals = Table(title=f"{stage} totals (whole LM, {shape.layers} layers + head); int8/int4 are weight-only and "
                       "analytic", title_justify="left")
        for header in ("weights", "TFLOP (2×MAC)", "GB moved", "FLOP/byte", "bound ms"):
            totals.add_column(header, justify="right")
        for weight in WEIGHT_BYTES:
            e = estimate(shape, stage, batch, tokens, weight)
            bound = _fmt(e.bound_ms(peak, bandwidth)) if peak and bandwidth else "-"
            totals.add_row(weight, _fmt(e.flops / 1e12), _fmt(e.bytes / 1e9), _fmt(e.flops / e.bytes), bound)
        tables.append(totals)
    return tables
