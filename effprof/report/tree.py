"""Rich rendering of a per-module breakdown (plain nodes from `effprof.measure.breakdown`).

Nodes are dicts in pre-order with `name` ("" = root), `path`, `type`, `depth`, `params`, `gflops`,
`time_ms`, `share_of_total`, `self_ms`, `additivity_ok`, `method`.
"""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree


def _parent(name: str) -> str | None:
    if not name:
        return None
    return name.rsplit(".", 1)[0] if "." in name else ""


def _gflop(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


def _share(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def node_text(node: dict[str, Any]) -> str:
    """One line: `name (Type)  time ms  share  params  GFLOP`, flagged when children exceed the parent."""
    name = node["name"].rsplit(".", 1)[-1] if node["name"] else node["path"]
    flag = "  [red]children exceed parent[/red]" if node.get("additivity_ok") is False else ""
    return (f"[bold]{name}[/bold] ({node['type']})  {node['time_ms']:.4g} ms  {_share(node.get('share_of_total'))}"
            f"  self {node['self_ms']:.3g} ms  {node['params']:,} params  {_gflop(node.get('gflops'))} GFLOP{flag}")


def breakdown_tree(nodes: list[dict[str, Any]], title: str = "") -> Tree:
    """A rich Tree following the module hierarchy; a node whose parent is not shown hangs from the
    nearest shown ancestor."""
    if not nodes:
        return Tree(title or "no modules ran")
    method = nodes[0].get("method", "")
    tree = Tree(f"{title} [dim](time: {method})[/dim]" if title else f"[dim]time: {method}[/dim]")
    branches: dict[str, Tree] = {}
    for node in nodes:
        ancestor = _parent(node["name"])
        while ancestor is not None and ancestor not in branches:
            ancestor = _parent(ancestor)
        parent = branches[ancestor] if ancestor is not None else tree
        branches[node["name"]] = parent.add(node_text(node))
    return tree


def breakdown_table(nodes: list[dict[str, Any]], title: str = "") -> Table:
    """The same nodes as a flat table, paths indented by depth."""
    table = Table(title=title or None, title_justify="left")
    for header, justify in (("module", "left"), ("type", "left"), ("params", "right"), ("GFLOP\n(2×MAC)", "right"),
                            ("time ms", "right"), ("share %", "right"), ("self ms", "right")):
        table.add_column(header, justify=justify)
    for node in nodes:
        label = node["name"] or node["path"]
        table.add_row("  " * node["depth"] + label, node["type"], f"{node['params']:,}", _gflop(node.get("gflops")),
                      f"{node['time_ms']:.4g}", _share(node.get("share_of_total")).rstrip("%"),
                      f"{node['self_ms']:.3g}" + (" !" if node.get("additivity_ok") is False else ""))
    return table


def print_breakdown(nodes: list[dict[str, Any]], title: str = "", console: Console | None = None,
                    as_table: bool = False) -> None:
    console = console or Console()
    console.print(breakdown_table(nodes, title) if as_table else breakdown_tree(nodes, title))
    if nodes:
        console.print(f"time: {nodes[0].get('method')}; self = time - children's time; "
                      "share = of the root's time", style="dim", highlight=False)


def kernels_table(rows: list[dict[str, Any]], title: str = "") -> Table:
    """The `top_kernels` rows: name, calls per call, time per call (ms) and share of the total."""
    method = rows[0]["method"] if rows else ""
    table = Table(title=f"{title}  ({method})" if title else method, title_justify="left")
    for header, justify in (("kernel / op", "left"), ("calls", "right"), ("time ms", "right"), ("share %", "right")):
        table.add_column(header, justify=justify)
    for r in rows:
        name = r["name"] if len(r["name"]) <= 100 else r["name"][:97] + "..."
        table.add_row(escape(name), f"{r['calls']:g}", f"{r['time_ms']:.4g}", f"{100 * r['share']:.1f}")
    return table


def uncovered_table(found: dict[str, Any], top: int = 12) -> Table:
    """`flop_coverage`'s result: the coverage in the title, then the costliest ops counted as zero FLOPs."""
    coverage = found.get("coverage")
    title = (f"FLOP coverage {'-' if coverage is None else f'{100 * coverage:.1f}%'} of {found['total_ms']:.4g} ms "
             f"per call ({found['method']}); ops counted as zero FLOPs, costliest first")
    table = Table(title=title, title_justify="left")
    for header, justify in (("op (no FLOP formula)", "left"), ("time ms", "right"), ("share %", "right")):
        table.add_column(header, justify=justify)
    for r in found["uncovered"][:top]:
        table.add_row(escape(r["name"]), f"{r['time_ms']:.4g}", "-" if r["share"] is None else f"{100 * r['share']:.1f}")
    return table


def phases_table(phases: dict, title: str) -> Table:
    """A training step's phases (forward, backward, optimizer): mean ms per step and share of the step."""
    table = Table(title=title, title_justify="left")
    for header in ("phase", "ms per step (mean)", "share %"):
        table.add_column(header, justify="left" if header == "phase" else "right")
    total = phases["step_ms"]
    for key in ("forward_ms", "backward_ms", "optimizer_ms"):
        table.add_row(key[:-3], f"{phases[key]:.4g}", f"{100 * phases[key] / total:.1f}" if total > 0 else "-")
    table.add_row("step", f"{total:.4g}", "100.0")
    table.caption = f"timed with {phases['method']}; forward includes the loss, optimizer = step + zero_grad"
    return table
