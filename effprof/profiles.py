"""YAML profiles and parameter grids: many configurations, one table.

A profile is a built-in name (a YAML file in `effprof/data/profiles/`, shipped in the package) or a path
to a YAML file:

    title: LLaVA projectors, 576 tokens, 1024 -> 4096
    options: {batch: 16}            # any RunOptions field (batch, dtype, device, min_time, ...)
    baseline: linear                # the label of the ratio row (default: the first row)
    rows:
      - component: linear
      - {component: lowrank, params: {rank: 256}, label: lowrank-256}

or, for one component over a grid (a cartesian product; keys are parameters or batch/dtype):

    component: clip-vtp
    params: {preset: vit-b-16}
    grid: {keep: [1.0, 0.9, 0.7, 0.5, 0.25]}

Rows are validated against each component's declared parameters before anything runs.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from effprof.errors import EffprofError, ProfileError, UsageError
from effprof.registry import get_component
from effprof.options import Config, RunOptions

OPTION_FIELDS = {f.name: f.type for f in fields(RunOptions)}
GRID_OPTIONS = {"batch": int, "dtype": str}
# Built-in profiles ship inside the package; a `profiles/` folder in the working directory never shadows them
# (a local file is used only when named as a path, e.g. `./profiles/mine.yaml`).
PROFILE_DIRS = [Path(__file__).resolve().parent / "data" / "profiles"]


@dataclass
class Profile:
    title: str
    configs: list[Config]
    baseline: int = 0
    varied: list[str] | None = None  # the grid's keys, for plots


def find_profile(name: str) -> Path | None:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path if path.is_file() else None
    for folder in PROFILE_DIRS:
        for suffix in (".yaml", ".yml"):
            candidate = folder / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def available_profiles() -> list[str]:
    names = set()
    for folder in PROFILE_DIRS:
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.y*ml"))
    return sorted(names)


def apply_options(options: RunOptions, given: dict[str, Any], where: str) -> RunOptions:
    unknown = [k for k in given if k not in OPTION_FIELDS]
    if unknown:
        raise ProfileError(f"{where}: unknown option {unknown[0]!r} (options: {', '.join(OPTION_FIELDS)})")
    try:
        return replace(options, **given)
    except TypeError as exc:
        raise ProfileError(f"{where}: {exc}") from None


def load_profile(name: str, base: RunOptions, overrides: dict[str, Any]) -> Profile:
    """Read a profile. `overrides` (options the user set on the command line) win over the file's."""
    path = find_profile(name)
    if path is None:
        raise ProfileError(f"no profile {name!r}; available: {', '.join(available_profiles()) or 'none'}")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise ProfileError(f"{path}: expected a mapping at the top level")
    options = apply_options(base, doc.get("options") or {}, str(path))
    options = replace(options, **overrides)
    if "rows" in doc:
        configs = []
        for i, row in enumerate(doc["rows"] or []):
            if not isinstance(row, dict) or "component" not in row:
                raise ProfileError(f"{path}: row {i + 1} needs a 'component'")
            extra = set(row) - {"component", "params", "label", "options"}
            if extra:
                raise ProfileError(f"{path}: row {i + 1}: unknown key {sorted(extra)[0]!r}")
            row_options = replace(apply_options(options, row.get("options") or {}, f"{path} row {i + 1}"),
                                  **overrides)
            configs.append(Config(_beside(path, row["component"]), dict(row.get("params") or {}), row_options,
                                  str(row.get("label", ""))))
        varied = None
    elif "component" in doc:
        grid = doc.get("grid") or {}
        configs = expand_grid(_beside(path, doc["component"]), dict(doc.get("params") or {}), grid, options, overrides)
        varied = list(grid)
    else:
        raise ProfileError(f"{path}: needs 'rows' or 'component' (with an optional 'grid')")
    if not configs:
        raise ProfileError(f"{path}: no rows")
    labels = [c.label or c.component for c in configs]
    baseline = doc.get("baseline")
    if baseline is None:
        index = 0
    elif baseline in labels:
        index = labels.index(baseline)
    else:
        raise ProfileError(f"{path}: baseline {baseline!r} is not a row label ({', '.join(labels)})")
    try:
        for config in configs:
            config.resolved()
            config.options.validate()
    except EffprofError as exc:
        raise ProfileError(f"{path}: {exc}") from None
    return Profile(str(doc.get("title") or path.stem), configs, index, varied)


def _beside(profile: Path, component: str) -> str:
    """A row's `FILE.py:FUNCTION` with a relative FILE is found beside the profile (then in the working folder)."""
    from effprof.external import is_external

    if not is_external(component) or component.startswith("hf:"):
        return component
    file, _, func = component.rpartition(":")
    candidate = profile.parent / file
    return f"{candidate}:{func}" if not Path(file).is_absolute() and candidate.is_file() else component


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """`["keep=1.0,0.5", "batch=1,8"]` -> {"keep": ["1.0", "0.5"], "batch": ["1", "8"]}."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise UsageError(f"--grid: expected NAME=V1,V2,... but got {item!r}")
        grid[key.strip().replace("-", "_")] = [v.strip() for v in values.split(",") if v.strip()]
    return grid


def expand_grid(component: str, params: dict[str, Any], grid: dict[str, list[Any]], options: RunOptions,
                overrides: dict[str, Any] | None = None) -> list[Config]:
    """One Config per point of the cartesian product of `grid` (params and batch/dtype)."""
    declared = {p.name for p in get_component(component).params}
    for key in grid:
        if key not in declared and key not in GRID_OPTIONS:
            raise UsageError(f"--grid: {component} has no parameter {key!r} "
                             f"(parameters: {', '.join(sorted(declared)) or 'none'}; or batch, dtype)")
        if not isinstance(grid[key], list) or not grid[key]:
            raise UsageError(f"--grid: {key} needs a list of values")
    configs = []
    keys = list(grid)
    for point in itertools.product(*(grid[k] for k in keys)):
        row_params, row_options = dict(params), {}
        for key, value in zip(keys, point):
            if key in declared:
                row_params[key] = value
            else:
                try:
                    row_options[key] = GRID_OPTIONS[key](value)
                except ValueError:
                    raise UsageError(f"--grid: {key}={value!r} is not a {GRID_OPTIONS[key].__name__}") from None
        label = ",".join(f"{k}={v}" for k, v in zip(keys, point)) or component
        opts = replace(options, **row_options)
        if overrides:
            opts = replace(opts, **{k: v for k, v in overrides.items() if k not in row_options})
        configs.append(Config(component, row_params, opts, label))
    return configs
