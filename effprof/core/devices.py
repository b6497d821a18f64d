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
