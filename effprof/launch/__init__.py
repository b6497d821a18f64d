"""Where and how rows run: the only package that decides it (see `effprof.launch.base`).

- `inline`: this process, one row after another (a `--tp` row's ranks start through `torchrun`);
- `pool`: worker processes, one per GPU (`--gpus`), N on one device (`--workers`), or one per row (`--isolate`);
- `passes`: every row in N fresh processes, one pass after another, pooled (`--processes N`);
- `torchrun`: one row over its tensor-parallel ranks (`--tp N`); the other launchers hand such rows to it;
- `ray`: rows as tasks on a Ray cluster's GPUs (`--launcher ray [--address ADDR]`; the `ray` extra).

    records = launch(configs, Plan("pool", slots=plan_slots("all", None, False, None)), on_record=print)
"""
import importlib

from effprof.launch.base import LAUNCHERS, Plan, get_launcher, register_launcher, unregister_launcher

BUILTIN = ("inline", "pool", "passes", "torchrun", "ray")
for _module in BUILTIN:
    importlib.import_module(f"effprof.launch.{_module}")


def plan_for(launcher: str | None = None, gpus: str | None = None, workers: int | None = None,
             isolate: bool = False, processes: int = 1, address: str | None = None, device: str | None = None,
             tp: bool = False) -> Plan:
    """The plan a comparison's options ask for (the CLI's --launcher, --gpus, --workers, --isolate,
    --processes, --address), refused in one line where they contradict each other."""
    from effprof.core.errors import UsageError
    from effprof.launch.passes import check_processes
    from effprof.launch.pool import plan_slots

    check_processes(processes, tp, device)
    if address is not None and launcher != "ray":
        raise UsageError("--address names a Ray cluster: give it with --launcher ray")
    if launcher == "ray":
        if gpus is not None or workers is not None or isolate or processes > 1:
            raise UsageError("--launcher ray places every row on the cluster itself: drop --gpus/--workers/"
                             "--isolate/--processes")
        if tp:
            raise UsageError("--launcher ray: --tp rows start their own ranks; run them with the inline launcher")
        return Plan("ray", address=address)
    if launcher is not None:
        get_launcher(launcher)  # an unknown name: one line that lists the known ones
    slots = plan_slots(gpus, workers, isolate, device)
    if processes > 1:
        return Plan("passes", slots=slots or plan_slots(None, 1, False, device), isolate=isolate,
                    processes=processes)
    if launcher not in (None, "inline", "pool") and slots is None:
        return Plan(launcher)
    return Plan("pool", slots=slots, isolate=isolate) if slots else Plan("inline")


def launch(configs: list, plan: Plan | None = None, on_record=None) -> list[dict]:
    """Measure `configs` the way `plan` says; records in the rows' order (see `effprof.launch.base`)."""
    plan = plan or Plan()
    return get_launcher(plan.launcher)(configs, plan, on_record)


__all__ = ["LAUNCHERS", "Plan", "get_launcher", "launch", "plan_for", "register_launcher", "unregister_launcher"]
