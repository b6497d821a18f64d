"""How the ops of an extension count toward `effprof.measure.bytes` (the bytes a call moves), declared where the
ops are defined: the `ops` floor sits below `measure`, so it declares here and `measure.bytes` reads.

- `declare_write_only(op, *arguments)`: the op writes these mutated arguments without reading them (a kernel
  that leaves a decoding state in a buffer it is handed). Other mutated arguments are read and written back.
- `declare_not_moved(op, *arguments)`: the op takes these only as hints (a later kernel's weight to prefetch into
  L2): they count where that later kernel reads them, not here.
- `register_bytes_formula(op)`: the op's bytes come from the decorated `formula(arguments, out)`, arguments by
  schema name; for ops that write part of a buffer they are handed or read a few rows of a table.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

WRITE_ONLY_ARGUMENTS: dict[str, frozenset[str]] = {}
NOT_MOVED_ARGUMENTS: dict[str, frozenset[str]] = {}
BYTES_FORMULAS: dict[str, Callable[[dict[str, Any], Any], int]] = {}


def declare_write_only(op: str, *arguments: str) -> None:
    """`op` ("namespace::name") writes `arguments` (mutated ones) without reading them."""
    WRITE_ONLY_ARGUMENTS[op] = frozenset(arguments)


def declare_not_moved(op: str, *arguments: str) -> None:
    """`op` ("namespace::name") takes `arguments` as hints only (module docstring): they are not counted."""
    NOT_MOVED_ARGUMENTS[op] = frozenset(arguments)


def register_bytes_formula(op: str):
    """Decorator: count `op` ("namespace::name") with `formula(arguments, out) -> bytes`, as
    `register_flop_formula` does for FLOPs, keeping `effprof.measure.bytes`'s convention."""
    def register(formula: Callable[[dict[str, Any], Any], int]) -> Callable[[dict[str, Any], Any], int]:
        BYTES_FORMULAS[op] = formula
        return formula
    return register


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes of the distinct elements a tensor addresses: stride-0 (broadcast) dimensions count once."""
    try:
        strides = t.stride()
    except (RuntimeError, NotImplementedError):  # sparse / nested layouts have no strides
        return t.numel() * t.element_size()
    unique = 1
    for size, stride in zip(t.shape, strides):
        if stride != 0:
            unique *= size
    if t.numel() == 0:
        unique = 0
    return unique * t.element_size()
