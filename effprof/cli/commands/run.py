"""`effprof run COMPONENT`: one component in one configuration."""
from __future__ import annotations

from typing import Annotated, Any

import typer

from effprof.cli.app import (check_min_coverage, Columns, CsvPath, HtmlPath, JsonPath, MdPath, MinCoverage, Tp, _check_columns,
                             _check_outputs, _component_args, _mark_coverage, _table_console, _write_reports, app,
                             err_console, write_records)
from effprof.cli.options import common_options
from effprof.core.errors import EffprofError, UsageError
from effprof.core.options import RunOptions


@app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@common_options()
def run_command(ctx: typer.Context,
                component: Annotated[str, typer.Argument(help="Component name (see `effprof list`).")],
                csv: CsvPath = None, json: JsonPath = None, tp: Tp = None, min_flop_coverage: MinCoverage = None,
                columns: Columns = "brief", md: MdPath = None, html: HtmlPath = None,
                isolate: Annotated[bool, typer.Option("--isolate", help="Measure in a worker process: a crash of "
                                                      "the interpreter (a segfault in user code) fails the row "
                                                      "instead of ending effprof.")] = False,
                overrides: dict[str, Any] | None = None):
    """Measure one component in one configuration. Component parameters follow as --name VALUE."""
    from effprof.core.options import Config

    # every name and range is checked against the declarations before torch is imported (effprof.launch does)
    csv, json, md, html = _check_outputs(csv=csv, json=json, md=md, html=html)
    _check_columns(columns)
    check_min_coverage(min_flop_coverage)
    if min_flop_coverage is not None:  # a minimum asks for the coverage (opt-in on CUDA)
        overrides.setdefault("flop_coverage", True)
    params = _component_args(component, list(ctx.args))
    options = RunOptions(**overrides)
    config = Config(component, params, options.validate())
    config.resolved()

    from effprof.launch import Plan, launch
    from effprof.launch.torchrun import add_tp_scaling, expand_tp, secondary_rank
    from effprof.report.table import print_records

    configs = expand_tp([config], tp)
    if isolate and tp:
        raise UsageError("--isolate and --tp: a --tp row already runs in its own rank processes")
    with err_console.status(f"{component}: build ...") as status:
        # a failure is a row with its reason, as in a comparison; a refusal is one line on stderr (exit 2)
        if isolate:
            from effprof.launch import plan_for

            plan = plan_for(isolate=True, device=overrides.get("device"))
        else:
            plan = Plan(raise_refusals=True, on_phase=lambda _, phase: status.update(f"{component}: {phase} ..."))
        records = launch(configs, plan)
    if tp:
        add_tp_scaling(records)
    if secondary_rank():  # under torchrun, rank 0 reports
        return
    _mark_coverage(records, min_flop_coverage)
    write_records(records, csv, json)  # files first: a console that fails cannot lose them
    if len(records) == 1 and records[0]["status"] != "ok":  # one row that failed: one line, no table
        record = records[0]
        if record.get("traceback"):  # --debug: the whole story of the failed row
            err_console.print(record["traceback"], highlight=False, markup=False)
        if record["status"] == "refused":
            raise UsageError(record.get("error"))
        raise EffprofError(f"{component}: {record['status']}: {record.get('error')}")
    print_records(records, title=f"effprof run {component}", console=_table_console(csv, json), columns=columns)
    _write_reports(records, f"effprof run {component}", columns, md, html)
    from effprof.cli.rows import cpu_load_line

    if cpu_load_line(records):
        err_console.print(f"effprof: {cpu_load_line(records)}", highlight=False, soft_wrap=True)
    for record in records:
        if record.get("traceback"):
            err_console.print(record["traceback"], highlight=False)
        elif record["status"] != "ok" and record.get("error"):  # the reason, as one line, where errors go
            err_console.print(f"effprof: {record['status']}: {record['error']}", highlight=False, soft_wrap=True)
    if any(r["status"] == "refused" for r in records):
        raise typer.Exit(2)
    if any(r["status"] != "ok" for r in records):
        raise typer.Exit(1)
