"""A profile's rows measured with a progress bar, the files rewritten after every row, the table printed.

What runs where is the launcher's (`effprof.launch`); this module shows progress, keeps the files current
(an interruption loses no finished row) and prints the table and its notes.
"""
from __future__ import annotations

from typing import Any

from effprof.cli.app import Interrupted, _mark_coverage, _table_console, console, err_console, write_records
from effprof.core.errors import UsageError


def measure_profile(profile, baseline: str | None, csv: str | None, json: str | None, plan=None,
                    min_flop_coverage: float | None = None, columns: str = "brief") -> list[dict[str, Any]]:
    """Measure a profile's rows the way `plan` says (an `effprof.launch.Plan`; None: inline) with a progress
    bar, rewriting the files after every row; then the ratios, the table and its notes."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from effprof.launch import Plan, launch
    from effprof.launch.pool import add_ratios_same_device, host_summary
    from effprof.launch.torchrun import add_tp_scaling, secondary_rank
    from effprof.report.table import print_records

    plan = plan or Plan()

    if secondary_rank():  # under torchrun, rank 0 reports
        csv = json = None
        console.quiet = err_console.quiet = True

    labels = [c.label or c.component for c in profile.configs]
    if baseline is not None:
        if baseline not in labels:
            raise UsageError(f"--baseline: {baseline!r} is not a row ({', '.join(labels)})")
        profile.baseline = labels.index(baseline)
    done: list[dict[str, Any]] = []

    def keep(record):  # rewrite the files after every row: an interruption loses nothing finished
        if "row" in record:  # a later pass of --processes replaces the row's record with the pooled one
            done[:] = [r for r in done if r.get("row") != record["row"]]
        done.append(record)
        done.sort(key=lambda r: r.get("row", 0))  # a pool finishes rows out of order
        write_records(done, csv, json, partial=True)

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err_console, transient=True, disable=len(profile.configs) < 2)
    try:
        with progress:
            task = progress.add_task("comparing", total=len(profile.configs) * plan.processes)

            def step(record):
                keep(record)
                progress.update(task, advance=1, description=f"done: {record['label']}")

            def phase(config, name):  # where the time goes: build, count, warm-up, timing
                progress.update(task, description=f"{config.label or config.component}: {name}")

            plan.on_phase = phase
            records = launch(profile.configs, plan, on_record=step)
    except KeyboardInterrupt as exc:
        code = getattr(exc, "exit_code", 130)
        where = " and ".join(p if p != "-" else "standard output" for p in (csv, json) if p)
        if done:
            write_records(done, csv, json)
            print_records(done, title=f"{profile.title} (interrupted)", console=_table_console(csv, json))
        error = Interrupted(f"{'interrupted' if code == 130 else 'terminated'} after {len(done)} of "
                            f"{len(profile.configs)} rows" + (f"; finished rows are in {where}" if where and done
                                                              else "; no row had finished, no file written"
                                                              if where else ""))
        error.exit_code = code
        raise error from None
    warnings = add_ratios_same_device(records, profile.baseline)
    if any("tp" in r for r in records):
        add_tp_scaling(records)
    _mark_coverage(records, min_flop_coverage)
    write_records(records, csv, json)  # files first: a console that fails cannot lose them
    print_records(records, title=profile.title, console=_table_console(csv, json), columns=columns)
    for record in records:  # --debug: the whole story of each failed row
        if record.get("traceback"):
            err_console.print(f"{record['label']}:\n{record['traceback']}", highlight=False)
    for line in warnings + ([host_summary(records)] if plan.slots else [cpu_load_line(records)]):
        if line:
            err_console.print(f"effprof: {line}", highlight=False, soft_wrap=True)
    return records


def cpu_load_line(records: list[dict[str, Any]]) -> str:
    """One line on the host's load while the CPU rows were timed (effprof.trackers.host), or ""."""
    rows = [r for r in records if r.get("host_cpu_busy_pct") is not None]
    if not rows:
        return ""
    busy = [r["host_cpu_busy_pct"] for r in rows]
    other = [r["host_other_busy_pct"] for r in rows if r.get("host_other_busy_pct") is not None]
    loads = [r["host_load_1min"] for r in rows if r.get("host_load_1min") is not None]
    threads = sorted({r.get("torch_num_threads") for r in rows if r.get("torch_num_threads")})
    text = (f"host while timing: {rows[0].get('host_cpus')} CPUs, busy {sum(busy) / len(busy):.0f}% on average "
            f"(max {max(busy):.0f}%)")
    if other:
        text += f", {max(other):.0f}% of it other processes at most"
    if loads:
        text += f"; load average {max(loads):.2f}"
    text += f"; torch threads {', '.join(map(str, threads))}" if threads else ""
    if other and max(other) > 25:
        text += " (a shared host: fewer --threads than cores, or a quieter moment, may steady the timings)"
    return text
