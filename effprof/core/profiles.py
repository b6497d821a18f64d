"""YAML profiles and parameter grids: many configurations, one table.

A profile is a built-in name (a YAML file in the top-level `profiles/` folder, shipped in the wheel as
`effprof/_profiles/`) or a path
to a YAML file:

    title: LLaVA projectors, {tokens} tokens, {in_dim} -> {out_dim}
    options: {batch: 16}            # any RunOptions field (batch, dtype, device, min_time, ...)
    baseline: linear                # the label of the ratio row (default: the first row)
    rows:
      - component: linear
      - {component: lowrank, params: {rank: 256}, label: "lowrank-r{rank}"}

`{name}` (or `{name//N}`, `{name*N}`) in the title or a label is the row's parameter value (the title takes
the baseline row's), so both follow parameters set on the command line beside the profile.

or, for one component over a grid (a cartesian product; keys are parameters or batch/dtype):

    component: clip-vtp
    params: {preset: vit-b-16}
    grid: {keep: [1.0, 0.9, 0.7, 0.5, 0.25]}

Rows are validated against each component's declared parameters before anything runs.

Execution defaults a profile may declare:

    options: {graphs: true}         # time CUDA-graph replays on CUDA; off CUDA the rows fall back to eager
                                    # with a note (the CLI's --graphs is refused there instead); --eager
                                    # (or options: {eager: true}) gives the host-bound, as-deployed figure
    launch: {isolate: true}         # on CUDA, every row in a fresh worker process unless --no-isolate
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from effprof.core.fileio import read_utf8
from effprof.core.errors import EffprofError, ProfileError, UsageError
from effprof.core.registry import get_component, is_external
from effprof.core.options import Config, RunOptions

OPTION_FIELDS = {f.name: f.type for f in fields(RunOptions)}
GRID_OPTIONS = {"batch": int, "dtype": str}


def builtin_profile_dir() -> Path:
    """The built-in profiles: the checkout's top-level `profiles/` (their one source), or the copy a wheel
    installs as `effprof/_profiles/` (pyproject.toml maps the folder to that data package)."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "_profiles"
    return installed if installed.is_dir() else package.parent / "profiles"


# A `profiles/` folder in the working directory never shadows the built-in ones (a local file is used only when
# named as a path, e.g. `./profiles/mine.yaml`).
PROFILE_DIRS = [builtin_profile_dir()]


@dataclass
class Profile:
    title: str
    configs: list[Config]
    baseline: int = 0
    varied: list[str] | None = None  # the grid's keys, for plots
    launch: dict[str, Any] = field(default_factory=dict)  # launcher defaults (LAUNCH_KEYS)
    notes: list[str] = field(default_factory=list)         # how the execution differs from the file (e.g. cpu)
    title_template: str | None = None  # the title as written, `{name}` placeholders unfilled
    label_templates: list[str] | None = None  # each row's label as written

    def fill(self) -> None:
        """Write the title and the labels from their templates with the rows' current parameter values, so
        that they follow parameters set beside the profile (`compare projectors --in-dim 32`)."""
        if self.label_templates is not None:
            self.configs = [replace(c, label=fill_template(t, row_values(c), f"row {i + 1} label"))
                            if "{" in t else c for i, (c, t) in enumerate(zip(self.configs, self.label_templates))]
        if self.title_template is not None and "{" in self.title_template:
            values: dict[str, Any] = {}
            for config in [self.configs[self.baseline]] + self.configs:  # the baseline row's values first
                for key, value in row_values(config).items():
                    values.setdefault(key, value)
            self.title = fill_template(self.title_template, values, "title")

    def placeholders(self) -> set[str]:
        """The names the title's template fills in."""
        return {m.group(1) for m in PLACEHOLDER.finditer(self.title_template or "")}


# `{name}`, `{name//N}` or `{name*N}` in a profile's title or a row's label: the row's parameter (or batch,
# dtype, device), e.g. `label: ldp ({tokens}->{tokens//4})`.
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?:\s*(//|\*)\s*(\d+))?\}")


def row_values(config: Config) -> dict[str, Any]:
    opts = config.options
    return {**config.resolved(), "batch": opts.batch, "dtype": opts.dtype, "device": opts.device}


def fill_template(template: str, values: dict[str, Any], where: str) -> str:
    """`template` with each placeholder replaced by its value; an unknown name is a ProfileError."""
    def one(match: re.Match) -> str:
        name, op, number = match.groups()
        if name not in values:
            raise ProfileError(f"{where}: {{{name}}} is not a parameter of the row (one of: "
                               f"{', '.join(sorted(values))})")
        value = values[name]
        if op:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ProfileError(f"{where}: {{{name}{op}{number}}} needs a whole number, {name} is {value!r}")
            value = value // int(number) if op == "//" else value * int(number)
        return str(value)

    return PLACEHOLDER.sub(one, template)


def find_profile(name: str) -> Path | None:
    try:
        path = Path(name)
        if path.suffix in (".yaml", ".yml") or path.exists():
            return path if path.is_file() else None
        for folder in PROFILE_DIRS:
            for suffix in (".yaml", ".yml"):
                candidate = folder / f"{name}{suffix}"
                if candidate.is_file():
                    return candidate
    except (OSError, ValueError):  # a name longer than a file name may be, a NUL byte
        return None
    return None


def available_profiles() -> list[str]:
    names = set()
    for folder in PROFILE_DIRS:
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.y*ml"))
    return sorted(names)


# ---- the schema: the whole file is checked before any row is built, each refusal naming file, row and field
TOP_KEYS = ("title", "description", "options", "launch", "baseline", "rows", "component", "params", "grid")
LAUNCH_KEYS = {"isolate": bool}  # launcher defaults a profile may declare (the CLI's --isolate/--no-isolate wins)
ROW_KEYS = ("component", "params", "label", "options")
SCALARS = (str, int, float, bool)
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _field_type(annotation: Any) -> tuple[str, bool]:
    """('int' | 'float' | 'bool' | 'str' | other, optional) from a RunOptions field annotation."""
    text = str(annotation).replace("typing.", "").replace(" ", "")
    optional = "None" in text
    for name in ("bool", "int", "float", "str"):
        if text in (name, f"{name}|None", f"None|{name}", f"Optional[{name}]"):
            return name, optional
    return text, optional


def coerce_option(name: str, value: Any, where: str) -> Any:
    """A profile's option value typed as the CLI types it: `cold: 'no'` is False, `batch: '8'` is 8,
    `batch: big`, `batch: null`, `min_time: x` or `device: 3` are refused."""
    kind, optional = _field_type(OPTION_FIELDS[name])
    if value is None:
        if optional:
            return None
        raise ProfileError(f"{where}: {name} needs a value (null is not allowed)")
    bad = ProfileError(f"{where}: {name}: {value!r} is not a {kind}")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise bad
    if kind in ("int", "float"):
        if isinstance(value, bool) or isinstance(value, (list, dict)):
            raise bad
        if isinstance(value, str):
            try:
                value = int(value.strip()) if kind == "int" else float(value.strip())
            except ValueError:
                raise bad from None
        if kind == "int" and isinstance(value, float):
            if not value.is_integer():
                raise bad
            value = int(value)
        if kind == "float" and isinstance(value, int):
            value = float(value)
        if not isinstance(value, (int, float)):
            raise bad
        return value
    if kind == "str":
        if not isinstance(value, str) or not value.strip():
            raise bad
        return value.strip()
    return value


def apply_options(options: RunOptions, given: Any, where: str) -> RunOptions:
    if not isinstance(given, dict):
        raise ProfileError(f"{where}: options must be a mapping (name: value), not {type(given).__name__}")
    unknown = [k for k in given if k not in OPTION_FIELDS]
    if unknown:
        raise ProfileError(f"{where}: unknown option {unknown[0]!r} (options: {', '.join(OPTION_FIELDS)})")
    typed = {k: coerce_option(k, v, f"{where}: options") for k, v in given.items()}
    return replace(options, **typed)


def _mapping(value: Any, where: str, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProfileError(f"{where}: {what} must be a mapping (name: value), not {type(value).__name__}")
    for key, item in value.items():
        if not isinstance(key, str):
            raise ProfileError(f"{where}: {what}: key {key!r} is not a name")
        if what == "params" and item is not None and not isinstance(item, SCALARS):
            raise ProfileError(f"{where}: params.{key}: {type(item).__name__} where a single value belongs")
    return value


def _name(value: Any, where: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ProfileError(f"{where}: {what} must be a component name, not {value!r}")
    return value


def validate_document(doc: Any, where: str) -> None:
    """Check the shape of a whole profile (keys, types, rows) before anything is built."""
    if not isinstance(doc, dict):
        raise ProfileError(f"{where}: expected a mapping at the top level, not {type(doc).__name__}")
    for key in doc:
        if key not in TOP_KEYS:
            raise ProfileError(f"{where}: unknown key {key!r} (keys: {', '.join(TOP_KEYS)})")
    for key in ("title", "description", "baseline"):
        if doc.get(key) is not None and not isinstance(doc[key], SCALARS):
            raise ProfileError(f"{where}: {key} must be a single value, not {type(doc[key]).__name__}")
    _mapping(doc.get("options"), where, "options")
    for key, value in _mapping(doc.get("launch"), where, "launch").items():
        if key not in LAUNCH_KEYS:
            raise ProfileError(f"{where}: launch: unknown key {key!r} (keys: {', '.join(LAUNCH_KEYS)})")
        if not isinstance(value, LAUNCH_KEYS[key]):
            raise ProfileError(f"{where}: launch: {key}: {value!r} is not a {LAUNCH_KEYS[key].__name__}")
    if ("rows" in doc) == ("component" in doc):
        raise ProfileError(f"{where}: needs 'rows' or 'component' (with an optional 'grid'), not "
                           + ("both" if "rows" in doc else "neither"))
    if "rows" in doc:
        rows = doc["rows"]
        if not isinstance(rows, list) or not rows:
            raise ProfileError(f"{where}: rows must be a non-empty list of rows, not {rows!r}"[:300])
        for i, row in enumerate(rows, start=1):
            at = f"{where}: row {i}"
            if not isinstance(row, dict) or "component" not in row:
                raise ProfileError(f"{at} needs a 'component'")
            extra = [k for k in row if k not in ROW_KEYS]
            if extra:
                raise ProfileError(f"{at}: unknown key {extra[0]!r} (keys: {', '.join(ROW_KEYS)})")
            _name(row["component"], at, "component")
            _mapping(row.get("params"), at, "params")
            _mapping(row.get("options"), at, "options")
            if row.get("label") is not None and not isinstance(row["label"], SCALARS):
                raise ProfileError(f"{at}: label must be a single value")
        return
    _name(doc["component"], where, "component")
    _mapping(doc.get("params"), where, "params")
    grid = doc.get("grid")
    if grid is not None and not isinstance(grid, dict):
        raise ProfileError(f"{where}: grid must be a mapping (name: [values]), not {type(grid).__name__}")
    for key, values in (grid or {}).items():
        if not isinstance(values, list) or not values:
            raise ProfileError(f"{where}: grid.{key} needs a non-empty list of values, not {values!r}"[:300])
        for value in values:
            if value is not None and not isinstance(value, SCALARS):
                raise ProfileError(f"{where}: grid.{key}: {value!r} is not a single value")


def read_document(path: Path) -> Any:
    try:
        text = read_utf8(path)
    except ValueError as exc:
        raise ProfileError(f"{path} {exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except RecursionError:
        raise ProfileError(f"{path}: not valid YAML (nested too deeply)") from None


def load_profile(name: str, base: RunOptions, overrides: dict[str, Any]) -> Profile:
    """Read a profile. `overrides` (options the user set on the command line) win over the file's."""
    path = find_profile(name)
    if path is None:
        shown = name if len(name) <= 80 else name[:77] + "..."
        raise ProfileError(f"no profile {shown!r}; available: {', '.join(available_profiles()) or 'none'}")
    doc = read_document(path)
    validate_document(doc, str(path))
    options = apply_options(base, doc.get("options") or {}, str(path))
    options = replace(options, **overrides)
    if "rows" in doc:
        configs = []
        for i, row in enumerate(doc["rows"]):
            row_options = replace(apply_options(options, row.get("options") or {}, f"{path}: row {i + 1}"),
                                  **overrides)
            label = row.get("label")
            configs.append(Config(_beside(path, row["component"]), dict(row.get("params") or {}), row_options,
                                  "" if label is None else str(label)))
        varied = None
    else:
        grid = doc.get("grid") or {}
        try:
            configs = expand_grid(_beside(path, doc["component"]), dict(doc.get("params") or {}), grid, options,
                                  overrides)
        except EffprofError as exc:
            raise ProfileError(f"{path} {exc}") from None
        varied = list(grid)
    configs, notes = graphs_fallback(configs, overrides)
    labels = [c.label or c.component for c in configs]
    baseline = doc.get("baseline")
    if baseline is None:
        index = 0
    elif str(baseline) in labels:
        index = labels.index(str(baseline))
    else:
        raise ProfileError(f"{path}: baseline {baseline!r} is not a row label ({', '.join(labels)})")
    for i, config in enumerate(configs, start=1):
        try:
            config.resolved()
            config.options.validate()
        except EffprofError as exc:
            at = f"row {i} ({config.label or config.component})" if "rows" in doc else f"row {config.label}"
            raise ProfileError(f"{path}: {at}: {exc}") from None
    title = doc.get("title")
    profile = Profile(str(title) if title is not None else path.stem, configs, index, varied,
                      dict(doc.get("launch") or {}), notes, title_template=None if title is None else str(title),
                      label_templates=[c.label for c in configs] if "rows" in doc else None)
    try:
        profile.fill()
    except ProfileError as exc:
        raise ProfileError(f"{path}: {exc}") from None
    return profile


def graphs_fallback(configs: list[Config], overrides: dict[str, Any]) -> tuple[list[Config], list[str]]:
    """A profile's `graphs: true` is a default for CUDA: rows that run elsewhere fall back to eager, with a
    note in their record (`exec_note`) and in the returned notes. `--graphs` given on the command line is
    not a default: off CUDA it stays and `RunOptions.validate` refuses it in one line."""
    if overrides.get("graphs"):
        return configs, []
    out, moved = [], {}
    for config in configs:
        # only a graphs row asks where it runs (resolving `auto` imports torch; a refusal comes before that)
        device = config.options.torch_device().type if config.options.graphs else None
        if config.options.graphs and device != "cuda":
            note = (f"graphs (the profile's default on CUDA) -> eager on {device}: CUDA graphs exist only on CUDA")
            moved.setdefault(note, []).append(config.label or config.component)
            config = replace(config, options=replace(config.options, graphs=False), notes=config.notes + (note,))
        out.append(config)
    return out, [f"{note} ({len(rows)} row{'s' if len(rows) > 1 else ''})" for note, rows in moved.items()]


def _beside(profile: Path, component: str) -> str:
    """A row's `FILE.py:FUNCTION` with a relative FILE is found beside the profile (then in the working folder)."""
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
        merged = grid.setdefault(key.strip().replace("-", "_"), [])  # a repeated key adds its values
        merged.extend(v.strip() for v in values.split(",") if v.strip())
        if not merged:
            raise UsageError(f"--grid: expected NAME=V1,V2,... but got {item!r}")
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
                    row_options[key] = coerce_option(key, value, "--grid")
                except ProfileError:
                    raise UsageError(f"--grid: {key}={value!r} is not a {GRID_OPTIONS[key].__name__}") from None
        label = ",".join(f"{k}={v}" for k, v in zip(keys, point)) or component
        opts = replace(options, **row_options)
        if overrides:
            opts = replace(opts, **{k: v for k, v in overrides.items() if k not in row_options})
        configs.append(Config(component, row_params, opts, label))
    return configs
