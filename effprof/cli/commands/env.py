"""`effprof env`: the device, its software and which optional kernels and counters are importable."""
from __future__ import annotations

from typing import Any

from effprof.cli.app import app, console
from effprof.cli.options import common_options


@app.command("env")
@common_options("device")
def env_command(overrides: dict[str, Any] | None = None):
    """Device, driver, CUDA and torch versions; which optional kernels and counters are importable."""
    from effprof.report.listing import facts_table
    from effprof.studies.inspection import environment_facts

    console.print(facts_table(environment_facts(overrides.get("device", "auto"))))
