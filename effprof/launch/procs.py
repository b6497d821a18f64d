"""What every process effprof starts shares: its environment, and how its last words are read."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

# NVLink SHARP / multicast off in every process effprof starts (the lent GPU machines require it).
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


@contextmanager
def child_env(extra: dict[str, str]) -> Iterator[None]:
    """Set variables for a child started inside the block (spawn copies os.environ), then restore."""
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def last_line(path: Path) -> str:
    """The last non-empty line a worker wrote (its error, when it died), at most 300 characters."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""
