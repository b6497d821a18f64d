"""`effprof list [PATTERN]`: the registered components, a line each; `effprof list COMPONENT` (or a pattern that
matches one component): its parameters, the reducers it accepts and the profiles that use it."""
from __future__ import annotations

from typing import Annotated

import typer

from effprof.cli.app import app, console
from effprof.core.errors import UsageError
from effprof.core.registry import check_plugins, list_components


@app.command("list")
def list_command(pattern: Annotated[str, typer.Argument(help="A component's name (its parameters in detail) or a "
                                                        "shell-style pattern (a line per matching component).")]
                 = "*"):
    """The registered components, a line each; with a component's name, its parameters (type, default, allowed
    range, help) and the reducers it accepts."""
    from effprof.core.profiles import available_profiles
    from effprof.report.listing import component_detail, components_compact

    components = list_components(pattern)
    if not components:
        raise UsageError(f"no component matches {pattern!r}")
    if len(components) == 1:
        component = components[0]
        reducers = []
        if component.reducer_sites:
            from effprof.core.reducers import list_reducers

            reducers = list_reducers(sites=component.reducer_sites)
        for table in component_detail(component, reducers):
            console.print(table)
    else:
        console.print(components_compact(components))
        console.print("effprof list COMPONENT: its parameters (type, default, allowed range, help) and the reducers "
                      "it accepts", highlight=False)
    console.print(f"profiles: {', '.join(available_profiles()) or 'none'}", highlight=False)
    check_plugins()  # a plugin that failed: the rest is listed above, then one line and exit 2
