"""The reducer registry: visual token reducers, one decorator each, found by name.

A reducer is registered like a component: a factory function decorated with `@register_reducer`, which
declares where it acts and its typed parameters once (`Param`s). Its factory receives the validated
parameter values and returns the reducer object (see `effprof/modules/reducers/`):

- `where="vision-output"`: acts on the vision tower's output (the feature layer's tokens), before the
  projector: `reducer(vision: VisionOutput) -> features (B, N', C)` (PruMerge, VisionZip).
- `where="vision-inner"`: acts inside the vision tower: `reducer.encode(trunk, pixels, interpolate,
  num_layers) -> TowerTokens` (ToMe in every block, VTP before the first block).
- `where="lm"`: acts inside the language model between decoder layers:
  `reducer.prefill(lm, embeds, image_mask, position_ids) -> PrefillResult` (FastV, SparseVLM, PyramidDrop).

A component that accepts reducers says at which sites (`register_component(..., reducers=("vision-output",
"vision-inner"))`); it then takes `--reducer NAME` plus that reducer's declared parameters as options
(`effprof run clip-vision --reducer tome --r 16`), and `effprof list` shows the reducers and their
parameters. The factory of such a component receives `reducer=` the built reducer object (or None).
"""
from __future__ import annotations

import fnmatch
import importlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from effprof.core.errors import ParamError, UsageError
from effprof.core.params import Param, resolve

SITES = ("vision-output", "vision-inner", "lm")
REDUCER_PARAM = Param("reducer", str, None, "Visual token reducer (see the reducers table of `effprof list "
                      "COMPONENT`); none = no reduction.", optional=True)


class UnknownReducer(UsageError):
    """No reducer is registered under the requested name."""


@dataclass(frozen=True)
class Reducer:
    """A registered reducer: its name, where it acts, its declared parameters and its factory."""

    name: str
    where: str
    params: tuple[Param, ...]
    factory: Callable[..., Any]
    description: str

    def create(self, values: dict[str, Any]) -> Any:
        reducer = self.factory(**values)
        reducer.reducer_name = self.name
        reducer.where = self.where
        return reducer


_REDUCERS: dict[str, Reducer] = {}


def register_reducer(name: str, *, where: str, params: Sequence[Param] = (), description: str = ""):
    """Register `factory(**params) -> reducer object` under `name`, acting at `where` (one of SITES)."""
    if where not in SITES:
        raise ValueError(f"reducer {name}: where must be one of {SITES}, got {where!r}")
    names = [p.name for p in params]
    if len(set(names)) != len(names) or "reducer" in names:
        raise ValueError(f"reducer {name}: duplicate or reserved parameter names {names}")

    def decorate(factory):
        if name in _REDUCERS and _REDUCERS[name].factory is not factory:
            raise ValueError(f"reducer {name!r} is registered twice")
        doc = description or next(iter((factory.__doc__ or "").strip().splitlines()), "")
        _REDUCERS[name] = Reducer(name, where, tuple(params), factory, doc)
        return factory

    return decorate


def _load() -> None:
    importlib.import_module("effprof.components.reducers")


def get_reducer(name: str) -> Reducer:
    _load()
    try:
        return _REDUCERS[name]
    except KeyError:
        raise UnknownReducer(f"unknown reducer {name!r}; known: {', '.join(sorted(_REDUCERS))}") from None


def list_reducers(pattern: str = "*", sites: Sequence[str] = SITES) -> list[Reducer]:
    """Registered reducers whose names match `pattern` and act at one of `sites`, sorted by site then name."""
    _load()
    found = [r for n, r in _REDUCERS.items() if fnmatch.fnmatch(n, pattern) and r.where in sites]
    return sorted(found, key=lambda r: (SITES.index(r.where), r.name))


def options_for(own: Sequence[Param], sites: Sequence[str], component: str) -> tuple[Param, ...]:
    """A reducer-accepting component's options: its own, `--reducer`, and every parameter of the reducers at
    its sites (the first declaration of a name is listed; the chosen reducer's own declaration parses it)."""
    params = list(own) + [REDUCER_PARAM]
    taken = {p.name for p in params}
    own_names = {p.name for p in own}
    for reducer in list_reducers(sites=sites):
        for p in reducer.params:
            if p.name in own_names:
                raise ValueError(f"reducer {reducer.name}: parameter {p.name!r} clashes with {component}'s own")
            if p.name not in taken:
                params.append(p)
                taken.add(p.name)
    return tuple(params)


def resolve_with_reducer(own: Sequence[Param], sites: Sequence[str], given: dict[str, Any],
                         component: str) -> dict[str, Any]:
    """Validated values: the component's own parameters, `reducer` (a name or None) and the chosen
    reducer's parameters with their defaults. A reducer option without `--reducer`, a reducer that does
    not act at one of the component's sites or an option of another reducer is refused in one line."""
    given = {k.replace("-", "_"): v for k, v in given.items()}
    own_names = {p.name for p in own}
    name = REDUCER_PARAM.parse(given.pop("reducer")) if "reducer" in given else None
    values = resolve(own, {k: v for k, v in given.items() if k in own_names}, component)
    rest = {k: v for k, v in given.items() if k not in own_names}
    values["reducer"] = name
    if name is None:
        if rest:
            key = next(iter(rest))
            known = {p.name for r in list_reducers(sites=sites) for p in r.params}
            if key in known:
                raise ParamError(f"{component}: --{key.replace('_', '-')} is a reducer option; choose a reducer "
                                 "with --reducer NAME")
            resolve(own, rest, component)  # refuses the unknown name in the usual words
        return values
    reducer = get_reducer(name)
    if reducer.where not in sites:
        here = ", ".join(r.name for r in list_reducers(sites=sites)) or "none"
        raise ParamError(f"{component}: reducer {name!r} acts at {reducer.where}, which {component} does not have "
                         f"(reducers here: {here})")
    values.update(resolve(reducer.params, rest, f"{component} --reducer {name}"))
    return values


def split_reducer(own: Sequence[Param], values: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """(the component's own values, the built reducer object or None) from resolved `values`."""
    own_names = {p.name for p in own}
    mine = {k: v for k, v in values.items() if k in own_names}
    name = values.get("reducer")
    if name is None:
        return mine, None
    reducer = get_reducer(name)
    return mine, reducer.create({p.name: values[p.name] for p in reducer.params})
