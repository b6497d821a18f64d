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
- `recover(device)`: after a row failed, put back what a failed capture or compile leaves in the process
  and check that the next row can run here (see its docstring); the launchers move the remaining rows to a
  fresh process when it cannot.

A failed capture leaves three things behind (PyTorch's `CUDAGraph::reset` says as much: "the generator
and the allocator could end up in all kinds of weird states depending where failure occurred"):
`torch.cuda.graph.__exit__` raises from `capture_end` before it leaves its stream context, so the capture
stream stays current; the failed graph object keeps its place in the CUDA generator's registry and the
generator stays in capture mode (`capture_epilogue` is never reached), so the next random op outside a
capture fails with "Offset increment outside graph capture encountered unexpectedly"; and the allocator
may still route the capture's allocations to the graph's private pool. `graphed_callable` restores the
stream and resets its graph on failure; `recover` then captures a tiny graph with a random op (its
prologue and epilogue take the generator out of capture mode) and probes the process.
"""
from __future__ import annotations

import gc
import sys
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
    is None); returns the graph's static output. Raises GraphCaptureError off CUDA or when capture fails,
    after putting back what the failed capture left (`_undo_capture`).

    The capture is `torch.cuda.graph`'s, spelled out (synchronise, empty the cache, capture on a side stream
    into a pool of our own) so that a failure is known to have happened before, during or at the end of the
    capture: `torch.cuda.graph.__exit__` leaves its stream current when `capture_end` raises."""
    device = device or torch.device("cuda")
    if device.type != "cuda" or not torch.cuda.is_available():
        raise GraphCaptureError(f"CUDA graphs need a CUDA device (got {device.type})")
    fn = _closure(call, inputs)
    graph = pool = None
    phase = "warm-up"
    try:
        before = torch.cuda.current_stream(device)
        side = torch.cuda.Stream(device)
        side.wait_stream(before)
        with torch.cuda.stream(side):
            for _ in range(warmup_calls):
                fn()
        before.wait_stream(side)
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        graph, pool = torch.cuda.CUDAGraph(), torch.cuda.graph_pool_handle()
        with torch.cuda.stream(torch.cuda.Stream(device)):  # its exit makes `before` current again, always
            phase = "capture"
            graph.capture_begin(pool=pool)
            failure = None
            try:
                static_out = fn()
            except Exception as exc:  # the call's own error is the one to report, not capture_end's after it
                failure = exc
            try:
                graph.capture_end()  # raises when the capture was invalidated (a host sync inside it)
                phase = "ended"
            except Exception as exc:
                failure = failure or exc
            if failure is not None:
                raise failure
        torch.cuda.synchronize(device)
    except Exception as exc:
        first = str(exc).strip().splitlines()
        message = f"CUDA graph capture failed: {type(exc).__name__}: {first[0][:200] if first else ''}"
        del exc
        _undo_capture(graph, device, pool, capture_unfinished=phase == "capture")
        raise GraphCaptureError(message) from None

    def replay():
        graph.replay()
        return static_out

    replay.graph = graph  # keep the graph (and its memory pool) alive with the function
    return replay


def _undo_capture(graph, device: torch.device, pool, capture_unfinished: bool) -> None:
    """What a failed capture leaves in this process, put back as far as the API reaches. When `capture_end`
    raised (`capture_unfinished`), the allocator may still route the capture's allocations to its pool and
    nothing will release that pool (a graph releases it on reset only after a capture that ended): end the
    routing and release it. Then reset the graph (its generator registration and capture bookkeeping go).
    Best effort, every step on its own: `recover` checks the result."""
    def attempt(step, *args) -> bool:
        try:
            step(*args)
            return True
        except Exception:  # noqa: BLE001  (what is already undone raises: fine)
            return False

    if capture_unfinished and pool is not None:
        index = device.index if device.index is not None else torch.cuda.current_device()
        end_pool = getattr(torch._C, "_cuda_endAllocateToPool", None)
        release_pool = getattr(torch._C, "_cuda_releasePool", None)
        if end_pool is not None:
            attempt(end_pool, index, pool)  # fails harmlessly where capture_end ended it before failing
        if release_pool is not None:
            attempt(release_pool, index, pool)
    if graph is not None:
        attempt(graph.reset)


def recover(device: torch.device, compiled: bool = False) -> str | None:
    """After a failed row: put this process back in order for the next row, or say why it cannot be.

    Resets torch.compile's caches (dynamo) when the row compiled; on CUDA: makes the default stream current
    again, collects and empties the allocator's cache (a failed graph's pool is freed with the graph),
    captures and replays a graph of one random op (its capture prologue and epilogue take the CUDA
    generator out of a capture mode a failed capture left it in), then draws random numbers outside any
    capture and synchronises: an error there (a generator still in capture mode, a sticky CUDA error, a
    device-side assert) means the process cannot measure another row. Returns None when it can, else one
    line saying why (the launchers then measure the remaining rows in a fresh process)."""
    if compiled and "torch._dynamo" in sys.modules:
        try:
            torch._dynamo.reset()
        except Exception as exc:  # noqa: BLE001  (a broken dynamo state is a reason, not a crash)
            return _reason("torch._dynamo.reset", exc)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    try:
        torch.cuda.set_stream(torch.cuda.default_stream(device))
        gc.collect()
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        probe_capture(device)
        torch.rand(4, device=device).sum().item()
        torch.cuda.synchronize(device)
    except Exception as exc:  # noqa: BLE001
        return _reason("after the failure", exc)
    return None


def probe_capture(device: torch.device) -> None:
    """Capture one random op in a CUDA graph on a side stream and replay it (raises if capture is broken)."""
    x = torch.zeros(64, device=device)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side):
        x.uniform_()
    graph.replay()
    torch.cuda.synchronize(device)
    graph.reset()


def _reason(where: str, exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{where}: {type(exc).__name__}: {first}"


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
