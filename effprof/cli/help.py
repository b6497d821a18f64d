"""A command's `-h`: usage, description, then every argument and option with its help, in panels.

typer's own rich help puts an option's flag, its short form, its `--no-` form, its short `--no-` form, its
type and its help in six columns that rich squeezes to the terminal's width in proportion, cutting long
flags (`--grad-checkpointi…`) well before the help text runs out of room. Here a flag is never cut: the
names column is as wide as its longest flag (a `--no-` form goes on the line below), and only the help
column wraps. Only public parameter attributes are read (opts, secondary_opts, help, default; the type as
typer or click show it).
"""
from __future__ import annotations

import inspect
from typing import Any

import typer
from rich.console import Console
from rich.padding import Padding
from rich.panel import Panel
from rich.table import Table
from rich.text import Text


def _type_text(param: Any, ctx: Any) -> str:
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    shown = getattr(param, "display_type", None)  # typer >= 0.20 (its own parameter model)
    if callable(shown):
        return shown(ctx) or ""
    name = getattr(getattr(param, "type", None), "name", "") or ""  # click's types
    text = "<" + {"text": "str", "integer": "int", "integer range": "int range", "boolean": "bool"}.get(name, name) + ">"
    return text + ("..." if getattr(param, "multiple", False) else "")


def _bounds(param: Any) -> tuple[Any, Any]:
    source = param if hasattr(param, "min") else getattr(param, "type", None)
    return getattr(source, "min", None), getattr(source, "max", None)


def _range_text(param: Any) -> str:
    low, high = _bounds(param)
    if low is None and high is None:
        return ""
    if low is not None and high is not None:
        return f"range {low} to {high}"
    return f"at least {low}" if low is not None else f"at most {high}"


def _default_text(param: Any) -> str:
    if getattr(param, "show_default", None) is False or param.required:
        return ""
    default = param.default
    if default is None or default == () or default == [] or callable(default):
        return ""
    if getattr(param, "is_flag", False):
        if getattr(param, "secondary_opts", None):  # --x/--no-x: name the side that applies
            names = param.opts if default else param.secondary_opts
            return f"default: {names[0]}"
        return "" if default is False else "default: on"
    return f"default: {default}"


def help_text(param: Any) -> str:
    """The help line of one parameter: its own help, its range and its default (never empty for a
    parameter that declares help)."""
    text = " ".join((getattr(param, "help", None) or "").split())
    extra = [part for part in (_range_text(param), _default_text(param)) if part]
    if param.required:
        extra.append("required")
    if extra and "(default:" not in text:
        text += f" [{'; '.join(extra)}]"
    elif extra and extra != [_default_text(param)]:  # the help names its default itself: keep the rest
        rest = [e for e in extra if not e.startswith("default:")]
        text += f" [{'; '.join(rest)}]" if rest else ""
    return text.strip()


def _names(param: Any) -> Text:
    if param.param_type_name == "argument":
        return Text(param.metavar or param.name.upper(), style="bold cyan")
    names = Text(", ".join(sorted(param.opts, key=lambda o: (not o.startswith("--"), o))), style="bold cyan")
    if param.secondary_opts:
        names.append("\n" + ", ".join(param.secondary_opts), style="bold magenta")
    return names


def _panel(title: str, params: list[Any], ctx: Any) -> Panel:
    table = Table.grid(padding=(0, 2), expand=True)
    table.add_column(no_wrap=True)
    table.add_column(no_wrap=True, style="yellow")
    table.add_column(ratio=1, overflow="fold")
    for param in params:
        table.add_row(_names(param), Text(_type_text(param, ctx)), Text(help_text(param)))
    return Panel(table, title=title, title_align="left", border_style="dim")


def print_command_help(command: Any, ctx: Any) -> None:
    """Print `command`'s help to standard output (rich, at the terminal's width or $COLUMNS)."""
    console = Console(highlight=False)
    console.print(Padding(Text(command.get_usage(ctx), style="bold"), (1, 1, 1, 1)))
    if command.help:
        paragraphs = [" ".join(p.split()) for p in inspect.cleandoc(command.help).split("\n\n")]
        console.print(Padding(Text("\n\n".join(paragraphs)), (0, 1, 1, 1)))
    params = [p for p in command.get_params(ctx) if not getattr(p, "hidden", False)]
    arguments = [p for p in params if p.param_type_name == "argument"]
    options = [p for p in params if p.param_type_name != "argument"]
    if arguments:
        console.print(_panel("Arguments", arguments, ctx))
    if options:
        console.print(_panel("Options", options, ctx))


class HelpCommand(typer.core.TyperCommand):
    """A typer command whose `-h` is `print_command_help`'s."""

    def format_help(self, ctx, formatter) -> None:  # noqa: ARG002 - printed, as typer's rich help is
        print_command_help(self, ctx)
