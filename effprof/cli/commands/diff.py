"""`effprof diff BASE.json NEW.json`: run-to-run comparison with bootstrap intervals (a CI regression gate).

Exit codes: 0 = compared (and, with --fail-on-regression, nothing regressed); 1 = --fail-on-regression and a
row is significantly slower by more than the threshold, or a row measured in BASE fails in NEW;
2 = bad input (unreadable file, no rows in common, bad threshold).
"""
from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from effprof.cli.app import app, console, err_console
from effprof.core.errors import UsageError


def parse_threshold(text: str) -> float:
    """`3%` or `0.03` -> 0.03."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise UsageError(f"--threshold: {text!r} is not a fraction (0.03) or a percentage (3%)") from None
    if not 0 <= value < 1:
        raise UsageError(f"--threshold: {text!r} must be at least 0 and below 100%")
    return value


def _read(path: str) -> list[dict]:
    """The records of a --json file, validated (effprof.report.files.load_records): one line per problem."""
    from effprof.report.files import load_records

    return load_records(path, option="", needs="diff needs the JSON records written with --json (a CSV has no "
                        "timing samples)")


def diff_table(result: dict, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for name in ("row", "params", "base ms\n(median)", "new ms\n(median)", "new/base\n[95% CI]", "change\n%",
                 "verdict"):
        table.add_column(name, justify="left" if name in ("row", "params", "verdict") else "right")
    for r in result["rows"]:
        ci = "" if r["ratio_ci95_low"] is None else f" [{r['ratio_ci95_low']:.3f}, {r['ratio_ci95_high']:.3f}]"
        style = {"slower": "red", "faster": "green", "inconclusive (the runs are too noisy)": "yellow"}.get(r["verdict"], "")
        params = (r.get("params") or "-").replace(",", ",\n")
        table.add_row(escape(str(r["label"])), escape(params), f"{r['base_ms']:.4g}", f"{r['new_ms']:.4g}",
                      f"{r['ratio']:.3f}{ci}", f"{r['change_pct']:+.1f}",
                      f"[{style}]{r['verdict']}[/]" if style else r["verdict"])
    return table


@app.command("diff")
def diff_command(base: Annotated[str, typer.Argument(help="Records saved earlier with --json (the baseline).")],
                 new: Annotated[str, typer.Argument(help="Records of the new run (--json).")],
                 threshold: Annotated[str, typer.Option("--threshold", help="Smallest change that counts: "
                                                        "3% or 0.03.")] = "3%",
                 fail_on_regression: Annotated[bool, typer.Option(
                     "--fail-on-regression", help="Exit 1 when a row is significantly slower by more than the "
                     "threshold (or fails now).")] = False,
                 seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap resampling.")] = 0,
                 json: Annotated[Optional[str], typer.Option("--json", help="Write the comparison to this JSON "
                                                             "file.")] = None):
    """Compare two runs row by row: ratio of medians with a bootstrap 95% CI and a verdict."""
    from effprof.analysis.diff import INCONCLUSIVE, NOISY_FACTOR, diff_records, regressions

    from effprof.core.limits import OPTION_BOUNDS

    limit = parse_threshold(threshold)
    OPTION_BOUNDS["seed"].check(seed)
    if json is not None:  # an empty path is refused, never read as "no file"
        from effprof.cli.app import _check_outputs

        (json,) = _check_outputs(json=json)
    result = diff_records(_read(base), _read(new), threshold=limit, seed=seed)
    if not result["rows"] and not result["now_failing"]:
        raise UsageError(f"no row of {new} matches a row of {base} (rows match by component, parameters, batch, "
                         "dtype and modes)")
    shown = err_console if json == "-" else console  # `--json -`: standard output holds the JSON alone
    shown.print(diff_table(result, f"effprof diff {base} → {new}"))
    notes = [f"ratio = new/base of the median latency (> 1 slower); 95% CI: percentile bootstrap of the raw "
             f"samples in moving blocks of a fifth of each run (2000 resamples, seed {seed}); verdict at ±{100 * limit:g}%: slower/faster only when the "
             "whole interval lies beyond it"]
    notes += result["warnings"]
    if result["only_base"]:
        notes.append(f"only in {base}: {', '.join(result['only_base'])}")
    if result["only_new"]:
        notes.append(f"only in {new}: {', '.join(result['only_new'])}")
    noisy = [str(r["label"]) for r in result["rows"] if r["verdict"] == INCONCLUSIVE]
    if noisy:
        notes.append(f"inconclusive (interval wider than a factor {NOISY_FACTOR:g}): measure again with a longer "
                     f"--min-time or on a quieter machine: {', '.join(noisy)}")
    if result["now_failing"]:
        notes.append(f"measured in {base} but failing in {new}: {', '.join(result['now_failing'])}")
    shown.print(escape("\n".join(notes)), style="dim", highlight=False)
    if json is not None:
        import json as _json

        from effprof.core.fileio import write_atomic

        text = _json.dumps(result, indent=1) + "\n"
        if json == "-":
            import sys

            sys.stdout.write(text)
        else:
            write_atomic(json, text)
    bad = regressions(result)
    if fail_on_regression and bad:
        shown.print(f"regression: {', '.join(bad)}", style="bold red", highlight=False)
        raise typer.Exit(1)
