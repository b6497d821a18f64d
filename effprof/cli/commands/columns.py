"""`effprof columns [PATTERN]`: the dictionary of the record's columns (name, unit, meaning, who fills it,
when the table shows it), for reading the CSV/JSON in pandas. Torch-free: answers as fast as --help."""
from __future__ import annotations

from typing import Annotated

import typer

from effprof.cli.app import app, console
from effprof.core.errors import UsageError


@app.command("columns")
def columns_command(pattern: Annotated[str, typer.Argument(help="Shell-style pattern or a word, matched against "
                                                           "the column names and their fillers (e.g. 'stage_*', "
                                                           "latency, 'tracker nvml').")] = "*",
                    markdown: Annotated[bool, typer.Option("--markdown", help="Print a Markdown table (for a "
                                                           "README or a notebook) instead of the terminal "
                                                           "table.")] = False):
    """The record's columns: name, unit, meaning, which tracker (or the runner, a launcher, the component) fills
    it, and when the table shows it. The CSV and JSON hold every column of every row."""
    from effprof.core.columns import matching
    from effprof.report.listing import columns_markdown, columns_table

    found = matching(pattern)
    if not found:
        raise UsageError(f"no column matches {pattern!r} (effprof columns lists them all)")
    if markdown:
        typer.echo(columns_markdown(found), nl=False)
    else:
        console.print(columns_table(found))
