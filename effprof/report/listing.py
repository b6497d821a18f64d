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


def components_compact(components) -> Table:
    """`effprof list`: a line per component (name, unit, what it is); `effprof list NAME` has the parameters."""
    table = Table(title=f"registered components ({len(components)})", title_justify="left", box=None,
                  pad_edge=False)
    for header in ("component", "unit", "what"):
        table.add_column(header, no_wrap=header in ("component", "unit"))
    for c in components:
        table.add_row(c.name, c.unit, c.description + (" (--reducer NAME)" if c.reducer_sites else ""))
    return table


def component_detail(component, reducers=()) -> list[Table]:
    """`effprof list COMPONENT`: its parameters, then the reducers it accepts with their options."""
    params = None
    if component.reducer_sites:  # its own options and --reducer; each reducer's options in the reducers table
        from effprof.core.reducers import REDUCER_PARAM

        params = [*component.own_params, REDUCER_PARAM]
    tables = [params_table(component, params)]
    if reducers:
        tables.append(reducers_table(reducers))
    return tables


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


def params_table(component, params=None) -> Table:
    """One component's parameters (default: all, a reducer's options included): option, type, default,
    allowed values, help."""
    table = Table(title=f"{component.name} parameters ({component.unit}; {component.description})",
                  title_justify="left")
    for header in ("option", "type", "default", "allowed", "help"):
        table.add_column(header)
    for p in component.params if params is None else params:
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


def column_shown(column) -> str:
    """When the table shows `column` (effprof.core.columns.View.shown), as `effprof columns` says it."""
    from effprof.core.columns import view_of

    view = view_of(column.name)
    if view is None:
        return "files only"
    if view.shown == "brief":
        return "brief table"
    if view.shown == "present":
        return f"brief table with {view.when}" if view.when else "brief table when present"
    return f"--columns {view.key} (or full)"


def _column_rows(columns):
    from effprof.core.columns import UNITS

    return [(c.name, c.unit, c.filled_by, c.meaning, column_shown(c), UNITS[c.unit]) for c in columns]


def columns_table(columns) -> Table:
    """`effprof columns`: one line per column (a wide terminal shows the meaning on the same line)."""
    table = Table(title=f"record columns ({len(columns)}; <name> matches any word; units: MiB = 2^20 bytes, "
                        "GFLOP = 1e9 FLOP = 2 x 1e9 MAC)", title_justify="left")
    for header in ("column", "unit", "filled by", "meaning", "in the table"):
        table.add_column(header, no_wrap=header in ("column", "unit"))
    for name, unit, filled_by, meaning, shown, _ in _column_rows(columns):
        table.add_row(name, unit, filled_by, meaning, shown)
    return table


def columns_markdown(columns) -> str:
    """`effprof columns --markdown`: the same as a GitHub-flavoured Markdown table."""
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|")

    lines = ["| column | unit | filled by | meaning | in the table |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| `{cell(name)}` | {cell(unit)} | {cell(filled_by)} | {cell(meaning)} | {cell(shown)} |"
              for name, unit, filled_by, meaning, shown, _ in _column_rows(columns)]
    return "\n".join(lines) + "\n"
