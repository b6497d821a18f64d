"""Fan a comparison out over worker processes: one per GPU (`--gpus N|all`), N on one device (`--workers N`),
or a fresh process per row (`--isolate`).

A plain pool, nothing more: workers are `multiprocessing` processes of the *spawn* context (a forked
CUDA context is unusable); each sees only its GPU (`CUDA_VISIBLE_DEVICES` set before it starts) and
calls `effprof.launch.rows.measure_rows` on one pickled `Config` at a time. Rows are handed out as workers
free up and the records are merged back in the profile's order. What the pool adds over a loop:

- a row that fails or runs out of memory is a row of the table (the runner already does that), and
  a worker that *dies* (a device-side assert poisons its CUDA context for good; a segfault; `os._exit`)
  takes only its row with it: the row is marked `error` with the last line the worker wrote, and a
  fresh worker takes its place;
- a row that leaves its worker unfit for the next (`process_unfit`: a failed CUDA-graph capture whose state
  could not be put back) ends that worker too, and the next row gets a fresh one;
- `--isolate` runs every row in its own process, so nothing a row leaves behind (allocator cache,
  a poisoned context, fragmented memory) reaches the next row's peak;
- every record carries `gpu_index` / `gpu_name` (CPU workers: `worker` only), the host's CPU load over
  the row's time (`host_cpu_busy_pct`, `host_load_1min`) and how many rows ran at once
  (`rows_in_flight_max`), because rows that run side by side share the host's cores: an eager,
  launch-bound row's latency follows the host, and N workers on a host with few free cores distort it.

Every process effprof starts gets the `SAFE_ENV` variables (NVLink multicast off).
"""
from __future__ import annotations

import os
import queue
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from effprof.core.errors import EffprofError, UsageError
from effprof.core.limits import MAX_WORKERS
from effprof.core.options import check_rows
from effprof.launch.base import OnRecord, Plan, register_launcher
from effprof.launch.procs import SAFE_ENV, child_env, last_line
from effprof.measure.host import busy_pct, cpu_times  # noqa: F401  (re-exported)

# Messages a CUDA error leaves: after one the worker's context is unusable, so the worker is replaced.
FATAL_MARKERS = ("CUDA error", "device-side assert", "AcceleratorError", "illegal memory access")


@dataclass
class Slot:
    """Where a worker runs: a GPU of this host (`gpu_index`, as `nvidia-smi` numbers it through the
    parent's CUDA_VISIBLE_DEVICES) or the CPU with `threads` torch threads."""

    worker: int
    gpu_index: int | None = None
    threads: int | None = None
    gpu_name: str = ""   # filled from the worker's hello (the parent never initialises CUDA)

    def env(self) -> dict[str, str]:
        env = dict(SAFE_ENV)
        if self.gpu_index is not None:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            ids = [v.strip() for v in visible.split(",")] if visible else None
            env["CUDA_VISIBLE_DEVICES"] = ids[self.gpu_index] if ids else str(self.gpu_index)
        return env


def gpu_slots(gpus: str) -> list[Slot]:
    """`--gpus N|all` -> one slot per GPU (the first N visible)."""
    import torch

    count = torch.cuda.device_count()  # NVML-based: does not initialise CUDA in the parent
    if count == 0:
        raise UsageError("--gpus: no CUDA device is visible (use --workers N --device cpu for CPU workers)")
    if gpus == "all":
        n = count
    else:
        try:
            n = int(gpus)
        except ValueError:
            raise UsageError(f"--gpus: {gpus!r} is not a number or 'all'") from None
        if not 1 <= n <= count:
            raise UsageError(f"--gpus: {n} is not in 1..{count} (GPUs visible)")
    return [Slot(i, gpu_index=i) for i in range(n)]


def cpu_slots(workers: int) -> list[Slot]:
    """N CPU workers sharing the host's cores evenly (torch threads = cores // N, at least 1)."""
    if workers < 1:
        raise UsageError(f"--workers: {workers} must be at least 1")
    return [Slot(i, threads=max(1, (os.cpu_count() or 1) // workers)) for i in range(workers)]


def plan_slots(gpus: str | None, workers: int | None, isolate: bool, device: str | None) -> list[Slot] | None:
    """The worker slots a `compare` asked for, or None for the plain serial loop in this process."""
    if gpus is None and workers is None and not isolate:
        return None
    if workers is not None and workers < 1:
        raise UsageError(f"--workers: {workers} must be at least 1")
    if workers is not None and workers > MAX_WORKERS:  # each is a process importing torch: past this, a typo
        raise UsageError(f"--workers: {workers} is more than {MAX_WORKERS} processes")
    if gpus is not None and workers is not None:
        raise UsageError("--gpus and --workers are two ways to size the pool; give one")
    if gpus is not None:
        if device == "cpu":
            raise UsageError("--gpus with --device cpu: use --workers N for CPU workers")
        return gpu_slots(gpus)
    from effprof.core.devices import resolve_device

    on_cuda = resolve_device(device or "auto").type == "cuda"
    n = workers or 1
    if on_cuda:  # N workers sharing the first GPU: isolation, not speed
        return [Slot(i, gpu_index=0) for i in range(n)]
    return cpu_slots(n)


def _worker_main(slot: Slot, tasks, results, log_path: str) -> None:
    """A worker: measure rows from `tasks` until None; report each record on `results`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)
    import torch

    from effprof.core.errors import EffprofError
    from effprof.launch.rows import measure_rows
    from effprof.runner import failed_record

    if slot.threads:
        torch.set_num_threads(slot.threads)
    name = torch.cuda.get_device_name(0) if slot.gpu_index is not None else ""
    results.put(("hello", slot.worker, os.getpid(), name))
    while True:
        item = tasks.get()
        if item is None:
            return
        row, config = item
        try:
            record = measure_rows([config], stop_if_unfit=True)[0]
        except EffprofError as exc:  # not a refusal: a failure of this row only
            record = failed_record(config, "error", str(exc))
        fatal = bool(record.get("process_unfit")) or (record.get("status") == "error" and any(
            m in record.get("error", "") for m in FATAL_MARKERS))
        results.put(("done", slot.worker, row, record, fatal))
        if fatal:  # the CUDA context is gone or unfit (effprof.measure.modes.recover): leave, a fresh worker follows
            results.close()
            results.join_thread()
            os._exit(3)


@dataclass
class _Worker:
    slot: Slot
    process: Any
    tasks: Any
    log: Path
    pid: int | None = None
    row: int | None = None
    started_s: float = 0.0
    cpu_at_start: tuple[int, int] | None = None
    in_flight_max: int = 0
    rows_done: int = 0


@dataclass
class Pool:
    """The worker pool of one comparison (see the module docstring)."""

    slots: list[Slot]
    isolate: bool = False
    avoid: dict[int, set[int]] = field(default_factory=dict)  # row -> slots (worker numbers) it should not use
    workers: dict[int, _Worker] = field(default_factory=dict)
    startup_failures: int = 0

    def __post_init__(self):
        import multiprocessing

        self.ctx = multiprocessing.get_context("spawn")
        self.results = self.ctx.Queue()
        self.logs = Path(tempfile.mkdtemp(prefix="effprof-workers-"))

    def start(self, slot: Slot) -> _Worker:
        tasks = self.ctx.Queue()
        log = self.logs / f"worker{slot.worker}-{time.monotonic_ns()}.log"
        process = self.ctx.Process(target=_worker_main, args=(slot, tasks, self.results, str(log)), daemon=True,
                                   name=f"effprof-worker-{slot.worker}")
        with child_env(slot.env()):
            process.start()
        worker = _Worker(slot, process, tasks, log)
        self.workers[slot.worker] = worker
        return worker

    def stop(self, worker: _Worker, timeout: float = 5.0) -> None:
        if worker.process.is_alive():
            try:
                worker.tasks.put(None)
            except (OSError, ValueError):
                pass
            worker.process.join(timeout)
        if worker.process.is_alive():
            worker.process.terminate()
            worker.process.join(timeout)

    def close(self) -> None:
        for worker in list(self.workers.values()):
            if worker.process.is_alive():
                worker.process.terminate()
        for worker in list(self.workers.values()):
            worker.process.join(5)
        shutil.rmtree(self.logs, ignore_errors=True)

    def run(self, configs: list, on_record: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        pending = list(range(len(configs)))
        records: list[dict[str, Any] | None] = [None] * len(configs)
        for slot in self.slots[:max(1, len(configs))]:
            self.start(slot)

        def finish(worker: _Worker, record: dict[str, Any]) -> None:
            row = worker.row
            record.update(self.row_fields(worker))
            records[row] = record
            worker.row, worker.rows_done = None, worker.rows_done + 1
            if on_record is not None:
                on_record(record)

        try:
            while pending or any(w.row is not None for w in self.workers.values()):
                for worker in list(self.workers.values()):
                    if worker.row is None and pending and worker.process.is_alive():
                        row = self.next_row(worker, pending)
                        if row is None:
                            continue
                        if self.isolate and worker.rows_done:
                            self.stop(worker)
                            worker = self.start(worker.slot)
                        self.assign(worker, row, configs)
                try:
                    message = self.results.get(timeout=0.2)
                except queue.Empty:
                    self.reap(configs, finish, pending)
                    continue
                self.handle(message, finish, pending)
        finally:
            self.close()
        return [r for r in records if r is not None]

    def next_row(self, worker: _Worker, pending: list[int]) -> int | None:
        """The first pending row this worker's slot is not to avoid (None: leave them to the other slots)."""
        everyone = {slot.worker for slot in self.slots}
        for i, row in enumerate(pending):
            avoid = self.avoid.get(row, set())
            if worker.slot.worker not in avoid or avoid >= everyone:
                return pending.pop(i)
        return None

    def assign(self, worker: _Worker, row: int, configs: list) -> None:
        worker.row, worker.started_s, worker.cpu_at_start = row, time.perf_counter(), cpu_times()
        worker.tasks.put((row, configs[row]))
        busy = [w for w in self.workers.values() if w.row is not None]
        for w in busy:
            w.in_flight_max = max(w.in_flight_max, len(busy))

    def handle(self, message: tuple, finish, pending: list[int]) -> None:
        kind, index = message[0], message[1]
        worker = self.workers.get(index)
        if kind == "hello":
            if worker is not None:
                worker.pid, worker.slot.gpu_name = message[2], message[3]
            return
        _, _, row, record, fatal = message
        if worker is None or worker.row != row:
            return
        finish(worker, record)
        if fatal:
            worker.process.join(10)
            if pending:
                self.start(worker.slot)

    def reap(self, configs: list, finish, pending: list[int]) -> None:
        """A worker that died holding a row: the row fails with its last line; a fresh worker replaces it."""
        for worker in list(self.workers.values()):
            if worker.process.is_alive():
                continue
            if worker.row is not None:
                try:  # its result may be in the queue already
                    while True:
                        self.handle(self.results.get_nowait(), finish, pending)
                except queue.Empty:
                    pass
            line = last_line(worker.log) or "no output"
            if worker.pid is None:  # died before it could take a row (an import error): not the row's fault
                if worker.row is not None:
                    pending.insert(0, worker.row)
                    worker.row = None
                self.startup_failures += 1
                if self.startup_failures >= 3:
                    raise EffprofError(f"workers die before measuring anything: {line}")
            if worker.row is not None:
                from effprof.runner import failed_record

                code = worker.process.exitcode
                how = f"exit code {code}" if code is None or code >= 0 else f"killed by {_signal_name(-code)}"
                record = failed_record(configs[worker.row], "error", f"worker died ({how}): {line}")
                record["wall_s"] = time.perf_counter() - worker.started_s
                finish(worker, record)
            if pending and self.workers.get(worker.slot.worker) is worker:
                self.start(worker.slot)

    def row_fields(self, worker: _Worker) -> dict[str, Any]:
        slot = worker.slot
        fields: dict[str, Any] = {"row": worker.row, "worker": slot.worker, "worker_pid": worker.pid}
        if slot.gpu_index is not None:
            fields.update(gpu_index=slot.gpu_index, gpu_name=slot.gpu_name or None)
        fields["host_cpu_busy_pct"] = busy_pct(worker.cpu_at_start, cpu_times())
        fields["host_load_1min"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        fields["host_cpus"] = os.cpu_count()
        fields["rows_in_flight_max"] = worker.in_flight_max
        fields["isolated"] = self.isolate
        return fields


def measure_parallel(configs: list, slots: list[Slot], on_record: Callable[[dict[str, Any]], None] | None = None,
                     isolate: bool = False, avoid: dict[int, set[int]] | None = None) -> list[dict[str, Any]]:
    """Measure `configs` on a pool of `slots`; the records come back in the order of `configs`. `avoid`
    maps a row to the slots (worker numbers) it should not run on while another slot can take it."""
    check_rows(configs)  # refuse bad rows before starting anything
    for config in configs:
        if config.options.tp > 1:
            raise UsageError("--tp rows start their own processes; run them without --gpus/--workers/--isolate")
    return Pool(slots, isolate, avoid or {}).run(configs, on_record)


def add_ratios_same_device(records: list[dict[str, Any]], baseline: int = 0) -> list[str]:
    """Ratio columns (runner.add_ratios) only between rows measured on the same device model as the
    baseline; rows on another model get none and a `ratio_note`. Returns warning lines (mixed host)."""
    from effprof.runner import add_ratios

    add_ratios(records, baseline)
    if not records:
        return []
    names = {r.get("device_name") for r in records if r.get("status") == "ok"}
    base_name = records[baseline].get("device_name")
    for r in records:
        if r.get("device_name") != base_name and r.get("status") == "ok":
            for key in ("speedup", "params_ratio", "gflops_ratio", "peak_mem_ratio"):
                r[key] = None
            r["ratio_note"] = f"measured on {r.get('device_name')}, the baseline on {base_name}: no ratio"
    if len(names) > 1:
        return [f"mixed host: rows ran on {', '.join(sorted(map(str, names)))}; ratios only against rows of "
                f"the baseline's model ({base_name})"]
    return []


def host_summary(records: list[dict[str, Any]]) -> str:
    """One line on the host's load during a fan-out, and which rows it may have distorted."""
    busy = [r["host_cpu_busy_pct"] for r in records if r.get("host_cpu_busy_pct") is not None]
    if not busy:
        return ""
    width = max((r.get("rows_in_flight_max") or 1) for r in records)
    text = (f"host: {records[0].get('host_cpus')} CPUs, busy {sum(busy) / len(busy):.0f}% on average "
            f"(max {max(busy):.0f}%) while rows ran, up to {width} rows at once")
    shared = [r["label"] for r in records if r.get("verdict") == "overhead" and (r.get("rows_in_flight_max") or 1) > 1
              and r.get("exec_mode", "eager") == "eager"]
    if shared:
        text += (f"; {', '.join(shared)}: launch-bound and run beside other rows, so their latency shares the "
                 f"host's cores (measure them alone or with --graphs)")
    return text


def _signal_name(number: int) -> str:
    try:
        return f"{signal.Signals(number).name}, signal {number}"
    except ValueError:
        return f"signal {number}"


@register_launcher("pool")
def launch_pool(configs: list, plan: Plan, on_record: OnRecord | None = None) -> list[dict[str, Any]]:
    return measure_parallel(configs, plan.slots or plan_slots(None, 1, plan.isolate, None), on_record, plan.isolate)
