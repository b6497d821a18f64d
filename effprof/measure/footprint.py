"""What a configuration needs before anything is allocated: its weights and its inputs, in bytes, counted by
building the component on PyTorch's `meta` device (shapes and dtypes, no storage), and the memory free on
the device it would run on. A configuration that cannot fit is refused with a line that says how much it
would need; one that fits by this count may still run out of memory in its activations, which is then an
OOM row (runner.is_oom).

The same meta build counts the FLOPs of one call (FlopCounterMode, for at most META_COUNT_S; a generation
loop: its prefill only; either way a lower bound), and a call that would take longer than MAX_CALL_S even at an optimistic peak of the
device (CPU_CORE_PEAK per core, GPU_PEAK per GPU: above what any current core or GPU does, so the time is
a lower bound) is refused in one line (`--prompt-tokens 1000000` on a CPU), or past `--max-time` when
that is shorter: such a row could not finish one timed call.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from effprof.core.errors import EffprofError, TooLarge
from effprof.core.libwarnings import quiet_libraries

META = torch.device("meta")
# Optimistic compute peaks (FLOP/s): fp32 AVX-512 with two FMA units at 3.5 GHz is 224 GFLOP/s per core; the
# fastest single GPU (B200) does 2.25 PFLOP/s dense at 16 bits. Real rows run slower, never faster.
CPU_CORE_PEAK = 250e9
GPU_PEAK = 5e15
MAX_CALL_S = 120.0  # one call longer than this at the peak (real rows run several times slower): a typo
META_COUNT_S = 1.0  # the most a row spends counting its FLOPs on meta (a lower bound is enough)


@dataclass(frozen=True)
class Footprint:
    """Bytes of the weights (parameters and buffers) and of the inputs of one configuration."""

    weights_bytes: int
    inputs_bytes: int
    call_flops: float | None = None  # FLOPs of one call (a generation loop: its prefill), None if unknown

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.inputs_bytes


def _tensor_bytes(value: Any, seen: set[int]) -> int:
    if isinstance(value, torch.Tensor):
        if id(value) in seen:
            return 0
        seen.add(id(value))
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v, seen) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v, seen) for v in value)
    return 0


def footprint(config) -> Footprint | None:
    """Weights + inputs of `config` (an effprof.runner.Config), built on the meta device.

    Inputs count every input set the run makes (`--cold` rotates `input_sets` of them). Returns None when
    the component cannot be built on meta (a checkpoint to read, a factory that computes on its weights):
    the count is then unknown and nothing is refused on its account.
    """
    from effprof.core.registry import BuildContext, get_component

    component = get_component(config.component)
    values = component.resolve(config.params)
    if values.get("pretrained"):
        return None
    opts = config.options
    try:
        dtype = opts.torch_dtype()
        with META, quiet_libraries(opts.debug):  # tensors a factory makes without naming a device are meta too
            built = component.build(values, BuildContext(META, dtype, opts.seed))
            seen: set[int] = set()
            weights = sum(_tensor_bytes(t, seen) for t in [*built.module.parameters(), *built.module.buffers()])
            made = built.make_inputs(opts.batch)
            inputs = _tensor_bytes(made, set())
    except (EffprofError, Exception):  # noqa: BLE001 - unknown on meta; the real build judges
        return None
    sets = opts.input_sets if opts.cold else 1
    return Footprint(int(weights), int(inputs) * sets, _meta_flops(built, made))


class _Deadline(TorchDispatchMode):
    """Stops a meta call at a deadline: what FlopCounterMode counted by then is a lower bound of its FLOPs."""

    def __init__(self, seconds: float):
        super().__init__()
        self.deadline = time.perf_counter() + seconds

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if time.perf_counter() > self.deadline:
            raise _Stop
        return func(*args, **(kwargs or {}))


class _Stop(Exception):
    pass


def _meta_flops(built, inputs) -> float | None:
    """A lower bound of the FLOPs of one call, counted on the meta device (nothing computed) for at most
    META_COUNT_S seconds (a Python loop over tokens on meta stops there, with what it counted so far); a
    generation loop counts its first stage. None when the call cannot run on meta."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    try:
        with META, torch.no_grad(), counter, _Deadline(META_COUNT_S):
            if built.hooks.get("generation") and built.stages:
                built.stages[0].run(inputs)
            else:
                built.call(inputs)
    except _Stop:
        pass
    except (EffprofError, Exception):  # noqa: BLE001 - not countable on meta: no time check
        return None
    return float(counter.get_total_flops())


def peak_flops(device: torch.device) -> float | None:
    """The optimistic peak FLOP/s of `device` used to bound a call's time from below (None: no bound)."""
    if device.type == "cpu":
        return CPU_CORE_PEAK * (os.cpu_count() or 1)
    if device.type == "cuda":
        return GPU_PEAK
    return None


def check_time(config, need: Footprint | None, device: torch.device) -> None:
    """Raise TooLarge when one call of `config` cannot finish within MAX_CALL_S (or --max-time) at the peak."""
    peak = peak_flops(device)
    if need is None or need.call_flops is None or peak is None:
        return
    limit = min(MAX_CALL_S, config.options.max_time or MAX_CALL_S)
    seconds = need.call_flops / peak
    if seconds > limit:
        label = config.label or config.component
        raise TooLarge(f"{label}: one call is at least {need.call_flops / 1e12:,.0f} TFLOP (FLOP = 2 x MAC, counted "
                       f"on meta), {seconds:,.0f} s or more on {device.type} even at {peak / 1e12:g} TFLOP/s, more "
                       f"than the {limit:g} s a call may take; choose smaller sizes")


def available_bytes(device: torch.device) -> int | None:
    """Memory free for new tensors on `device`: CUDA's free memory, or on CPU the smaller of the kernel's
    MemAvailable and the cgroup's limit less its usage. None when it cannot be read."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except Exception:  # noqa: BLE001
            return None
    if device.type != "cpu":
        return None
    candidates = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    candidates.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        try:
            candidates.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError):
            pass
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        if limit != "max":
            used = int(open("/sys/fs/cgroup/memory.current").read().strip())
            candidates.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return min(candidates) if candidates else None


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} EiB"


def check_fits(config, device: torch.device | None = None) -> Footprint | None:
    """Raise TooLarge when the weights and inputs of `config` exceed the memory free on its device, or when
    one call cannot finish in time (`check_time`)."""
    device = device or config.options.torch_device()
    free = available_bytes(device)  # None on meta (nothing is allocated) or where it cannot be read
    if free is None:
        return None
    need = footprint(config)
    if need is not None and need.total_bytes > free:
        label = config.label or config.component
        raise TooLarge(f"{label}: needs {human_bytes(need.total_bytes)} for weights "
                       f"({human_bytes(need.weights_bytes)}) and inputs ({human_bytes(need.inputs_bytes)}) "
                       f"before any activation, more than the {human_bytes(free)} free on {device.type}")
    check_time(config, need, device)
    return need
