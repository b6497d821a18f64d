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
- **Indexed reads** (`embedding`, `index_select`, `gather`, `index.Tensor`) read the indices and only the
  elements they gather (the output's size, at most the whole source), then write the output: an embedding
  lookup of one token reads one row, not the table.
- **Indexed writes in place** (`index_copy_`, `index_put_`, `index_fill_`, `index_add_`, `scatter_`,
  `scatter_add_`, `scatter_reduce_`) read the indices and the values they write and write only the indexed
  elements of the destination (reading them too where they accumulate): a KV cache's `index_copy_` of one
  token moves that token's keys, not the cache. A boolean index counts its true elements.
- **Attention on the meta device** (a count without a GPU) is one fused kernel, as the CUDA backends run it:
  q, k, v and the mask read, the output written (not the math decomposition meta would trace).
- **Custom ops** (effprof's kernels) follow the same rules from their schemas: an argument they mutate (a
  decoding state) is read and written back, unless their module declared it write-only or registered a
  formula for the op (`effprof.core.op_bytes`: a KV-cache kernel that writes one slot of the caches it is
  handed, a decode step's prologue that reads one embedding row).

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
from torch.utils.flop_counter import sdpa_flop_count

from effprof.core.op_bytes import BYTES_FORMULAS, NOT_MOVED_ARGUMENTS, WRITE_ONLY_ARGUMENTS, tensor_bytes
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


# Reads that touch only the elements their indices select: the name of the argument they gather from.
INDEXED_READ_OPS = {"embedding": "weight", "index_select": "self", "gather": "self", "index": "self"}
# In-place writes that touch only the indexed elements of their destination (argument 0); True = they also read
# those elements (accumulation; also index_put_ with accumulate and scatter_ with a reduce).
INDEXED_WRITE_OPS = {"index_copy_": False, "index_put_": False, "_index_put_impl_": False, "index_fill_": False,
                     "index_add_": True, "scatter_": False, "scatter_add_": True, "scatter_reduce_": True}


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):  # most arguments: no pytree walk
        return [value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return []
    return [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]


def _count_true(mask: torch.Tensor) -> int:
    """The true elements of a boolean index, counted outside any dispatch mode (not an op of the call); none on
    the meta device, which has no values (the count stays a lower bound)."""
    from torch.utils._python_dispatch import _disable_current_modes

    if mask.is_meta:
        return 0
    with _disable_current_modes():
        return int(mask.sum())


def _indexed_elements(name: str, a: dict[str, Any]) -> int:
    """Elements of the destination `a["self"]` an in-place indexed write touches (INDEXED_WRITE_OPS), from its
    arguments by name."""
    dest = a["self"]
    if name in ("index_put_", "_index_put_impl_"):
        shapes, indexed, dim = [], set(), 0
        for index in a["indices"]:  # None keeps its dimension whole; a mask covers index.dim() dimensions
            if index is None:
                dim += 1
                continue
            width = index.dim() if index.dtype == torch.bool else 1
            shapes.append((_count_true(index),) if index.dtype == torch.bool else tuple(index.shape))
            indexed.update(range(dim, dim + width))
            dim += width
        rest = 1
        for d, size in enumerate(dest.shape):
            if d not in indexed:
                rest *= size
        selected = 1
        for size in torch.broadcast_shapes(*shapes) if shapes else ():
            selected *= size
        return selected * rest
    if name.startswith("scatter"):
        return a["index"].numel()
    if name == "index_fill_":
        return dest.numel() // max(dest.size(a["dim"]), 1) * a["index"].numel() if dest.dim() else a["index"].numel()
    return a["source"].numel()  # index_copy_, index_add_


def _indexed_op_bytes(name: str, func, args: tuple, kwargs: dict, out: Any) -> int:
    """Bytes of an op of INDEXED_READ_OPS or INDEXED_WRITE_OPS (module docstring)."""
    a = bound_arguments(func, args, kwargs)
    if name in INDEXED_READ_OPS:
        source = a[INDEXED_READ_OPS[name]]
        others = {id(t): t for key, v in a.items() if key not in (INDEXED_READ_OPS[name], "out")
                  for t in _tensors(v)}  # the indices (an out= argument is the output, written)
        written = sum(tensor_bytes(t) for t in _tensors(out))
        return sum(tensor_bytes(t) for t in others.values()) + min(written, tensor_bytes(source)) + written
    dest = a["self"]
    elements = _indexed_elements(name, a)
    reads = 0
    for key, value in a.items():
        for t in _tensors(value):
            if t is dest:
                continue
            # a scatter source supplies only the elements its index selects
            reads += min(tensor_bytes(t), elements * t.element_size()) if key == "src" else tensor_bytes(t)
    touched = elements * dest.element_size()
    accumulates = INDEXED_WRITE_OPS[name] or bool(a.get("accumulate")) or a.get("reduce") is not None
    return reads + touched * (2 if accumulates else 1)


def is_view_op(func) -> bool:
    """True when every return of the op aliases an input without writing it (a view: no data moves)."""
    returns = func._schema.returns
    return bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)


def op_bytes(func, args: tuple, kwargs: dict, out: Any) -> int:
    """Bytes read and written by one op under the convention of this module: by the formula the op's module
    registered (`effprof.core.op_bytes`) where it has one, else by the rules. An argument the op mutates (its
    schema marks it written) is read and written back, like `add_`'s destination, unless it is write-only: an
    `out=` argument, the destination of WRITE_ONLY_DESTINATION_OPS, or one its module declared write-only; an
    argument its module declared a hint (`declare_not_moved`) is not counted."""
    formula = BYTES_FORMULAS.get(func._schema.name)
    if formula is not None:
        return formula(bound_arguments(func, args, kwargs), out)
    write_only = WRITE_ONLY_ARGUMENTS.get(func._schema.name, frozenset())
    hints = NOT_MOVED_ARGUMENTS.get(func._schema.name, frozenset())
    name = func._schema.name.split("::")[-1]
    if name in ZERO_BYTE_OPS or is_view_op(func):
        return 0
    if name in INDEXED_READ_OPS or name in INDEXED_WRITE_OPS:
        return _indexed_op_bytes(name, func, args, kwargs, out)
    read: dict[int, torch.Tensor] = {}
    written: dict[int, torch.Tensor] = {}
    for i, arg in enumerate(func._schema.arguments):
        if arg.name in hints:
            continue
        value = kwargs.get(arg.name) if arg.kwarg_only or i >= len(args) else args[i]
        mutated = arg.alias_info is not None and arg.alias_info.is_write
        written_only = mutated and (getattr(arg, "is_out", False) or arg.name in write_only
                                    or (i == 0 and name in WRITE_ONLY_DESTINATION_OPS))
        for t in _tensors(value):
            if not written_only:
                read.setdefault(id(t), t)
            if mutated:  # returned (aten's in-place and out= ops) or not (custom ops): written either way
                written.setdefault(id(t), t)
    for t in _tensors(out):
        written.setdefault(id(t), t)
    return sum(tensor_bytes(t) for t in read.values()) + sum(tensor_bytes(t) for t in written.values())


def bound_arguments(func, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The op's arguments by schema name (positional and keyword), for byte formulas."""
    return {a.name: (kwargs.get(a.name) if a.kwarg_only or i >= len(args) else args[i])
            for i, a in enumerate(func._schema.arguments)}


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
        self._composite: dict[Any, bool] = {}  # `_decomposes`, per op
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

    def _decomposes(self, func) -> bool:
        """Whether `func.decompose` may give a decomposition (a CompositeImplicitAutograd kernel, C++ or Python),
        asked once per op of a count: most ops have none, and entering the mode to learn it costs more than the
        op."""
        known = self._composite.get(func)
        if known is None:
            key = torch._C.DispatchKey.CompositeImplicitAutograd
            known = self._composite[func] = (
                isinstance(func, torch._ops.OpOverload) and func is not torch.ops.prim.device.default
                and (key in func.py_kernels or torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), key)))
        return known

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten.scaled_dot_product_attention.default and args and args[0].is_meta and args[0].dim() == 4:
            return self._fused_attention(func, args, kwargs)
        # Composite ops (linear, reshape, contiguous, sdpa under inference mode) reach the mode whole:
        # run their decomposition under the mode so that the ops that actually execute are counted,
        # as FlopCounterMode does.
        if self._decomposes(func):
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
        self._add(nbytes, flops)
        return out

    def _fused_attention(self, func, args, kwargs):
        """Attention on the meta device (a count without a GPU) as the CUDA backends run it, one fused kernel that
        reads q, k, v and the mask and writes the output, rather than the math decomposition meta would trace
        (scores materialised, k and v copied to float32): the count then predicts the GPU's. FLOPs by
        FlopCounterMode's attention formula, which the math path's two matmuls equal."""
        out = func(*args, **kwargs)  # shapes only
        a = bound_arguments(func, args, kwargs)
        operands = {id(t): t for t in (a["query"], a["key"], a["value"], a.get("attn_mask"), out)
                    if isinstance(t, torch.Tensor)}  # a tensor passed twice is read once
        nbytes = sum(tensor_bytes(t) for t in operands.values())
        flops = sdpa_flop_count(a["query"].shape, a["key"].shape, a["value"].shape) if self.count_flops else 0
        self._add(nbytes, flops)
        return out

    def _add(self, nbytes: int, flops: int) -> None:
        """One op's bytes and FLOPs, in total and for every module running."""
        self.total_bytes += nbytes
        self.total_flops += flops
        for name in self._stack.current() if self._stack is not None else ():
            self.bytes_per_module[name] = self.bytes_per_module.get(name, 0) + nbytes
            self.flops_per_module[name] = self.flops_per_module.get(name, 0) + flops


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
