"""How a vision model's inputs are prepared for evaluation: the preprocessing its paper used (timm's rule)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from effprof.core.errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EvalDataError(UsageError):
    """The image folder, an image in it, the class map or a checkpoint cannot be used."""


@dataclass(frozen=True)
class Preprocess:
    """Evaluation preprocessing: resize the shorter side to floor(img_size / crop_pct) (timm's rule),
    centre-crop img_size × img_size, scale to [0, 1], normalise by mean and std per channel."""

    img_size: int
    crop_pct: float = 0.875
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"

    @property
    def resize_size(self) -> int:
        return int(math.floor(self.img_size / self.crop_pct))

    def describe(self) -> str:
        return (f"resize shorter side to {self.resize_size} ({self.interpolation}), centre crop {self.img_size}, "
                f"normalise mean {self.mean} std {self.std}")

    def load(self, path: Path):
        """Decode one image file into a float32 array (3, img_size, img_size). An image of more pixels than
        Pillow's `Image.MAX_IMAGE_PIXELS` (a decompression bomb) is refused, never decoded (the caller
        silences Pillow's DecompressionBombWarning: the refusal says it in one line)."""
        import numpy as np
        from PIL import Image

        try:
            with Image.open(path) as image:
                pixels_in_file = image.size[0] * image.size[1]
                if Image.MAX_IMAGE_PIXELS and pixels_in_file > Image.MAX_IMAGE_PIXELS:
                    raise EvalDataError(f"image {path}: {image.size[0]}x{image.size[1]} pixels, more than Pillow "
                                        f"decodes safely ({Image.MAX_IMAGE_PIXELS:,}): a decompression bomb?")
                image = image.convert("RGB")
                width, height = image.size
                scale = self.resize_size / min(width, height)
                size = (max(1, round(width * scale)), max(1, round(height * scale)))
                resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[self.interpolation]
                image = image.resize(size, resample)
                left, top = (size[0] - self.img_size) // 2, (size[1] - self.img_size) // 2
                image = image.crop((left, top, left + self.img_size, top + self.img_size))
                pixels = np.asarray(image, dtype=np.float32) / 255.0
        except Image.DecompressionBombError as exc:  # past twice MAX_IMAGE_PIXELS: Image.open refuses it
            raise EvalDataError(f"image {path}: {str(exc).splitlines()[0][:120]}") from None
        except (OSError, ValueError, SyntaxError) as exc:  # PIL.UnidentifiedImageError is an OSError
            raise EvalDataError(f"cannot decode image {path}: {str(exc).splitlines()[0][:120]}") from None
        pixels = (pixels - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return pixels.transpose(2, 0, 1)
