"""Device names as the options give them (`auto`, `cuda`, `cuda:N`, `cpu`, `meta`), resolved to torch devices."""
from __future__ import annotations

from typing import TYPE_CHECKING

from effprof.core.errors import UsageError

if TYPE_CHECKING:
    import torch


def resolve_device(name: str) -> torch.device:
    """`auto` is cuda when a GPU is visible, else cpu."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "meta":  # count-only: build without memory, time nothing
        return torch.device("meta")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is visible (torch.cuda.is_available() is False)")
    if name not in ("cpu", "cuda") and not (name.startswith("cuda:") and name[5:].isdigit()):
        raise UsageError(f"--device: {name!r} is not one of auto, cuda, cuda:N, cpu, meta")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices (cuda:0 ...)")
    return torch.device(name)


def rank_capacity(device: "torch.device") -> tuple[int, str]:
    """How many `--tp` ranks this machine can hold on `device`, and what they are: one per visible GPU on
    CUDA, one per core this process may run on on CPU (a rank is a process with its own torch threads)."""
    import os

    import torch

    if device.type == "cuda":
        return torch.cuda.device_count(), "CUDA devices"
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return cores, "CPU cores"
