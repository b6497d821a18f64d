"""`effprof list`: the registered components with their parameters, the reducers and the profiles."""
from __future__ import annotations

from typing import Annotated

import typer

from effprof.cli.app import app, console
from effprof.core.errors import UsageError
from effprof.core.registry import check_plugins, list_components


@app.command("list")
def list_command(pattern: Annotated[str, typer.Argument(help="Shell-style name pattern.")] = "*"):
    """Every registered component with its parameters (type, default, allowed range, help)."""
    from effprof.core.profiles import available_profiles
    from effprof.report.listing import components_table

    components = list_components(pattern)
    if not components:
        raise UsageError(f"no component matches {pattern!r}")
    console.print(components_table(components))
    if any(c.reducer_sites for c in components):
        from effprof.core.reducers import list_reducers
        from effprof.report.listing import reducers_table

        console.print(reducers_table(list_reducers()))
    console.print(f"profiles: {', '.join(available_profiles()) or 'none'}", highlight=False)
    check_plugins()  # a plugin that failed: the rest is listed above, then one line and exit 2
