"""Where the time of one call goes, module by module.

Two ways to time each module of a call (`method` in every node says which):

- `profiler-device` (CUDA default): `torch.profiler` with a `record_function("effprof::<path>")` range
  opened and closed by forward pre/post hooks on every module; a module's time is the *device* time
  of the kernels launched inside its range (`FunctionEvent.device_time_total`), so host overhead and
  the gaps between kernels are not in it and the root's time is the device busy time, below the
  latency the timer reports.
- `hooks-perf_counter` (CPU default): forward pre/post hooks read `time.perf_counter`; a module's time
  is the wall time of its forward. `profiler-cpu` (profiler ranges, CPU time) is the same on the
  profiler's clock. The hooks cost a few µs per module call, which shows on modules that run in
  tens of µs: the root's time then reads above the timer's latency.

Both attribute time along nested ranges, so a parent's time is its children's plus its own work
outside any child: `self_ms = time_ms - children_ms` is that residual. It is ≥ 0 up to timer
resolution; `additivity_ok` is False for a node whose children add up to more than
`ADDITIVITY_REL_TOL` (1%) + `ADDITIVITY_ABS_TOL_MS` (1 µs) above it (a child running outside its
parent's range, e.g. work launched asynchronously).

Times are the mean per call over `repeats` calls (sums of ranges, so they stay additive), in ms.
FLOPs (2 × MAC, FlopCounterMode's formulas) and bytes (`effprof.measure.bytes`) per module come from
one counting pass; a module called twice per forward counts twice.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch

from effprof.measure.bytes import count_flops_and_bytes
from effprof.measure.coverage import quiet_profile

ADDITIVITY_REL_TOL = 0.01
ADDITIVITY_ABS_TOL_MS = 1e-3
RANGE_PREFIX = "effprof::"
METHODS = ("auto", "hooks-perf_counter", "profiler-cpu", "profiler-device")


def _modules(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    return list(module.named_modules())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_with_hooks(module: torch.nn.Module, call: Callable[[], Any], device: torch.device,
                    repeats: int) -> dict[str, float]:
    """Total perf_counter ms per module path over `repeats` calls (nested intervals: additive)."""
    totals: dict[str, float] = {}
    starts: dict[str, list[float]] = {}
    handles = []

    def pre(name):
        def hook(mod, args):
            _sync(device)
            starts.setdefault(name, []).append(time.perf_counter())
        return hook

    def post(name):
        def hook(mod, args, output):
            _sync(device)
            if starts.get(name):
                totals[name] = totals.get(name, 0.0) + (time.perf_counter() - starts[name].pop()) * 1e3
        return hook

    try:
        for name, sub in _modules(module):
            handles.append(sub.register_forward_pre_hook(pre(name)))
            handles.append(sub.register_forward_hook(post(name), always_call=True))
        for _ in range(repeats):
            call()
    finally:
        for h in handles:
            h.remove()
    return totals


def time_with_profiler(module: torch.nn.Module, call: Callable[[], Any], device: torch.device,
                       repeats: int) -> dict[str, float]:
    """Total ms per module path over `repeats` calls from torch.profiler ranges: device time of the kernels
    launched inside each range on CUDA, CPU time of the range elsewhere."""
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity

    on_cuda = device.type == "cuda"
    ranges: dict[str, list] = {}
    handles = []

    def pre(name):
        def hook(mod, args):
            r = record_function(RANGE_PREFIX + name)
            r.__enter__()
            ranges.setdefault(name, []).append(r)
        return hook

    def post(name):
        def hook(mod, args, output):
            if ranges.get(name):
                ranges[name].pop().__exit__(None, None, None)
        return hook

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    try:
        for name, sub in _modules(module):
            handles.append(sub.register_forward_pre_hook(pre(name)))
            handles.append(sub.register_forward_hook(post(name), always_call=True))
        with quiet_profile(activities) as prof:  # the profiler's own log lines stay off stderr
            for _ in range(repeats):
                call()
            _sync(device)
    finally:
        for h in handles:
            h.remove()
    totals: dict[str, float] = {}
    for event in prof.events():
        if not event.name.startswith(RANGE_PREFIX) or event.device_type != torch.autograd.DeviceType.CPU:
            continue  # the GPU-side copies of user ranges span idle gaps: use the CPU range and its kernels
        name = event.name[len(RANGE_PREFIX):]
        us = event.device_time_total if on_cuda else event.cpu_time_total
        totals[name] = totals.get(name, 0.0) + us / 1e3
    return totals


def _count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def breakdown(module: torch.nn.Module, call: Callable[[], Any], device: torch.device, depth: int = 2,
              repeats: int = 5, warmup: int = 2, method: str = "auto", count: bool = True) -> list[dict[str, Any]]:
    """Per-module time, params, FLOPs and bytes of `call()` (which runs `module`), pre-order, down to `depth`.

    Each node: `name` (qualified name, "" = root), `path` (root class + name, as FlopCounterMode
    names modules), `type`, `depth` (root 0), `params`, `gflops`, `moved_mib` (bytes moved, lower bound, in MiB),
    `calls`, `time_ms` (per call), `share_of_total` (of the root's time), `children_ms` (sum over
    the direct children), `self_ms` (residual), `additivity_ok`, `method`. Modules never called are left
    out. Run under `torch.inference_mode()` for inference figures.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}")
    if method == "auto":
        method = "profiler-device" if device.type == "cuda" else "hooks-perf_counter"
    if method == "profiler-device" and device.type != "cuda":
        raise ValueError("profiler-device needs a CUDA device")
    for _ in range(warmup):
        call()
    _sync(device)
    counts = count_flops_and_bytes(call, module) if count else None
    timer = time_with_hooks if method == "hooks-perf_counter" else time_with_profiler
    totals = timer(module, call, device, repeats)

    called_counts: dict[str, int] = {}  # which modules run, and how often per call

    def count_calls(name):
        def hook(mod, args):
            called_counts[name] = called_counts.get(name, 0) + 1
        return hook

    handles = [sub.register_forward_pre_hook(count_calls(name)) for name, sub in _modules(module)]
    try:
        call()
    finally:
        for h in handles:
            h.remove()

    root_type = type(module).__name__
    per_call = {name: ms / repeats for name, ms in totals.items() if name in called_counts}
    root_ms = per_call.get("", 0.0)
    named = _modules(module)
    children: dict[str, list[str]] = {name: [] for name, _ in named}
    for name, _ in named:
        if name:
            parent = name.rsplit(".", 1)[0] if "." in name else ""
            children.setdefault(parent, []).append(name)
    nodes = []
    for name, sub in named:
        level = 0 if not name else name.count(".") + 1
        if level > depth or name not in per_call:
            continue
        time_ms = per_call[name]
        kids_ms = sum(per_call.get(k, 0.0) for k in _called_descendants(name, children, per_call))
        self_ms = time_ms - kids_ms
        nodes.append({
            "name": name,
            "path": f"{root_type}.{name}" if name else root_type,
            "type": type(sub).__name__,
            "depth": level,
            "params": _count_params(sub),
            "gflops": counts.flops_per_module.get(name, 0) / 1e9 if counts else None,
            "moved_mib": counts.bytes_per_module.get(name, 0) / 2**20 if counts else None,
            "calls": called_counts.get(name, 0),
            "time_ms": time_ms,
            "share_of_total": time_ms / root_ms if root_ms > 0 else None,
            "children_ms": kids_ms,
            "self_ms": self_ms,
            "additivity_ok": self_ms >= -(ADDITIVITY_REL_TOL * time_ms + ADDITIVITY_ABS_TOL_MS),
            "method": method,
        })
    return nodes


def _called_descendants(name: str, children: dict[str, list[str]], timed: dict[str, float]) -> list[str]:
    """The nearest timed descendants of `name`: direct children, or, for a container that never runs
    itself (an nn.ModuleList), its children in turn."""
    found = []
    for child in children.get(name, []):
        if child in timed:
            found.append(child)
        else:
            found.extend(_called_descendants(child, children, timed))
    return found


def top_kernels(call: Callable[[], Any], device: torch.device, top: int = 15, repeats: int = 5,
                warmup: int = 2) -> list[dict[str, Any]]:
    """The costliest kernels (CUDA) or aten ops (CPU) of `call()`, per call, most expensive first.

    This sees what the module tree cannot: functional code inside one module (a scan, a convolution,
    dtype casts and copies). On CUDA each row is a kernel name with its device time
    (`self_device_time_total` of the profiler's averages); on CPU an aten op with its self CPU time.
    `time_ms` and `calls` are per call of `call()` (totals over `repeats` calls divided by `repeats`);
    `share` is of the summed time of all rows, the last row `(other)` holds what is past `top`.
    """
    from torch.profiler import ProfilerActivity

    on_cuda = device.type == "cuda"
    for _ in range(warmup):
        call()
    _sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with quiet_profile(activities) as prof:  # the profiler's own log lines stay off stderr
        for _ in range(repeats):
            call()
        _sync(device)
    rows = []
    for event in prof.key_averages():
        is_kernel = getattr(event.device_type, "name", str(event.device_type)).upper().endswith("CUDA")
        if on_cuda != is_kernel:
            continue
        total_us = event.self_device_time_total if on_cuda else event.self_cpu_time_total
        if total_us > 0:
            rows.append({"name": event.key, "calls": event.count / repeats, "time_ms": total_us / 1e3 / repeats})
    rows.sort(key=lambda r: -r["time_ms"])
    total = sum(r["time_ms"] for r in rows) or 1.0
    shown, rest = rows[:top], rows[top:]
    if rest:
        shown.append({"name": f"(other: {len(rest)} kinds)", "calls": sum(r["calls"] for r in rest),
                      "time_ms": sum(r["time_ms"] for r in rest)})
    for r in shown:
        r["share"] = r["time_ms"] / total
        r["method"] = "profiler-device (kernels)" if on_cuda else "profiler-cpu (aten ops, self time)"
    return shown
