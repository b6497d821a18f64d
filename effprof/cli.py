"""The command line: parse, look up, call, show. No measurement logic lives here."""
from __future__ import annotations

import sys
from dataclasses import replace
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from effprof.cli_options import common_options
from effprof.errors import EffprofError, UsageError
from effprof.options import RunOptions
from effprof.registry import check_plugins, get_component, list_components
from effprof.report.table import make_console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Profile the efficiency of vision-language and state-space model components.")
console = make_console()
err_console = Console(stderr=True)

# Common measurement options: declared once in effprof/cli_options.py (`@common_options`).
CsvPath = Annotated[Optional[str], typer.Option("--csv", help="Write the records to this CSV file (atomically).")]
JsonPath = Annotated[Optional[str], typer.Option("--json", help="Write the records to this JSON file (atomically).")]
Columns = Annotated[str, typer.Option("--columns", help="Table columns: brief (fits 120 columns), full, or a "
                                      "comma-separated list of keys (an unknown key lists them). Files hold all.")]
MdPath = Annotated[Optional[str], typer.Option("--md", help="Also write the table as Markdown to PATH.")]
HtmlPath = Annotated[Optional[str], typer.Option("--html", help="Also write one self-contained HTML page (table, notes, "
                                                 "plots inlined) to PATH.")]
MinCoverage = Annotated[Optional[float], typer.Option("--min-flop-coverage", min=0, max=1,
                                                      help="Mark rows whose FLOP coverage (share of time in ops "
                                                           "with a FLOP formula) is below this fraction.")]
Tp = Annotated[Optional[str], typer.Option("--tp", help="Tensor-parallel degree(s) of LM rows: N or 1,2,... (one process "
                                           "per rank, NCCL on GPUs, gloo on cpu; scaling against tp 1).")]


def _print_version(value: bool) -> None:
    if value:
        from effprof import __version__

        console.print(f"effprof {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[Optional[bool], typer.Option("--version", callback=_print_version, is_eager=True,
                                                          help="Print effprof's version and exit.")] = None):
    """Profile the efficiency of vision-language and state-space model components."""


# The command line of this invocation, which records and the JSON metadata carry (set by `main`).
COMMAND_LINE: str = ""


def _stamp(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for record in records:
        record.setdefault("command_line", COMMAND_LINE)
    return records


def write_records(records: list[dict[str, Any]], csv: str | None, json: str | None, partial: bool = False) -> None:
    """effprof.report.files.write_records with the command line in every record and the JSON metadata."""
    from effprof.report.files import metadata, write_records as write

    write(_stamp(records), csv, json, metadata(COMMAND_LINE), partial=partial)


def _check_outputs(*unnamed: str | None, **paths: str | None) -> tuple[str | None, ...]:
    """Refuse unusable output paths before any time is spent measuring; return them with `~` expanded.
    Name them (`csv=..., json=...`) so that a refusal names the option."""
    from effprof.outputs import check_outputs

    return check_outputs(**paths, **{f"output-{i}": p for i, p in enumerate(unnamed, start=1)})


def _component_args(component: str, args: list[str], params=None) -> dict[str, str]:
    """Parse `--name VALUE` / `--name=VALUE` pairs against the component's declared parameters (or `params`)."""
    declared = {p.option: p for p in (get_component(component).params if params is None else params)}
    values: dict[str, str] = {}
    i = 0
    while i < len(args):
        token = args[i]
        option, sep, value = token.partition("=")
        if option not in declared:
            known = " ".join(sorted(declared)) or "none"
            raise UsageError(f"{component}: unknown option {option!r} (component options: {known})")
        if not sep and declared[option].type is bool and (i + 1 >= len(args) or args[i + 1].startswith("--")):
            value, sep = "true", "="  # a bool parameter given alone is a flag: --pretrained
        if not sep:
            if i + 1 >= len(args):
                raise UsageError(f"{option} needs a value ({declared[option].range_text()})")
            i += 1
            value = args[i]
        values[declared[option].name] = value
        i += 1
    return values


@app.command("list")
def list_command(pattern: Annotated[str, typer.Argument(help="Shell-style name pattern.")] = "*"):
    """Every registered component with its parameters (type, default, allowed range, help)."""
    from effprof.profiles import available_profiles
    from effprof.report.listing import components_table

    components = list_components(pattern)
    if not components:
        raise UsageError(f"no component matches {pattern!r}")
    console.print(components_table(components))
    if any(c.reducer_sites for c in components):
        from effprof.reducers import list_reducers
        from effprof.report.listing import reducers_table

        console.print(reducers_table(list_reducers()))
    console.print(f"profiles: {', '.join(available_profiles()) or 'none'}", highlight=False)
    check_plugins()  # a plugin that failed: the rest is listed above, then one line and exit 2


@app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@common_options()
def run_command(ctx: typer.Context,
                component: Annotated[str, typer.Argument(help="Component name (see `effprof list`).")],
                csv: CsvPath = None, json: JsonPath = None, tp: Tp = None, min_flop_coverage: MinCoverage = None,
                columns: Columns = "brief", md: MdPath = None, html: HtmlPath = None,
                overrides: dict[str, Any] | None = None):
    """Measure one component in one configuration. Component parameters follow as --name VALUE."""
    from effprof.distributed import add_tp_scaling, expand_tp, secondary_rank
    from effprof.report.table import print_records
    from effprof.runner import Config, measure_many

    csv, json, md, html = _check_outputs(csv=csv, json=json, md=md, html=html)
    _check_columns(columns)
    if min_flop_coverage is not None:  # a minimum asks for the coverage (opt-in on CUDA)
        overrides.setdefault("flop_coverage", True)
    params = _component_args(component, list(ctx.args))
    options = RunOptions(**overrides)
    config = Config(component, params, options.validate())
    config.resolved()
    configs = expand_tp([config], tp)
    with err_console.status(f"{component}: build ...") as status:
        # a failure is a row with its reason, as in a comparison; a refusal is one line on stderr (exit 2)
        records = measure_many(configs, raise_refusals=True,
                               on_phase=lambda _, phase: status.update(f"{component}: {phase} ..."))
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
    for record in records:
        if record.get("traceback"):
            err_console.print(record["traceback"], highlight=False)
        elif record["status"] != "ok" and record.get("error"):  # the reason, as one line, where errors go
            err_console.print(f"effprof: {record['status']}: {record['error']}", highlight=False, soft_wrap=True)
    if any(r["status"] == "refused" for r in records):
        raise typer.Exit(2)
    if any(r["status"] != "ok" for r in records):
        raise typer.Exit(1)


@app.command("compare", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@common_options()
def compare_command(ctx: typer.Context,
                    target: Annotated[str, typer.Argument(help="A profile name/path, or a component with --grid "
                                                           "(fixed component parameters may follow as --name VALUE).")],
                    grid: Annotated[Optional[list[str]], typer.Option("--grid", help="NAME=V1,V2,... (repeatable).")] = None,
                    baseline: Annotated[Optional[str], typer.Option("--baseline", help="Label of the ratio row.")] = None,
                    plot: Annotated[Optional[str], typer.Option("--plot", help="Draw latency and memory to PATH.png.")] = None,
                    csv: CsvPath = None, json: JsonPath = None,
                    gpus: Annotated[Optional[str], typer.Option("--gpus", help="Fan the rows out over N GPUs (or "
                                                                "'all'): one worker process per GPU.")] = None,
                    workers: Annotated[Optional[int], typer.Option("--workers", help="Fan the rows out over N worker "
                                                                   "processes on the one device (cpu: cores split).")] = None,
                    isolate: Annotated[bool, typer.Option("--isolate", help="Every row in a fresh worker process "
                                                          "(a crash or leftover memory stays with its row).")] = False,
                    processes: Annotated[int, typer.Option("--processes", help="Measure every row in N fresh "
                                                           "processes, one pass after another, and pool them: "
                                                           "the 95% CI then covers process-to-process variation.")] = 1,
                    fit: Annotated[Optional[str], typer.Option("--fit", help="Fit cost ∝ PARAM^k per series (log-log); "
                                                               "print k with its 95% CI; --plot draws the fit. "
                                                               "PARAM:LOW-HIGH fits that range only.")] = None,
                    min_flop_coverage: MinCoverage = None, columns: Columns = "brief", md: MdPath = None,
                    html: HtmlPath = None, tp: Tp = None, overrides: dict[str, Any] | None = None):
    """Measure many configurations into one table with ratios against a baseline row."""
    from effprof.distributed import expand_tp, tp_degrees
    from effprof.parallel import plan_slots
    from effprof.passes import check_processes

    csv, json, plot, md, html = _check_outputs(csv=csv, json=json, plot=plot, md=md, html=html)
    _check_columns(columns)
    if min_flop_coverage is not None:
        overrides.setdefault("flop_coverage", True)
    if plot:
        from effprof.report.plot import require_matplotlib

        require_matplotlib()
    profile = _profile(target, grid, overrides, list(ctx.args))
    if fit:
        from effprof.analysis.fit import parse_fit

        name = parse_fit(fit)[0]
        if name != "batch" and not any(p.name == name for c in profile.configs
                                       for p in get_component(c.component).params):
            raise UsageError(f"--fit {fit}: no row's component has a parameter {name!r} (or fit batch)")
    if tp:
        profile.configs = expand_tp(profile.configs, tp)
        profile.baseline *= len(tp_degrees(tp))
    check_processes(processes, bool(tp), overrides.get("device"))
    slots = plan_slots(gpus, workers, isolate, overrides.get("device"))
    if processes > 1 and slots is None:  # each pass in one fresh worker on the device
        slots = plan_slots(None, 1, False, overrides.get("device"))
    records = _measure_profile(profile, baseline, csv, json, slots, isolate, min_flop_coverage, columns, processes)
    fits = _print_fits(records, fit) if fit else None
    if plot:
        _draw(records, profile, fits, plot)
        console.print(f"plot written to {plot}", highlight=False)
    if md or html:
        from effprof.analysis.fit import fit_lines

        _write_reports(records, profile.title, columns, md, html, fit_lines(fits) if fits else [],
                       _images(records, profile, fits, plot) if html else [])
    if any(r.get("status") == "refused" for r in records):
        raise typer.Exit(2)
    if any(r.get("status") == "error" for r in records):
        raise typer.Exit(1)


def _print_fits(records: list[dict[str, Any]], spec: str) -> list[dict[str, Any]]:
    from effprof.analysis.fit import fit_lines, fit_records, parse_fit

    fits = fit_records(records, *parse_fit(spec))
    console.print("\n".join(fit_lines(fits)), highlight=False)
    return fits


def _draw(records, profile, fits, path: str) -> None:
    from effprof.report.plot import plot_fits, plot_records

    if fits:
        plot_fits(records, fits, path, profile.title)
    else:
        plot_records(records, path, profile.varied, profile.title)


def _images(records, profile, fits, plot: str | None) -> list[tuple[str, bytes]]:
    """The plot for an HTML page: the --plot file, else one drawn now (none without matplotlib or with one row)."""
    import tempfile
    from pathlib import Path

    from effprof.errors import MissingExtra

    caption = "log-log fit" if fits else "latency and peak memory"
    if plot:
        return [(caption, Path(plot).read_bytes())]
    if len([r for r in records if r.get("status") == "ok"]) < 2:
        return []
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = str(Path(folder) / "plot.png")
            _draw(records, profile, fits, path)
            return [(caption, Path(path).read_bytes())]
    except MissingExtra:
        return []


def _check_columns(columns: str) -> None:
    from effprof.report.table import chosen_columns

    chosen_columns([], columns)  # refuses an unknown column before anything is measured


def _write_reports(records, title: str, columns: str, md: str | None, html: str | None,
                   notes: list[str] | None = None, images: list[tuple[str, bytes]] | None = None) -> None:
    from effprof.report.export import write_reports

    write_reports(records, title, columns, md, html, notes, images)
    for path in filter(None, (md, html)):
        console.print(f"written to {path}", highlight=False)


def _mark_coverage(records: list[dict[str, Any]], minimum: float | None) -> None:
    if minimum is not None:
        from effprof.measure.coverage import mark_low_coverage

        mark_low_coverage(records, minimum)


def _profile(target: str, grid: list[str] | None, overrides: dict[str, Any], extra: list[str] | None = None):
    """The rows to measure: a component over `grid`, or a profile; component parameters in `extra`
    (`--name VALUE`) are set on every row (of a profile: every row whose component declares them)."""
    from effprof.profiles import Profile, expand_grid, load_profile, parse_grid

    fixed = _component_args(target, extra) if grid and extra else None
    if grid:
        options = replace(RunOptions(), **overrides)
        axes = parse_grid(grid)
        both = sorted(set(axes) & set(fixed or {}))
        if both:
            raise UsageError(f"--{both[0].replace('_', '-')} is both a fixed parameter and a --grid axis; give it once")
        configs = expand_grid(target, dict(fixed or {}), axes, options)
        for config in configs:  # refuse a bad fixed value before anything runs
            config.resolved()
        title = f"{target} over {' × '.join(axes)}"
        if fixed:
            title += " (" + ", ".join(f"{k}={v}" for k, v in fixed.items()) + ")"
        profile = Profile(title, configs, 0, list(axes))
    else:
        profile = load_profile(target, RunOptions(), overrides)
        if extra:
            _set_on_rows(profile, extra)
    return profile


def _set_on_rows(profile, extra: list[str]) -> None:
    """Set component parameters given beside a profile on every row whose component declares them
    (e.g. `compare projectors --tokens 16 --in-dim 32` shrinks every projector)."""
    declared = {p.name: p for c in profile.configs for p in get_component(c.component).params}
    fixed = _component_args(profile.title, extra, declared.values())
    configs = []
    for config in profile.configs:
        names = {p.name for p in get_component(config.component).params}
        configs.append(replace(config, params={**config.params, **{k: v for k, v in fixed.items() if k in names}}))
        configs[-1].resolved()  # refuse a value a row's component does not accept, before anything runs
    profile.configs = configs
    profile.title += " (" + ", ".join(f"{k}={v}" for k, v in fixed.items()) + " on every row)"


def _measure_profile(profile, baseline: str | None, csv: str | None, json: str | None, slots=None,
                     isolate: bool = False, min_flop_coverage: float | None = None,
                     columns: str = "brief", processes: int = 1) -> list[dict[str, Any]]:
    """Measure a profile's rows with a progress bar, rewriting the files after every row (on a worker pool
    when `slots` is given: effprof/parallel.py; `processes` passes pooled: effprof/passes.py)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from effprof.distributed import add_tp_scaling, secondary_rank
    from effprof.parallel import add_ratios_same_device, host_summary, measure_parallel
    from effprof.passes import measure_passes
    from effprof.report.table import print_records
    from effprof.runner import measure_many

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
            task = progress.add_task("comparing", total=len(profile.configs) * processes)

            def step(record):
                keep(record)
                progress.update(task, advance=1, description=f"done: {record['label']}")

            def phase(config, name):  # where the time goes: build, count, warm-up, timing
                progress.update(task, description=f"{config.label or config.component}: {name}")

            if processes > 1:
                records = measure_passes(profile.configs, slots, processes, isolate, on_record=step)
            elif slots:
                records = measure_parallel(profile.configs, slots, on_record=step, isolate=isolate)
            else:
                records = measure_many(profile.configs, on_record=step, on_phase=phase)
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
    for line in warnings + ([host_summary(records)] if slots else []):
        if line:
            err_console.print(f"effprof: {line}", highlight=False, soft_wrap=True)
    return records


def _table_console(*outputs: str | None) -> Console:
    """The table goes to standard error when standard output carries records (`--json -`)."""
    return err_console if "-" in outputs else console


@app.command("calibrate")
@common_options("device")
def calibrate_command(force: Annotated[bool, typer.Option("--force", help="Measure again, replacing the cache.")] = False,
                      overrides: dict[str, Any] | None = None):
    """Measure this device's matmul (bf16, fp16, tf32, fp32) and copy-bandwidth ceilings; cache them."""
    from effprof.measure.calibrate import cache_path, calibrate, datasheet_ceilings
    from effprof.measure.env import resolve_device
    from effprof.report.listing import ceilings_table

    target = resolve_device(overrides.get("device", "auto"))
    if target.type != "cuda":
        raise UsageError("calibrate measures GPU ceilings: no CUDA device here")
    with err_console.status("measuring matmul and copy ceilings ..."):
        measured = calibrate(target, force=force)
    console.print(ceilings_table(measured, datasheet_ceilings(measured.device_name)))
    console.print(f"cache: {cache_path(target)}", highlight=False)


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
    from effprof.measure.env import resolve_device

    target_device = resolve_device(overrides.get("device", "auto"))
    if target_device.type != "cuda":
        raise UsageError("roofline needs a CUDA device to measure on (or --from-json with saved GPU records)")
    profile = _profile(target, grid, overrides)
    records = _measure_profile(profile, None, csv, json)
    plot_roofline(records, ceilings(target_device), plot, profile.title)
    console.print(f"roofline written to {plot}", highlight=False)


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
    from effprof.inspection import breakdown_config
    from effprof.report.tree import kernels_table, print_breakdown
    from effprof.runner import Config

    for option, value in (("--depth", depth), ("--kernels", kernels)):
        if value < 0:  # typer's min=0 does not survive @common_options' signature rewrite
            raise UsageError(f"{option}: {value} must be at least 0")
    params = _component_args(component, list(ctx.args))
    config = Config(component, params, RunOptions(**overrides).validate())
    if config.options.train:
        from effprof.report.tree import phases_table
        from effprof.inspection import train_breakdown_config

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
        from effprof.inspection import coverage_config

        console.print(uncovered_table(coverage_config(config)))


@app.command("env")
@common_options("device")
def env_command(overrides: dict[str, Any] | None = None):
    """Device, driver, CUDA and torch versions; which optional kernels and counters are importable."""
    from effprof.report.listing import facts_table
    from effprof.inspection import environment_facts

    console.print(facts_table(environment_facts(overrides.get("device", "auto"))))


# typer >= 0.20 vendors click as typer._click; older typer uses click itself. Take the exception classes
# from wherever typer's own BadParameter lives so that both work.
_click_errors = sys.modules[typer.BadParameter.__module__]
_UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
_NoArgsIsHelp = getattr(_click_errors, "NoArgsIsHelpError", ())


class Interrupted(EffprofError):
    exit_code = 130


def main(argv: list[str] | None = None) -> int:
    """Console entry point: every error becomes one line on stderr and an exit code (README: Errors)."""
    from effprof.terminal import guarded

    with guarded():
        return _main(argv)


HELP_FLAGS = ("-h", "--help")


def _component_help(argv: list[str]) -> str | None:
    """The component of `effprof run|breakdown COMPONENT ... --help`, else None."""
    if len(argv) < 2 or argv[0] not in ("run", "breakdown") or not any(a in HELP_FLAGS for a in argv[1:]):
        return None
    return next((a for a in argv[1:] if not a.startswith("-")), None)


def _main(argv: list[str] | None) -> int:
    import os
    import shlex

    from effprof.terminal import EXIT_INTERRUPTED, silence_stdout, stdout_failure

    global COMMAND_LINE
    argv = list(sys.argv[1:] if argv is None else argv)
    COMMAND_LINE = shlex.join(["effprof", *argv])
    command = typer.main.get_command(app)
    component = _component_help(argv)
    try:
        try:
            if component is not None:  # the command's options with their defaults, then the component's parameters
                from effprof.report.listing import params_table

                table = params_table(get_component(component))
                command.main(args=[argv[0], "--help"], prog_name="effprof", standalone_mode=False)
                console.print(table)
                return 0
            result = command.main(args=argv, prog_name="effprof", standalone_mode=False)
            sys.stdout.flush()
            return result if isinstance(result, int) else 0
        except typer.Abort as exc:  # click turns KeyboardInterrupt and any EOFError into Abort
            cause = exc.__context__
            if isinstance(cause, KeyboardInterrupt):
                raise cause from None
            if cause is not None and not isinstance(cause, EOFError):
                raise cause from None
            raise RuntimeError(f"unexpected end of input ({cause or 'abort'})") from None
    except typer.Exit as exc:
        return exc.exit_code
    except _NoArgsIsHelp as exc:
        console.print(exc.ctx.get_help() if exc.ctx else str(exc), highlight=False, markup=False)
        return 0
    except _UsageError as exc:
        message = " ".join(exc.format_message().split())
        err_console.print(f"effprof: error: {message}", highlight=False, markup=False, soft_wrap=True)
        return 2
    except EffprofError as exc:
        err_console.print(f"effprof: error: {exc}", highlight=False, markup=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        code = getattr(exc, "exit_code", EXIT_INTERRUPTED)
        err_console.print("effprof: interrupted" if code == EXIT_INTERRUPTED else "effprof: terminated",
                          highlight=False, markup=False)
        return code
    except Exception as exc:  # noqa: BLE001 - the last guard: one line, never a traceback
        code = stdout_failure(exc)
        if code is not None:
            silence_stdout()
            if not isinstance(exc, BrokenPipeError):
                err_console.print(f"effprof: error: cannot write to standard output ({exc.strerror or exc})",
                                  highlight=False, markup=False)
            return code
        if os.environ.get("EFFPROF_DEBUG"):
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        err_console.print(f"effprof: internal error: {type(exc).__name__}: {first} (a bug in effprof or a "
                          "plugin; EFFPROF_DEBUG=1 shows the traceback)", highlight=False, markup=False, soft_wrap=True)
        return EXIT_INTERNAL


EXIT_INTERNAL = 3


def entry() -> None:
    code = main()
    try:
        sys.stdout.flush()
    except (OSError, ValueError, AttributeError):
        from effprof.terminal import silence_stdout

        silence_stdout()
        code = code or 1
    sys.exit(code)


# Commands in their own modules (effprof/commands/): importing a module registers its commands on `app`.
COMMAND_MODULES: tuple[str, ...] = ("estimate", "eval", "quality", "diff")
for _name in COMMAND_MODULES:
    __import__(f"effprof.commands.{_name}")


if __name__ == "__main__":
    entry()
