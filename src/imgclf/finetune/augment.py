"""Training-time augmentation presets, applied to uint8 image batches before normalisation.

Fine-tuning keeps the base model's preprocessing: every image is decoded once
(:func:`imgclf.images.decode`) and brought to the model's geometry by
:func:`imgclf.preprocess.resize_and_crop`, exactly as the server does. During training only, a
preset then applies a random resized crop, a horizontal flip and colour jitter to each batch (one
``grid_sample`` for crop + flip), and :class:`SpecTransform` normalises with the spec's own
scale, mean, std and channel order (:class:`imgclf.train.data.SpecNormalize`, as ``imgclf train``).
Validation batches get the normalisation alone, so they equal ``preprocess(decode(bytes))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from imgclf.preprocess import PreprocessSpec
from imgclf.train.data import SpecNormalize


@dataclass(frozen=True)
class AugmentPreset:
    """Random resized crop covering ``scale`` of the image's area at an aspect ratio in ``ratio``,
    horizontal flip with probability ``flip``, and brightness/contrast/saturation factors drawn
    from ``1 +- amount``."""

    scale: tuple[float, float]
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0


PRESETS: dict[str, AugmentPreset | None] = {
    "none": None,
    "light": AugmentPreset(scale=(0.6, 1.0), ratio=(0.85, 1.18), brightness=0.1, contrast=0.1),
    "default": AugmentPreset(scale=(0.35, 1.0), brightness=0.2, contrast=0.2, saturation=0.2),
    "strong": AugmentPreset(scale=(0.15, 1.0), brightness=0.4, contrast=0.4, saturation=0.4),
}


def get_preset(name: str) -> AugmentPreset | None:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown augmentation {name!r}; choose one of {', '.join(PRESETS)}") from None


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def crop_flip(x: torch.Tensor, preset: AugmentPreset, generator: torch.Generator) -> torch.Tensor:
    """Random resized crop + flip of a float ``(B, C, H, W)`` batch, back to ``H x W``.

    Each crop is an affine map of the output grid into the image (half-widths ``sx``, ``sy`` and
    centre ``cx``, ``cy`` in [-1, 1] coordinates); a negative ``sx`` mirrors the crop.
    """
    b = x.shape[0]
    area = _uniform(b, preset.scale[0], preset.scale[1], generator)
    log_ratio = _uniform(b, math.log(preset.ratio[0]), math.log(preset.ratio[1]), generator)
    aspect = torch.exp(log_ratio)
    sx = torch.sqrt(area * aspect).clamp(max=1.0)
    sy = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (2 * torch.rand(b, generator=generator) - 1) * (1 - sx)
    cy = (2 * torch.rand(b, generator=generator) - 1) * (1 - sy)
    flip = torch.rand(b, generator=generator) < preset.flip
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = torch.where(flip, -sx, sx)
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = sy
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def colour_jitter(x: torch.Tensor, preset: AugmentPreset, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation jitter on a float 0..255 ``(B, C, H, W)`` batch."""
    b, c = x.shape[:2]

    def factor(amount: float) -> torch.Tensor:
        return _uniform(b, 1 - amount, 1 + amount, generator).to(x.device).view(b, 1, 1, 1)

    if preset.brightness:
        x = (x * factor(preset.brightness)).clamp_(0, 255)
    if preset.contrast:
        grey = x.mean(dim=1, keepdim=True) if c == 3 else x
        m = grey.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - m) * factor(preset.contrast) + m).clamp_(0, 255)
    if preset.saturation and c == 3:
        weights = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
        luma = (x * weights).sum(dim=1, keepdim=True)
        x = ((x - luma) * factor(preset.saturation) + luma).clamp_(0, 255)
    return x


class SpecTransform:
    """uint8 ``(B, C, H, W)`` RGB batch -> optional augmentation -> the spec's normalisation.

    Matches the trainer's transform signature ``(x, index, epoch, generator)``; the generator is
    seeded per batch by the trainer, so any batch can be rebuilt exactly on resume.
    """

    def __init__(self, spec: PreprocessSpec, preset: AugmentPreset | None = None) -> None:
        self.spec = spec
        self.preset = preset
        self.normalize = SpecNormalize(spec)

    def to(self, device: torch.device | str) -> SpecTransform:
        self.normalize.to(device)
        return self

    def __call__(self, x: torch.Tensor, index: torch.Tensor | None = None, epoch: int = 0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        if self.preset is not None:
            gen = generator if generator is not None else torch.Generator().manual_seed(epoch)
            x = crop_flip(x.to(torch.float32), self.preset, gen)
            x = colour_jitter(x, self.preset, gen)
        return self.normalize(x)
