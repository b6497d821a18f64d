"""Real images for fidelity figures: jpg/png files prepared as `CLIPImageProcessor` prepares them.

CLIP's processor (and LLaVA-1.5's, without its pad-to-square option): resize the shorter side to S
(bicubic), center-crop S×S, scale to [0, 1], normalise by the OpenAI CLIP mean and std per channel.
"""
from __future__ import annotations

from pathlib import Path

import torch

from effprof.core.errors import MissingExtra, UsageError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SUFFIXES = (".jpg", ".jpeg", ".png")


def image_files(directory: str) -> list[Path]:
    folder = Path(directory).expanduser()
    if not folder.is_dir():
        raise UsageError(f"--images-dir {directory}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)
    if not files:
        raise UsageError(f"--images-dir {directory}: no .jpg/.jpeg/.png files")
    return files


def clip_preprocess(image, size: int) -> torch.Tensor:
    """A PIL image -> (3, size, size) float32 tensor, as CLIPImageProcessor (resize, center crop, normalise)."""
    from PIL import Image

    image = image.convert("RGB")
    width, height = image.size
    scale = size / min(width, height)
    resized = image.resize((max(size, round(width * scale)), max(size, round(height * scale))), Image.BICUBIC)
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    crop = resized.crop((left, top, left + size, top + size))
    x = torch.frombuffer(bytearray(crop.tobytes()), dtype=torch.uint8).view(size, size, 3)
    x = x.permute(2, 0, 1).float() / 255.0
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    return (x - mean) / std


def load_images(directory: str, size: int, count: int) -> torch.Tensor:
    """`count` images from `directory` (cycled when it holds fewer), (count, 3, size, size) float32."""
    try:
        from PIL import Image
    except ImportError:
        raise MissingExtra("--images-dir needs Pillow: pip install 'effprof[images]'") from None
    files = image_files(directory)
    out = []
    for i in range(count):
        path = files[i % len(files)]
        try:
            with Image.open(path) as image:
                out.append(clip_preprocess(image, size))
        except OSError as exc:
            raise UsageError(f"--images-dir: cannot read {path.name} ({exc})") from None
    return torch.stack(out)
