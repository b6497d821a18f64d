"""Bytes moved by a call: the compulsory memory traffic of eager, one-kernel-per-op execution.

Convention (counted once per call, for the whole batch, "the way FlopCounterMode counts FLOPs"): a
`TorchDispatchMode` sees every aten op and counts

    bytes(op) = sum of the bytes of its distinct tensor inputs (each read once)
              + sum of the bytes of its tensor outputs (each written once)

with these rules:

- **Views count zero.** An op whose every return aliases an input without writing it (its schema
  returns `Tensor(a)`: view, reshape-as-view, transpose, t, permute, expand, squeeze/unsqueeze,
  slice, select, narrow, split/chunk/unbind, diagonal, as_strided, detach, alias, lift_fresh, ...)
  moves no data; so do the ops in `ZERO_BYTE_OPS` (`_unsafe_view`, `_reshape_alias`, allocation
  without initialisation: `empty*`, `new_empty*`). A `reshape` that must copy reaches the mode as
  `clone` + `_unsafe_view` and the clone is counted.
- **Size of a tensor** = its unique elements × element size: dimensions with stride 0 (an `expand`ed
  bias) are counted once, not per broadcast copy.
- **A tensor passed twice to one op** (`x * x`) is read once.
- **Write-only arguments** are not read: the `out=` argument of `*.out` ops and the destination of
  `copy_`, `fill_`, `zero_` and the in-place random fills. An in-place op such as `add_` reads its
  destination and writes it back (3 tensors' worth for `x.add_(y)`).

This is a *lower bound for eager execution*: every kernel reads its inputs and writes its outputs at
least once. Real kernels move more (tiled matmuls re-read operands, softmax takes several passes);
fusion (torch.compile, CUDA kernels that fuse a chain of ops) or L2 hits across back-to-back kernels
can move less, so for compiled code it is an upper estimate of the compulsory traffic. Divided by
latency it gives a lower bound on the achieved bandwidth: the memory side of the roofline of
Williams, Waterman & Patterson, "Roofline: an insightful visual performance model", CACM 2009.

FLOPs counted in the same pass use `torch.utils.flop_counter.flop_registry`, the formulas
FlopCounterMode applies (2 × MAC), so `count_flops_and_bytes(fn).flops == count_flops(fn)[0]`.

Per-module counts are keyed by the module's qualified name from `module.named_modules()` ("" is the
root); like FlopCounterMode, an op counts towards every module on the stack when it runs, so a
parent's count includes its children's.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from effprof.measure import flops as _flops  # noqa: F401  (registers the CPU attention formula)

aten = torch.ops.aten

# Ops that touch no tensor data although their schema does not mark them as views.
ZERO_BYTE_OPS = frozenset({
    "_unsafe_view", "_reshape_alias", "empty", "empty_like", "empty_strided", "new_empty",
    "new_empty_strided", "empty_permuted", "resize_", "set_",
    # metadata queries: read shapes and strides, not data
    "size", "sym_size", "stride", "sym_stride", "numel", "sym_numel", "dim", "storage_offset",
    "sym_storage_offset", "is_contiguous", "sym_is_contiguous", "is_strides_like_format",
    "is_non_overlapping_and_dense", "is_same_size", "layout", "device", "_nested_tensor_size",
})
# In-place ops whose first argument is only written, never read.
WRITE_ONLY_DESTINATION_OPS = frozenset({
    "copy_", "fill_", "zero_", "uniform_", "normal_", "bernoulli_", "random_", "exponential_",
    "geometric_", "log_normal_", "cauchy_",
})


class OpCounts(NamedTuple):
    """FLOPs (2 × MAC) and bytes (see the module docstring) of one call, total and per module path."""

    flops: int
    bytes: int
    flops_per_module: dict[str, int]
    bytes_per_module: dict[str, int]


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


def is_view_op(func) -> bool:
    """True when every return of the op aliases an input without writing it (a view: no data moves)."""
    returns = func._schema.returns
    return bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)


def op_bytes(func, args: tuple, kwargs: dict, out: Any) -> int:
    """Bytes read and written by one aten op under the convention of this module."""
    name = func._schema.name.split("::")[-1]
    if name in ZERO_BYTE_OPS or is_view_op(func):
        return 0
    read: dict[int, torch.Tensor] = {}
    for i, arg in enumerate(func._schema.arguments):
        value = kwargs.get(arg.name) if arg.kwarg_only or i >= len(args) else args[i]
        written_only = arg.alias_info is not None and arg.alias_info.is_write and (
            getattr(arg, "is_out", False) or (i == 0 and name in WRITE_ONLY_DESTINATION_OPS))
        if written_only:
            continue
        for t in tree_flatten(value)[0]:
            if isinstance(t, torch.Tensor):
                read.setdefault(id(t), t)
    written: dict[int, torch.Tensor] = {}
    for t in tree_flatten(out)[0]:
        if isinstance(t, torch.Tensor):
            written.setdefault(id(t), t)
    return sum(tensor_bytes(t) for t in read.values()) + sum(tensor_bytes(t) for t in written.values())


class _ModuleStack:
    """Which modules of `root` are running, by qualified name, through forward pre/post hooks."""

    def __init__(self, root: torch.nn.Module | None):
        self.active: list[str] = []
        self.handles = []
        if root is None:
            return
        for name, module in root.named_modules():
            self.handles.append(module.register_forward_pre_hook(self._enter(name)))
            self.handles.append(module.register_forward_hook(self._leave(name), always_call=True))

    def _enter(self, name):
        def hook(module, args):
            self.active.append(name)
        return hook

    def _leave(self, name):
        def hook(module, args, output):
            if name in self.active:  # remove the innermost entry of this name
                del self.active[len(self.active) - 1 - self.active[::-1].index(name)]
        return hook

    def current(self) -> set[str]:
        return set(self.active)

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


class BytesFlopsMode(TorchDispatchMode):
    """Dispatch mode adding up bytes (and optionally FLOPs) per op, in total and per running module."""

    def __init__(self, module: torch.nn.Module | None = None, count_flops: bool = True):
        super().__init__()
        self.module = module
        self.count_flops = count_flops
        self.total_bytes = 0
        self.total_flops = 0
        self.bytes_per_module: dict[str, int] = {}
        self.flops_per_module: dict[str, int] = {}
        self._stack: _ModuleStack | None = None
        self._depth = 0  # the mode re-enters itself to decompose composite ops
        if count_flops:
            from torch.utils.flop_counter import flop_registry

            self._flop_registry = flop_registry

    def __enter__(self):
        if self._depth == 0:
            self._stack = _ModuleStack(self.module)
        self._depth += 1
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._depth -= 1
            if self._depth == 0 and self._stack is not None:
                self._stack.close()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # Composite ops (linear, reshape, contiguous, sdpa under inference mode) reach the mode whole:
        # run their decomposition under the mode so that the ops that actually execute are counted,
        # as FlopCounterMode does.
        if isinstance(func, torch._ops.OpOverload) and func is not torch.ops.prim.device.default:
            with self:
                decomposed = func.decompose(*args, **kwargs)
            if decomposed is not NotImplemented:
                return decomposed
        out = func(*args, **kwargs)
        nbytes = op_bytes(func, args, kwargs, out)
        flops = 0
        if self.count_flops:
            formula = self._flop_registry.get(func._overloadpacket)
            if formula is not None:
                flops = int(formula(*args, **kwargs, out_val=out))
        self.total_bytes += nbytes
        self.total_flops += flops
        for name in self._stack.current() if self._stack is not None else ():
            self.bytes_per_module[name] = self.bytes_per_module.get(name, 0) + nbytes
            self.flops_per_module[name] = self.flops_per_module.get(name, 0) + flops
        return out


def count_bytes(fn: Callable[[], Any]) -> int:
    """Run `fn()` once and return the bytes it moves under this module's convention (whole batch)."""
    with BytesFlopsMode(count_flops=False) as mode:
        fn()
    return mode.total_bytes


def count_flops_and_bytes(fn: Callable[[], Any], module: torch.nn.Module | None = None) -> OpCounts:
    """Run `fn()` once; FLOPs (FlopCounterMode's formulas, 2 × MAC) and bytes, in total and per module.

    Per-module dicts are keyed by `module.named_modules()` names ("" = `module` itself) and are empty
    when `module` is None.
    """
    with BytesFlopsMode(module, count_flops=True) as mode:
        fn()
    return OpCounts(mode.total_flops, mode.total_bytes, dict(mode.flops_per_module), dict(mode.bytes_per_module))
