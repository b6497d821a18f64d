"""Atomic file output, shared by every layer that writes files (records, plots, the calibration cache)."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from effprof.errors import UsageError


@contextmanager
def atomic_path(path: str | Path, make_parents: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename, so a reader
    sees the old file or the new one, never half of one. On failure the temporary file is removed."""
    path = Path(path)
    folder = path.parent
    if make_parents:
        folder.mkdir(parents=True, exist_ok=True)
    elif not folder.is_dir():
        raise UsageError(f"{path}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, text: str, make_parents: bool = False) -> None:
    """Write `text` to `path` atomically (see `atomic_path`), flushed to disk before the rename."""
    with atomic_path(path, make_parents) as tmp:
        with open(tmp, "w", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
