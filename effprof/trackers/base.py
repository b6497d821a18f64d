"""The tracker interface: one measured thing besides the latency, switched on by the options.

In the spirit of optimum-benchmark's trackers (latency, memory, energy share one small interface and a new
one never touches a backend): `effprof.runner.measure` builds the component, then for every enabled tracker
calls `before(run)` (once, before the timed region: counting passes), `start(run)` right before the
timed region, `stop(run)` right after it, and finally `fields(run)` (the record's columns), in
registration order, so a tracker may read the fields of those registered before it from `run.record`.
A new column is one new tracker: a class decorated with `@register_tracker`, nothing else changes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch

from effprof.core.options import Config, RunOptions
from effprof.core.registry import BuildContext, Built
from effprof.measure.timing import TimingResult


@dataclass
class Run:
    """One configuration being measured (by `effprof.runner.measure`): what the trackers see."""

    config: Config
    options: RunOptions
    built: Built
    values: dict[str, Any]
    ctx: BuildContext
    input_sets: list[tuple]
    items_per_call: int
    record: dict[str, Any]
    call: Callable[[], Any] | None = None
    timing: TimingResult | None = None
    calls: int = 0                        # calls made in the timed region (warm-up included)
    counted_bytes: int | None = None      # bytes lower bound of one call (the counts tracker sets it)
    shared: dict[str, Any] = field(default_factory=dict)  # for trackers that cooperate

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    @property
    def count_only(self) -> bool:
        return self.ctx.device.type == "meta"




class Tracker:
    """Base class: override what the tracker needs; every hook is optional."""

    name: ClassVar[str] = ""

    @classmethod
    def enabled(cls, run: "Run") -> bool:
        return True

    def before(self, run: "Run") -> None:
        pass

    def start(self, run: "Run") -> None:
        pass

    def stop(self, run: "Run") -> None:
        pass

    def fields(self, run: "Run") -> dict[str, Any]:
        return {}


TRACKERS: list[type[Tracker]] = []


def register_tracker(cls: type[Tracker]) -> type[Tracker]:
    """Add a tracker class (after those already registered); a second class under one name is refused."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a name")
    for known in TRACKERS:
        if known.name == cls.name:
            if known is cls:
                return cls
            raise ValueError(f"tracker {cls.name!r} is registered twice")
    TRACKERS.append(cls)
    return cls


def unregister_tracker(name: str) -> None:
    """Remove a tracker by name (tests that add one take it away again)."""
    TRACKERS[:] = [t for t in TRACKERS if t.name != name]


def enabled_trackers(run: "Run") -> list[Tracker]:
    return [cls() for cls in TRACKERS if cls.enabled(run)]
