"""Top-1/top-5 accuracy of an image classifier on an image folder, in the same record as its cost.

`effprof eval COMPONENT --data DIR` (effprof/cli/commands/eval.py) builds the component, optionally loads a
checkpoint (`load_checkpoint`: safetensors, or `torch.load(weights_only=True)`, so no pickled code ever
runs), reads DIR in the usual class-per-subfolder layout, decodes with Pillow (torchvision is not
needed), preprocesses as the model was evaluated in its paper (`Preprocess`, declared by the
component on its module as `module.preprocess`), and reports

- `top1_pct`, `top5_pct`: % of images whose label is the first / among the first min(5, classes) logits;
- `eval_img_per_s`: images / wall time of the whole evaluation, decoding and preprocessing included
  (decoded by `--workers` threads, one batch ahead of the model);
- `eval_model_img_per_s`: images / time inside the model's forward (device synchronised per batch);

beside the cost columns of `effprof run` (latency, throughput, memory, params, FLOPs) for the same
configuration. Labels: sorted folder names -> 0, 1, ... (torchvision's ImageFolder order; ImageNet's
synset folders give the standard indices), or `--class-map FILE` mapping folder names to head indices
(a subset of ImageNet's classes). Bad data gets one line naming what is wrong (`EvalDataError`).
"""
from __future__ import annotations

import importlib.util
import json
import math
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from effprof.core.errors import MissingExtra, PretrainedNotFound, UsageError
from effprof.core.libwarnings import quiet_libraries
from effprof.modules.preprocess import IMAGENET_MEAN, IMAGENET_STD, EvalDataError, Preprocess  # noqa: F401

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".gif"})
CHECKPOINT_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")  # nested layouts, preferred first


@dataclass
class ImageFolder:
    """Images of a class-per-subfolder tree with their head indices."""

    root: Path
    classes: list[str]              # folder names, sorted
    samples: list[tuple[Path, int]]  # (image path, head index)


def read_class_map(path: str | Path) -> dict[str, int]:
    """Folder name -> head index, from UTF-8 JSON ({"n01440764": 0, ...}) or text lines "NAME INDEX"; a regular
    file of at most MAX_TEXT_BYTES (a FIFO or a device is refused, never waited on)."""
    from effprof.core.fileio import read_bounded
    from effprof.core.limits import MAX_TEXT_BYTES

    data = read_bounded(path, "--class-map", MAX_TEXT_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EvalDataError(f"--class-map {path}: not UTF-8 text (byte {data[exc.start]:#04x} at offset "
                            f"{exc.start})") from None
    try:
        mapping = json.loads(text) if text.lstrip().startswith("{") else dict(
            (parts[0], parts[1]) for parts in (line.split() for line in text.splitlines()) if parts)
        return {str(name): int(index) for name, index in mapping.items()}
    except (ValueError, IndexError, TypeError):
        raise EvalDataError(f"--class-map {path}: expected JSON {{\"folder\": index}} or lines 'folder index'") \
            from None


def scan_folder(root: str | Path, class_map: dict[str, int] | None = None) -> ImageFolder:
    """List DIR/<class>/<image>; refuse an empty tree, a class without images or one the map lacks."""
    from effprof.core.fileio import expand

    root = expand(root, "--data")
    try:
        return _scan(root, class_map)
    except OSError as exc:  # a folder or an entry that cannot be read (permissions, a vanished file)
        where = f" {exc.filename}" if exc.filename else ""
        raise EvalDataError(f"--data {root}: cannot read{where} ({exc.strerror or exc})") from None


def _scan(root: Path, class_map: dict[str, int] | None) -> ImageFolder:
    from effprof.core.fileio import PSEUDO_ROOTS

    if not root.is_dir():
        raise EvalDataError(f"--data {root}: not a folder")
    real = str(root.resolve())
    if any(real == r or real.startswith(r + "/") for r in PSEUDO_ROOTS):
        raise EvalDataError(f"--data {root}: a kernel pseudo-file system ({real}), not an image folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise EvalDataError(f"--data {root}: no class subfolders (expected DIR/<class>/<image>)")
    if class_map is not None:
        missing = [c for c in classes if c not in class_map]
        if missing:
            raise EvalDataError(f"--class-map: folder {missing[0]!r} is not in the map ({len(missing)} folders "
                                "missing)")
    samples = []
    for index, name in enumerate(classes):
        images = sorted(p for p in (root / name).iterdir()
                        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not images:
            raise EvalDataError(f"--data {root}: class folder {name!r} holds no images "
                                f"({', '.join(sorted(IMAGE_EXTENSIONS))})")
        label = class_map[name] if class_map is not None else index
        samples.extend((path, label) for path in images)
    return ImageFolder(root, classes, samples)


def check_head(folder: ImageFolder, num_outputs: int, mapped: bool) -> None:
    """The classes must fit the head: as many folders as outputs, or mapped indices below num_outputs."""
    if mapped:
        top = max(label for _, label in folder.samples)
        if top >= num_outputs or min(label for _, label in folder.samples) < 0:
            raise EvalDataError(f"--class-map: index {top} is outside the head's {num_outputs} classes")
    elif len(folder.classes) != num_outputs:
        raise EvalDataError(f"--data {folder.root}: {len(folder.classes)} class folders but the head has "
                            f"{num_outputs} outputs; give --num-classes {len(folder.classes)} (a fresh head) or "
                            "--class-map FILE (folder -> head index)")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A state dict from .safetensors, or from a torch file read with weights_only=True (no pickled code)."""
    import torch

    from effprof.core.fileio import check_readable

    path = Path(path).expanduser()
    if not path.exists():
        raise PretrainedNotFound(f"--pretrained {path}: no such file")
    check_readable(path, "--pretrained")  # a folder, a FIFO or a device is refused, never waited on
    try:
        if path.suffix == ".safetensors":
            if importlib.util.find_spec("safetensors") is None:
                raise MissingExtra("reading .safetensors needs safetensors: pip install 'effprof[eval]'")
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            with quiet_libraries():  # torch's loading notes: --debug's, not one more line before ours
                state = torch.load(path, map_location="cpu", weights_only=True)
    except MissingExtra:
        raise
    except Exception as exc:  # unpickling refused, a truncated file, ...
        raise PretrainedNotFound(f"--pretrained {path}: cannot read it as weights "
                                 f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
    for key in CHECKPOINT_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedNotFound(f"--pretrained {path}: not a state dict of tensors")
    meta = [k for k, v in state.items() if v.is_meta]
    if meta:  # saved from the meta device: shapes without numbers (they can claim any size)
        raise PretrainedNotFound(f"--pretrained {path}: {meta[0]!r} is a meta tensor without data, not weights")
    return {k.removeprefix("module."): v for k, v in state.items()}


def apply_checkpoint(module, state: dict[str, Any], path: str) -> list[str]:
    """Load `state` into `module`; head tensors whose shape differs (a fresh head, --num-classes) are left
    out and returned; any other missing, unexpected or mis-shaped tensor is refused with one line. A module
    with `convert_state_dict` first maps its paper's own key names (VMamba, MambaVision) to effprof's."""
    convert = getattr(module, "convert_state_dict", None)
    if convert is not None:
        state = convert(state)
    own = module.state_dict()
    fresh = [k for k, v in state.items() if k in own and own[k].shape != v.shape and k.split(".")[-2:-1] == ["head"]]
    state = {k: v for k, v in state.items() if k not in fresh}
    wrong = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = sorted(set(own) - set(state) - set(fresh))
    unexpected = sorted(set(state) - set(own))
    for problem, keys in (("mis-shaped", wrong), ("missing", missing), ("unexpected", unexpected)):
        if keys:
            raise PretrainedNotFound(f"--pretrained {path}: {len(keys)} {problem} tensors for this model "
                                     f"(first: {keys[0]})")
    module.load_state_dict(state, strict=False)
    return fresh


def evaluate(module, folder: ImageFolder, preprocess: Preprocess, device, dtype, batch: int,
             workers: int = 8, mapped: bool = False) -> dict[str, Any]:
    """Run the whole folder through `module` (logits out); accuracy and the two throughputs."""
    import numpy as np
    import torch

    start = time.perf_counter()
    correct1 = correct5 = 0
    model_s = 0.0
    from PIL import Image

    chunks = [folder.samples[i:i + batch] for i in range(0, len(folder.samples), batch)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, torch.inference_mode(), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # Preprocess.load refuses such an image
        def submit(chunk):  # decode a batch in the background while the model runs the previous one
            return [pool.submit(preprocess.load, path) for path, _ in chunk]

        pending = submit(chunks[0])
        for index, chunk in enumerate(chunks):
            pixels = np.stack([future.result() for future in pending])
            if index + 1 < len(chunks):
                pending = submit(chunks[index + 1])
            images = torch.from_numpy(pixels).to(device=device, dtype=dtype)
            labels = torch.tensor([label for _, label in chunk], device=device)
            _sync(device)
            t0 = time.perf_counter()
            logits = module(images)
            _sync(device)
            model_s += time.perf_counter() - t0
            if index == 0:
                check_head(folder, logits.shape[-1], mapped)
            top = logits.float().topk(min(5, logits.shape[-1]), dim=-1).indices
            correct1 += int((top[:, 0] == labels).sum())
            correct5 += int((top == labels[:, None]).any(dim=-1).sum())
    wall = time.perf_counter() - start
    n = len(folder.samples)
    return {"eval_images": n, "eval_classes": len(folder.classes), "top1_pct": 100.0 * correct1 / n,
            "top5_pct": 100.0 * correct5 / n, "eval_wall_s": wall, "eval_img_per_s": n / wall,
            "eval_model_img_per_s": n / model_s if model_s > 0 else None, "eval_batch": batch,
            "preprocess": preprocess.describe(), "eval_data": str(folder.root)}


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
