"""The component registry: one decorator, one function, found by name.

Modelled on timm's `@register_model`/`create_model`/`list_models`: a component is a factory function
decorated with `@register_component`, which declares its typed parameters once. The factory receives
validated keyword arguments plus a `BuildContext` (device, dtype, seed) and returns a `Built`: the
module, an input maker and the unit of one item. It knows nothing of timing or tables.
"""
from __future__ import annotations

import fnmatch
import importlib
import os
from dataclasses import dataclass, field, replace
from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Sequence

from effprof.core.errors import PluginError, UnknownComponent
from effprof.core.params import Param, resolve
from effprof.core.plugins import load_plugins
from effprof.core.reducers import options_for, resolve_with_reducer, split_reducer

UNITS = ("img", "tok", "seq")


@dataclass(frozen=True)
class BuildContext:
    """Where and how a component is built: the runner fills this, the factory reads it."""

    device: torch.device
    dtype: torch.dtype
    seed: int = 0
    exec_mode: str = "eager"   # "eager" | "graphs" | "compile": read only by a Built with handles_exec_mode


@dataclass
class Stage:
    """One named step of a component's call (e.g. `vision`, `project`, `prefill`, `decode`).

    `run(carry) -> carry`: the first stage receives the inputs tuple, each later stage the previous
    stage's return value; the last stage's return value is the call's output. `module` owns the
    parameters the stage uses (counted per stage; None = no parameters of its own). `host_sync`: the
    stage reads a value back on the host (a data-dependent token count), so it cannot be captured in a
    CUDA graph: under `--graphs` it runs eagerly and every other stage replays its own graph, keyed by the
    shapes it receives (`effprof.measure.modes.graphed_stages`).
    """

    name: str
    run: Callable[[Any], Any]
    module: torch.nn.Module | None = None
    host_sync: bool = False


@dataclass
class Built:
    """What a component factory returns.

    - `module`: the nn.Module whose parameters are counted and which is moved to the device.
    - `make_inputs(batch)`: returns the positional arguments of one call, already on the device.
    - `unit`: what one item is ("img", "tok", "seq"); throughput is items per second.
    - `items_per_sample`: items in one batch element (e.g. 576 tokens per image for a projector).
    - `forward(module, inputs)`: how one call is made; defaults to `module(*inputs)`.
    - `info`: static facts for the record (tokens in/out, which kernel runs, ...).
    - `extras(module, inputs)`: facts computed once on real inputs (e.g. a fidelity figure); may be None.
    - `stages`: the call as named steps run in order on the same inputs (see `Stage`); the runner then
      also times, counts and measures each stage. None = one stage, the whole call.
    - `stages_count_the_call`: a `forward` that runs exactly its stages' ops (a generation loop whose own work
      is bookkeeping): the counting pass then counts the call stage by stage, once for both the row and the
      split. Without a forward the call is its stages and is always counted that way.
    - `handles_exec_mode`: the call applies `ctx.exec_mode` itself (a generation loop that replays a
      CUDA graph per decode step, or compiles its step); the runner then calls it as it is.
    - `hooks`: objects a tracker may use and the record does not show (e.g. a per-token clock).
    - `loss(output, inputs)`: the scalar a training step (`--train`) backpropagates; None = the mean of
      the output (see effprof.measure.training). Trainable parameters are those with requires_grad.
    - `counting()`: a context in which `call` runs eagerly, for a call that applies the execution mode itself
      (`handles_exec_mode`): the counting passes (FLOPs, bytes, coverage, the stages' counts) must see the ops
      of one call, not a CUDA graph's warm-up, capture or replay. None = `call` is already what to count.
    """

    module: torch.nn.Module
    make_inputs: Callable[[int], tuple]
    unit: str
    items_per_sample: int = 1
    forward: Callable[[torch.nn.Module, tuple], Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    extras: Callable[[torch.nn.Module, tuple], dict[str, Any]] | None = None
    stages: list[Stage] | None = None
    handles_exec_mode: bool = False
    hooks: dict[str, Any] = field(default_factory=dict)
    loss: Callable[[Any, "torch.Tensor"], Any] | None = None
    counting: Callable[[], ContextManager] | None = None
    stages_count_the_call: bool = False

    def __post_init__(self):
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {self.unit!r}")
        if self.stages is not None:
            names = [s.name for s in self.stages]
            if not names or len(set(names)) != len(names):
                raise ValueError(f"stages need distinct names, got {names}")

    def counted(self) -> ContextManager:
        """The context the counting passes run `call` in (see `counting`)."""
        return self.counting() if self.counting is not None else nullcontext()

    def call(self, inputs: tuple, module: torch.nn.Module | None = None) -> Any:
        """One call on `inputs`; `module` replaces `self.module` (e.g. its torch.compile'd version)."""
        module = self.module if module is None else module
        if self.forward is not None:
            return self.forward(module, inputs)
        if self.stages is not None:
            carry: Any = inputs
            for stage in self.stages:
                carry = stage.run(carry)
            return carry
        return module(*inputs)


@dataclass(frozen=True)
class Component:
    """A registered component: its name, declared parameters and factory."""

    name: str
    factory: Callable[..., Built]
    params: tuple[Param, ...]
    unit: str
    description: str
    family: str
    reducer_sites: tuple[str, ...] = ()   # where a --reducer may act (effprof.core.reducers.SITES)
    own_params: tuple[Param, ...] = ()    # the factory's own parameters; `params` adds the reducer options

    def resolve(self, given: dict[str, Any]) -> dict[str, Any]:
        """Validated parameter values with defaults filled in."""
        if self.reducer_sites:
            return resolve_with_reducer(self.own_params, self.reducer_sites, given, self.name)
        return resolve(self.params, given, self.name)

    def build(self, values: dict[str, Any], ctx: BuildContext) -> Built:
        if self.reducer_sites:
            own, reducer = split_reducer(self.own_params, values)
            return self.factory(ctx, **own, reducer=reducer)
        return self.factory(ctx, **values)


_REGISTRY: dict[str, Component] = {}


def register_component(name: str, *, unit: str, params: Sequence[Param] = (), description: str = "",
                       family: str = "misc", reducers: Sequence[str] = ()):
    """Register `factory(ctx, **params) -> Built` under `name`.

    The first line of the factory's docstring is used when `description` is empty. `reducers` names the
    sites (effprof.core.reducers.SITES) where the component accepts a `--reducer`; its factory then also
    receives `reducer=` (the built reducer or None).
    """
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}")
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise ValueError(f"{name}: duplicate parameter names {names}")

    def decorate(factory):
        if name in _REGISTRY and _REGISTRY[name].factory is not factory:
            raise ValueError(f"component {name!r} is registered twice")
        doc = description or (factory.__doc__ or "").strip().splitlines()[0:1]
        text = doc if isinstance(doc, str) else (doc[0] if doc else "")
        _REGISTRY[name] = Component(name, factory, tuple(params), unit, text, family, tuple(reducers),
                                    tuple(params))
        return factory

    return decorate


_loaded = False
# The built-in components: a package imported by name (as a plugin is), so that the contract never imports
# what implements it. Importing it registers every component, the external sources (FILE.py:FUNCTION, hf:ID)
# and the built-in reducers.
BUILTIN_PACKAGE = "effprof.components"


def _load_builtin() -> None:
    """Import the built-in component modules and any plugins named in EFFPROF_PLUGINS (comma-separated)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    importlib.import_module(BUILTIN_PACKAGE)
    PLUGIN_ERRORS[:] = load_plugins(os.environ.get("EFFPROF_PLUGINS", ""), _REGISTRY)
    for name, c in list(_REGISTRY.items()):  # reducer-accepting components: add --reducer and its options
        if c.reducer_sites:
            _REGISTRY[name] = replace(c, params=options_for(c.own_params, c.reducer_sites, name))


# One line per plugin of EFFPROF_PLUGINS that failed to load (effprof/core/plugins.py); the others are registered.
PLUGIN_ERRORS: list[str] = []


def check_plugins() -> None:
    """Raise PluginError naming the first plugin that failed to load (`effprof list` lists the rest first)."""
    _load_builtin()
    if PLUGIN_ERRORS:
        more = f" (and {len(PLUGIN_ERRORS) - 1} more)" if len(PLUGIN_ERRORS) > 1 else ""
        raise PluginError(PLUGIN_ERRORS[0] + more)


def is_external(name: str) -> bool:
    """`hf:ID`, or `FILE.py:FUNCTION`: a component built on demand, never registered."""
    if name.startswith("hf:"):
        return True
    path, sep, func = name.rpartition(":")
    return bool(sep) and path.endswith(".py") and func.isidentifier()


# Where an external name is turned into a Component (effprof/components/external.py registers itself here).
_EXTERNAL_SOURCE: list[Callable[[str], Component]] = []


def register_external_source(make: Callable[[str], Component]) -> None:
    _EXTERNAL_SOURCE[:] = [make]


def get_component(name: str) -> Component:
    if is_external(name):  # FILE.py:FUNCTION or hf:MODEL_ID: built on demand, never registered
        if not _EXTERNAL_SOURCE:
            importlib.import_module(BUILTIN_PACKAGE + ".external")
        return _EXTERNAL_SOURCE[0](name)
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        check_plugins()  # the component may be one a failed plugin would have registered
        close = [n for n in _REGISTRY if n.startswith(name.split("-")[0])] or sorted(_REGISTRY)
        raise UnknownComponent(f"unknown component {name!r}; known: {', '.join(close)}") from None


def list_components(pattern: str = "*") -> list[Component]:
    """Registered components whose names match the shell-style `pattern`, sorted by family then name."""
    _load_builtin()
    found = [c for n, c in _REGISTRY.items() if fnmatch.fnmatch(n, pattern)]
    return sorted(found, key=lambda c: (c.family, c.name))


def create(name: str, ctx: BuildContext | None = None, **given) -> Built:
    """Build a component by name with keyword parameters, like timm's `create_model`."""
    component = get_component(name)
    if ctx is None:
        import torch

        ctx = BuildContext(torch.device("cpu"), torch.float32)
    return component.build(component.resolve(given), ctx)
