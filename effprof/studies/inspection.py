"""What the commands other than `run` and `compare` ask of one configuration, outside `runner.measure`:
`breakdown` (per-module and per-kernel time, `--uncovered` FLOP coverage, the training step's phases),
`env` (versions, optional modules, usable scan backends) and `estimate` (the ceilings it divides by)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from effprof.core.errors import UsageError
from effprof.measure.env import environment, resolve_device
from effprof.core.options import Config, RunOptions
from effprof.core.registry import BuildContext, Built
from effprof.runner import build


@dataclass
class BreakdownResult:
    nodes: list[dict[str, Any]]
    kernels: list[dict[str, Any]]
    facts: str          # "batch 1, bf16, cuda"


def built_to_time(config: Config, what: str) -> tuple[Built, tuple, BuildContext, RunOptions]:
    """The built component and one input set, for the commands that time a call outside `measure`; the
    meta device (nothing runs there) is refused with `what` in the line."""
    opts = config.options.validate()
    if opts.torch_device().type == "meta":
        raise UsageError(f"{what}: --device meta has nothing to time (use `run --device meta` to count)")
    built, _, ctx = build(config)
    return built, built.make_inputs(opts.batch), ctx, opts


def breakdown_config(config: Config, depth: int = 2, kernels: int = 0) -> BreakdownResult:
    """Per-module time, params, FLOPs and bytes of one configuration's call, and optionally its costliest
    kernels (CUDA) or aten ops (CPU): `effprof.measure.breakdown` on the built component."""
    from effprof.measure.breakdown import breakdown, top_kernels

    built, inputs, ctx, opts = built_to_time(config, "breakdown times modules")
    with torch.inference_mode():
        nodes = breakdown(built.module, lambda: built.call(inputs), ctx.device, depth=depth)
        rows = top_kernels(lambda: built.call(inputs), ctx.device, top=kernels) if kernels else []
    return BreakdownResult(nodes, rows, f"batch {opts.batch}, {opts.dtype_name()}, {ctx.device.type}")


def coverage_config(config: Config) -> dict[str, Any]:
    """`effprof.measure.coverage.flop_coverage` of one configuration's call (breakdown --uncovered)."""
    from effprof.measure.coverage import flop_coverage

    built, inputs, ctx, _ = built_to_time(config, "--uncovered times ops")
    with torch.inference_mode():
        return flop_coverage(lambda: built.call(inputs), ctx.device)


def train_breakdown_config(config: Config, repeats: int = 5) -> tuple[dict[str, Any], str]:
    """The training step's time split into forward (with the loss), backward and optimizer (step + zero_grad),
    mean ms over `repeats` steps after one warm-up step (`effprof.measure.training.step_phases`)."""
    from effprof.measure.training import TrainingStep, TrainOptions, step_phases

    opts = config.options.validate()
    built, _, ctx = build(config)
    step = TrainingStep(built, TrainOptions(opts.optimizer, grad_checkpointing=opts.grad_checkpointing),
                        name=config.component)
    phases = step_phases(step, built.make_inputs(opts.batch), repeats=repeats)
    return phases, f"batch {opts.batch}, {opts.dtype_name()}, {ctx.device.type}, {opts.optimizer}"


def environment_facts(device: str = "auto") -> dict[str, str]:
    """What `effprof env` shows: versions, the optional modules that import, the usable scan backends."""
    from effprof.measure.env import OPTIONAL_MODULES, module_available
    from effprof.ops.selective_scan import BACKENDS, available_backends

    target = resolve_device(device)
    facts = environment(target)
    facts.pop("timestamp_utc", None)
    facts["cuda_available"] = str(torch.cuda.is_available())
    for module, what in OPTIONAL_MODULES.items():
        facts[module] = ("importable" if module_available(module) else "not installed") + f"  ({what})"
    usable = available_backends(target)
    facts["scan backends"] = ", ".join(f"{b} {'yes' if b in usable else 'no'}" for b in BACKENDS) + \
        f"  (on {target.type}; --scan-backend auto picks the first usable of mamba-ssm, triton, ref)"
    return facts


def estimate_ceilings(gpu: str | None, device: str = "auto"):
    """Ceilings for `effprof estimate`: a named GPU's datasheet, else this machine's GPU (measured or
    datasheet), else None."""
    from effprof.measure.calibrate import ceilings, datasheet_ceilings

    if gpu:
        sheet = datasheet_ceilings(gpu if "nvidia" in gpu.lower() else f"NVIDIA {gpu}")
        if sheet is None:
            raise UsageError(f"--gpu {gpu}: no datasheet for this name (try H100, H200, A100, L40S, L4)")
        return sheet
    target = resolve_device(device)
    return ceilings(target) if target.type == "cuda" else None
