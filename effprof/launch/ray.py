"""The Ray launcher (`compare --launcher ray [--address ADDR]`): a comparison's rows as tasks on a Ray cluster.

For sweeps that outgrow one host. Each row is one Ray task that asks for one GPU (`num_gpus=1`: Ray sets the
task's CUDA_VISIBLE_DEVICES, so the row sees one board) or, on a CPU-only cluster, one CPU; the task measures
the row with `effprof.launch.rows.measure_rows` in a Ray worker process, exactly as a pool worker does.
Records come back in the rows' order as they finish (a later row that finishes first waits for the earlier
ones, so the files grow row by row); a task that raises, a worker that dies (a segfault, a lost node) or a
task that cannot be placed becomes a failed row with the reason, and the other rows go on.

`--address` joins an existing cluster (`ray://HOST:10001`, or `auto` for the one this host belongs to);
without it a local Ray instance is started on this host (all its GPUs and CPUs) and stopped afterwards.
effprof must be importable on every node (the same version: install it there). Ray is an optional extra:
`pip install 'effprof[ray]'`.
"""
from __future__ import annotations

import socket
from typing import Any

from effprof.core.errors import MissingExtra, UsageError
from effprof.core.options import check_rows
from effprof.launch.base import OnRecord, Plan, register_launcher


def _import_ray():
    try:
        import ray
    except ImportError:
        raise MissingExtra("--launcher ray needs Ray: pip install 'effprof[ray]'") from None
    return ray


def measure_task(config) -> dict[str, Any]:
    """What one Ray task runs: the row measured in this worker, with where it ran."""
    import os

    from effprof.launch.rows import measure_rows

    record = measure_rows([config])[0]
    record.update(ray_node=socket.gethostname(), worker_pid=os.getpid(),
                  ray_gpu_ids=",".join(str(g) for g in _ray_gpu_ids()) or None)
    return record


def _ray_gpu_ids() -> list:
    try:
        import ray

        return list(ray.get_gpu_ids())
    except Exception:  # noqa: BLE001 - outside a Ray worker: no GPU ids to report
        return []


def _failed(config, error: BaseException) -> dict[str, Any]:
    from effprof.runner import failed_record

    text = (str(error).strip().splitlines() or [""])[-1][:300]
    return failed_record(config, "error", f"ray task failed: {type(error).__name__}: {text}")


@register_launcher("ray")
def launch_ray(configs: list, plan: Plan, on_record: OnRecord | None = None) -> list[dict[str, Any]]:
    check_rows(configs)  # refuse bad rows before starting anything
    for config in configs:
        if config.options.tp > 1:
            raise UsageError("--launcher ray: --tp rows start their own ranks; run them with the inline launcher")
    ray = _import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=plan.address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, ignore_reinit_error=True)
        except Exception as exc:  # noqa: BLE001 - an unreachable cluster, a bad address: one line
            raise UsageError(f"--launcher ray: cannot start or join Ray"
                             f"{f' at {plan.address}' if plan.address else ''}: "
                             f"{(str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]}") from None
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        # a row that may run on a GPU asks the cluster for one (the driver itself may have none)
        on_gpu = [gpus > 0 and (c.options.device == "auto" or c.options.device.startswith("cuda")) for c in configs]
        remote = ray.remote(max_retries=0)(measure_task)
        futures = [remote.options(num_gpus=1 if gpu else 0, num_cpus=1).remote(config)
                   for config, gpu in zip(configs, on_gpu)]
        records = []
        for row, (config, future) in enumerate(zip(configs, futures)):
            try:
                record = ray.get(future)
            except KeyboardInterrupt:
                for pending in futures[row:]:
                    ray.cancel(pending, force=True)
                raise
            except Exception as exc:  # noqa: BLE001 - RayTaskError, WorkerCrashedError, a lost node...
                record = _failed(config, exc)
            record.update(row=row, launcher="ray")
            records.append(record)
            if on_record is not None:
                on_record(record)
        return records
    finally:
        if started_here:
            ray.shutdown()
