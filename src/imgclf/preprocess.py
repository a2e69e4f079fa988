"""The one preprocessing spec and its numpy implementation.

A :class:`PreprocessSpec` travels with every model (zoo entry, training run, model package).
:func:`preprocess` is the only code that turns a decoded RGB image into model input, and it is
used by ``imgclf predict``, by the server and by evaluation after training, so the three cannot
drift apart (train/serve skew).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

Interpolation = Literal["nearest", "bilinear", "bicubic", "lanczos"]
ResizeMode = Literal["shorter", "squash"]

_PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Keras-applications "caffe" mode: BGR order, 0..255 pixels, per-channel means subtracted (B, G, R).
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


@dataclass(frozen=True)
class PreprocessSpec:
    """How raw RGB pixels become a model's input tensor.

    ``resize_mode="shorter"``: scale the shorter side to ``round(input_size / crop_pct)`` and take a
    centred ``input_size`` square (the timm/torchvision evaluation transform).
    ``resize_mode="squash"``: resize the whole image to ``input_size`` x ``input_size`` (Keras style).

    The tensor is ``(pixel * scale - mean) / std`` per channel, channels in ``channel_order``,
    laid out NCHW. ``mean`` and ``std`` are given in ``channel_order``.
    """

    input_size: int = 224
    crop_pct: float = 0.875
    resize_mode: ResizeMode = "shorter"
    interpolation: Interpolation = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    scale: float = 1.0 / 255.0
    channel_order: Literal["RGB", "BGR"] = "RGB"
    grayscale: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.input_size < 1:
            raise ValueError(f"input_size must be positive, got {self.input_size}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.resize_mode not in ("shorter", "squash"):
            raise ValueError(f"resize_mode must be 'shorter' or 'squash', got {self.resize_mode!r}")
        if self.interpolation not in _PIL_FILTERS:
            raise ValueError(f"interpolation must be one of {sorted(_PIL_FILTERS)}, got {self.interpolation!r}")
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be RGB or BGR, got {self.channel_order!r}")
        channels = 1 if self.grayscale else 3
        for name in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) not in (1, channels):
                raise ValueError(f"{name} needs {channels} values, got {len(value)}")
            if len(value) == 1:
                value = value * channels
            object.__setattr__(self, name, value)
        if any(s == 0 for s in self.std):
            raise ValueError("std values must be non-zero")

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3

    @property
    def resize_size(self) -> int:
        """Side the shorter edge is scaled to before the centre crop."""
        return int(math.floor(self.input_size / self.crop_pct + 1e-6))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if not d["extra"]:
            d.pop("extra")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown preprocessing fields: {sorted(unknown)}")
        kw = dict(d)
        for name in ("mean", "std"):
            if name in kw:
                kw[name] = tuple(kw[name])
        return cls(**kw)

    def with_size(self, input_size: int) -> PreprocessSpec:
        return replace(self, input_size=input_size)


def caffe_spec(input_size: int = 224) -> PreprocessSpec:
    """Keras-applications VGG/ResNet 'caffe' preprocessing: squash resize, BGR, mean subtraction."""
    return PreprocessSpec(
        input_size=input_size,
        crop_pct=1.0,
        resize_mode="squash",
        interpolation="nearest",  # keras.preprocessing.image.load_img's default
        mean=CAFFE_BGR_MEAN,
        std=(1.0, 1.0, 1.0),
        scale=1.0,
        channel_order="BGR",
    )


# The resized image is at most this many times the crop on its long side before we switch from
# torchvision's exact resize-then-crop to resizing the crop's window alone (same filter, same centres,
# +-1 level of rounding): it bounds the intermediate of an extreme aspect ratio (8192x1 -> 256x2M).
MAX_INTERMEDIATE_RATIO = 32
# A decoder may hand preprocessing an image whose short side is this many times the resize target.
# Measured on the real photos upscaled to 12/24 MP with EfficientNet-Lite0: a DCT-scaled decode at
# 3x keeps top-5 probabilities within 0.016 of a full decode; at 2x (1/4 scale for 12 MP) one photo
# moves by 0.025.
DECODE_MARGIN = 3


def decode_min_side(spec: PreprocessSpec) -> int:
    """The shorter side a decoder must keep for this spec (the ``min_side`` hint of ``decode``)."""
    target = spec.resize_size if spec.resize_mode == "shorter" else spec.input_size
    return DECODE_MARGIN * target


def resized_size(w: int, h: int, target: int) -> tuple[int, int]:
    """torchvision ``Resize(int)``: the short side becomes ``target``, the long one is *truncated*."""
    if w <= h:
        return target, max(1, int(target * h / w))
    return max(1, int(target * w / h)), target


def resize_and_crop(image: npt.NDArray[np.uint8], spec: PreprocessSpec, *,
                    exact: bool = True) -> npt.NDArray[np.uint8]:
    """Geometric part of the spec: ``(H, W, 3)`` uint8 in, ``(S, S, C)`` uint8 out.

    ``shorter`` is torchvision's eval transform pixel for pixel (``Resize(resize_size)`` on a PIL
    image, then ``CenterCrop`` with ``int(round((h - crop) / 2))`` offsets). ``exact=False`` (an image
    the decoder already reduced) resizes only the window the crop keeps: same filter and centres,
    a few pixels one level off, and 1.5-2x less work on a big image.
    """
    pil = Image.fromarray(image)
    if spec.grayscale:
        pil = pil.convert("L")
    resample = _PIL_FILTERS[spec.interpolation]
    size = spec.input_size
    w, h = pil.size
    if spec.resize_mode == "squash":
        if (w, h) != (size, size):
            pil = pil.resize((size, size), resample)
    else:
        nw, nh = resized_size(w, h, spec.resize_size)
        left, top, right, bottom = _centre_box(nw, nh, size)
        if exact and max(nw, nh) <= MAX_INTERMEDIATE_RATIO * size:
            pil = pil.resize((nw, nh), resample).crop((left, top, right, bottom))
        else:  # resize only the window the crop keeps: bounded work and memory for any shape
            sx, sy = w / nw, h / nh
            pil = pil.resize((size, size), resample, box=(left * sx, top * sy, right * sx, bottom * sy))
    out = np.asarray(pil, dtype=np.uint8)
    return out[:, :, None] if out.ndim == 2 else out


def _centre_box(w: int, h: int, size: int) -> tuple[int, int, int, int]:
    """torchvision ``CenterCrop``: offsets rounded half to even, as its ``int(round(...))`` does."""
    left = int(round((w - size) / 2.0))
    top = int(round((h - size) / 2.0))
    return left, top, left + size, top + size


def normalize(pixels: npt.NDArray[np.uint8], spec: PreprocessSpec) -> npt.NDArray[np.float32]:
    """``(..., H, W, C)`` uint8 -> ``(..., C, H, W)`` float32, normalised as the spec says."""
    x = pixels.astype(np.float32)
    if spec.channel_order == "BGR" and not spec.grayscale:
        x = x[..., ::-1]
    mean = np.asarray(spec.mean, dtype=np.float32)
    inv_std = 1.0 / np.asarray(spec.std, dtype=np.float32)
    x = (x * np.float32(spec.scale) - mean) * inv_std
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def preprocess(image: npt.NDArray[np.uint8], spec: PreprocessSpec) -> npt.NDArray[np.float32]:
    """One decoded RGB uint8 image -> ``(C, S, S)`` float32 model input."""
    return normalize(resize_and_crop(image, spec), spec)


def preprocess_batch(images: Sequence[npt.NDArray[np.uint8]], spec: PreprocessSpec) -> npt.NDArray[np.float32]:
    """Several decoded images -> ``(N, C, S, S)`` float32 batch."""
    if not images:
        return np.zeros((0, spec.channels, spec.input_size, spec.input_size), np.float32)
    return normalize(np.stack([resize_and_crop(im, spec) for im in images]), spec)
