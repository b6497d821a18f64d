"""The launcher interface: where and how a list of rows runs, and nothing else.

In the spirit of optimum-benchmark's launchers (`inline`, `process`, `torchrun`): a launcher receives the rows
(`Config`s) and a `Plan`, measures each row through `effprof.runner` in the process it chooses, and returns
the records in the rows' order, calling `on_record(record)` after each finished row (the CLI rewrites its
files there, so an interruption loses nothing finished). A launcher never measures; the runner never
launches. A new launcher is one module with a function decorated `@register_launcher("name")`, listed in
`effprof.launch.BUILTIN` (or imported by a plugin).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from effprof.core.errors import UsageError

Record = dict[str, Any]
OnRecord = Callable[[Record], None]


@dataclass
class Plan:
    """How a comparison's rows run (the CLI fills it from --launcher, --gpus, --workers, --isolate,
    --processes, --address)."""

    launcher: str = "inline"
    slots: list | None = None          # pool / passes: the worker slots (effprof.launch.pool.Slot)
    isolate: bool = False              # pool: a fresh worker process per row
    processes: int = 1                 # passes: every row measured in this many fresh processes
    address: str | None = None         # ray: the cluster to join (None: a local instance on this host)
    raise_refusals: bool = False       # inline: a refusal is raised (`run`'s one line) instead of a row
    on_phase: Callable[[Any, str], None] | None = None   # inline: (config, phase) as a row enters a phase


Launcher = Callable[[list, Plan, "OnRecord | None"], list[Record]]
LAUNCHERS: dict[str, Launcher] = {}


def register_launcher(name: str) -> Callable[[Launcher], Launcher]:
    """Register `launch(configs, plan, on_record) -> records` under `name` (a second one is refused)."""

    def decorate(fn: Launcher) -> Launcher:
        if name in LAUNCHERS and LAUNCHERS[name] is not fn:
            raise ValueError(f"launcher {name!r} is registered twice")
        LAUNCHERS[name] = fn
        return fn

    return decorate


def unregister_launcher(name: str) -> None:
    """Remove a launcher by name (tests that add one take it away again)."""
    LAUNCHERS.pop(name, None)


def get_launcher(name: str) -> Launcher:
    try:
        return LAUNCHERS[name]
    except KeyError:
        raise UsageError(f"--launcher: unknown launcher {name!r} (known: {', '.join(sorted(LAUNCHERS))})") from None
