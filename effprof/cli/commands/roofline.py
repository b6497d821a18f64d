"""`effprof roofline`: a profile's rows on the device's roofline."""
from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from effprof.cli.app import CsvPath, JsonPath, _check_outputs, _profile, app, console
from effprof.cli.options import common_options
from effprof.cli.rows import measure_profile
from effprof.core.errors import UsageError


@app.command("roofline")
@common_options("batch", "dtype", "device", "min_time")
def roofline_command(target: Annotated[Optional[str], typer.Argument(help="A profile name/path, or a component with --grid.")] = None,
                     plot: Annotated[str, typer.Option("--plot", help="Write the roofline chart to PATH.png.")] = "roofline.png",
                     from_json: Annotated[Optional[str], typer.Option("--from-json", help="Plot records saved with --json "
                                                                      "instead of measuring.")] = None,
                     grid: Annotated[Optional[list[str]], typer.Option("--grid", help="NAME=V1,V2,... (repeatable).")] = None,
                     csv: CsvPath = None, json: JsonPath = None, overrides: dict[str, Any] | None = None):
    """Draw a profile's rows (measured now, or saved with --json) on the device's roofline."""
    from effprof.report.plot import require_matplotlib
    from effprof.report.roofline_plot import ceilings_from_records, plot_roofline

    require_matplotlib()
    plot, csv, json = _check_outputs(plot=plot, csv=csv, json=json)
    if (target is None) == (from_json is None):
        raise UsageError("roofline: give either a profile/component to measure or --from-json FILE")
    if from_json is not None:
        from pathlib import Path

        from effprof.report.files import load_records

        records = load_records(from_json)

        plot_roofline(records, ceilings_from_records(records), plot,
                      f"{records[0].get('device_name', 'device')}: {Path(from_json).stem}" if records else "")
        console.print(f"roofline written to {plot}", highlight=False)
        return
    from effprof.measure.calibrate import ceilings
    from effprof.core.devices import resolve_device

    target_device = resolve_device(overrides.get("device", "auto"))
    if target_device.type != "cuda":
        raise UsageError("roofline needs a CUDA device to measure on (or --from-json with saved GPU records)")
    profile = _profile(target, grid, overrides)
    records = measure_profile(profile, None, csv, json)
    plot_roofline(records, ceilings(target_device), plot, profile.title)
    console.print(f"roofline written to {plot}", highlight=False)
