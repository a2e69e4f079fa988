"""The in-memory form every reader returns: class names and up to three labelled splits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from imgclf.preprocess import PreprocessSpec, resize_and_crop

Labels = npt.NDArray[np.int64]
Pixels = npt.NDArray[np.uint8]


@dataclass
class RawSplit:
    """One split: integer labels plus decoded ``(N, H, W, C)`` uint8 images and/or source files."""

    labels: Labels
    images: Pixels | None = None
    files: list[Path] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, idx: npt.NDArray[np.int64]) -> RawSplit:
        """The examples at positions ``idx``, in that order."""
        return RawSplit(
            labels=self.labels[idx],
            images=None if self.images is None else self.images[idx],
            files=None if self.files is None else [self.files[int(i)] for i in idx],
        )


@dataclass
class RawDataset:
    """Class names and splits (``train``, and optionally ``val`` and ``test``) of one dataset.

    CIFAR/IDX splits hold decoded pixels; image folders hold files until
    :func:`imgclf.data.decode.decode_folder` decodes them.
    """

    name: str
    format: str
    root: Path
    classes: list[str]
    splits: dict[str, RawSplit]
    grayscale: bool = False
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    val_from: str | None = None  # how the val split was made, for the record

    def split(self, name: str) -> RawSplit | None:
        return self.splits.get(name)

    def relative(self, path: Path) -> str:
        """``path`` relative to the dataset's root when it lies inside it (for messages and records)."""
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)


def as_rgb_or_gray(image: Pixels, spec: PreprocessSpec) -> Pixels:
    """An ``(H, W, 1|3)`` array in the form :func:`resize_and_crop` takes for ``spec``."""
    if image.shape[-1] == 1:
        return image[..., 0] if spec.grayscale else np.repeat(image, 3, axis=-1)
    return image


def to_geometry(images: Pixels, spec: PreprocessSpec) -> Pixels:
    """Arrays from CIFAR/IDX -> the spec's geometry, with the same function the server uses.
    Already-matching arrays pass through untouched (the function would be the identity)."""
    n, h, w, c = images.shape
    if h == w == spec.input_size and c == spec.channels:
        return images
    out = np.zeros((n, spec.input_size, spec.input_size, spec.channels), np.uint8)
    for i in range(n):
        out[i] = resize_and_crop(as_rgb_or_gray(images[i], spec), spec)
    return out
