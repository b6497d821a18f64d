"""Tables for `effprof list` and `effprof env`: plain data in, rich tables out."""
from __future__ import annotations

from rich.table import Table


def components_table(components) -> Table:
    table = Table(title="registered components", title_justify="left", show_lines=True)
    for header in ("component", "unit", "what", "parameters: --name type = default  range  help"):
        table.add_column(header)
    for c in components:
        lines = [f"{p.option} {p.type_name} = {p.default}  {p.range_text()}  {p.help}" for p in c.params]
        table.add_row(c.name, c.unit, c.description, "\n".join(lines) or "-")
    return table


def facts_table(facts: dict[str, str]) -> Table:
    table = Table(show_header=False)
    table.add_column("what")
    table.add_column("value")
    for key, value in facts.items():
        table.add_row(key, str(value))
    return table
