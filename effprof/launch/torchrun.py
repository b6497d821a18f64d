"""One row over N processes with tensor parallelism (`--tp N`), through torch.distributed.

effprof starts the N ranks itself, as `torchrun --nproc-per-node N` would (spawned processes with
MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE/LOCAL_RANK set; NCCL on CUDA, one GPU per rank, gloo on CPU),
or, run under an existing `torchrun` whose world size is the `--tp`, uses the processes it finds. Each
rank builds the component from the same seed, keeps its slice (`effprof.modules.tensor_parallel`) and runs
`runner.measure` with a lock-step timer: the ranks agree on the warm-up, the block size and when to
stop (a collective inside the call would otherwise wait forever on a rank that stopped earlier).

After timing, a few calls run under `torch.profiler` to measure the communication's share: on CUDA
the device time of the NCCL kernels over the device time of all kernels (`comm_share`); on CPU the
gloo collectives' CPU time over the calls' wall time. Rank 0's record carries the row with every
rank's peak memory (`peak_mem_mib` = the largest, `peak_mem_mib_per_rank`), FLOPs summed over the
ranks (`gflops`; one rank's in `gflops_per_rank`, which the roofline columns use against one GPU's
ceiling), and `add_tp_scaling` adds speedup and scaling efficiency against the same row at tp 1.
"""
from __future__ import annotations

import os
import queue
import socket
import time
from dataclasses import replace
from typing import Any, Callable

import torch
import torch.distributed as dist

from effprof.core.errors import UsageError
from effprof.measure.timing import Consensus, TimingResult, sync, time_callable
from effprof.launch.base import OnRecord, Plan, register_launcher
from effprof.launch.procs import SAFE_ENV, child_env, last_line

_IN_RANK = False


def in_rank() -> bool:
    """True inside a rank of a `--tp` row (measure there, do not launch)."""
    return _IN_RANK


def torchrun_world() -> int | None:
    """The world size when this process was started by torchrun (or another launcher setting RANK etc.)."""
    if all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return int(os.environ["WORLD_SIZE"])
    return None


def secondary_rank() -> bool:
    """A torchrun rank other than 0: it measures with the others but prints and writes nothing."""
    return torchrun_world() is not None and int(os.environ.get("RANK", "0")) != 0


def tp_degrees(text: str) -> list[int]:
    """`--tp 2` or `--tp 1,2,4` -> [2] or [1, 2, 4]; each at most MAX_TP (a machine's bound, devices or
    cores, is checked by RunOptions.validate before any rank starts)."""
    from effprof.core.limits import MAX_TP

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--tp: expected N or N1,N2,... but got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise UsageError(f"--tp: {text!r}: degrees must be at least 1")
    if max(values) > MAX_TP:
        raise UsageError(f"--tp: {max(values)} is more ranks than any machine holds (at most {MAX_TP})")
    return values


def expand_tp(configs: list, text: str | None) -> list:
    """One row per (row, tp degree); labels gain ` tp=N` when several degrees are asked for."""
    if text is None:
        return configs
    from effprof.modules.tensor_parallel import supports_tp

    degrees = tp_degrees(text)
    out = []
    for config in configs:
        if max(degrees) > 1 and not supports_tp(config.component):
            from effprof.modules.tensor_parallel import TP_PLANS

            raise UsageError(f"--tp: {config.component} has no tensor-parallel plan (components with one: "
                             f"{', '.join(sorted(TP_PLANS))})")
        for tp in degrees:
            label = config.label or config.component
            options = replace(config.options, tp=tp)
            options.validate()  # more ranks than devices (or cores): refused before any process starts
            out.append(replace(config, options=options,
                               label=f"{label} tp={tp}" if len(degrees) > 1 else config.label))
    return out


# ---------------------------------------------------------------------------------------------------
# Lock-step timing and the communication share
# ---------------------------------------------------------------------------------------------------
def _flag_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _all(flag: bool) -> bool:
    t = torch.tensor([int(flag)], device=_flag_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def _max(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=_flag_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def _rank0(code: int) -> int:
    t = torch.tensor([int(code)], device=_flag_device())
    dist.broadcast(t, src=0)
    return int(t.item())


class Collective(Consensus):
    """The timing's decisions taken by every rank together (`effprof.measure.timing.Consensus`): the warm-up
    ends when every rank has warmed up, the blocks are sized from the slowest rank's estimate, and rank 0
    decides when to stop (a collective inside the call would otherwise wait forever on a rank that stopped)."""

    def all(self, flag: bool) -> bool:
        return _all(flag)

    def max(self, value: float) -> float:
        return _max(value)

    def decide(self, code: int) -> int:
        return _rank0(code)


class LockstepTimer:
    """`time_callable` with the ranks' decisions taken together (`Collective`); afterwards `fields` holds the
    communication's share of a few profiled calls."""

    def __init__(self, profile_calls: int = 5):
        self.profile_calls = profile_calls
        self.fields: dict[str, Any] = {}

    def __call__(self, fn: Callable[[], Any], device: torch.device, *, setup: Callable[[], None] | None = None,
                 **options) -> TimingResult:
        timing = time_callable(fn, device, setup=setup, consensus=Collective(), **options)

        def one():
            if setup is not None:
                setup()
            fn()

        self.fields = comm_share(one, device, self.profile_calls)
        timing.method += "-lockstep"
        return timing


COMM_MARKERS = ("nccl", "gloo", "allreduce", "all_reduce", "allgather", "all_gather", "reduce_scatter")


def comm_share(call: Callable[[], Any], device: torch.device, calls: int = 5) -> dict[str, Any]:
    """Share of the calls' time spent communicating, from torch.profiler (see the module docstring)."""
    from torch.profiler import ProfilerActivity, profile

    on_cuda = device.type == "cuda"
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(calls):
            call()
        sync(device)
    wall_us = (time.perf_counter() - start) * 1e6
    total = comm = 0.0
    for event in prof.key_averages():
        is_kernel = getattr(event.device_type, "name", str(event.device_type)).upper().endswith("CUDA")
        name = event.key.lower()
        if on_cuda and is_kernel:
            total += event.self_device_time_total
            comm += event.self_device_time_total if "nccl" in name else 0.0
        elif not on_cuda and not is_kernel and any(m in name for m in COMM_MARKERS):
            comm += event.self_cpu_time_total
    if not on_cuda:
        total = wall_us
    return {"comm_share": comm / total if total > 0 else None, "comm_ms_per_call": comm / 1e3 / calls,
            "comm_method": "profiler: nccl kernels' device time / all kernels' device time" if on_cuda else
            "profiler: gloo collectives' cpu time / the calls' wall time"}


# ---------------------------------------------------------------------------------------------------
# The ranks
# ---------------------------------------------------------------------------------------------------
def run_rank(config) -> dict[str, Any]:
    """Measure `config` as one rank of the initialised process group; every rank returns the merged record."""
    from effprof.runner import measure

    world = dist.get_world_size()
    if world != config.options.tp:
        raise UsageError(f"--tp {config.options.tp} under a launcher of {world} processes: give --tp {world}")
    if dist.get_backend() == "nccl":
        config = replace(config, options=replace(config.options, device=f"cuda:{torch.cuda.current_device()}"))
    timer = LockstepTimer()
    record = measure(config, timer=timer)
    record.update(timer.fields)
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, {k: record.get(k) for k in PER_RANK})
    return merge_ranks(record, gathered, dist.get_backend())


PER_RANK = ("peak_mem_mib", "weights_mib", "params_total", "gflops", "latency_ms_median", "comm_share", "device_name")


def merge_ranks(record: dict[str, Any], ranks: list[dict[str, Any]], backend: str) -> dict[str, Any]:
    """Rank 0's record with the other ranks' memory, FLOPs and latency folded in."""
    merged = dict(record)

    def listed(key, fmt="{:.1f}"):
        if all(r.get(key) is None for r in ranks):
            return None
        return ";".join("" if r.get(key) is None else fmt.format(r[key]) for r in ranks)

    merged.update(tp=len(ranks), tp_backend=backend, tp_rank_devices=";".join(str(r["device_name"]) for r in ranks),
                  peak_mem_mib_per_rank=listed("peak_mem_mib"), weights_mib_per_rank=listed("weights_mib"),
                  latency_ms_median_per_rank=listed("latency_ms_median", "{:.4g}"),
                  params_per_rank=record.get("params_total"), gflops_per_rank=record.get("gflops"))
    peaks = [r["peak_mem_mib"] for r in ranks if r.get("peak_mem_mib") is not None]
    if peaks:
        merged["peak_mem_mib"] = max(peaks)
    merged["params_total"] = merged.pop("params_unsharded", record.get("params_total"))
    merged["params_trainable"] = merged.pop("params_trainable_unsharded", record.get("params_trainable"))
    flops = [r["gflops"] for r in ranks if r.get("gflops") is not None]
    if len(flops) == len(ranks):
        merged["gflops"] = sum(flops)
        merged["tflops_per_s"] = merged["gflops"] / record["latency_ms_median"]
    shares = [r["comm_share"] for r in ranks if r.get("comm_share") is not None]
    merged["comm_share_max_rank"] = max(shares) if shares else None
    return merged


def init_rank(device_type: str) -> torch.device:
    """Join the process group of this rank (from RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* in the environment):
    NCCL and GPU LOCAL_RANK on cuda, gloo on cpu. Returns the rank's device."""
    global _IN_RANK
    _IN_RANK = True
    world, rank, local = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    device = torch.device("cpu")
    if device_type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", rank=rank, world_size=world)
    return device


def _rank_process(target, args, device_type: str, results, log_path: str) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)
    rank = int(os.environ["RANK"])
    if device_type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["WORLD_SIZE"])))
    try:
        init_rank(device_type)
        result = target(*args)
        results.put(("done", rank, result if rank == 0 else None))
        dist.destroy_process_group()
    except BaseException as exc:  # reported to the parent, which ends the other ranks
        from effprof.runner import is_oom

        kind = "usage" if isinstance(exc, UsageError) else "oom" if is_oom(exc) else "error"
        text = str(exc).splitlines()[0][:200] if str(exc) else ""
        results.put(("error", rank, kind, f"{type(exc).__name__}: {text}"))
        results.close()
        results.join_thread()
        os._exit(1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(target: Callable[..., Any], args: tuple, world: int, device_type: str) -> Any:
    """Run `target(*args)` on `world` spawned ranks (as torchrun would start them) and return rank 0's
    result. A rank that raises or dies ends them all: UsageError stays one, the rest become RuntimeError
    (with "out of memory" in it for an OOM, so the runner marks the row OOM)."""
    import multiprocessing
    import shutil
    import tempfile
    from pathlib import Path

    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    logs = Path(tempfile.mkdtemp(prefix="effprof-tp-"))
    port, procs = _free_port(), []
    try:
        for rank in range(world):
            env = dict(SAFE_ENV, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                       RANK=str(rank), LOCAL_RANK=str(rank))
            proc = ctx.Process(target=_rank_process, daemon=True, name=f"effprof-tp-rank{rank}",
                               args=(target, args, device_type, results, str(logs / f"rank{rank}.log")))
            with child_env(env):
                proc.start()
            procs.append(proc)
        result, finished = None, 0
        while finished < world:
            try:
                message = results.get(timeout=0.5)
            except queue.Empty:
                dead = [(i, p) for i, p in enumerate(procs) if p.exitcode not in (None, 0)]
                if dead:
                    i, p = dead[0]
                    raise RuntimeError(f"tp rank {i} died (exit code {p.exitcode}): "
                                       f"{last_line(logs / f'rank{i}.log') or 'no output'}")
                continue
            if message[0] == "error":
                _, rank, kind, text = message
                if kind == "usage":
                    raise UsageError(text.partition(": ")[2] or text)
                raise RuntimeError(f"tp rank {rank}: {'out of memory' if kind == 'oom' else text}")
            finished += 1
            result = message[2] if message[1] == 0 else result
        for p in procs:
            p.join(30)
        return result
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(5)
        shutil.rmtree(logs, ignore_errors=True)


def measure_tp(config) -> dict[str, Any]:
    """Measure a `--tp N` row: in this process group when launched by torchrun, else in N spawned ranks."""
    from effprof.core.devices import resolve_device

    world = config.options.tp
    device_type = resolve_device(config.options.device).type
    if torchrun_world() is not None:
        init_rank(device_type)
        return run_rank(config)
    if device_type == "cuda" and torch.cuda.device_count() < world:
        raise UsageError(f"--tp {world}: only {torch.cuda.device_count()} CUDA devices are visible")
    return launch(run_rank, (config,), world, device_type)


def add_tp_scaling(records: list[dict[str, Any]]) -> None:
    """`tp_speedup` (latency at tp 1 / latency at tp N) and `tp_scaling_efficiency` (speedup / N) for
    every tp > 1 row whose same row at tp 1 is among `records`."""
    def key(r):
        return (r.get("component"), r.get("params"), r.get("batch"), r.get("dtype"), r.get("exec_mode"),
                r.get("timing_mode"), r.get("device_name"))

    base = {key(r): r for r in records if r.get("tp", 1) == 1 and r.get("status") == "ok"}
    for r in records:
        r.setdefault("tp", 1)
        tp = r.get("tp") or 1
        one = base.get(key(r))
        if tp > 1 and one is not None and r.get("status") == "ok":
            r["tp_speedup"] = one["latency_ms_median"] / r["latency_ms_median"]
            r["tp_scaling_efficiency"] = r["tp_speedup"] / tp


@register_launcher("torchrun")
def launch_torchrun(configs: list, plan: Plan, on_record: OnRecord | None = None) -> list[dict[str, Any]]:
    """Every row over its tensor-parallel ranks (`compare --tp N --launcher torchrun`; the inline launcher
    hands `--tp` rows here too). A row of one rank has nothing to spread: refused before anything starts."""
    from effprof.runner import measure_many

    single = [c.label or c.component for c in configs if c.options.tp < 2]
    if single:
        raise UsageError(f"--launcher torchrun runs each row over its --tp ranks; {', '.join(single[:3])} "
                         f"{'has' if len(single) == 1 else 'have'} one rank (give --tp N, N >= 2)")
    return measure_many(configs, on_record=on_record, on_phase=plan.on_phase,
                        measure_one=lambda config, timer=None, on_phase=None: measure_tp(config))
