"""Component parameters, declared once.

A `Param` carries type, default, allowed range or choices and help text. Everything else is derived
from it: CLI options (`effprof run NAME --param`), grid parsing (`--grid keep=1,0.5`), YAML profile
validation, `effprof list` and the record columns.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from effprof.core.errors import ParamError
from effprof.core.limits import INT_CEILING

_TYPES = {int: "int", float: "float", str: "str", bool: "bool"}
_NONE_WORDS = {"none", "null"}  # and a Param's own none_aliases (e.g. --rank full)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Param:
    """One typed parameter of a component.

    `low`/`high` bound numeric values; `low_open`/`high_open` make a bound exclusive. `choices`
    restricts to a fixed set. `optional` admits None (written `none` on the command line), which a
    component reads as "not set" (e.g. `--rank none` = the full kernel). `none_aliases` are further words
    that mean None for this parameter only (e.g. `--rank full`); any other string stays a string.
    """

    name: str
    type: type
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: Sequence[Any] | None = None
    optional: bool = False
    none_aliases: tuple[str, ...] = ()

    def __post_init__(self):
        if self.type not in _TYPES:
            raise TypeError(f"Param {self.name}: unsupported type {self.type}")
        if self.none_aliases and not self.optional:
            raise TypeError(f"Param {self.name}: none_aliases need optional=True")
        if self.default is not None or not self.optional:
            self.validate(self.default)

    @property
    def type_name(self) -> str:
        return _TYPES[self.type] + (" | none" if self.optional else "")

    @property
    def option(self) -> str:
        """The CLI spelling, e.g. `--img-size`."""
        return "--" + self.name.replace("_", "-")

    def range_text(self) -> str:
        """Human description of what is allowed, used in help and in refusals."""
        if self.choices is not None:
            text = "one of " + ", ".join(str(c) for c in self.choices)
        elif self.low is not None or self.high is not None:
            lo = "(" if self.low_open else "["
            hi = ")" if self.high_open else "]"
            low = "-inf" if self.low is None else _fmt(self.low)
            high = "inf" if self.high is None else _fmt(self.high)
            text = f"{lo}{low}, {high}{hi}"
        else:
            text = "any " + _TYPES[self.type]
        return text + (" or " + "/".join(("none", *self.none_aliases)) if self.optional else "")

    def parse(self, text: Any) -> Any:
        """Convert a command-line or YAML value to this parameter's type and validate it."""
        is_choice = self.choices is not None and isinstance(text, str) and text.strip() in self.choices
        if text is None or (isinstance(text, str) and text.strip().lower() in _NONE_WORDS.union(self.none_aliases)
                            and not is_choice):
            if self.optional:
                return None
            raise ParamError(f"{self.option}: a value is required ({self.range_text()})")
        if isinstance(text, str):
            raw = text.strip()
            if not raw:
                hint = " (write none for the default)" if self.optional else ""
                raise ParamError(f"{self.option}: an empty value is not a {_TYPES[self.type]}{hint}")
            try:
                if self.type is bool:
                    if raw.lower() not in _TRUE | _FALSE:
                        raise ValueError(raw)
                    value = raw.lower() in _TRUE
                elif self.type is int:
                    value = int(raw)
                elif self.type is float:
                    value = float(raw)
                else:
                    value = raw
            except ValueError:
                raise ParamError(f"{self.option}: {text!r} is not a {_TYPES[self.type]}") from None
        else:
            value = text
            if self.type is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
        self.validate(value)
        return value

    def validate(self, value: Any) -> None:
        """Raise ParamError unless `value` is of the right type and inside the allowed range."""
        if value is None and self.optional:
            return
        ok_type = isinstance(value, self.type) and not (self.type is int and isinstance(value, bool))
        if not ok_type:
            raise ParamError(f"{self.option}: {value!r} is not a {_TYPES[self.type]}")
        if self.choices is not None and value not in self.choices:
            raise ParamError(f"{self.option}: {value!r} is not allowed; expected {self.range_text()}")
        if self.type in (int, float):
            if isinstance(value, float) and not math.isfinite(value):
                raise ParamError(f"{self.option}: {value!r} is not finite")
            too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
            too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
            if self.type is int and self.high is None and value > INT_CEILING:
                raise ParamError(f"{self.option}: {value} is larger than any size effprof accepts ({INT_CEILING})")
            if too_low or too_high:
                raise ParamError(f"{self.option}: {_fmt(value)} is outside the allowed range {self.range_text()}")


def _fmt(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def resolve(params: Sequence[Param], given: dict[str, Any], component: str) -> dict[str, Any]:
    """Fill defaults, parse and validate `given` against `params`; refuse unknown names."""
    by_name = {p.name: p for p in params}
    unknown = [k for k in given if k.replace("-", "_") not in by_name]
    if unknown:
        known = ", ".join(p.name for p in params) or "none"
        raise ParamError(f"{component}: unknown parameter {unknown[0]!r} (parameters: {known})")
    values = {p.name: p.default for p in params}
    for key, raw in given.items():
        name = key.replace("-", "_")
        values[name] = by_name[name].parse(raw)
    return values
