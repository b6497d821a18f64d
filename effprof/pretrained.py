"""Finding real checkpoints on disk. Nothing is ever downloaded.

`--pretrained PATH` names a local directory; a hub id ("openai/clip-vit-base-patch16") is looked up
only in an already-populated Hugging Face cache (local_files_only).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from effprof.errors import PretrainedNotFound


def find_checkpoint(spec: str, needed: Sequence[str] = ("config.json",)) -> Path:
    """Return the directory holding a checkpoint given as a local path or a cached hub id.

    `needed` lists file names of which at least one must be present (e.g. the weights file).
    Raises PretrainedNotFound with one clear line when nothing usable is found.
    """
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_file():
            path = path.parent
        if not any((path / name).exists() for name in needed):
            raise PretrainedNotFound(f"--pretrained {spec}: none of {', '.join(needed)} in {path}")
        return path
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            cached = Path(snapshot_download(spec, local_files_only=True))
        except Exception:
            cached = None
        if cached is not None and any((cached / name).exists() for name in needed):
            return cached
        raise PretrainedNotFound(f"--pretrained {spec}: not a local directory and not in the Hugging Face cache "
                                 "(effprof never downloads; pass a local path)")
    raise PretrainedNotFound(f"--pretrained {spec}: no such directory")
