"""Finding real checkpoints on disk. Nothing is ever downloaded.

`--pretrained PATH` names a local directory; a hub id ("openai/clip-vit-base-patch16") is looked up
only in an already-populated Hugging Face cache (local_files_only).
"""
from __future__ import annotations

import json
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Sequence

from effprof.core.fileio import read_utf8
from effprof.core.errors import CheckpointError, PretrainedNotFound


def find_checkpoint(spec: str, needed: Sequence[str] = ("config.json",)) -> Path:
    """Return the directory holding a checkpoint given as a local path or a cached hub id.

    `needed` lists file names of which at least one must be present (e.g. the weights file).
    Raises PretrainedNotFound with one clear line when nothing usable is found.
    """
    path = expand_spec(spec)
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


# ---- reading checkpoint files: each failure is one line naming the file and what is wrong with it

def expand_spec(spec: str) -> Path:
    """`--pretrained` as a path: `~` expanded; an empty value or `~nosuchuser` refused in one line."""
    if not str(spec).strip():
        raise PretrainedNotFound("--pretrained: empty (a checkpoint directory or file; none for random weights)")
    try:
        return Path(spec).expanduser()
    except RuntimeError:
        user = str(spec)[1:].split("/", 1)[0]
        raise PretrainedNotFound(f"--pretrained {spec}: no user named {user!r} to expand '~{user}'") from None


def load_state_dict(path: Path, spec: str | None = None) -> dict[str, Any]:
    """A state dict {name: tensor} from a `.safetensors` file or a PyTorch checkpoint, loaded weights-only.

    Refused in one line: an empty file, a corrupt file, a file that holds pickled code (effprof loads
    weights only and never runs code from a checkpoint), a file holding a tensor or a list instead of a
    state dict, an entry that is not a tensor.
    """
    import torch

    where = f"--pretrained {spec or path}"
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CheckpointError(f"{where}: cannot read {path.name} ({exc.strerror or exc})") from None
    if size == 0:
        raise CheckpointError(f"{where}: {path.name} is empty (0 bytes)")
    if path.suffix == ".safetensors":
        try:
            from safetensors import SafetensorError
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError(f"{where}: reading {path.name} needs safetensors (pip install safetensors)") from None
        try:
            state = load_file(str(path))
        except MemoryError:
            raise CheckpointError(f"{where}: {path.name} holds tensors larger than the memory free here") from None
        except (SafetensorError, OSError, ValueError, OverflowError) as exc:
            raise CheckpointError(f"{where}: {path.name} is not a valid safetensors file "
                                  f"({_first_line(exc)})") from None
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            what = f" ({found.group(1)})" if found else ""
            raise CheckpointError(f"{where}: {path.name} holds pickled code{what}, not only weights; effprof "
                                  "loads weights only and runs nothing from a checkpoint (save a state dict, or "
                                  "use safetensors)") from None
        except MemoryError:
            raise CheckpointError(f"{where}: {path.name} holds tensors larger than the memory free here") from None
        except (EOFError, RuntimeError, KeyError, ValueError, OSError, IndexError, TypeError, OverflowError,
                AttributeError, zipfile.BadZipFile) as exc:
            raise CheckpointError(f"{where}: {path.name} is not a readable PyTorch checkpoint "
                                  f"({type(exc).__name__}: {_first_line(exc)})") from None
    if isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        nested = [v for k, v in state.items() if k in ("state_dict", "model", "module") and isinstance(v, dict)]
        state = nested[0] if nested else state
    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: {path.name} holds a {type(state).__name__}, not a state dict "
                              "(a mapping of parameter names to tensors)")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{where}: {path.name}: entry {key!r} is a {type(value).__name__}, not a tensor")
        if value.is_meta:  # saved from the meta device: a shape without numbers (it can claim any size)
            raise CheckpointError(f"{where}: {path.name}: entry {key!r} is a meta tensor {tuple(value.shape)} "
                                  "without data, not weights")
    return state


def read_config(path: Path, spec: str | None = None) -> dict[str, Any]:
    """A checkpoint's config.json as a mapping; not UTF-8, not JSON or not a mapping is one line."""
    where = f"--pretrained {spec or path.parent}"
    try:
        text = read_utf8(path)
    except ValueError as exc:
        raise CheckpointError(f"{where}: {path.name} {exc}") from None
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{where}: {path.name} is not valid JSON ({_first_line(exc)})") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{where}: {path.name} holds a {type(doc).__name__}, not a mapping of settings")
    return doc


_MISSING = object()


def config_value(doc: dict[str, Any], key: str, kind: type, where: str, default: Any = _MISSING,
                 low: float | None = None, high: float | None = None) -> Any:
    """`doc[key]` checked: present (or `default`), of type `kind` (bool is not an int), within [low, high]."""
    if key not in doc or doc[key] is None:
        if default is _MISSING:
            raise CheckpointError(f"{where}: missing {key!r}")
        return default
    value = doc[key]
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise CheckpointError(f"{where}: {key} is {value!r}, not a {kind.__name__}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise CheckpointError(f"{where}: {key} = {value} is outside [{low}, {high}]")
    return value


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
