"""Tables for `effprof list` and `effprof env`: plain data in, rich tables out."""
from __future__ import annotations

from rich.table import Table


def components_table(components) -> Table:
    table = Table(title="registered components", title_justify="left", show_lines=True)
    for header in ("component", "unit", "what", "parameters: --name type = default  range  help"):
        table.add_column(header)
    for c in components:
        sites = getattr(c, "reducer_sites", ())
        params = c.own_params if sites else c.params  # a reducer's options are listed with the reducer
        lines = [_param_line(p) for p in params]
        if sites:
            from effprof.core.reducers import list_reducers

            names = ", ".join(r.name for r in list_reducers(sites=sites))
            lines.append(f"--reducer str | none = none  one of {names} or none  Visual token reducer at "
                         f"{' or '.join(sites)}; its options follow it (reducers table)")
        table.add_row(c.name, c.unit, c.description, "\n".join(lines) or "-")
    return table


def _param_line(p) -> str:
    return f"{p.option} {p.type_name} = {'none' if p.default is None else p.default}  {p.range_text()}  {p.help}"


def reducers_table(reducers) -> Table:
    """Registered reducers: where each acts, what it does, its options."""
    table = Table(title="registered reducers (--reducer NAME on a component that accepts them)",
                  title_justify="left", show_lines=True)
    for header in ("reducer", "acts at", "what", "options: --name type = default  range  help"):
        table.add_column(header)
    for r in reducers:
        table.add_row(r.name, r.where, r.description, "\n".join(_param_line(p) for p in r.params) or "-")
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
