"""Execution modes beside eager: CUDA graph replay and torch.compile.

- `graphed_callable`: captures one call into a `torch.cuda.CUDAGraph` after a warm-up on a side stream
  (the recipe of the PyTorch CUDA graphs notes: warm-up on a side stream so that lazy initialisations
  and allocator pools are settled outside the capture), and returns a function that replays it. The
  replay reuses the captured input and output tensors: fill the same input tensors to change the data.
  What graphs remove is the CPU cost of launching kernels one by one; at batch 1 that is most of the
  time of a transformer.
- `compiled_module`: `torch.compile(module)` and the seconds its first call takes (tracing, Inductor
  code generation and autotuning happen there, not in `torch.compile` itself), kept apart from the
  steady-state latency the timer then measures.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch

from effprof.core.errors import EffprofError


class GraphCaptureError(EffprofError):
    """A call cannot be captured into a CUDA graph (not on CUDA, or it synchronises / allocates on the host)."""


class CompileError(EffprofError):
    """torch.compile failed on the first call."""


def _closure(call: Callable, inputs: tuple | None) -> Callable[[], Any]:
    return call if inputs is None else (lambda: call(inputs))


def graphed_callable(call: Callable, inputs: tuple | None = None, device: torch.device | None = None,
                     warmup_calls: int = 3) -> Callable[[], Any]:
    """A zero-argument function replaying a CUDA graph of `call(inputs)` (or of `call()` when `inputs`
    is None); returns the graph's static output. Raises GraphCaptureError off CUDA or when capture fails."""
    device = device or torch.device("cuda")
    if device.type != "cuda" or not torch.cuda.is_available():
        raise GraphCaptureError(f"CUDA graphs need a CUDA device (got {device.type})")
    fn = _closure(call, inputs)
    try:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup_calls):
                fn()
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = fn()
        torch.cuda.synchronize(device)
    except Exception as exc:
        first = str(exc).strip().splitlines()
        raise GraphCaptureError(f"CUDA graph capture failed: {type(exc).__name__}: "
                                f"{first[0][:200] if first else ''}") from None

    def replay():
        graph.replay()
        return static_out

    replay.graph = graph  # keep the graph (and its memory pool) alive with the function
    return replay


def compiled_module(module: torch.nn.Module, first_call: Callable[[torch.nn.Module], Any],
                    device: torch.device | None = None, **compile_kwargs) -> tuple[torch.nn.Module, float]:
    """(`torch.compile(module, **compile_kwargs)`, seconds of its first call `first_call(compiled)`).

    The first call is where compilation happens; it is synchronised on CUDA so its time is complete.
    """
    compiled = torch.compile(module, **compile_kwargs)
    start = time.perf_counter()
    try:
        first_call(compiled)
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
    except Exception as exc:
        first = str(exc).strip().splitlines()
        raise CompileError(f"torch.compile failed: {type(exc).__name__}: {first[0][:200] if first else ''}") from None
    return compiled, time.perf_counter() - start


class ShapeKeyedGraph:
    """`fn(carry)` replayed from a CUDA graph, one graph per signature of the carry: the shapes and dtypes of
    its top-level tensors and the identity of its other items (a KV cache object). A new signature (a
    reducer that kept a different number of tokens) captures a new graph; a known one copies the carry's
    tensors into that graph's static inputs (skipped when they are already the same tensors, as when the
    carry comes from another graph's static output) and replays it."""

    def __init__(self, fn: Callable[[tuple], Any], device: torch.device):
        self.fn, self.device = fn, device
        self.graphs: dict[tuple, tuple[tuple, Callable[[], Any]]] = {}

    def __call__(self, carry: tuple) -> Any:
        key = tuple((tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else id(x) for x in carry)
        entry = self.graphs.get(key)
        if entry is None:
            static = tuple(x.clone() if isinstance(x, torch.Tensor) else x for x in carry)
            entry = self.graphs[key] = (static, graphed_callable(self.fn, static, self.device))
        static, replay = entry
        for dst, src in zip(static, carry):
            if isinstance(dst, torch.Tensor) and dst is not src:
                dst.copy_(src)
        return replay()


def graphed_stages(stages: list, device: torch.device, eager: set[str]) -> list:
    """Stages whose `run` replays a CUDA graph (`ShapeKeyedGraph`), except those named in `eager` (a stage
    that reads a count back on the host cannot be captured): the graphs of the stages after it are keyed
    by the shapes it produces."""
    from effprof.core.registry import Stage

    return [s if s.name in eager else Stage(s.name, ShapeKeyedGraph(s.run, device), s.module, s.host_sync)
            for s in stages]
