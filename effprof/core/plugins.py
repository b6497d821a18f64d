"""Plugins named in EFFPROF_PLUGINS (comma-separated module names), imported after the built-in components.

A plugin that fails (it raises on import, has a syntax error, registers a name that exists or a unit effprof
does not know, is named relatively) is reported in one line naming it and its error; the components of
every other plugin and the built-in ones stay usable, so `effprof list` still lists them. What a plugin
registered before it failed is removed again: a half-loaded plugin is not used.
"""
from __future__ import annotations

import importlib
import sys


def load_plugins(spec: str, registered: dict) -> list[str]:
    """Import each module named in `spec`; return one error line per plugin that failed. `registered` is the
    component registry (name -> Component), from which a failed plugin's registrations are removed."""
    errors = []
    for raw in spec.split(","):
        name = raw.strip()
        if not name:
            continue
        if name.startswith(".") or not all(part.isidentifier() for part in name.split(".")):
            errors.append(f"EFFPROF_PLUGINS: {name!r} is not an absolute module name (e.g. mypackage.components)")
            continue
        before = set(registered)
        try:
            importlib.import_module(name)
        except BaseException as exc:  # noqa: BLE001 - a plugin may raise anything, SystemExit included
            if isinstance(exc, KeyboardInterrupt):
                raise
            for added in set(registered) - before:
                del registered[added]
            sys.modules.pop(name, None)
            errors.append(f"EFFPROF_PLUGINS: plugin {name!r} failed to load: {describe(exc)}")
    return errors


def describe(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg} ({exc.filename}, line {exc.lineno})"
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
