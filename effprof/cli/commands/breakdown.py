"""`effprof breakdown COMPONENT`: where the time goes, module by module (or phase by phase with --train)."""
from __future__ import annotations

from typing import Annotated, Any

import typer

from effprof.cli.app import _component_args, app, console, err_console
from effprof.cli.options import common_options
from effprof.core.errors import UsageError
from effprof.core.options import RunOptions


@app.command("breakdown", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@common_options("batch", "dtype", "device", "seed", "debug", "train", "optimizer", "grad_checkpointing")
def breakdown_command(ctx: typer.Context,
                      component: Annotated[str, typer.Argument(help="Component name (see `effprof list`).")],
                      depth: Annotated[int, typer.Option("--depth", min=0, help="Levels of modules to show.")] = 2,
                      table: Annotated[bool, typer.Option("--table", help="A flat table instead of a tree.")] = False,
                      kernels: Annotated[int, typer.Option("--kernels", min=0,
                                                           help="Also list the N costliest kernels (CUDA) or ops (CPU).")] = 0,
                      uncovered: Annotated[bool, typer.Option("--uncovered", help="List the costliest ops counted as "
                                                              "zero FLOPs (no formula) and the FLOP coverage.")] = False,
                      overrides: dict[str, Any] | None = None):
    """Where the time goes: each module's params, FLOPs, time and share of the total (--train: the step's
    forward, backward and optimizer)."""
    from effprof.core.options import Config

    for option, value in (("--depth", depth), ("--kernels", kernels)):
        if value < 0:  # typer's min=0 does not survive @common_options' signature rewrite
            raise UsageError(f"{option}: {value} must be at least 0")
    params = _component_args(component, list(ctx.args))
    config = Config(component, params, RunOptions(**overrides).validate())
    config.resolved()  # names and ranges refused before torch is imported

    from effprof.report.tree import kernels_table, print_breakdown
    from effprof.studies.inspection import breakdown_config

    if config.options.train:
        from effprof.report.tree import phases_table
        from effprof.studies.inspection import train_breakdown_config

        with err_console.status(f"timing the training step of {component} ..."):
            phases, facts = train_breakdown_config(config)
        console.print(phases_table(phases, f"effprof breakdown --train {component} ({facts})"))
        return
    with err_console.status(f"timing the modules of {component} ..."):
        result = breakdown_config(config, depth=depth, kernels=kernels)
    print_breakdown(result.nodes, f"effprof breakdown {component} ({result.facts})", console, as_table=table)
    if kernels:
        console.print(kernels_table(result.kernels, f"top {kernels} per call"))
    if uncovered:
        from effprof.report.tree import uncovered_table
        from effprof.studies.inspection import coverage_config

        console.print(uncovered_table(coverage_config(config)))
