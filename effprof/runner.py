"""Run components through the measurement layer and turn each configuration into a plain record.

This is the only place where components (what is profiled) meet the measurement code (what is
measured). `measure` builds a component, times its call (`effprof.measure.timing`) in the execution mode
the options ask for (eager, CUDA graphs, torch.compile), and lets every enabled tracker
(`effprof.trackers`: params, FLOPs and bytes, peak memory, NVML, crosscheck, roofline, the stage split)
add its columns; a new column is a new tracker, not an edit here. Records are flat dicts of
str/int/float/None (and the raw timing samples as a list), ready for tables, CSV and JSON.
"""
from __future__ import annotations

import gc
import os
import time
import traceback
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Iterable

import torch

from effprof.analysis.ratios import speedup_reliability
from effprof.core.errors import EffprofError, UsageError
from effprof.core.libwarnings import quiet_libraries
from effprof.measure.env import environment
from effprof.measure.memory import count_params, tensor_bytes  # noqa: F401  (re-exported: public helpers)
from effprof.measure.footprint import check_fits
from effprof.measure.execution import compiled_call, exec_mode, execution_mode  # noqa: F401  (re-exported)
from effprof.measure.nvml import CallCounter
from effprof.measure.timing import UNSTEADY_CV, TimingResult, time_callable
from effprof.core.options import Config, RunOptions, check_rows  # noqa: F401  (re-exported)
from effprof.core.registry import BuildContext, Built, get_component
from effprof.modules.tensor_parallel import shard
from effprof.trackers import Run, enabled_trackers

EAGER_NOTE = ("eager (--eager): the host-bound, as-deployed figure: kernels launched one by one from Python, so at "
              "batch 1 the host's launch work sets the time and it moves with the host (--graphs times the "
              "device's work)")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MIB = 2**20


def params_text(values: dict[str, Any], given: Iterable[str] | None = None) -> str:
    """Compact `k=v` text of the parameters that were set explicitly (all when `given` is None)."""
    keys = list(values) if given is None else [k.replace("-", "_") for k in given]
    return ",".join(f"{k}={values[k]}" for k in keys if k in values and k != "pretrained")


_FROZE = False


def freeze_imports() -> None:
    """Once per process, before the first row: collect, then move every object alive (the interpreter's,
    torch's and the libraries' module-level objects) to the collector's permanent generation, so that the
    collection after each row scans only what rows made (a full collection over torch, sympy and dynamo
    takes ~0.1-0.25 s, which a comparison of sub-millisecond rows would pay per row)."""
    global _FROZE
    if not _FROZE:
        gc.collect()
        gc.freeze()
        _FROZE = True


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def build(config: Config) -> tuple[Built, dict[str, Any], BuildContext]:
    component = get_component(config.component)
    values = component.resolve(config.params)
    opts = config.options
    ctx = BuildContext(opts.torch_device(), opts.torch_dtype(), opts.seed, exec_mode(opts))
    torch.manual_seed(opts.seed)
    with quiet_libraries(show=opts.debug):  # library warnings while building: --debug shows them
        built = component.build(values, ctx)
    built.module.eval()
    refuse_interpreted_triton(built, ctx)
    if opts.tp > 1:  # inside a rank of a --tp row: keep this rank's slice (effprof/modules/tensor_parallel.py)
        shard(config.component, built, torch.distributed.get_rank(), opts.tp)
        free_memory()
    return built, values, ctx


def refuse_interpreted_triton(built: Built, ctx: BuildContext) -> None:
    """Refuse to time a Triton kernel that runs in triton's CPU interpreter (TRITON_INTERPRET=1): its time
    measures the interpreter, not the kernel. Which kernels run is read from the `*backend` facts."""
    if ctx.device.type != "cpu" or os.environ.get("TRITON_INTERPRET", "0") != "1":
        return
    kernels = [f"{k}={v}" for k, v in built.info.items() if k.endswith("backend") and "triton" in str(v).lower()]
    if kernels:
        raise UsageError(f"TRITON_INTERPRET=1: {', '.join(kernels)} would run in triton's CPU interpreter, whose "
                         "time is not a benchmark of the kernel; unset TRITON_INTERPRET and time it on a GPU "
                         "(the interpreter is for correctness tests)")


def measure(config: Config, timer: Callable[..., TimingResult] = time_callable,
            on_phase: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure one configuration and return its record (see the module docstring).

    Order: build; make the input sets; every enabled tracker's `before`; the execution mode (graph
    capture or compilation happen here, outside the timed region); `start`; timing; `stop`; the timing
    columns; every tracker's `fields`, in registration order. On the meta device nothing is timed.

    `on_phase(name)` is told when each phase begins: build, count (the trackers' `before`: FLOPs, bytes,
    extras), warm-up, timing, passes (the trackers' `fields`: FLOP coverage, the stage split, ...); the record
    gets each phase's wall seconds (`phase_build_s`, `phase_count_s`, `phase_warmup_s`, `phase_timing_s`,
    `phase_passes_s`), so a slow comparison says where its time went.

    `--threads N` sets torch's intra-op threads for the row (restored after it).
    """
    opts = config.options.validate()
    if opts.tp > 1 and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise UsageError(f"--tp {opts.tp}: a tensor-parallel row is measured inside its ranks, which "
                         "effprof.launch starts (effprof.launch.rows.measure_row)")
    check_fits(config)  # weights + inputs that cannot fit are refused before anything is allocated
    if opts.device == "meta":
        with refused_where_meta_needs_data(config):
            return _measure(config, opts, timer, on_phase)
    return _measure(config, opts, timer, on_phase)


class NotCountableOnMeta(UsageError):
    """A row whose call reads tensor values (a data-dependent token count, an index list), which meta tensors
    do not have: refused on --device meta, with the reason, instead of failing with torch's words."""


# torch's words when a call reads the values of a meta tensor
_META_DATA_READS = ("item() cannot be called on meta", "nonzero", "cannot copy out of meta tensor",
                    "_local_scalar_dense", "data-dependent", "no data")


@contextmanager
def refused_where_meta_needs_data(config: Config):
    try:
        yield
    except EffprofError:
        raise
    except Exception as exc:
        text = str(exc).lower()
        if not any(words in text for words in _META_DATA_READS):
            raise
        reducer = config.params.get("reducer")
        who = f"--reducer {reducer}" if reducer else config.label or config.component
        raise NotCountableOnMeta(f"{who}: not countable on --device meta (the call reads tensor values, e.g. a "
                                 f"data-dependent token count); count it on cpu or cuda [{type(exc).__name__}]") from None


def _measure(config: Config, opts: RunOptions, timer: Callable[..., TimingResult],
             on_phase: Callable[[str], None] | None) -> dict[str, Any]:
    if opts.threads is None:
        return _measure_row(config, opts, timer, on_phase)
    threads = torch.get_num_threads()
    torch.set_num_threads(opts.threads)
    try:
        return _measure_row(config, opts, timer, on_phase)
    finally:
        torch.set_num_threads(threads)


def _measure_row(config: Config, opts: RunOptions, timer: Callable[..., TimingResult],
                 on_phase: Callable[[str], None] | None) -> dict[str, Any]:
    tell = on_phase or (lambda name: None)
    tell("build")
    t_build = time.perf_counter()
    built, values, ctx = build(config)
    record = base_record(config, values, built.unit, ctx)
    record.update(built.info)
    torch.manual_seed(opts.seed + 1)
    n_sets = opts.input_sets if opts.cold else 1
    run = Run(config, opts, built, values, ctx, [built.make_inputs(opts.batch) for _ in range(n_sets)],
              opts.batch * built.items_per_sample, record)
    trackers = enabled_trackers(run)
    t_count = time.perf_counter()
    tell("count")
    with nullcontext() if opts.train else torch.inference_mode():  # a training step needs autograd
        with built.counted():  # a call that replays graphs itself counts its ops eagerly (Built.counting)
            for tracker in trackers:
                tracker.before(run)
        record.update(phase_build_s=t_count - t_build, phase_count_s=time.perf_counter() - t_count)
        if run.count_only:
            record["exec_mode"] = "count-only (meta device)"
        else:
            call, setup, mode_fields = execution_mode(run.shared.get("train_step", built), run.input_sets, opts,
                                                      ctx.device)
            record.update(mode_fields)
            counter = CallCounter(call)
            run.call = counter
            for tracker in trackers:
                tracker.start(run)
            try:
                run.timing = timer(counter, ctx.device, warmup_s=opts.warmup, min_time_s=opts.min_time,
                                   max_time_s=opts.max_time, max_cv=opts.max_cv, setup=setup, on_phase=tell)
            finally:
                for tracker in reversed(trackers):
                    tracker.stop(run)
            run.calls = counter.calls
            record.update(timing_fields(run.timing, run.items_per_call, record.get("gflops")))
        t_passes = time.perf_counter()
        tell("passes")
        for tracker in trackers:  # the passes after timing (FLOP coverage, the stage split, ...) are timed too
            record.update(tracker.fields(run))
        record["phase_passes_s"] = time.perf_counter() - t_passes
    return record


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
    notes = list(config.notes)
    if opts.eager and ctx.device.type == "cuda":
        notes.append(EAGER_NOTE)
    if notes:
        record["exec_note"] = "; ".join(notes)
    record["timing_mode"] = "cold" if opts.cold else "warm"
    # what reproduces the row: the options that shape the timing and the inputs
    record.update(seed=opts.seed, warmup_s=opts.warmup, min_time_s=opts.min_time, max_time_s=opts.max_time,
                  max_cv=opts.max_cv, input_sets=opts.input_sets if opts.cold else 1)
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
        "latency_unsteady": timing.cv > UNSTEADY_CV,
        "latency_ms_ci95_low": lo,
        "latency_ms_ci95_high": hi,
        "n_calls": timing.n_calls,
        "calls_per_block": timing.calls_per_block,
        "calls_per_sample": timing.calls_per_sample,
        "timing_method": timing.method,
        "timing_stop": timing.stop,
        "phase_warmup_s": timing.warmup_s,
        "phase_timing_s": timing.timing_s,
        "items_per_call": items_per_call,
        "throughput_per_s": items_per_call / (median / 1e3),
        "latency_samples_ms": list(timing.samples_ms),  # raw samples (JSON only; CSV leaves lists out)
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
        ctx = BuildContext(opts.torch_device(), opts.torch_dtype(), opts.seed, exec_mode(opts))
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
                 timer: Callable[..., TimingResult] = time_callable,
                 on_phase: Callable[[Config, str], None] | None = None,
                 raise_refusals: bool = False,
                 measure_one: Callable[..., dict[str, Any]] | None = None,
                 stop_if_unfit: bool = False) -> list[dict[str, Any]]:
    """Measure each configuration in turn. An OOM, a failure or a refusal that only the component's
    factory can make (a combination of values) marks that row and the rest go on.

    `on_record` is called after every row (the CLI rewrites its CSV/JSON there), so an interrupted
    comparison keeps every finished row; `on_phase(config, phase)` when a row enters a phase (see `measure`).
    `measure_one(config, timer, on_phase)` measures a row (default `measure`; effprof.launch.rows routes
    `--tp` rows to their ranks).

    After a row that failed (error or OOM), `effprof.measure.modes.recover` puts back what a failed CUDA-graph
    capture or compile left in the process (the generator's capture state, the capture stream, dynamo's
    caches) and probes it. When the process cannot measure another row, the row's record gets
    `process_unfit` (why) and, with `stop_if_unfit`, the loop stops there: the records returned are fewer
    than the configurations and the caller (a launcher) measures the rest in a fresh process.
    """
    measure_one = measure_one or measure
    check_rows(configs)  # refuse bad rows before spending any time
    freeze_imports()
    records = []
    for config in configs:
        start = time.perf_counter()
        try:
            record = measure_one(config, timer, None if on_phase is None else
                             (lambda name, config=config: on_phase(config, name)))
        except UsageError as exc:  # a combination only the factory can judge (e.g. streams on cpu)
            if raise_refusals:  # one row alone (`run`): the refusal is the one line the user gets
                raise
            record = failed_record(config, "refused", str(exc))
        except EffprofError as exc:  # e.g. a capture or compile that fails for this row: the others go on
            record = failed_record(config, "error", str(exc))
        except Exception as exc:  # a row fails, the comparison goes on
            if is_oom(exc):
                record = failed_record(config, "OOM", "out of memory")
            else:
                first = (str(exc).splitlines() or [""])[0][:200]
                record = failed_record(config, "error", f"{type(exc).__name__}: {first}")
            if config.options.debug:  # whoever writes a component needs the whole story
                record["traceback"] = traceback.format_exc()
        free_memory()
        unfit = None
        if record.get("status") in ("error", "OOM"):
            unfit = recover_after(config)
            if unfit:
                record["process_unfit"] = unfit
        if not records:  # what the first row imported lazily (dynamo, kernel modules) joins the frozen set
            gc.freeze()
        record["wall_s"] = time.perf_counter() - start
        records.append(record)
        if on_record is not None:
            on_record(record)
        if unfit and stop_if_unfit:
            break
    return records


def recover_after(config: Config) -> str | None:
    """`modes.recover` on the row's device (None: the process may measure the next row; else why not)."""
    from effprof.measure import modes

    try:
        device = config.options.torch_device()
    except EffprofError:
        return None
    return modes.recover(device, compiled=config.options.compile)


def add_ratios(records: list[dict[str, Any]], baseline: int = 0) -> None:
    """Add ratio columns against `records[baseline]`: speedup (baseline latency / latency) and
    row / baseline for params, FLOPs and peak memory. `speedup_unsteady` is True when the row's or the
    baseline's latency CV is above UNSTEADY_CV (the ratio then carries that noise)."""
    if not records:
        return
    base = records[baseline]
    for r in records:
        r["baseline"] = base["label"]
        r["speedup_unsteady"] = bool(r.get("latency_unsteady") or base.get("latency_unsteady"))
        r.pop("ratio_unreliable", None)
        r.pop("speedup_note", None)
        for key, name, invert in (("latency_ms_median", "speedup", True), ("params_total", "params_ratio", False),
                                  ("gflops", "gflops_ratio", False), ("peak_mem_mib", "peak_mem_ratio", False)):
            a, b = r.get(key), base.get(key)
            if a is None or b is None or r.get("status") != "ok" or base.get("status") != "ok":
                r[name] = None
            elif invert:
                r[name] = b / a if a > 0 else None
            else:
                r[name] = a / b if b > 0 else None
        if r.get("speedup") is not None and r is not base:
            r.update(speedup_reliability(r, base))
