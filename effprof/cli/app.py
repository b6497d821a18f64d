"""The command line's shared pieces: the typer app every command registers on, the consoles, the common
option types, and the helpers that turn arguments into rows and rows into files (commands in
`effprof.cli.commands`, the entry point in `effprof.cli.main`). No measurement logic lives here."""
from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from effprof.core.errors import EffprofError, UsageError
from effprof.core.options import RunOptions
from effprof.core.registry import get_component
from effprof.report.table import make_console



class EffprofTyper(typer.Typer):
    """typer's app whose commands print `effprof.cli.help`'s help (every option's help, flags never cut)."""

    def command(self, *args, cls=None, **kwargs):
        from effprof.cli.help import HelpCommand

        return super().command(*args, cls=cls or HelpCommand, **kwargs)


app = EffprofTyper(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Profile the efficiency of vision-language and state-space model components.")
console = make_console()
err_console = Console(stderr=True, emoji=False)  # ":boom" in a factory name stays text

# Common measurement options: declared once in effprof/cli/options.py (`@common_options`).
CsvPath = Annotated[Optional[str], typer.Option("--csv", help="Write the records to this CSV file (atomically).")]
JsonPath = Annotated[Optional[str], typer.Option("--json", help="Write the records to this JSON file (atomically).")]
Columns = Annotated[str, typer.Option("--columns", help="Table columns: brief (fits 120 columns), full, or a "
                                      "comma-separated list of keys (an unknown key lists them). Files hold all.")]
MdPath = Annotated[Optional[str], typer.Option("--md", help="Also write the table as Markdown to PATH.")]
HtmlPath = Annotated[Optional[str], typer.Option("--html", help="Also write one self-contained HTML page (table, notes, "
                                                 "plots inlined) to PATH.")]
def check_min_coverage(value: float | None) -> float | None:
    """--min-flop-coverage: a fraction in [0, 1]; nan, inf and values outside are refused before measuring."""
    if value is not None:
        from effprof.core.limits import Bound

        Bound("--min-flop-coverage", 0, 1).check(value)
    return value


# no typer min/max: check_min_coverage refuses nan and inf too, in words that say why
MinCoverage = Annotated[Optional[float], typer.Option("--min-flop-coverage",
                                                      help="Mark rows whose FLOP coverage (share of time in ops "
                                                           "with a FLOP formula) is below this fraction (0 to 1).")]
Tp = Annotated[Optional[str], typer.Option("--tp", help="Tensor-parallel degree(s) of LM rows: N or 1,2,... (one process "
                                           "per rank, NCCL on GPUs, gloo on cpu; scaling against tp 1).")]


def _print_version(value: bool) -> None:
    if value:
        from effprof.core.version import __version__

        console.print(f"effprof {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[Optional[bool], typer.Option("--version", callback=_print_version, is_eager=True,
                                                          help="Print effprof's version and exit.")] = None):
    """Profile the efficiency of vision-language and state-space model components."""


# The command line of this invocation, which records and the JSON metadata carry (set by `effprof.cli.main`).
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
    from effprof.cli.outputs import check_outputs

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
    from effprof.core.profiles import Profile, expand_grid, load_profile, parse_grid

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
    profile.fill()  # a title or label written with {name} follows the new values
    rest = {k: v for k, v in fixed.items() if k not in profile.placeholders()}
    if rest:
        profile.title += " (" + ", ".join(f"{k}={v}" for k, v in rest.items()) + " on every row)"


def _table_console(*outputs: str | None) -> Console:
    """The table goes to standard error when standard output carries records (`--json -`)."""
    return err_console if "-" in outputs else console


class Interrupted(EffprofError):
    exit_code = 130
