"""Projector quality beside cost: train each projector with a small decoder back to the feature space.

The LLaVA projector study trained every projector to reconstruct CLIP vision features (a proxy for how
much of the visual signal survives the projection) and reported the test loss beside parameters, FLOPs
and runtime. `projector_quality` does that with effprof's one training loop (`effprof.measure.training`):

- data: `FeatureSet(inputs (S, N, C), targets (S, N, C), description)`; from a tensor file (targets =
  inputs: reconstruction), from a file holding `{"inputs": ..., "targets": ...}`, extracted from images
  with a real CLIP tower (`extract_clip_features`: LLaVA's choice, the penultimate layer's patch features
  without the class token), or synthetic (`synthetic_features`);
- model: the projector (S, N, C) -> (S, N', D), then a decoder back to (S, N, C): one nn.Linear(D, C) per
  token when N' = N; for a projector that merges a square grid by a factor s per side (LDP: 576 -> 144,
  s = 2) a Linear(D, s²·C) whose outputs are put back on the s×s cells (a pixel shuffle);
- training: `--steps` AdamW steps at `--lr` on minibatches of the train split, seeded; the loss is the mean
  squared error to the targets (fp32); test MSE on the held-out split, no gradient.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from effprof.core.errors import UsageError
from effprof.core.libwarnings import quiet_libraries
from effprof.measure.training import TrainingStep, TrainOptions
from effprof.core.registry import Built

SYNTHETIC_NOTE = ("synthetic features: inputs x ~ N(0, 1) per token and channel; targets t = |x·A|·B, centred and "
                  "scaled to unit variance (A: channels × channels/4, B: channels/4 × channels, Gaussian, fixed by the "
                  "seed), an even function of x: no linear map predicts it (a linear projector's best MSE is ~1)")


@dataclass
class FeatureSet:
    inputs: torch.Tensor      # (samples, tokens, channels)
    targets: torch.Tensor     # same shape
    description: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.inputs.shape)


def synthetic_features(samples: int, tokens: int, channels: int, seed: int = 0) -> FeatureSet:
    """See SYNTHETIC_NOTE. Deterministic for a seed."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, tokens, channels, generator=g)
    k = max(1, channels // 4)
    a = torch.randn(channels, k, generator=g) / math.sqrt(channels)
    b = torch.randn(k, channels, generator=g) / math.sqrt(k)
    t = (x @ a).abs() @ b
    t = t - t.mean(dim=(0, 1))
    return FeatureSet(x, t / t.std(), SYNTHETIC_NOTE)


def load_features(path: str) -> FeatureSet:
    """A tensor (samples, tokens, channels) saved with torch.save or safetensors (key `features`), or a dict
    with `inputs` and `targets`."""
    from effprof.core.fileio import check_readable

    file = check_readable(path, "--features")  # a regular file: a FIFO or a device is refused, never waited on
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            data: Any = load_file(str(file))
        else:
            with quiet_libraries():  # torch's loading notes: --debug's, not one more line before ours
                data = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UsageError(f"--features {path}: cannot read a tensor file ({type(exc).__name__})") from None
    if isinstance(data, dict):
        if "inputs" in data:
            inputs, targets, what = data["inputs"], data.get("targets", data["inputs"]), "inputs -> targets"
        elif "features" in data:
            inputs, targets, what = data["features"], data["features"], "reconstruction"
        else:
            raise UsageError(f"--features {path}: a dict needs 'features' or 'inputs' (and 'targets')")
    else:
        inputs, targets, what = data, data, "reconstruction"
    if not isinstance(inputs, torch.Tensor) or not isinstance(targets, torch.Tensor) or inputs.dim() != 3 \
            or inputs.shape != targets.shape:
        raise UsageError(f"--features {path}: expected (samples, tokens, channels) tensors of one shape")
    for name, tensor in (("inputs", inputs), ("targets", targets)):
        if tensor.is_complex() or tensor.dtype == torch.bool:
            raise UsageError(f"--features {path}: {name} are {str(tensor.dtype).removeprefix('torch.')}; "
                             "expected real numbers")
        if tensor.numel() == 0:
            raise UsageError(f"--features {path}: {name} are empty {tuple(tensor.shape)}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UsageError(f"--features {path}: {name} hold NaN or infinite values")
    return FeatureSet(inputs.float(), targets.float(), f"features from {file.name} {tuple(inputs.shape)} ({what})")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def extract_clip_features(images_dir: str, pretrained: str, device: torch.device, batch: int = 16) -> FeatureSet:
    """Penultimate-layer patch features (class token dropped) of every image in `images_dir`, as LLaVA feeds
    its projector; images resized (shorter side) and centre-cropped to the tower's size, CLIP-normalised."""
    from PIL import Image

    from effprof.components.clip import build_tower
    from effprof.core.registry import BuildContext

    folder = Path(images_dir).expanduser()
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not files:
        raise UsageError(f"--images-dir {images_dir}: no {'/'.join(IMAGE_SUFFIXES)} images there")
    tower = build_tower(BuildContext(device, torch.float32), "vit-b-16", None, pretrained)
    size = tower.image_size
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)

    def pixels(path: Path) -> torch.Tensor:
        image = Image.open(path).convert("RGB")
        scale = size / min(image.size)
        image = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))),
                             Image.BICUBIC)
        left, top = (image.width - size) // 2, (image.height - size) // 2
        image = image.crop((left, top, left + size, top + size))
        data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(size, size, 3)
        return (data.permute(2, 0, 1).float() / 255 - mean) / std

    chunks = []
    with torch.no_grad():
        for i in range(0, len(files), batch):
            x = torch.stack([pixels(p) for p in files[i:i + batch]]).to(device)
            hidden = tower.model(pixel_values=x, output_hidden_states=True).hidden_states[-2]
            chunks.append(hidden[:, 1:, :].float().cpu())
    features = torch.cat(chunks)
    return FeatureSet(features, features, f"CLIP features of {len(files)} images in {folder.name} "
                      f"(penultimate layer, patches, {tuple(features.shape)}; reconstruction)")


class Decoder(nn.Module):
    """(S, N', D) -> (S, N, C): a per-token Linear, with a pixel shuffle when the projector merged s×s cells."""

    def __init__(self, width: int, channels: int, tokens_in: int, tokens_out: int):
        super().__init__()
        side_in, side_out = math.isqrt(tokens_in), math.isqrt(tokens_out)
        if tokens_out == tokens_in:
            self.factor = 1
        elif side_in ** 2 == tokens_in and side_out ** 2 == tokens_out and side_in % side_out == 0:
            self.factor = side_in // side_out
        else:
            raise UsageError(f"quality: no decoder from {tokens_out} back to {tokens_in} tokens (not an s×s merge)")
        self.side_out, self.channels = side_out, channels
        self.linear = nn.Linear(width, self.factor ** 2 * channels)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        out = self.linear(y)
        if self.factor == 1:
            return out
        s, n, c, f = out.shape[0], self.side_out, self.channels, self.factor
        out = out.view(s, n, n, f, f, c).permute(0, 1, 3, 2, 4, 5)  # (S, row, sub-row, col, sub-col, C)
        return out.reshape(s, n * f * n * f, c)


class ProjectorAutoencoder(nn.Module):
    def __init__(self, projector: nn.Module, decoder: Decoder):
        super().__init__()
        self.projector, self.decoder = projector, decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.projector(x))


@dataclass
class QualityResult:
    train_mse: float
    test_mse: float
    steps: int
    trainable_params: int

    def fields(self) -> dict[str, Any]:
        return {"quality_train_mse": self.train_mse, "quality_test_mse": self.test_mse, "quality_steps": self.steps,
                "quality_trainable_params": self.trainable_params}


def split(features: FeatureSet, test_fraction: float, seed: int) -> tuple[tuple, tuple]:
    samples = features.inputs.shape[0]
    n_test = max(1, round(samples * test_fraction))
    if n_test >= samples:
        raise UsageError(f"quality: {samples} samples leave nothing to train on at --test-fraction {test_fraction}")
    order = torch.randperm(samples, generator=torch.Generator().manual_seed(seed))
    test, train = order[:n_test], order[n_test:]
    return (features.inputs[train], features.targets[train]), (features.inputs[test], features.targets[test])


def mse_loss(output: torch.Tensor, inputs: tuple) -> torch.Tensor:
    return F.mse_loss(output.float(), inputs[1].float())


def projector_quality(projector: nn.Module, tokens_out: int, out_dim: int, features: FeatureSet, *, steps: int,
                      lr: float, batch: int, test_fraction: float = 0.2, seed: int = 0,
                      device: torch.device = torch.device("cpu"),
                      on_step: Callable[[int, float], None] | None = None) -> QualityResult:
    """Train `projector` + a decoder on the train split for `steps` AdamW steps; MSE on both splits."""
    samples, tokens, channels = features.shape
    (x_train, t_train), (x_test, t_test) = split(features, test_fraction, seed)
    torch.manual_seed(seed)
    model = ProjectorAutoencoder(projector, Decoder(out_dim, channels, tokens, tokens_out)).to(device, torch.float32)
    built = Built(model, lambda b: (), "tok", forward=lambda m, inputs: m(inputs[0]), loss=mse_loss)
    step = TrainingStep(built, TrainOptions(optimizer="adamw", lr=lr), name="projector+decoder")
    trainable = sum(p.numel() for p in step.params)
    g = torch.Generator().manual_seed(seed + 1)
    size = min(batch, x_train.shape[0])
    for i in range(steps):
        pick = torch.randperm(x_train.shape[0], generator=g)[:size]
        loss = step((x_train[pick].to(device), t_train[pick].to(device)))
        if on_step is not None:
            on_step(i + 1, float(loss))
    model.eval()

    def evaluate(x, t) -> float:
        with torch.no_grad():
            total = sum(F.mse_loss(model(xc.to(device)).float(), tc.to(device), reduction="sum").item()
                        for xc, tc in zip(x.split(size), t.split(size)))
        return total / t.numel()

    return QualityResult(evaluate(x_train, t_train), evaluate(x_test, t_test), steps, trainable)
