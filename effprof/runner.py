"""Run components through the measurement layer and turn each configuration into a plain record.

This is the only place where components (what is profiled) meet the measurement code (what is
measured). Records are flat dicts of str/int/float/None, ready for tables, CSV and JSON.
"""
from __future__ import annotations

import gc
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

from effprof.errors import EffprofError, UsageError
from effprof.limits import check_options
from effprof.measure.env import environment, resolve_device
from effprof.measure.bytes import count_flops_and_bytes
from effprof.measure.footprint import check_fits
from effprof.measure.calibrate import ceilings, tf32_enabled
from effprof.measure.modes import compiled_module, graphed_callable
from effprof.measure.nvml import CallCounter, NvmlSampler
from effprof.measure.roofline import roofline_fields
from effprof.measure.timing import L2Flusher, TimingResult, time_callable
from effprof.registry import BuildContext, Built, get_component

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MIB = 2**20


@dataclass(frozen=True)
class RunOptions:
    """How to measure, common to every component. Times are in seconds."""

    batch: int = 1
    dtype: str = "auto"          # auto = bf16 on cuda, fp32 on cpu
    device: str = "auto"
    warmup: float = 0.2
    min_time: float = 1.0
    max_time: float | None = None
    max_cv: float | None = None
    seed: int = 0
    cold: bool = False           # flush L2 and rotate inputs between calls
    input_sets: int = 4          # how many input sets --cold rotates through
    graphs: bool = False         # time replays of a CUDA graph of the call
    compile: bool = False        # time the torch.compile'd module (compile time reported apart)
    count_flops: bool = True
    flops_crosscheck: bool = False

    def validate(self) -> "RunOptions":
        check_options(self)  # numbers that are numbers, finite and in their bounds (effprof/limits.py)
        if self.batch < 1:
            raise UsageError(f"--batch: {self.batch} must be at least 1")
        if self.dtype not in ("auto", *DTYPES):
            raise UsageError(f"--dtype: {self.dtype!r} is not one of auto, bf16, fp16, fp32")
        if self.min_time <= 0 or self.warmup < 0:
            raise UsageError("--min-time must be positive and --warmup not negative")
        if self.max_cv is not None and not 0 < self.max_cv < 1:
            raise UsageError(f"--max-cv: {self.max_cv} must be in (0, 1)")
        if self.input_sets < 1:
            raise UsageError("--input-sets must be at least 1")
        if self.graphs and self.compile:
            raise UsageError("--graphs and --compile are separate modes; choose one")
        if self.graphs and resolve_device(self.device).type != "cuda":
            raise UsageError("--graphs needs a CUDA device (CUDA graphs do not exist on cpu)")
        resolve_device(self.device)
        return self

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def torch_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if self.torch_device().type == "cuda" else torch.float32
        return DTYPES[self.dtype]

    def dtype_name(self) -> str:
        return {v: k for k, v in DTYPES.items()}[self.torch_dtype()]


@dataclass(frozen=True)
class Config:
    """One row to measure: a component, its (unparsed) parameters, options and a display label."""

    component: str
    params: dict[str, Any]
    options: RunOptions
    label: str = ""

    def resolved(self) -> dict[str, Any]:
        return get_component(self.component).resolve(self.params)


def params_text(values: dict[str, Any], given: Iterable[str] | None = None) -> str:
    """Compact `k=v` text of the parameters that were set explicitly (all when `given` is None)."""
    keys = list(values) if given is None else [k.replace("-", "_") for k in given]
    return ",".join(f"{k}={values[k]}" for k in keys if k in values and k != "pretrained")


def count_params(module: torch.nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts; shared tensors are counted once."""
    seen: dict[int, torch.nn.Parameter] = {}
    for p in module.parameters():
        seen.setdefault(id(p), p)
    total = sum(p.numel() for p in seen.values())
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return total, trainable


def tensor_bytes(module: torch.nn.Module) -> int:
    """Bytes held by parameters and buffers (the weights)."""
    tensors = {id(t): t for t in list(module.parameters()) + list(module.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def build(config: Config) -> tuple[Built, dict[str, Any], BuildContext]:
    component = get_component(config.component)
    values = component.resolve(config.params)
    opts = config.options
    ctx = BuildContext(opts.torch_device(), opts.torch_dtype(), opts.seed)
    torch.manual_seed(opts.seed)
    built = component.build(values, ctx)
    built.module.eval()
    return built, values, ctx


def measure(config: Config, timer: Callable[..., TimingResult] = time_callable) -> dict[str, Any]:
    """Measure one configuration and return its record.

    Peak memory on CUDA is the maximum allocated during the timed calls minus what was allocated
    before them (weights, inputs): the activations and workspaces of one call. With `--graphs` the
    window starts before the capture, because the graph's private pool holds the activations. On
    CPU, torch keeps no allocator statistics, so the column is left empty and `peak_mem_note` says why.
    """
    opts = config.options.validate()
    check_fits(config)  # weights + inputs that cannot fit are refused before anything is allocated
    built, values, ctx = build(config)
    component = get_component(config.component)
    device = ctx.device
    record = base_record(config, values, component.unit, ctx)
    total, trainable = count_params(built.module)
    record.update(params_total=total, params_trainable=trainable,
                  weights_mib=tensor_bytes(built.module) / MIB, **built.info)

    torch.manual_seed(opts.seed + 1)
    n_sets = opts.input_sets if opts.cold else 1
    input_sets = [built.make_inputs(opts.batch) for _ in range(n_sets)]
    items_per_call = opts.batch * built.items_per_sample
    counted_bytes = None
    with torch.inference_mode():
        if opts.count_flops:
            counts = count_flops_and_bytes(lambda: built.call(input_sets[0]))
            record["gflops"] = counts.flops / 1e9
            counted_bytes = counts.bytes
        if built.extras is not None:
            record.update(built.extras(built.module, input_sets[0]))
        memory = PeakMemory(device)
        if opts.graphs:
            memory.start()
        call, setup, mode_fields = execution_mode(built, input_sets, opts, device)
        record.update(mode_fields)
        if not opts.graphs:
            memory.start()
        counter = CallCounter(call)
        with NvmlSampler(device) if device.type == "cuda" else nullcontext() as sampler:
            timing = timer(counter, device, warmup_s=opts.warmup, min_time_s=opts.min_time,
                           max_time_s=opts.max_time, max_cv=opts.max_cv, setup=setup)
        record.update(memory.fields())
    if sampler is not None:
        record.update(sampler.fields(counter.calls * items_per_call))
    if opts.flops_crosscheck:
        from effprof.measure.crosscheck import crosscheck

        record.update(crosscheck(built, input_sets[0]))
    record.update(timing_fields(timing, items_per_call, record.get("gflops")))
    if device.type == "cuda":
        record.update(roofline_fields(record.get("gflops"), counted_bytes, timing.median_ms, ceilings(device),
                                      record["dtype"], allow_tf32=tf32_enabled()))
    elif counted_bytes is not None:
        record.update(roofline_fields(record.get("gflops"), counted_bytes, timing.median_ms, None, record["dtype"]))
    return record


class PeakMemory:
    """Peak CUDA memory allocated above a starting point (activations, workspaces, graph pools)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.before = 0

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def fields(self) -> dict[str, Any]:
        if self.device.type != "cuda":
            return {"peak_mem_mib": None,
                    "peak_mem_note": "not measured on cpu (torch keeps no cpu allocator statistics)"}
        torch.cuda.synchronize(self.device)
        return {"peak_mem_mib": (torch.cuda.max_memory_allocated(self.device) - self.before) / MIB}


def execution_mode(built: Built, input_sets: list[tuple], opts: RunOptions, device: torch.device):
    """The zero-argument call to time, the per-call setup (outside the timed region) and record fields.

    eager: `built.call(inputs)`; graphs: replay of a CUDA graph of that call (inputs rotated by copying
    into the captured tensors); compile: the `torch.compile`d module, its compile time (the first
    call) reported apart and never inside the latency.
    """
    state = {"i": 0}
    fields: dict[str, Any] = {"exec_mode": "graphs" if opts.graphs else "compile" if opts.compile else "eager"}
    flush = L2Flusher.shared(device) if opts.cold and device.type == "cuda" else None
    if opts.graphs:
        static = input_sets[0]
        call = graphed_callable(built.call, static, device)

        def rotate():
            state["i"] = (state["i"] + 1) % len(input_sets)
            for dst, src in zip(static, input_sets[state["i"]]):
                if isinstance(dst, torch.Tensor):
                    dst.copy_(src)
    else:
        module = built.module
        if opts.compile:
            module, seconds = compiled_module(built.module, lambda m: built.call(input_sets[0], m), device)
            fields["compile_s"] = seconds

        def call():
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


def base_record(config: Config, values: dict[str, Any], unit: str, ctx: BuildContext) -> dict[str, Any]:
    opts = config.options
    record: dict[str, Any] = {
        "label": config.label or config.component,
        "component": config.component,
        "params": params_text(values, config.params.keys()),
        "batch": opts.batch,
        "dtype": {v: k for k, v in DTYPES.items()}[ctx.dtype],
        "device": ctx.device.type,
        "unit": unit,
        "status": "ok",
    }
    record.update({f"param_{k}": v for k, v in values.items() if k != "pretrained"})
    record["timing_mode"] = "cold" if opts.cold else "warm"
    record.update(environment(ctx.device))
    return record


def timing_fields(timing: TimingResult, items_per_call: int, gflops: float | None) -> dict[str, Any]:
    median = timing.median_ms
    lo, hi = timing.median_ci95_ms()
    fields = {
        "latency_ms_median": median,
        "latency_ms_p10": timing.quantile_ms(0.10),
        "latency_ms_p90": timing.quantile_ms(0.90),
        "latency_ms_mean": timing.mean_ms,
        "latency_cv": timing.cv,
        "latency_ms_ci95_low": lo,
        "latency_ms_ci95_high": hi,
        "n_calls": timing.n_calls,
        "calls_per_block": timing.calls_per_block,
        "calls_per_sample": timing.calls_per_sample,
        "timing_method": timing.method,
        "items_per_call": items_per_call,
        "throughput_per_s": items_per_call / (median / 1e3),
    }
    if gflops is not None:
        fields["tflops_per_s"] = gflops / median  # GFLOP / ms = TFLOP/s
    return fields


def failed_record(config: Config, status: str, message: str) -> dict[str, Any]:
    """A row for a configuration that did not complete (OOM, error): the table and files keep it."""
    try:
        values = config.resolved()
        component = get_component(config.component)
        opts = config.options
        ctx = BuildContext(opts.torch_device(), opts.torch_dtype(), opts.seed)
        record = base_record(config, values, component.unit, ctx)
    except EffprofError:
        record = {"label": config.label or config.component, "component": config.component}
    record.update(status=status, error=message)
    return record


def is_oom(exc: BaseException) -> bool:
    """CUDA's OOM, or an allocation the CPU allocator could not make (the same row on either device)."""
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def measure_many(configs: list[Config], on_record: Callable[[dict[str, Any]], None] | None = None,
                 timer: Callable[..., TimingResult] = time_callable) -> list[dict[str, Any]]:
    """Measure each configuration in turn. An OOM, a failure or a refusal that only the component's
    factory can make (a combination of values) marks that row and the rest go on.

    `on_record` is called after every row (the CLI rewrites its CSV/JSON there), so an interrupted
    comparison keeps every finished row.
    """
    for config in configs:  # refuse bad rows before spending any time
        config.resolved()
        config.options.validate()
    records = []
    for config in configs:
        start = time.perf_counter()
        try:
            record = measure(config, timer)
        except UsageError as exc:  # a combination only the factory can judge (e.g. streams on cpu)
            record = failed_record(config, "refused", str(exc))
        except EffprofError:
            raise
        except Exception as exc:  # a row fails, the comparison goes on
            if is_oom(exc):
                record = failed_record(config, "OOM", "out of memory")
            else:
                record = failed_record(config, "error", f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        free_memory()
        record["wall_s"] = time.perf_counter() - start
        records.append(record)
        if on_record is not None:
            on_record(record)
    return records


def add_ratios(records: list[dict[str, Any]], baseline: int = 0) -> None:
    """Add ratio columns against `records[baseline]`: speedup (baseline latency / latency) and
    row / baseline for params, FLOPs and peak memory."""
    if not records:
        return
    base = records[baseline]
    for r in records:
        r["baseline"] = base["label"]
        for key, name, invert in (("latency_ms_median", "speedup", True), ("params_total", "params_ratio", False),
                                  ("gflops", "gflops_ratio", False), ("peak_mem_mib", "peak_mem_ratio", False)):
            a, b = r.get(key), base.get(key)
            if a is None or b is None or r.get("status") != "ok" or base.get("status") != "ok":
                r[name] = None
            elif invert:
                r[name] = b / a if a > 0 else None
            else:
                r[name] = a / b if b > 0 else None
