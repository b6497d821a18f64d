"""Records as a Markdown table (`--md`) or one self-contained HTML page (`--html`: the table, the notes and
the plots, images inlined as base64). The same columns as the terminal (`--columns`); the CSV/JSON files
always hold every field."""
from __future__ import annotations

import base64
import html
from typing import Any

from effprof.report.table import footer, table_cells


def _title(title: str, common: list[str]) -> str:
    return f"{title} ({', '.join(common)})" if common and title else (title or ", ".join(common))


def to_markdown(records: list[dict[str, Any]], title: str = "", columns: str = "brief",
                notes: list[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table with the title above and the notes (units, conventions) below."""
    common, headers, rows, left = table_cells(records, columns, newline="<br>")

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("/\n", "/").replace("\n", " ")

    lines = [f"**{cell(_title(title, common))}**", ""] if title or common else []
    lines.append("| " + " | ".join(cell(h) for h in headers) + " |")
    lines.append("| " + " | ".join("---" if is_left else "---:" for is_left in left) + " |")
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    text = "\n".join([footer(records, columns)] + list(notes or [])).strip()
    if text:
        lines += [""] + [f"{line}  " for line in text.splitlines()]
    return "\n".join(lines) + "\n"


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;font-size:14px}th,td{padding:4px 10px;border-bottom:1px solid #ddd}
th{text-align:right;vertical-align:bottom;border-bottom:2px solid #888}td{text-align:right;vertical-align:top}
th.l,td.l{text-align:left}p.notes{color:#555;font-size:13px;white-space:pre-wrap}img{max-width:100%;margin-top:1em}"""


def to_html(records: list[dict[str, Any]], title: str = "", columns: str = "brief", notes: list[str] | None = None,
            images: list[tuple[str, bytes]] | None = None) -> str:
    """One page: the table, the notes and each (caption, PNG bytes) image inlined as a data URI."""
    common, headers, rows, left = table_cells(records, columns, newline="\n")

    def esc(text: str) -> str:
        return html.escape(text).replace("\n", "<br>")

    def cls(is_left: bool) -> str:
        return ' class="l"' if is_left else ""

    head = "".join(f"<th{cls(lf)}>{esc(h)}</th>" for h, lf in zip(headers, left))
    body = "".join("<tr>" + "".join(f"<td{cls(lf)}>{esc(c)}</td>" for c, lf in zip(row, left)) + "</tr>\n"
                   for row in rows)
    text = "\n".join([footer(records, columns)] + list(notes or [])).strip()
    figures = "".join(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,'
                      f'{base64.b64encode(data).decode()}"><figcaption>{html.escape(caption)}</figcaption></figure>\n'
                      for caption, data in images or [])
    name = html.escape(_title(title, common) or "effprof")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{name}</title><style>{STYLE}</style>"
            f"</head><body>\n<h2>{name}</h2>\n<table><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>\n"
            f"<p class=\"notes\">{html.escape(text)}</p>\n{figures}</body></html>\n")


def write_reports(records: list[dict[str, Any]], title: str, columns: str = "brief", md_path: str | None = None,
                  html_path: str | None = None, notes: list[str] | None = None,
                  images: list[tuple[str, bytes]] | None = None) -> None:
    """Write the Markdown and/or HTML files (atomically)."""
    from effprof.core.fileio import write_atomic

    if md_path:
        write_atomic(md_path, to_markdown(records, title, columns, notes))
    if html_path:
        write_atomic(html_path, to_html(records, title, columns, notes, images))
