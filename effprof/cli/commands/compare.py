"""`effprof compare PROFILE`: many configurations, one table, ratios against a baseline row."""
from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from effprof.cli.app import (check_min_coverage, Columns, CsvPath, HtmlPath, JsonPath, MdPath, MinCoverage, Tp, _check_columns,
                             _check_outputs, _profile, _write_reports, app, console)
from effprof.cli.options import common_options
from effprof.cli.rows import measure_profile
from effprof.core.errors import UsageError
from effprof.core.registry import get_component


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
                    isolate: Annotated[Optional[bool], typer.Option("--isolate/--no-isolate", help="Every row in a "
                                                                    "fresh worker process (a crash or leftover "
                                                                    "memory stays with its row). Default: the "
                                                                    "profile's `launch: {isolate: ...}` on CUDA, "
                                                                    "else off.")] = None,
                    processes: Annotated[int, typer.Option("--processes", help="Measure every row in N fresh "
                                                           "processes, one pass after another, and pool them: "
                                                           "the 95% CI then covers process-to-process variation.")] = 1,
                    launcher: Annotated[Optional[str], typer.Option("--launcher", help="Where the rows run: inline "
                                                                    "(this process), pool, passes, or ray (a Ray "
                                                                    "cluster's GPUs, one task per row; the ray "
                                                                    "extra). Default: chosen from the options "
                                                                    "above.")] = None,
                    address: Annotated[Optional[str], typer.Option("--address", help="With --launcher ray: the "
                                                                   "cluster to join (ray://HOST:PORT or auto); "
                                                                   "default a local Ray instance.")] = None,
                    fit: Annotated[Optional[str], typer.Option("--fit", help="Fit cost ∝ PARAM^k per series (log-log); "
                                                               "print k with its 95% CI; --plot draws the fit. "
                                                               "PARAM:LOW-HIGH fits that range only.")] = None,
                    min_flop_coverage: MinCoverage = None, columns: Columns = "brief", md: MdPath = None,
                    html: HtmlPath = None, tp: Tp = None, overrides: dict[str, Any] | None = None):
    """Measure many configurations into one table with ratios against a baseline row."""
    csv, json, plot, md, html = _check_outputs(csv=csv, json=json, plot=plot, md=md, html=html)
    _check_columns(columns)
    check_min_coverage(min_flop_coverage)
    if min_flop_coverage is not None:
        overrides.setdefault("flop_coverage", True)
    if plot:
        from effprof.report.plot import require_matplotlib

        require_matplotlib()
    profile = _profile(target, grid, overrides, list(ctx.args))
    if fit is not None:  # an empty --fit is refused, never read as "no fit"
        from effprof.analysis.fit import parse_fit

        name = parse_fit(fit)[0]
        if name != "batch" and not any(p.name == name for c in profile.configs
                                       for p in get_component(c.component).params):
            raise UsageError(f"--fit {fit}: no row's component has a parameter {name!r} (or fit batch)")
    # names and ranges are checked above, before effprof.launch imports torch
    from effprof.launch import plan_for
    from effprof.launch.torchrun import expand_tp, tp_degrees

    if tp:
        profile.configs = expand_tp(profile.configs, tp)
        profile.baseline *= len(tp_degrees(tp))
    if isolate is None:
        isolate = profile_isolates(profile, launcher)
    plan = plan_for(launcher, gpus, workers, isolate, processes, address, overrides.get("device"), bool(tp))
    records = measure_profile(profile, baseline, csv, json, plan, min_flop_coverage, columns)
    fits = _print_fits(records, fit) if fit is not None else None
    if plot:
        _draw(records, profile, fits, plot)
        console.print(f"plot written to {plot}", highlight=False)
        pareto = _pareto_path(plot)
        from effprof.report.plot import plot_pareto

        if plot_pareto(records, pareto, profile.title):
            console.print(f"Pareto plot (a quality column against cost) written to {pareto}", highlight=False)
    if md or html:
        from effprof.analysis.fit import fit_lines

        _write_reports(records, profile.title, columns, md, html, fit_lines(fits) if fits else [],
                       _images(records, profile, fits, plot) if html else [])
    if any(r.get("status") == "refused" for r in records):
        raise typer.Exit(2)
    if any(r.get("status") == "error" for r in records):
        raise typer.Exit(1)


def profile_isolates(profile, launcher: str | None) -> bool:
    """The profile's `launch: {isolate: true}` default: on when its rows run on CUDA under a launcher that
    places rows in processes of this host (not ray, whose tasks are processes already)."""
    if not getattr(profile, "launch", {}).get("isolate") or launcher not in (None, "inline", "pool"):
        return False
    return all(c.options.torch_device().type == "cuda" and c.options.tp == 1 for c in profile.configs)


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

    from effprof.core.errors import MissingExtra

    caption = "log-log fit" if fits else "latency and peak memory"
    pareto_caption = "trade-offs: a quality column against cost, the Pareto front joined"
    if plot:
        images = [(caption, Path(plot).read_bytes())]
        if Path(_pareto_path(plot)).is_file():
            images.append((pareto_caption, Path(_pareto_path(plot)).read_bytes()))
        return images
    if len([r for r in records if r.get("status") == "ok"]) < 2:
        return []
    try:
        from effprof.report.plot import plot_pareto

        with tempfile.TemporaryDirectory() as folder:
            path = str(Path(folder) / "plot.png")
            _draw(records, profile, fits, path)
            images = [(caption, Path(path).read_bytes())]
            if plot_pareto(records, _pareto_path(path), profile.title):
                images.append((pareto_caption, Path(_pareto_path(path)).read_bytes()))
            return images
    except MissingExtra:
        return []


def _pareto_path(plot: str) -> str:
    """Where the Pareto plot goes beside a --plot file: NAME.png -> NAME-pareto.png."""
    from pathlib import Path

    path = Path(plot)
    return str(path.with_name(f"{path.stem}-pareto{path.suffix or '.png'}"))
