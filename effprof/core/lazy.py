"""Deferred imports, so that `effprof --help` and `effprof list` never import torch.

Component modules are imported to list their declared parameters; they must not import torch (or any
module that does) when they are imported, only when a factory runs. `lazy_import("torch")` returns a
stand-in whose first attribute access imports the real module (then cached in `sys.modules` as usual);
`MambaBlock, MambaLM = lazy_from("effprof.modules.mamba", "MambaBlock", "MambaLM")` stand-ins that import
the real objects when first called, read, indexed or used in `isinstance`.
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


class LazyAttr:
    """An attribute of a module (a class or function) imported on first call or attribute access."""

    __slots__ = ("_module", "_name")

    def __init__(self, module: str, name: str):
        object.__setattr__(self, "_module", module)
        object.__setattr__(self, "_name", name)

    def _resolve(self) -> Any:
        return getattr(importlib.import_module(object.__getattribute__(self, "_module")),
                       object.__getattribute__(self, "_name"))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._resolve()(*args, **kwargs)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._resolve(), attr)

    def __getitem__(self, key: Any) -> Any:
        return self._resolve()[key]

    def __iter__(self):
        return iter(self._resolve())

    def __instancecheck__(self, instance: Any) -> bool:  # isinstance(x, stand_in) checks the real class
        return isinstance(instance, self._resolve())

    def __repr__(self) -> str:
        return f"<lazy {object.__getattribute__(self, '_module')}.{object.__getattribute__(self, '_name')}>"


def lazy_attr(module: str, name: str) -> Any:
    """A stand-in for `from module import name` that imports it when first called or read."""
    return LazyAttr(module, name)


def lazy_from(module: str, *names: str) -> tuple[Any, ...]:
    """`A, B = lazy_from("pkg.mod", "A", "B")`: the deferred form of `from pkg.mod import A, B`."""
    return tuple(LazyAttr(module, name) for name in names)
