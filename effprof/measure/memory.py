"""Peak device memory of a region, and the sizes of what a module holds."""
from __future__ import annotations

from typing import Any

import torch

MIB = 2**20


class PeakMemory:
    """Peak CUDA memory allocated above a starting point (activations, workspaces, graph pools), in MiB.

    `start()` synchronises and remembers what is allocated; `peak_mib()` is the allocator's maximum since
    then minus that. On other devices torch keeps no allocator statistics: `peak_mib()` is None.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.before = 0

    @property
    def supported(self) -> bool:
        return self.device.type == "cuda"

    def start(self) -> None:
        if self.supported:
            torch.cuda.synchronize(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mib(self) -> float | None:
        if not self.supported:
            return None
        torch.cuda.synchronize(self.device)
        return (torch.cuda.max_memory_allocated(self.device) - self.before) / MIB


def count_params(module: torch.nn.Module | None) -> tuple[int, int]:
    """(total, trainable) parameter counts; shared tensors are counted once."""
    if module is None:
        return 0, 0
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


def cpu_note() -> dict[str, Any]:
    return {"peak_mem_mib": None,
            "peak_mem_note": "not measured on cpu (torch keeps no cpu allocator statistics)"}
