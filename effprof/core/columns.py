"""The typed record: one declaration of every column a record may hold (name, unit, meaning, who fills it),
and of the table's columns (`View`: header, how a cell is written, when the brief table shows it).

A record stays a flat dict of str/int/float/bool/None (and lists for the JSON only); what describes its keys
lives here, once, and everything that shows records is derived from it:

- the CSV/JSON writers (`effprof.report.files`): the leading columns and their order, what the CSV leaves
  out (`json_only`), the units written into every JSON file's metadata;
- the terminal, Markdown and HTML tables (`effprof.report.table`): the brief and full column sets, the
  headers, the formats and the "shown when" rule (`View.shown`);
- `effprof columns [PATTERN]`: the dictionary of the columns, for users reading the CSV in pandas.

The declarations themselves are in `effprof.core.column_table` (one section per filler: the runner, each
tracker, the launchers, the components' facts, the studies). Torch-free: core is the lowest floor, so the
trackers (who fill) and the report (who shows) may both import it.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from functools import lru_cache

from effprof.core.column_table import LEADING, TABLE, VIEWS, View

__all__ = ["UNITS", "Column", "View", "all_columns", "declare", "leading", "lookup", "matching", "undeclared",
           "view_of", "views"]

UNITS = {  # the vocabulary of `Column.unit`
    "ms": "milliseconds", "s": "seconds", "MiB": "2^20 bytes", "MB": "1e6 bytes", "GB/s": "1e9 bytes per second",
    "GFLOP": "1e9 floating-point operations (2 x multiply-accumulate)", "TFLOP/s": "1e12 FLOP per second",
    "GMAC": "1e9 multiply-accumulates", "fraction": "a fraction (0.02 = 2%)", "%": "percent (2 = 2%)",
    "x": "a ratio (row / baseline unless said)", "count": "a whole number", "tokens": "a number of tokens",
    "items/s": "items (the unit column: img, tok, seq) per second", "tok/s": "tokens per second",
    "J": "joules", "J/item": "joules per item", "J/tok": "joules per token", "W": "watts", "MHz": "megahertz", "degC": "degrees Celsius",
    "px": "pixels", "M": "millions", "bool": "True or False", "text": "free text", "id": "a name or identifier",
    "list": "a list (in the JSON only; the CSV leaves it out)", "param": "the parameter's own type",
    "UTC": "ISO 8601 time, UTC",
}


@dataclass(frozen=True)
class Column:
    """One record key. `name` may hold a placeholder in angle brackets (`stage_<stage>_ms`), which matches
    any run of letters, digits and underscores; `filled_by` names the tracker (`tracker NAME`), the runner,
    a launcher, the comparison, a component's facts or a study."""

    name: str
    unit: str
    filled_by: str
    meaning: str

    @property
    def is_pattern(self) -> bool:
        return "<" in self.name

    @property
    def json_only(self) -> bool:
        """Lists (the raw samples) live in the JSON; the CSV leaves them out."""
        return self.unit == "list"

    def matches(self, key: str) -> bool:
        return _regex(self.name).fullmatch(key) is not None


@lru_cache(maxsize=None)
def _regex(name: str) -> re.Pattern:
    return re.compile(re.sub(r"<[a-z_]+>", "[A-Za-z0-9_]+?", re.escape(name).replace(r"\<", "<").replace(r"\>", ">")))


def _parse(text: str) -> tuple[Column, ...]:
    rows: list[Column] = []
    for raw in text.strip().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if raw[:1].isspace() and rows:  # an indented line continues the meaning above
            last = rows.pop()
            rows.append(Column(last.name, last.unit, last.filled_by, f"{last.meaning} {line}"))
            continue
        name, unit, filled_by, meaning = (part.strip() for part in line.split("|", 3))
        if unit not in UNITS:
            raise ValueError(f"column {name}: unit {unit!r} is not one of {', '.join(UNITS)}")
        rows.append(Column(name, unit, filled_by, meaning))
    return tuple(rows)


@lru_cache(maxsize=1)
def all_columns() -> tuple[Column, ...]:
    """Every declared column, in the order of the declaration (the CSV's leading columns first)."""
    columns = _parse(TABLE)
    seen = set()
    for c in columns:
        if c.name in seen:
            raise ValueError(f"column {c.name} is declared twice")
        seen.add(c.name)
    return columns + tuple(_EXTRA)


_EXTRA: list[Column] = []


def declare(name: str, unit: str, filled_by: str, meaning: str) -> Column:
    """Declare a column from outside the table (a plugin's tracker or component); a known name is refused."""
    if unit not in UNITS:
        raise ValueError(f"column {name}: unit {unit!r} is not one of {', '.join(UNITS)}")
    if lookup(name) is not None and lookup(name).name == name:
        raise ValueError(f"column {name} is already declared")
    column = Column(name, unit, filled_by, meaning)
    _EXTRA.append(column)
    all_columns.cache_clear()
    lookup.cache_clear()
    return column


@lru_cache(maxsize=4096)
def lookup(key: str) -> Column | None:
    """The declaration of record key `key`: an exact name first, then a pattern; None when undeclared."""
    columns = all_columns()
    for c in columns:
        if c.name == key:
            return c
    for c in columns:
        if c.is_pattern and c.matches(key):
            return c
    return None


def undeclared(keys) -> list[str]:
    """The keys of `keys` that no column declares (a test keeps this empty for real records)."""
    return [k for k in keys if lookup(k) is None]


def leading() -> list[str]:
    """The CSV's first columns, in this order (the rest follow in first-seen order)."""
    return list(LEADING)


def matching(pattern: str = "*") -> list[Column]:
    """Columns whose name (or filler) matches a shell-style pattern or contains it, and the column that
    declares the key `pattern` itself (a name read off a CSV header)."""
    pattern = pattern.strip() or "*"
    glob = pattern if any(ch in pattern for ch in "*?[") else f"*{pattern}*"
    found = [c for c in all_columns() if fnmatch.fnmatchcase(c.name, glob) or fnmatch.fnmatchcase(c.filled_by, glob)]
    exact = lookup(pattern)  # a key read off a CSV header: stage_vision_ms -> stage_<stage>_ms
    return ([exact] if exact is not None and exact not in found else []) + found


def views() -> tuple[View, ...]:
    return VIEWS


def view_of(key: str) -> View | None:
    """The table column that shows record key `key` (the brief table's, when several do), or None."""
    rank = {"brief": 0, "present": 1, "full": 2}
    found = [v for v in views() if key in v.sources]
    return min(found, key=lambda v: rank[v.shown]) if found else None
