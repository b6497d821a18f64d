"""`effprof calibrate`: this device's matmul and copy-bandwidth ceilings."""
from __future__ import annotations

from typing import Annotated, Any

import typer

from effprof.cli.app import app, console, err_console
from effprof.cli.options import common_options
from effprof.core.errors import UsageError


@app.command("calibrate")
@common_options("device")
def calibrate_command(force: Annotated[bool, typer.Option("--force", help="Measure again, replacing the cache.")] = False,
                      overrides: dict[str, Any] | None = None):
    """Measure this device's matmul (bf16, fp16, tf32, fp32) and copy-bandwidth ceilings; cache them."""
    from effprof.measure.calibrate import cache_path, calibrate, datasheet_ceilings
    from effprof.core.devices import resolve_device
    from effprof.report.listing import ceilings_table

    target = resolve_device(overrides.get("device", "auto"))
    if target.type != "cuda":
        raise UsageError("calibrate measures GPU ceilings: no CUDA device here")
    with err_console.status("measuring matmul and copy ceilings ..."):
        measured = calibrate(target, force=force)
    console.print(ceilings_table(measured, datasheet_ceilings(measured.device_name)))
    console.print(f"cache: {cache_path(target)}", highlight=False)
