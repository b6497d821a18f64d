"""Helpers the multi-GPU tests run inside spawned worker and rank processes (they import this module by name:
EFFPROF_PLUGINS=multigpu_helpers for the workers; `launch` pickles `sharded_vs_whole` by reference)."""
import os
import sys

import torch

from effprof.core.params import Param
from effprof.core.registry import Built, register_component


@register_component("test-worker-dies", unit="seq", params=[
    Param("how", str, "ok", "ok | assert (a CUDA-style error) | exit (the process dies at once)",
          choices=("ok", "assert", "exit"))])
def worker_dies(ctx, how):
    """Fails the way a poisoned or crashed GPU worker does."""
    if how == "assert":
        raise RuntimeError("CUDA error: device-side assert triggered (simulated)")
    if how == "exit":
        print("fatal: simulated hard crash", file=sys.stderr, flush=True)
        os._exit(7)
    return Built(torch.nn.Linear(4, 4), lambda b: (torch.randn(b, 4),), unit="seq")


def sharded_vs_whole(cases, device="cpu"):
    """On each rank: for (component, params), the output of the whole model (tp 1) and of this rank's
    slice (tp = world) through `runner.build`, on the same seeded inputs. Returns [(max |diff|, max |whole|,
    linears split)]."""
    from dataclasses import replace

    import torch.distributed as dist

    from effprof.runner import Config, RunOptions, build

    out = []
    for component, params in cases:
        whole = Config(component, params, RunOptions(device=f"{device}:{torch.cuda.current_device()}"
                                                     if device == "cuda" else device, dtype="fp32", batch=2))
        results, split = [], None
        for config in (whole, replace(whole, options=replace(whole.options, tp=dist.get_world_size()))):
            built, _, _ = build(config)
            split = built.info.get("tp_linears_split")
            torch.manual_seed(7)
            inputs = built.make_inputs(2)
            with torch.inference_mode():
                results.append(built.call(inputs).float())
        out.append(((results[1] - results[0]).abs().max().item(), results[0].abs().max().item(), split))
    return out
