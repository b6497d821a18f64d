"""Tables for `effprof list` and `effprof env`: plain data in, rich tables out."""
from __future__ import annotations

from rich.table import Table


def components_table(components) -> Table:
    table = Table(title="registered components", title_justify="left", show_lines=True)
    for header in ("component", "unit", "what", "parameters: --name type = default  range  help"):
        table.add_column(header)
    for c in components:
        lines = [f"{p.option} {p.type_name} = {'none' if p.default is None else p.default}  {p.range_text()}  {p.help}"
                 for p in c.params]
        table.add_row(c.name, c.unit, c.description, "\n".join(lines) or "-")
    return table


def params_table(component) -> Table:
    """One component's parameters: option, type, default, allowed values, help."""
    table = Table(title=f"{component.name} parameters ({component.unit}; {component.description})",
                  title_justify="left")
    for header in ("option", "type", "default", "allowed", "help"):
        table.add_column(header)
    for p in component.params:
        table.add_row(p.option, p.type_name, "none" if p.default is None else str(p.default), p.range_text(), p.help)
    return table


def facts_table(facts: dict[str, str]) -> Table:
    table = Table(show_header=False)
    table.add_column("what")
    table.add_column("value")
    for key, value in facts.items():
        table.add_row(key, "-" if value is None else str(value))
    return table


def ceilings_table(measured, datasheet=None) -> Table:
    """Measured ceilings beside the datasheet's (either may be None): TFLOP/s per dtype, copy GB/s."""
    table = Table(title=f"ceilings of {getattr(measured, 'device_name', '?')}", title_justify="left")
    table.add_column("what")
    table.add_column(f"measured ({getattr(measured, 'source', '?')})", justify="right")
    table.add_column("datasheet", justify="right")

    def fmt(value):
        return "-" if value is None else f"{value:,.1f}"

    for dtype in ("bf16", "fp16", "tf32", "fp32"):
        table.add_row(f"dense {dtype} matmul, TFLOP/s", fmt(measured.matmul_tflops.get(dtype)),
                      fmt(datasheet.matmul_tflops.get(dtype)) if datasheet else "-")
    table.add_row("device copy, GB/s (read + write)", fmt(measured.bandwidth_gb_per_s),
                  fmt(datasheet.bandwidth_gb_per_s) if datasheet else "-")
    return table
