"""Batched training augmentation, one small named piece per trick, for every task.

:class:`Augment` says what to apply; :func:`augment_batch` applies it to a uint8 ``(B, C, H, W)``
batch with random numbers from one generator (seeded per batch by the data, so any batch can be
rebuilt on resume). The pieces:

* :func:`shift_flip_cutout` (CIFAR recipes, airbench): flip, reflect-pad-and-crop translate and
  cutout in one gather, staying uint8;
* :func:`crop_flip` (fine-tuning photos): random resized crop and flip in one ``grid_sample``;
* :func:`colour_jitter`: brightness, contrast, saturation.

:data:`PRESETS` are the named settings of ``imgclf finetune --augment``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

FLIP_MODES = ("none", "random", "alternating")


@dataclass(frozen=True)
class Augment:
    """What to apply to a training batch (nothing by default).

    ``flip``: ``random`` mirrors each image with probability ``flip_p``; ``alternating`` (airbench)
    mirrors a fixed random half of the images on even epochs and the other half on odd epochs, so
    every image is seen both ways in any two consecutive epochs. ``translate``: random shift of up to
    that many pixels with reflect padding. ``cutout``: one random square of that side set to the
    mean pixel. ``crop_scale``: random resized crop covering that range of the image's area at an
    aspect ratio in ``crop_ratio`` (instead of ``translate``/``cutout``). ``brightness``,
    ``contrast``, ``saturation``: factors drawn from ``1 +- amount``.
    """

    flip: str = "none"
    translate: int = 0
    cutout: int = 0
    crop_scale: tuple[float, float] | None = None
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    flip_p: float = 0.5

    def __post_init__(self) -> None:
        if self.flip not in FLIP_MODES:
            raise ValueError(f"flip must be one of {FLIP_MODES}, got {self.flip!r}")
        if self.translate < 0 or self.cutout < 0:
            raise ValueError("translate and cutout must be >= 0")
        if not 0.0 <= self.flip_p <= 1.0:
            raise ValueError(f"flip_p is a probability, got {self.flip_p}")
        if min(self.brightness, self.contrast, self.saturation) < 0:
            raise ValueError("brightness, contrast and saturation must be >= 0")
        if self.crop_scale is not None:
            lo, hi = self.crop_scale
            if not 0.0 < lo <= hi <= 1.0:
                raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
            if not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
                raise ValueError(f"crop_ratio must satisfy 0 < low <= high, got {self.crop_ratio}")
            if self.translate or self.cutout:
                raise ValueError("a random resized crop replaces translate and cutout; use one or the other")

    @property
    def jitter(self) -> bool:
        return bool(self.brightness or self.contrast or self.saturation)

    @property
    def active(self) -> bool:
        return (self.flip != "none" or self.translate > 0 or self.cutout > 0 or self.crop_scale is not None
                or self.jitter)


PRESETS: dict[str, Augment | None] = {
    "none": None,
    "light": Augment(flip="random", crop_scale=(0.6, 1.0), crop_ratio=(0.85, 1.18), brightness=0.1, contrast=0.1),
    "default": Augment(flip="random", crop_scale=(0.35, 1.0), brightness=0.2, contrast=0.2, saturation=0.2),
    "strong": Augment(flip="random", crop_scale=(0.15, 1.0), brightness=0.4, contrast=0.4, saturation=0.4),
}


def get_preset(name: str) -> Augment | None:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown augmentation {name!r}; choose one of {', '.join(PRESETS)}") from None


def augment_batch(x: torch.Tensor, aug: Augment, generator: torch.Generator, *,
                  flip_mask: torch.Tensor | None = None, fill: torch.Tensor | None = None) -> torch.Tensor:
    """Apply ``aug`` to a uint8 ``(B, C, H, W)`` batch.

    Random numbers come from ``generator`` (on the CPU, so a batch is reproducible on any device);
    ``flip_mask`` overrides the random flip decision (used by the alternating scheme). Without a
    crop or jitter the result stays uint8 (channels-last in memory when translated); with them it
    is float32 on the 0..255 scale.
    """
    if aug.crop_scale is not None:
        x = crop_flip(x.to(torch.float32), aug, generator, flip_mask=flip_mask)
    else:
        x = shift_flip_cutout(x, aug, generator, flip_mask=flip_mask, fill=fill)
    if aug.jitter:
        x = colour_jitter(x.to(torch.float32), aug, generator)
    return x


def _reflect(idx: torch.Tensor, n: int) -> torch.Tensor:
    """Reflect out-of-range indices like ``F.pad(mode='reflect')`` (the edge is not repeated)."""
    idx = torch.where(idx < 0, -idx, idx)
    return torch.where(idx > n - 1, 2 * (n - 1) - idx, idx)


def shift_flip_cutout(x: torch.Tensor, aug: Augment, generator: torch.Generator, *,
                      flip_mask: torch.Tensor | None = None, fill: torch.Tensor | None = None) -> torch.Tensor:
    """Flip, translate (reflect padding) and cutout of a uint8 batch; channels-last when translated."""
    b, c, h, w = x.shape
    dev = x.device
    if flip_mask is None and aug.flip == "random":
        flip_mask = torch.rand(b, generator=generator) < aug.flip_p
    if aug.translate > 0:
        if aug.translate >= min(h, w):
            raise ValueError(f"translate {aug.translate} must be smaller than the image ({h}x{w})")
        p = aug.translate
        shifts = torch.randint(-p, p + 1, (b, 2), generator=generator)
        rows = _reflect(torch.arange(h)[None, :] + shifts[:, :1], h)
        cols = _reflect(torch.arange(w)[None, :] + shifts[:, 1:], w)
        if flip_mask is not None:
            cols = torch.where(flip_mask[:, None], cols.flip(-1), cols)
        rows, cols = rows.to(dev), cols.to(dev)
        # One gather does shift, reflect padding and flip: (B, H, W, C), i.e. NCHW channels-last.
        x = x[torch.arange(b, device=dev)[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    elif flip_mask is not None:
        x = torch.where(flip_mask.to(dev)[:, None, None, None], x.flip(-1), x)
    if aug.cutout > 0:
        s = min(aug.cutout, h, w)
        top = torch.randint(0, h - s + 1, (b,), generator=generator).to(dev)
        left = torch.randint(0, w - s + 1, (b,), generator=generator).to(dev)
        ys = torch.arange(h, device=dev)[None, :]
        xs = torch.arange(w, device=dev)[None, :]
        inside = (((ys >= top[:, None]) & (ys < top[:, None] + s))[:, :, None]
                  & ((xs >= left[:, None]) & (xs < left[:, None] + s))[:, None, :])
        value = fill.to(dev).view(1, c, 1, 1) if fill is not None else torch.zeros(1, c, 1, 1, dtype=x.dtype, device=dev)
        x = torch.where(inside[:, None], value, x)
    return x


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def crop_flip(x: torch.Tensor, aug: Augment, generator: torch.Generator, *,
              flip_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Random resized crop + flip of a float ``(B, C, H, W)`` batch, back to ``H x W``.

    Each crop is an affine map of the output grid into the image (half-widths ``sx``, ``sy`` and
    centre ``cx``, ``cy`` in [-1, 1] coordinates); a negative ``sx`` mirrors the crop.
    """
    assert aug.crop_scale is not None
    b = x.shape[0]
    area = _uniform(b, aug.crop_scale[0], aug.crop_scale[1], generator)
    log_ratio = _uniform(b, math.log(aug.crop_ratio[0]), math.log(aug.crop_ratio[1]), generator)
    aspect = torch.exp(log_ratio)
    sx = torch.sqrt(area * aspect).clamp(max=1.0)
    sy = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (2 * torch.rand(b, generator=generator) - 1) * (1 - sx)
    cy = (2 * torch.rand(b, generator=generator) - 1) * (1 - sy)
    flip = torch.rand(b, generator=generator) < (aug.flip_p if aug.flip == "random" else 0.0)
    if flip_mask is not None:
        flip = flip_mask.cpu()
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = torch.where(flip, -sx, sx)
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = sy
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def colour_jitter(x: torch.Tensor, aug: Augment, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation jitter on a float 0..255 ``(B, C, H, W)`` batch."""
    b, c = x.shape[:2]

    def factor(amount: float) -> torch.Tensor:
        return _uniform(b, 1 - amount, 1 + amount, generator).to(x.device).view(b, 1, 1, 1)

    if aug.brightness:
        x = (x * factor(aug.brightness)).clamp_(0, 255)
    if aug.contrast:
        grey = x.mean(dim=1, keepdim=True) if c == 3 else x
        m = grey.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - m) * factor(aug.contrast) + m).clamp_(0, 255)
    if aug.saturation and c == 3:
        weights = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
        luma = (x * weights).sum(dim=1, keepdim=True)
        x = ((x - luma) * factor(aug.saturation) + luma).clamp_(0, 255)
    return x
