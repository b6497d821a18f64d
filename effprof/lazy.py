"""Deferred imports, so that `effprof --help` and `effprof list` never import torch.

Component modules are imported to list their declared parameters; they must not import torch (or any
module that does) when they are imported, only when a factory runs. `lazy_import("torch")` returns a
stand-in whose first attribute access imports the real module (then cached in `sys.modules` as usual);
`lazy_attr("effprof.modules.mamba", "MambaBlock")` a callable that imports and calls the real one.
`tests/test_cli_fast.py` checks that importing every component module leaves torch unimported.
"""
from __future__ import annotations

import importlib
from typing import Any


class LazyModule:
    """A module imported on first attribute access."""

    __slots__ = ("_name",)

    def __init__(self, name: str):
        object.__setattr__(self, "_name", name)

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(object.__getattribute__(self, "_name")), attr)

    def __repr__(self) -> str:
        return f"<lazy module {object.__getattribute__(self, '_name')!r}>"


def lazy_import(name: str) -> Any:
    """A stand-in for `import name` that imports it when an attribute is first read."""
    return LazyModule(name)


def lazy_attr(module: str, name: str) -> Any:
    """A stand-in for `from module import name` (a callable) that imports it when first called."""
    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"{module}.{name}, imported when first called."
    return call
