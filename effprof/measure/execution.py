"""A row's execution mode: how the timed call is made (eager, CUDA graphs, torch.compile, compile + graphs).

`execution_mode` turns a `Built` into the zero-argument call the timer runs, the per-call setup outside the
timed region (input rotation, the L2 flush of `--cold`) and the record fields that say which mode ran. The
runner (`effprof.runner.measure`) asks for it once per row, after the counting passes.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch

from effprof.core.options import RunOptions
from effprof.core.registry import Built, Stage
from effprof.measure.modes import GraphCaptureError, compiled_module, graphed_callable, graphed_stages
from effprof.measure.timing import L2Flusher


def exec_mode(opts: RunOptions) -> str:
    if opts.graphs and opts.compile:
        return "compile+graphs"
    return "graphs" if opts.graphs else "compile" if opts.compile else "eager"


def execution_mode(built: Built, input_sets: list[tuple], opts: RunOptions, device: torch.device):
    """The zero-argument call to time, the per-call setup (outside the timed region) and record fields.

    eager: `built.call(inputs)`; graphs: replay of a CUDA graph of that call (inputs rotated by copying
    into the captured tensors); compile: the `torch.compile`d module (or the compiled call, or each compiled
    stage), its compile time (the first call) reported apart and never inside the latency; compile+graphs:
    the compiled call captured in a CUDA graph (Inductor's fused kernels, replayed without launches). With --train, `built` is the training tracker's
    `StepCall` (effprof.measure.training): each call is one training step, in the same modes; under graphs
    the whole step (forward, loss, backward, capturable AdamW step) is one CUDA graph.
    """
    state = {"i": 0}
    fields: dict[str, Any] = {"exec_mode": exec_mode(opts)}
    if opts.train:
        fields["exec_mode"] = "train-" + fields["exec_mode"]
    flush = L2Flusher.shared(device) if opts.cold and device.type == "cuda" else None
    if built.handles_exec_mode:  # the call applies the mode itself (e.g. a graph per decode step)
        fields["exec_mode"] += " (by the component)"

        def call():
            return built.call(input_sets[state["i"]])

        def rotate():
            state["i"] = (state["i"] + 1) % len(input_sets)
    elif opts.graphs and built.stages and any(s.host_sync for s in built.stages):
        eager = {s.name for s in built.stages if s.host_sync}
        if opts.compile:
            raise GraphCaptureError(f"--compile --graphs: stage(s) {', '.join(sorted(eager))} read a count back on "
                                    "the host, so the compiled call cannot be captured; use --graphs, or "
                                    "--compile --no-graphs")
        staged = Built(built.module, built.make_inputs, built.unit,
                       stages=graphed_stages(built.stages, device, eager))
        fields["exec_mode"] += f" (a graph per stage; {', '.join(sorted(eager))} eager: host read-back)"

        def call():
            return staged.call(input_sets[state["i"]])

        def rotate():
            state["i"] = (state["i"] + 1) % len(input_sets)
    elif opts.graphs:
        static = input_sets[0]
        if compiles_by_stage(built, opts):  # each stage compiled: the split times the same code
            step = compiled_stages(built, static, device, fields).call
        else:
            step = compiled_call(built, static, device, fields) if opts.compile else built.call
        call = graphed_callable(step, static, device)
        if opts.train:  # effprof.measure.training.StepCall: PyTorch's whole-network capture
            fields["train_exec"] = ("one CUDA graph per step: forward, loss, backward and optimizer step "
                                    f"({opts.optimizer}{', capturable' if opts.optimizer == 'adamw' else ''}), "
                                    "static gradients, warm-up on a side stream")

        def rotate():
            state["i"] = (state["i"] + 1) % len(input_sets)
            for dst, src in zip(static, input_sets[state["i"]]):
                if isinstance(dst, torch.Tensor):
                    dst.copy_(src)
    else:
        module, step = built.module, None
        if compiles_by_stage(built, opts):  # each stage's step compiled, chained as is
            built = compiled_stages(built, input_sets[0], device, fields)
        elif opts.compile and built.forward is not None:  # the call is more than module(*inputs): compile it
            step = compiled_call(built, input_sets[0], device, fields)
        elif opts.compile:
            module, seconds = compiled_module(built.module, lambda m: built.call(input_sets[0], m), device)
            fields["compile_s"] = seconds

        def call():
            if step is not None:
                return step(input_sets[state["i"]])
            return built.call(input_sets[state["i"]], module)

        def rotate():
            state["i"] = (state["i"] + 1) % len(input_sets)

    if len(input_sets) == 1 and flush is None:
        return call, None, fields

    def setup():
        rotate()
        if flush is not None:
            flush()

    if flush is not None:
        fields["peak_mem_note"] = "cold: the L2 flush buffer is allocated before and not counted"
    return call, setup, fields


def compiles_by_stage(built: Built, opts: RunOptions) -> bool:
    """Whether a --compile row compiles each stage's step (`compiled_stages`): a call that is its stages, with no
    forward or execution mode of its own. The stage split (`effprof.trackers.stages`) asks the same question."""
    return bool(opts.compile and built.stages and built.forward is None and not built.handles_exec_mode)


def compiled_call(built: Built, inputs: tuple, device: torch.device, fields: dict[str, Any]) -> Callable:
    """`torch.compile` of the whole call (a component's `forward` may do more than call its module, e.g. a
    decode step that sets its cache's length); the first call compiles and its seconds go to `compile_s`."""
    step = torch.compile(built.call)
    _first_call(lambda: step(inputs), device, fields)
    return step


def compiled_stages(built: Built, inputs: tuple, device: torch.device, fields: dict[str, Any]) -> Built:
    """`built` with each stage's step `torch.compile`d (the chain between them stays as it is); the first call
    compiles and its seconds go to `compile_s`. The stage split (`effprof.trackers.stages`) compiles the same
    steps, which Dynamo's cache then serves without compiling again, so the split times the code the row
    times (one compile of the whole call would fuse across stages that the split cannot show)."""
    staged = Built(built.module, built.make_inputs, built.unit, stages=compile_stages(built.stages))
    _first_call(lambda: staged.call(inputs), device, fields)
    return staged


def compile_stages(stages: list[Stage]) -> list[Stage]:
    """The stages with their steps `torch.compile`d (name, module and host read-back kept)."""
    return [Stage(s.name, torch.compile(s.run), s.module, s.host_sync) for s in stages]


def _first_call(call: Callable[[], Any], device: torch.device, fields: dict[str, Any]) -> None:
    """The compiling first call, its seconds in `compile_s`; a failure is one CompileError line."""
    from effprof.measure.modes import CompileError

    start = time.perf_counter()
    try:
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CompileError(f"torch.compile failed: {type(exc).__name__}: {first}") from None
    fields["compile_s"] = time.perf_counter() - start
