"""Which share of a call's time the FLOP count covers (`flop_coverage`), and what it leaves out.

FLOPs are counted per aten op by `FlopCounterMode`; ops without a registered formula (elementwise ops,
normalisations, softmax, copies, a user's custom kernel) count zero. A TFLOP/s figure is then FLOPs of
some ops over the time of all of them, and is honest only when those ops take most of the time.

`flop_coverage(call, device)` runs `call()` under `torch.profiler` and walks each root op's tree the way
FlopCounterMode sees the call: it sees an op after composite ops (`aten::linear`, `aten::matmul`,
`aten::layer_norm`: CompositeImplicitAutograd) have decomposed, and does not look inside any other op's
kernel. So an op with a FLOP formula (`torch.utils.flop_counter.flop_registry`, effprof's own
registrations included) is covered with everything inside it; a composite op is looked through (its own
small overhead is uncovered); any other op (an elementwise op, a norm, a custom op without a formula even
if it calls matmuls inside) is uncovered with everything inside it, charged to its name. On CUDA the times are the device times of the kernels each op launched (the
profiler's kernel-to-op mapping, as `effprof.measure.breakdown` reads it; method `profiler-device`);
on CPU they are the ops' CPU times (`profiler-cpu`). `flop_coverage` = covered / total, a fraction.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

from typing import Any, Callable

import torch

METHODS = {True: "profiler-device (kernel time of ops with a FLOP formula)",
           False: "profiler-cpu (aten op CPU time of ops with a FLOP formula)"}


def formula_op_names() -> set[str]:
    """Profiler names (`aten::mm`, `effprof::selective_scan`) of every op FlopCounterMode has a formula for."""
    from torch.utils.flop_counter import flop_registry

    import effprof.measure.flops  # noqa: F401  (registers the CPU attention formula)

    names = set()
    for op in flop_registry:
        parts = str(op).split(".")
        if len(parts) >= 2:
            names.add(f"{parts[0]}::{parts[1]}")
    return names


def _looked_through(name: str) -> bool:
    """True for what FlopCounterMode sees through: a CompositeImplicitAutograd op, or a profiler range that
    is no op at all (a `record_function` label). Any other op is opaque to it."""
    namespace, sep, op = name.partition("::")
    if not sep:
        return True
    try:
        packet = getattr(getattr(torch.ops, namespace), op)
        overloads = packet.overloads()
        overload = getattr(packet, "default" if "default" in overloads else overloads[0])
        return bool(overload.has_kernel_for_dispatch_key(torch._C.DispatchKey.CompositeImplicitAutograd))
    except (AttributeError, IndexError, RuntimeError):
        return False  # an op we cannot inspect: assume FlopCounterMode sees it as one opaque op


@contextmanager
def profiler_notes_silenced():
    """Starting and stopping torch's profiler writes `USDT: ... profiler_start/stop` lines straight to file
    descriptor 2 (kineto, C++): hide them, so that a row's coverage does not add lines to every run's stderr.
    Only the profiler's start and stop run inside; the profiled calls do not."""
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2: nothing to hide
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


@contextmanager
def quiet_profile(activities):
    """`torch.profiler.profile(activities=...)` whose start and stop write nothing to stderr (the profiled
    calls inside still may)."""
    from torch.profiler import profile

    with profiler_notes_silenced():
        prof = profile(activities=activities)
        prof.start()
    try:
        yield prof
    finally:
        with profiler_notes_silenced():
            prof.stop()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flop_coverage(call: Callable[[], Any], device: torch.device, repeats: int = 3, warmup: int = 1) -> dict[str, Any]:
    """Profile `repeats` calls; return `coverage` (fraction of time in ops with a FLOP formula, None when
    nothing was timed), `total_ms` and `covered_ms` per call, `method` and `uncovered`: [{name, time_ms,
    share}] per call, costliest first (ops whose time counted zero FLOPs)."""
    from torch.profiler import ProfilerActivity

    on_cuda = device.type == "cuda"
    for _ in range(warmup):
        call()
    _sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with quiet_profile(activities) as prof:
        for _ in range(repeats):
            call()
        _sync(device)
    formulas = formula_op_names()
    cpu = torch.autograd.DeviceType.CPU
    events = [e for e in prof.events() if e.device_type == cpu and not e.is_async]

    def total(e) -> float:
        return e.device_time_total if on_cuda else e.cpu_time_total

    def own(e) -> float:
        return e.self_device_time_total if on_cuda else e.self_cpu_time_total

    covered = 0.0
    uncovered: dict[str, float] = {}
    through: dict[str, bool] = {}
    roots = [e for e in events if e.cpu_parent is None]
    stack = list(roots)
    while stack:
        e = stack.pop()
        if e.name in formulas:
            covered += total(e)
            continue
        if e.name not in through:
            through[e.name] = _looked_through(e.name)
        charged = own(e) if through[e.name] else total(e)
        if charged > 0:
            uncovered[e.name] = uncovered.get(e.name, 0.0) + charged
        if through[e.name]:
            stack.extend(e.cpu_children)
    total_us = sum(total(e) for e in roots)
    rows = sorted(({"name": k, "time_ms": v / 1e3 / repeats} for k, v in uncovered.items()), key=lambda r: -r["time_ms"])
    for r in rows:
        r["share"] = r["time_ms"] / (total_us / 1e3 / repeats) if total_us > 0 else None
    return {"coverage": min(1.0, covered / total_us) if total_us > 0 else None, "total_ms": total_us / 1e3 / repeats,
            "covered_ms": covered / 1e3 / repeats, "method": METHODS[on_cuda], "uncovered": rows}


def coverage_fields(call: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    """Record fields: `flop_coverage` (fraction), `flop_coverage_method`, `flop_uncovered_top` (the costliest
    op counted as zero, with its share of the time). A profiler failure leaves a note, not an error."""
    try:
        found = flop_coverage(call, device)
    except Exception as exc:  # no CUPTI, a profiler already running: the row goes on without the column
        return {"flop_coverage": None, "flop_coverage_note": f"profiler failed: {type(exc).__name__}: {exc}"[:200]}
    top = found["uncovered"][0] if found["uncovered"] else None
    return {"flop_coverage": found["coverage"], "flop_coverage_method": found["method"],
            "flop_uncovered_top": None if top is None or top["share"] is None else
            f"{top['name']} ({100 * top['share']:.0f}%)"}


def mark_low_coverage(records: list[dict[str, Any]], minimum: float) -> list[str]:
    """Set `flop_coverage_low` on rows whose coverage is below `minimum`; return their labels."""
    low = []
    for r in records:
        value = r.get("flop_coverage")
        if value is not None:
            r["flop_coverage_low"] = value < minimum
            if value < minimum:
                low.append(str(r.get("label")))
    return low
